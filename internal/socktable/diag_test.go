package socktable

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/testutil"
)

// diagHooks are Hooks without the iterator: the sock_diag reader, with the
// kprobes where the kernel has them.
func diagHooks() []attach.Hook {
	h := slices.Clone(Hooks)
	h[0].Alternatives = slices.DeleteFunc(slices.Clone(h[0].Alternatives), func(a attach.Alternative) bool { return a.Method == "" })
	return h
}

// TestDiagMatchesIter reads one namespace — listeners with a full accept
// queue and with a SYN queue (TCP_DEFER_ACCEPT holds bare final ACKs as
// request sockets), IPv6, held and closed connections, TIME_WAIT — through
// iter/tcp and through sock_diag, and checks every field socket by socket.
// Without the kernel's own BTF there is no iterator: the table must then
// have fallen back to sock_diag, with the iterator refused for the BTF.
func TestDiagMatchesIter(t *testing.T) {
	testutil.RequireBPF(t)
	diag, err := newTable(diagHooks())
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer diag.Close()
	c, _ := diag.objs.Choice("tcp_sockets")
	t.Logf("sock_diag table: %s (refused: %+v)", c, c.Refused)
	withAddrs := c.Method == "sock_diag+kprobe"
	if kernel.ProbeKprobe(kernel.ProbeFunc) == nil && !withAddrs {
		t.Errorf("kprobes work here, but the table chose %s", c.Method)
	}

	var iter *Table
	if kernel.KernelHasBTF() {
		if iter, err = New(); err != nil {
			t.Fatalf("%+v", err)
		}
		defer iter.Close()
	} else {
		// The documented degradation: New falls back to sock_diag.
		tab, err := New()
		if err != nil {
			t.Fatalf("%+v", err)
		}
		defer tab.Close()
		c, _ := tab.objs.Choice("tcp_sockets")
		if !strings.HasPrefix(c.Method, "sock_diag") || len(c.Refused) == 0 || !strings.Contains(c.Refused[0].Reason, "CONFIG_DEBUG_INFO_BTF") {
			t.Fatalf("kernel without BTF: table %s, refused %+v; want sock_diag, iter refused naming CONFIG_DEBUG_INFO_BTF", c, c.Refused)
		}
		t.Logf("no kernel BTF: %s; iter refused: %s", c.Method, c.Refused[0].Reason)
	}

	ns := testutil.NewNetns(t)
	ns.KeepTimeWait(t)
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	const nHeld, nHalf, nClosed = 3, 4, 10
	var stuckPort, deferPort int
	err = ns.Do(func() error {
		_, stuckPort = testutil.Listen(t, "tcp4", "127.0.0.1:0", 5)
		testutil.Listen(t, "tcp6", "[::1]:0", 7)
		fd, p := testutil.Listen(t, "tcp4", "0.0.0.0:0", 32)
		deferPort = p
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 60); err != nil {
			return err
		}
		fd, openPort := testutil.Listen(t, "tcp4", "127.0.0.1:0", 64)
		testutil.Accept(t, fd, false)
		for range nHeld {
			c, err := net.Dial("tcp4", testutil.Addr("127.0.0.1", stuckPort))
			if err != nil {
				return err
			}
			held = append(held, c)
		}
		for range nHalf {
			c, err := net.Dial("tcp4", testutil.Addr("127.0.0.1", deferPort))
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
	time.Sleep(200 * time.Millisecond) // closes settle into TIME_WAIT, bare ACKs arrive

	ds, err := diag.Read(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Socket{}
	var synq uint32
	for _, s := range ds.Sockets {
		got[key(s)] = s
		if s.State == Listen && int(s.Local.Port()) == deferPort {
			synq = s.SynQueue
		}
		if withAddrs && s.State == Listen && s.Sock == 0 {
			t.Errorf("%s: no kernel address", key(s))
		}
		if s.State != Listen && s.Sock != 0 {
			t.Errorf("%s: kernel address %#x, want 0 (listeners only)", key(s), s.Sock)
		}
		if s.Cookie == 0 {
			t.Errorf("%s: no cookie", key(s))
		}
	}
	if synq != nHalf {
		t.Errorf("TCP_DEFER_ACCEPT listener: SYN queue %d, want %d", synq, nHalf)
	}
	if iter == nil {
		t.Logf("%d sockets through sock_diag; no iterator to compare with", len(ds.Sockets))
		return
	}
	is, err := iter.Read(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Socket{}
	for _, s := range is.Sockets {
		want[key(s)] = s
	}
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("sock_diag has %s, iter/tcp does not", k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		w := want[k]
		g, ok := got[k]
		if !ok {
			t.Errorf("iter/tcp has %s, sock_diag does not", k)
			continue
		}
		if d := g.Remaining - w.Remaining; d < -time.Second || d > time.Second {
			t.Errorf("%s: %v left through sock_diag, %v through iter/tcp", k, g.Remaining, w.Remaining)
		}
		g.Remaining, w.Remaining, g.Cookie = 0, 0, 0
		if !withAddrs || w.State != Listen {
			w.Sock = 0 // sock_diag gives listeners their addresses only
		}
		if g != w {
			t.Errorf("%s:\nsock_diag %+v\niter/tcp  %+v", k, g, w)
		}
	}
	t.Logf("%d sockets agree (addresses compared: %v)", len(keys), withAddrs)

	// Listeners keep their addresses from read to read, and one that
	// appears gets its own.
	var newPort int
	ns.Do(func() error {
		_, newPort = testutil.Listen(t, "tcp4", "127.0.0.1:0", 3)
		return nil
	})
	ds, err = diag.ReadStates(ns.Path(), States(Listen))
	if err != nil {
		t.Fatal(err)
	}
	is, err = iter.ReadStates(ns.Path(), States(Listen))
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]uint64{}
	for _, s := range is.Sockets {
		addrs[key(s)] = s.Sock
	}
	for _, s := range ds.Sockets {
		if w := addrs[key(s)]; withAddrs && s.Sock != w {
			t.Errorf("second read, %s: address %#x, iter/tcp %#x", key(s), s.Sock, w)
		}
	}
	if len(ds.Sockets) != 5 || !slices.ContainsFunc(ds.Sockets, func(s Socket) bool { return int(s.Local.Port()) == newPort }) {
		t.Errorf("second read: %d listeners, want 5 with port %d", len(ds.Sockets), newPort)
	}
}
