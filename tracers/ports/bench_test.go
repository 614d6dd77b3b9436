package ports

import (
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/testutil"
)

// TestOverhead is the benchmark of scripts/bench-ports.sh (run only with
// NETTRACE_BENCH=1): a connect-heavy loopback load (connect, then close with
// RST so no port stays in TIME_WAIT) in a fresh namespace, in alternating
// phases without and with the tracer, reporting the throughput ratio and
// each program's ns per run from the kernel's BPF statistics.
func TestOverhead(t *testing.T) {
	if os.Getenv("NETTRACE_BENCH") != "1" {
		t.Skip("benchmark: set NETTRACE_BENCH=1 (scripts/bench-ports.sh)")
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
	if os.Getenv("NETTRACE_BENCH_RAW") == "1" {
		preferRaw(t) // the raw_syscalls fallback
	}
	workers := 2
	ns := testutil.NewNetns(t)
	dest := netip.MustParseAddrPort("127.0.0.1:8088")
	var lfd int
	ns.Do(func() error { lfd, _ = testutil.Listen(t, "tcp4", dest.String(), 4096); return nil })
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
					sa := &unix.SockaddrInet4{Port: int(dest.Port()), Addr: dest.Addr().As4()}
					for time.Now().Before(stop) {
						fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
						if err != nil {
							return err
						}
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
	progStats := map[string][2]uint64{} // name -> runtime ns, runs
	tierName := ""
	for range 3 {
		off = append(off, load(phase))
		tr, err := New(Options{Netns: ns.Path()})
		if err != nil {
			t.Fatalf("%+v", err)
		}
		tierName = ""
		for _, c := range tr.Choices() {
			tierName += fmt.Sprintf(" %s=%s", c.Hook, c.Method)
		}
		on = append(on, load(phase))
		if _, err := tr.Frame(time.Now()); err != nil {
			t.Fatal(err)
		}
		for name, p := range tr.objs.Programs {
			s, err := p.Stats()
			if err != nil {
				continue
			}
			v := progStats[name]
			progStats[name] = [2]uint64{v[0] + uint64(s.Runtime.Nanoseconds()), v[1] + s.RunCount}
		}
		tr.Close()
	}
	sum := func(xs []float64) float64 {
		var s float64
		for _, x := range xs {
			s += x
		}
		return s / float64(len(xs))
	}
	mOff, mOn := sum(off), sum(on)
	var out []string
	out = append(out, fmt.Sprintf("ports overhead: kernel %s, %d CPUs, %d client threads, hooks%s", kernelRelease(), numCPU(), workers, tierName))
	out = append(out, fmt.Sprintf("connects/s without: %.0f (phases %s)", mOff, floats(off)))
	out = append(out, fmt.Sprintf("connects/s with:    %.0f (phases %s)", mOn, floats(on)))
	out = append(out, fmt.Sprintf("throughput ratio:   %.3f (cost %.1f%%)", mOn/mOff, 100*(1-mOn/mOff)))
	names := make([]string, 0, len(progStats))
	for n := range progStats {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		v := progStats[n]
		if v[1] == 0 {
			continue
		}
		out = append(out, fmt.Sprintf("program %-18s runs %9d  %6.0f ns/run", n, v[1], float64(v[0])/float64(v[1])))
	}
	var total uint64
	for _, v := range progStats {
		total += v[0]
	}
	if v := progStats["sys_exit_connect"]; v[1] > 0 {
		out = append(out, fmt.Sprintf("BPF time per connect: %.0f ns (all programs; state runs on every TCP state change on the machine)", float64(total)/float64(v[1])))
	}
	for _, l := range out {
		t.Log(l)
		fmt.Println(l)
	}
}

func floats(xs []float64) string {
	s := ""
	for i, x := range xs {
		if i > 0 {
			s += " "
		}
		s += strconv.FormatFloat(x, 'f', 0, 64)
	}
	return s
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}

func numCPU() int {
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) != nil {
		return 0
	}
	return set.Count()
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
