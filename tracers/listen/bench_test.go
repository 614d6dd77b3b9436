package listen

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/testutil"
)

// TestOverhead is the benchmark of scripts/bench-listen.sh (run only with
// NETTRACE_BENCH=1): a connect-heavy loopback load in a fresh namespace
// (client threads connect and close with RST; the server accepts and
// closes) in alternating phases without and with the tracer, reporting the
// throughput ratio and each program's runs per connect and ns per run from
// the kernel's BPF statistics (taken in a third phase per round: the
// statistics cost CPU). NETTRACE_BENCH_PHASE sets a phase's length,
// NETTRACE_LISTEN_TIER forces a tier, NETTRACE_BENCH_SYSCALLS=1 adds the
// syscall tracepoints (accept latency) in the tracepoint tier.
func TestOverhead(t *testing.T) {
	o := testutil.NewOverhead(t, "127.0.0.1:8089")
	tier := attach.Tier(os.Getenv("NETTRACE_LISTEN_TIER"))
	var connects float64
	var admitted, accepts, overflows uint64
	tiers := ""
	for range o.Rounds {
		o.Measure(false)
		tr, err := New(Options{NetnsPath: o.NS.Path(), Tier: tier, Syscalls: os.Getenv("NETTRACE_BENCH_SYSCALLS") == "1"})
		if err != nil {
			t.Fatalf("%+v", err)
		}
		tiers = fmt.Sprint(tr.objs.Tiers())
		o.Measure(true)
		connects += o.Stats()
		s, err := tr.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		l := find(s, int(o.Dst.Port()))
		if l == nil || l.Admitted == 0 {
			t.Fatalf("listener %+v: want admitted SYNs", l)
		}
		admitted, accepts, overflows = admitted+l.Admitted, accepts+l.Accepts, overflows+l.Overflows()
		o.AddStats(tr.objs.Programs)
		tr.Close()
	}
	out := o.Report("listen", tiers, connects)
	// Clients reset at once, so most children are gone before accept().
	out = append(out, fmt.Sprintf("traced: SYNs admitted %d, accept latencies %d, overflows %d", admitted, accepts, overflows))
	per := float64(o.TotalNS()) / connects
	out = append(out, fmt.Sprintf("BPF time per connect: %.0f ns (all runs, any traffic on the machine, over this namespace's connects)", per))
	out = append(out, o.CPUCost(per))
	for _, l := range out {
		fmt.Println(l)
	}
}

// TestDropCost (NETTRACE_BENCH=1, scripts/bench-listen.sh): ack_kfree_tp
// runs on every packet the machine drops, not only listeners' (skb:kfree_skb),
// and in TestOverhead's load it runs only a few hundred times, cold. Here it
// runs under a drop-heavy load instead: UDP datagrams to a closed port in a
// fresh namespace, each dropped with NO_SOCKET, the path every drop that is
// not a listener's takes. Tracepoint tier, where that program is the ack hook.
func TestDropCost(t *testing.T) {
	if os.Getenv("NETTRACE_BENCH") != "1" {
		t.Skip("benchmark: set NETTRACE_BENCH=1 (scripts/bench-listen.sh)")
	}
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	tr, err := New(Options{NetnsPath: ns.Path(), Tier: attach.Tracepoint})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer tr.Close()
	p := tr.objs.Programs["ack_kfree_tp"]
	if p == nil {
		t.Fatal("no ack_kfree_tp program")
	}
	st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enable BPF statistics: %v", err)
	}
	defer st.Close()
	s0, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	var sent uint64
	if err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		to := &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}}
		buf := make([]byte, 64)
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
			if unix.Sendto(fd, buf, 0, to) == nil {
				sent++
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s1, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	runs := s1.RunCount - s0.RunCount
	l := fmt.Sprintf("drops: %d UDP datagrams to a closed port, ack_kfree_tp runs %d, %.0f ns/run",
		sent, runs, float64((s1.Runtime-s0.Runtime).Nanoseconds())/float64(runs))
	fmt.Println(l)
	if runs < sent {
		t.Errorf("ack_kfree_tp ran %d times for %d dropped datagrams", runs, sent)
	}
}
