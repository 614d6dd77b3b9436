package socktable

import (
	"fmt"
	"net"
	"sort"
	"testing"
	"time"
	"unsafe"

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
	ns.KeepTimeWait(t) // the TIME_WAIT count below is one per connection
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

	// A state filter skips the other sockets in the kernel and keeps the
	// selected ones exactly; a reused snapshot holds only the new read.
	var reused Snapshot
	for _, mask := range []StateMask{States(Listen), States(TimeWait, Established), States(FinWait2), 0} {
		if err := tab.ReadInto(&reused, ns.Path(), mask); err != nil {
			t.Fatal(err)
		}
		got, want = nil, nil
		for _, s := range reused.Sockets {
			got = append(got, key(s))
		}
		for _, s := range truth {
			if mask.Has(s.State) {
				want = append(want, key(s))
			}
		}
		sort.Strings(got)
		sort.Strings(want)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("states %#x: iterator and /proc/net/tcp disagree:\niter: %v\nproc: %v", mask, got, want)
		}
		if mask == States(Listen) && len(got) != 3 {
			t.Errorf("LISTEN filter: %d sockets, want the 3 listeners", len(got))
		}
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

// TestRecordLayout checks the offsets decode reads against the record
// struct bpf2go generated from bpf/socktable.bpf.c.
func TestRecordLayout(t *testing.T) {
	var r socktableSockRec
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"saddr", unsafe.Offsetof(r.Saddr), 0}, {"daddr", unsafe.Offsetof(r.Daddr), 16},
		{"sport", unsafe.Offsetof(r.Sport), 32}, {"dport", unsafe.Offsetof(r.Dport), 34},
		{"family", unsafe.Offsetof(r.Family), 36}, {"state", unsafe.Offsetof(r.State), 38},
		{"substate", unsafe.Offsetof(r.Substate), 39}, {"rx_queue", unsafe.Offsetof(r.RxQueue), 40},
		{"tx_queue", unsafe.Offsetof(r.TxQueue), 44}, {"max_backlog", unsafe.Offsetof(r.MaxBacklog), 48},
		{"syn_queue", unsafe.Offsetof(r.SynQueue), 52}, {"uid", unsafe.Offsetof(r.Uid), 56},
		{"ino", unsafe.Offsetof(r.Ino), 64}, {"expires", unsafe.Offsetof(r.Expires), 72},
		{"netns", unsafe.Offsetof(r.Netns), 80}, {"sk", unsafe.Offsetof(r.Sk), 88},
		{"size", unsafe.Sizeof(r), uintptr(recSize)},
	} {
		if c.got != c.want {
			t.Errorf("struct sock_rec %s at %d, decode reads %d", c.name, c.got, c.want)
		}
	}
}
