package listen

import (
	"fmt"
	"os"
	"testing"

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
