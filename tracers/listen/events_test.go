package listen

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/internal/testutil"
)

func headerValue(f output.Frame, key string) any {
	for _, h := range f.Header {
		if h.Key == key {
			return h.Value
		}
	}
	return nil
}

// TestEvents: a listener with backlog 1 that never accepts takes 20
// connects; every overflow the namespace counts is one drop event naming
// that listener and a port one of the clients used.
func TestEvents(t *testing.T) {
	testutil.RequireBPF(t)
	for _, tier := range tiers(t) {
		t.Run(string(tier), func(t *testing.T) {
			ns := testutil.NewNetns(t)
			var port int
			ns.Do(func() error {
				_, port = testutil.Listen(t, "tcp4", "127.0.0.1:0", 1)
				return nil
			})
			tr, err := New(Options{NetnsPath: ns.Path(), Tier: tier, Events: true})
			if err != nil {
				t.Fatalf("%+v", err)
			}
			defer tr.Close()
			dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
			fds := connectMany(t, ns, dst, 20, 2)
			clientPorts := map[uint16]bool{}
			for _, fd := range fds {
				sa, err := unix.Getsockname(fd)
				if err != nil {
					t.Fatal(err)
				}
				clientPorts[uint16(sa.(*unix.SockaddrInet4).Port)] = true
			}
			time.Sleep(1500 * time.Millisecond) // one SYN retransmit round
			resetAll(fds)
			time.Sleep(300 * time.Millisecond) // the ring buffer reader catches up

			f, err := tr.Frame(time.Now())
			if err != nil {
				t.Fatal(err)
			}
			drops, ok := f.Rows.([]DropRow)
			if !ok {
				t.Fatalf("rows are %T, want []DropRow", f.Rows)
			}
			overflows := headerValue(f, "listen_overflows").(uint64)
			unattributed := headerValue(f, "overflows_unattributed").(int64)
			lost := headerValue(f, "events_lost").(uint64)
			t.Logf("tiers %v: %d drop events, namespace ListenOverflows %d, unattributed %d, events lost %d", f.Tiers, len(drops), overflows, unattributed, lost)
			if overflows == 0 {
				t.Fatal("no ListenOverflows in the namespace: the test made no overflow")
			}
			missed := headerValue(f, "lost_"+lostKprobe) // only where the kernel skipped probe hits
			if m, _ := missed.(uint64); fullyAttributed(t, tr) && !seen(0, unattributed, m) {
				t.Errorf("unattributed %d in a tier that attributes every overflow (%d probe hits missed)", unattributed, m)
			}
			if uint64(len(drops)) != overflows-uint64(unattributed) || lost != 0 {
				t.Errorf("%d drop events (%d lost), want the %d attributed of the namespace's %d ListenOverflows", len(drops), lost, int64(overflows)-unattributed, overflows)
			}
			kinds := map[string]int{}
			for _, d := range drops {
				kinds[d.Reason]++
				peer, err := netip.ParseAddrPort(d.Peer)
				if d.Local != dst.String() || err != nil || peer.Addr() != dst.Addr() || !clientPorts[peer.Port()] || d.Time == "" {
					t.Errorf("drop %+v: want listener %s, a peer 127.0.0.1 with one of the clients' ports", d, dst)
				}
				if d.Reason != SynOverflow.String() && d.Reason != AckOverflow.String() {
					t.Errorf("drop %+v: reason is not an overflow", d)
				}
			}
			t.Logf("drops by reason: %v", kinds)
		})
	}
}
