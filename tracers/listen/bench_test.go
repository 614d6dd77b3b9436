package listen

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
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
// the kernel's BPF statistics. NETTRACE_BENCH_PHASE sets a phase's length,
// NETTRACE_LISTEN_TIER forces a tier.
func TestOverhead(t *testing.T) {
	if os.Getenv("NETTRACE_BENCH") != "1" {
		t.Skip("benchmark: set NETTRACE_BENCH=1 (scripts/bench-listen.sh)")
	}
	testutil.RequireBPF(t)
	phase := 3 * time.Second
	if s := os.Getenv("NETTRACE_BENCH_PHASE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		phase = d
	}
	tier := attach.Tier(os.Getenv("NETTRACE_LISTEN_TIER"))
	const workers = 2
	ns := testutil.NewNetns(t)
	dst := netip.MustParseAddrPort("127.0.0.1:8089")
	var lfd int
	ns.Do(func() error { lfd, _ = testutil.Listen(t, "tcp4", dst.String(), 4096); return nil })
	testutil.Accept(t, lfd, false)

	load := func(d time.Duration) float64 {
		var n atomic.Int64
		var wg sync.WaitGroup
		stop := time.Now().Add(d)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ns.Do(func() error {
					sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
					for time.Now().Before(stop) {
						fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
						if err != nil {
							return err
						}
						// RST on close: no port stays in TIME_WAIT.
						unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
						if unix.Connect(fd, sa) == nil {
							n.Add(1)
						}
						unix.Close(fd)
					}
					return nil
				})
			}()
		}
		start := time.Now()
		wg.Wait()
		return float64(n.Load()) / time.Since(start).Seconds()
	}

	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enable BPF statistics: %v", err)
	}
	defer stats.Close()

	load(phase / 3) // warm up
	var off, on []float64
	var connects float64
	var admitted, accepts, overflows uint64
	prog := map[string][2]uint64{} // name -> runtime ns, runs
	tiers := ""
	for range 3 {
		off = append(off, load(phase))
		tr, err := New(Options{NetnsPath: ns.Path(), Tier: tier})
		if err != nil {
			t.Fatalf("%+v", err)
		}
		tiers = fmt.Sprint(tr.objs.Tiers())
		r := load(phase)
		on = append(on, r)
		connects += r * phase.Seconds()
		s, err := tr.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		l := find(s, int(dst.Port()))
		if l == nil || l.Admitted == 0 {
			t.Fatalf("listener %+v: want admitted SYNs", l)
		}
		admitted, accepts, overflows = admitted+l.Admitted, accepts+l.Accepts, overflows+l.Overflows()
		for name, p := range tr.objs.Programs {
			st, err := p.Stats()
			if err != nil {
				continue
			}
			v := prog[name]
			prog[name] = [2]uint64{v[0] + uint64(st.Runtime.Nanoseconds()), v[1] + st.RunCount}
		}
		tr.Close()
	}
	mean := func(xs []float64) float64 {
		var s float64
		for _, x := range xs {
			s += x
		}
		return s / float64(len(xs))
	}
	mOff, mOn := mean(off), mean(on)
	out := []string{
		fmt.Sprintf("listen overhead: kernel %s, %d CPUs, %d client threads, tiers %s", release(), runtime.NumCPU(), workers, tiers),
		fmt.Sprintf("connects/s without: %.0f (phases %.0f)", mOff, off),
		fmt.Sprintf("connects/s with:    %.0f (phases %.0f)", mOn, on),
		fmt.Sprintf("throughput ratio:   %.3f (cost %.1f%%)", mOn/mOff, 100*(1-mOn/mOff)),
		// Clients reset at once, so most children are gone before accept().
		fmt.Sprintf("traced: SYNs admitted %d, accept latencies %d, overflows %d", admitted, accepts, overflows),
	}
	names := make([]string, 0, len(prog))
	for n := range prog {
		names = append(names, n)
	}
	slices.Sort(names)
	var total float64
	for _, n := range names {
		v := prog[n]
		if v[1] == 0 {
			continue
		}
		total += float64(v[0]) / connects
		out = append(out, fmt.Sprintf("program %-16s runs %9d (%5.2f per connect) %5.0f ns/run", n, v[1], float64(v[1])/connects, float64(v[0])/float64(v[1])))
	}
	out = append(out, fmt.Sprintf("BPF time per connect: %.0f ns (all runs, any traffic on the machine, over this namespace's connects)", total))
	for _, l := range out {
		fmt.Println(l)
	}
}

func release() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}
