package socktable

import (
	"fmt"
	"net"
	"sort"
	"testing"
	"time"

	"github.com/nettrace/nettrace/internal/netns"
	"github.com/nettrace/nettrace/internal/testutil"
)

func key(s Socket) string { return fmt.Sprintf("%s %s %s", s.State, s.Local, s.Remote) }

// TestMatchesProcNetTCP builds a namespace with a full accept queue, held
// connections and TIME_WAIT sockets, and checks the iterator against the
// kernel's /proc/net/tcp{,6} socket by socket.
func TestMatchesProcNetTCP(t *testing.T) {
	testutil.RequireBPF(t)
	tab, err := New()
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer tab.Close()

	ns := testutil.NewNetns(t)
	var stuckPort, stuck6Port, openPort int
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	const nHeld, nClosed = 3, 20
	err = ns.Do(func() error {
		_, stuckPort = testutil.Listen(t, "tcp4", "127.0.0.1:0", 5) // never accepts
		_, stuck6Port = testutil.Listen(t, "tcp6", "[::1]:0", 7)
		fd, p := testutil.Listen(t, "tcp4", "127.0.0.1:0", 64)
		openPort = p
		testutil.Accept(t, fd, false)
		for range nHeld {
			c, err := net.Dial("tcp4", testutil.Addr("127.0.0.1", stuckPort))
			if err != nil {
				return err
			}
			held = append(held, c)
		}
		if ok, failed := testutil.ConnectN(t, testutil.Addr("127.0.0.1", openPort), nClosed); ok != nClosed {
			return fmt.Errorf("client saw %d ok, %d failed connects", ok, failed)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the closes settle into TIME_WAIT

	snap, err := tab.Read(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	truth, err := ReadProc(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	var got, want []string
	for _, s := range snap.Sockets {
		got = append(got, key(s))
	}
	for _, s := range truth {
		want = append(want, key(s))
	}
	sort.Strings(got)
	sort.Strings(want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("iterator and /proc/net/tcp disagree:\niter: %v\nproc: %v", got, want)
	}

	nsID, err := netns.ID(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	var tw int
	for _, s := range snap.Sockets {
		if s.Netns != nsID {
			t.Errorf("%s: netns %d, want %d", key(s), s.Netns, nsID)
		}
		switch {
		case s.State == Listen && int(s.Local.Port()) == stuckPort:
			if s.RxQueue != nHeld || s.MaxBacklog != 5 {
				t.Errorf("stuck listener: accept queue %d/%d, want %d/5", s.RxQueue, s.MaxBacklog, nHeld)
			}
		case s.State == Listen && int(s.Local.Port()) == stuck6Port:
			if s.MaxBacklog != 7 || !s.Local.Addr().Is6() {
				t.Errorf("IPv6 listener: %+v", s)
			}
		case s.State == TimeWait:
			tw++
			if s.Remaining <= 50*time.Second || s.Remaining > 60*time.Second {
				t.Errorf("TIME_WAIT %s has %v left, want (50s, 60s]", key(s), s.Remaining)
			}
		}
	}
	// Every connection leaves one TIME_WAIT on the side that closed first
	// (two on a simultaneous close).
	if tw < nClosed || tw > 2*nClosed {
		t.Errorf("%d TIME_WAIT sockets for %d closed connections", tw, nClosed)
	}
	t.Logf("%d sockets, %d TIME_WAIT, HZ=%v", len(snap.Sockets), tw, tab.HZ())
}

func TestParseHexAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000000000000000000001000000:0050": "[::1]:80",
	} {
		got, err := parseHexAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("parseHexAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
}
