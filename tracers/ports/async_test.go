package ports

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/testutil"
)

// TestAsyncOutcome makes non-blocking connects whose answer comes after
// connect() returned EINPROGRESS, from the SYN retransmit timer (not in
// the connecting thread): two to a listener whose accept queue is full
// until the test accepts (then they connect), one to a listener that
// closes while its queue is full (its retransmitted SYN gets a reset:
// ECONNREFUSED). Counts, errors and events must be exact.
func TestAsyncOutcome(t *testing.T) {
	testutil.RequireBPF(t)
	tiers(t, func(t *testing.T, tier attach.Tier) { asyncOutcome(t, Options{Tier: tier}) })
	t.Run("tracepoint-syscalls", func(t *testing.T) { asyncOutcome(t, Options{Tier: attach.Tracepoint, Syscalls: true}) })
}

// asyncOutcome is TestAsyncOutcome with opts (Netns, PID and Events set).
func asyncOutcome(t *testing.T, opts Options) {
	ns := testutil.NewNetns(t)
	okDest := netip.MustParseAddrPort("127.0.0.1:8091")
	refDest := netip.MustParseAddrPort("127.0.0.1:8092")
	var okL, refL int
	ns.Do(func() error {
		okL, _ = testutil.Listen(t, "tcp4", okDest.String(), 0)
		refL, _ = testutil.Listen(t, "tcp4", refDest.String(), 0)
		return nil
	})
	opts.Netns, opts.PID, opts.Events = ns.Path(), os.Getpid(), true
	tr, err := New(opts)
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer tr.Close()
	connect := func(dest netip.AddrPort, nonblock bool) int {
		t.Helper()
		var fd int
		ns.Do(func() error {
			flags := unix.SOCK_STREAM | unix.SOCK_CLOEXEC
			if nonblock {
				flags |= unix.SOCK_NONBLOCK
			}
			fd, err = unix.Socket(unix.AF_INET, flags, 0)
			if err != nil {
				t.Fatal(err)
			}
			err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(dest.Port()), Addr: dest.Addr().As4()})
			if nonblock && err != unix.EINPROGRESS {
				t.Fatalf("non-blocking connect to %s: %v, want EINPROGRESS", dest, err)
			}
			if !nonblock && err != nil {
				t.Fatalf("connect to %s: %v", dest, err)
			}
			return nil
		})
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	// Backlog 0 admits one connection; the next SYNs are dropped.
	connect(okDest, false)
	connect(refDest, false)
	a, b := connect(okDest, true), connect(okDest, true)
	c := connect(refDest, true)
	time.Sleep(50 * time.Millisecond)
	unix.Close(refL) // c's retransmitted SYN now meets no listener
	// A blocking listener would hang the loop below once every
	// connection is accepted before c's outcome is seen (it did in
	// the 6.1 VM): SOCK_NONBLOCK in accept4 is for the new socket.
	if err := unix.SetNonblock(okL, true); err != nil {
		t.Fatal(err)
	}
	want := map[int]unix.Errno{a: 0, b: 0, c: unix.ECONNREFUSED}
	got := map[int]unix.Errno{}
	for end := time.Now().Add(10 * time.Second); len(got) < len(want) && time.Now().Before(end); {
		// Accepting makes room for the next retransmitted SYN.
		if nfd, _, err := unix.Accept4(okL, unix.SOCK_NONBLOCK); err == nil {
			defer unix.Close(nfd)
		}
		for fd := range want {
			if _, done := got[fd]; done {
				continue
			}
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if n, _ := unix.Poll(pfd, 0); n == 1 {
				e, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
				got[fd] = unix.Errno(e)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	for fd, w := range want {
		if g, ok := got[fd]; !ok || g != w {
			t.Fatalf("client: connect on fd %d ended %v (done %v), want %v", fd, g, ok, w)
		}
	}
	f, err := tr.Frame(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r := findRow(t, f, okDest.String()); r.Connects != 3 || r.Errors+r.AddrNA != 0 {
		t.Errorf("%s: %d connects, %d errors; the client made 3, all ok", okDest, r.Connects, r.Errors+r.AddrNA)
	}
	if r := findRow(t, f, refDest.String()); r.Connects != 2 || r.Errors != 1 {
		t.Errorf("%s: %d connects, %d errors; the client made 2, one refused", refDest, r.Connects, r.Errors)
	}
	events := readEvents(t, tr, 5, 5*time.Second)
	if events[okDest.String()+" ok"] != 3 || events[refDest.String()+" ok"] != 1 || events[refDest.String()+" ECONNREFUSED"] != 1 {
		t.Errorf("events %v; want 3 ok to %s, 1 ok and 1 ECONNREFUSED to %s", events, okDest, refDest)
	}
	if s, err := tr.Snapshot(); err != nil || s.Drops.Total() != 0 {
		t.Errorf("drops %+v (%v)", s.Drops, err)
	}
}

// readEvents reads n events and counts them by "destination result"; it
// fails the test after timeout rather than block (Close unblocks the read).
func readEvents(t *testing.T, tr *Tracer, n int, timeout time.Duration) map[string]int {
	t.Helper()
	type res struct {
		e   Event
		err error
	}
	ch := make(chan res, n)
	go func() {
		for range n {
			e, err := tr.ReadEvent()
			ch <- res{e, err}
			if err != nil {
				return
			}
		}
	}()
	events := map[string]int{}
	for i := range n {
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatal(r.err)
			}
			events[r.e.Dest.String()+" "+r.e.Result()]++
		case <-time.After(timeout):
			t.Fatalf("%d of %d events after %v: %v", i, n, timeout, events)
		}
	}
	return events
}
