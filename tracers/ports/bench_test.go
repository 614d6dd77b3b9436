package ports

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/nettrace/nettrace/internal/testutil"
)

// TestOverhead is the benchmark of scripts/bench-ports.sh (run only with
// NETTRACE_BENCH=1): a connect-heavy loopback load (connect, then close with
// RST so no port stays in TIME_WAIT) in a fresh namespace, in alternating
// phases without and with the tracer, reporting the throughput ratio and
// each program's ns per run from the kernel's BPF statistics (taken in a
// third phase per round: the statistics cost CPU).
func TestOverhead(t *testing.T) {
	o := testutil.NewOverhead(t, "127.0.0.1:8088")
	if os.Getenv("NETTRACE_BENCH_RAW") == "1" {
		preferRaw(t) // the raw_syscalls fallback
	}
	tierName := ""
	var connects float64
	for range o.Rounds {
		o.Measure(false)
		tr, err := New(Options{Netns: o.NS.Path(), Syscalls: os.Getenv("NETTRACE_BENCH_SYSCALLS") == "1"})
		if err != nil {
			t.Fatalf("%+v", err)
		}
		tierName = ""
		for _, c := range tr.Choices() {
			tierName += fmt.Sprintf(" %s=%s", c.Hook, c.Method)
		}
		o.Measure(true)
		connects += o.Stats()
		if _, err := tr.Frame(time.Now()); err != nil {
			t.Fatal(err)
		}
		o.AddStats(tr.objs.Programs)
		tr.Close()
	}
	out := o.Report("ports", tierName, connects)
	per := float64(o.TotalNS()) / connects
	out = append(out, fmt.Sprintf("BPF time per connect: %.0f ns (all programs; state runs on every TCP state change on the machine)", per))
	out = append(out, o.CPUCost(per))
	for _, l := range out {
		t.Log(l)
		fmt.Println(l)
	}
}

// TestSocktableCost measures one interval's socket table work (iter/tcp read
// and grouping by destination) with 30,000 sockets (NETTRACE_BENCH=1).
func TestSocktableCost(t *testing.T) {
	if os.Getenv("NETTRACE_BENCH") != "1" {
		t.Skip("benchmark: set NETTRACE_BENCH=1 (scripts/bench-ports.sh)")
	}
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	ns.SetSysctl(t, "net.ipv4.ip_local_port_range", "10000 65000")
	dest := netip.MustParseAddrPort("127.0.0.1:8090")
	var lfd int
	ns.Do(func() error { lfd, _ = testutil.Listen(t, "tcp4", dest.String(), 4096); return nil })
	testutil.Accept(t, lfd, true)
	res := connectN(t, ns, dest, 30000)
	time.Sleep(time.Second)
	tr, err := New(Options{Netns: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	set, err := ReadSettings(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	const reads = 10
	var n int
	var held Ports
	start := time.Now()
	for range reads {
		snap, err := tr.tab.Read(ns.Path())
		if err != nil {
			t.Fatal(err)
		}
		n = len(snap.Sockets)
		held = CountPorts(snap.Sockets, set)
	}
	per := time.Since(start) / reads
	l := fmt.Sprintf("socket table: %d sockets (%d connects, %d TIME_WAIT toward %s): %.1f ms per interval (iter/tcp read + grouping)",
		n, res.ok, held.ByDest[dest].TimeWait, dest, float64(per.Microseconds())/1e3)
	t.Log(l)
	fmt.Println(l)
}
