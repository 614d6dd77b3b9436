package testutil

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Overhead is the harness of the tracers' overhead benchmarks (run only
// with NETTRACE_BENCH=1, from scripts/bench-*.sh): a connect-heavy loopback
// load against a listener in a fresh namespace, in alternating phases
// without and with a tracer. The kernel's BPF statistics are off in those
// phases (they add two clock reads to every program run, which users do
// not pay) and on only in separate phases measured with Stats.
type Overhead struct {
	NS      *Netns
	Dst     netip.AddrPort
	Workers int           // client threads (2)
	Phase   time.Duration // one phase ($NETTRACE_BENCH_PHASE, 3s)

	Off, On []float64            // connects/s of each phase
	Progs   map[string][2]uint64 // program name -> run time ns, runs

	Rounds int // pairs of phases ($NETTRACE_BENCH_ROUNDS, 3)

	// CPU time per connect of each phase without and with the tracer, in
	// µs: the machine's busy time (user, system, irq, softirq in
	// /proc/stat: every process, not only the load) over the phase's
	// connects.
	CPUOff, CPUOn []float64

	t *testing.T
}

// NewOverhead skips unless NETTRACE_BENCH=1, checks for BPF, makes the
// namespace with a listener on dst that accepts and closes, and warms the
// load up.
func NewOverhead(t *testing.T, dst string) *Overhead {
	t.Helper()
	if os.Getenv("NETTRACE_BENCH") != "1" {
		t.Skip("benchmark: set NETTRACE_BENCH=1 (scripts/bench-*.sh)")
	}
	RequireBPF(t)
	o := &Overhead{NS: NewNetns(t), Dst: netip.MustParseAddrPort(dst), Workers: 2, Phase: 3 * time.Second,
		Rounds: 3, Progs: map[string][2]uint64{}}
	if s := os.Getenv("NETTRACE_BENCH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("NETTRACE_BENCH_ROUNDS=%q: want a positive number", s)
		}
		o.Rounds = n
	}
	if s := os.Getenv("NETTRACE_BENCH_PHASE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("NETTRACE_BENCH_PHASE: %v", err)
		}
		o.Phase = d
	}
	var lfd int
	o.NS.Do(func() error { lfd, _ = Listen(t, "tcp4", dst, 4096); return nil })
	Accept(t, lfd, false)
	o.t = t
	o.Load(o.Phase / 3)
	return o
}

// Stats runs one phase of o.Phase with the kernel's BPF run-time
// statistics on (BPF_ENABLE_STATS, for this phase only) and returns its
// connects; call AddStats after it, before closing the tracer. Its
// connects/s and CPU time are not recorded: the statistics cost CPU.
func (o *Overhead) Stats() float64 {
	o.t.Helper()
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		o.t.Fatalf("enable BPF statistics: %v", err)
	}
	defer stats.Close()
	start := time.Now()
	r := o.Load(o.Phase)
	return r * time.Since(start).Seconds()
}

// Measure runs one phase of o.Phase without (on false) or with the tracer,
// records its connects/s and CPU time per connect, and returns its
// connects/s.
func (o *Overhead) Measure(on bool) float64 {
	// Loading a tracer leaves garbage (the kernel's BTF, parsed): collect
	// it now rather than in the phase.
	runtime.GC()
	b0 := busyCPU()
	start := time.Now()
	r := o.Load(o.Phase)
	n := r * time.Since(start).Seconds()
	var cpu float64
	if n > 0 {
		cpu = float64((busyCPU() - b0).Nanoseconds()) / n / 1e3
	}
	if on {
		o.On, o.CPUOn = append(o.On, r), append(o.CPUOn, cpu)
	} else {
		o.Off, o.CPUOff = append(o.Off, r), append(o.CPUOff, cpu)
	}
	return r
}

// busyCPU sums the user, nice, system, irq and softirq time of every CPU in
// /proc/stat (USER_HZ 100); 0 when it cannot be read.
func busyCPU() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var ticks uint64
	for _, i := range []int{1, 2, 3, 6, 7} {
		if i < len(f) {
			v, _ := strconv.ParseUint(f[i], 10, 64)
			ticks += v
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// CPUCost compares the CPU time per connect with and without the tracer
// (medians of the phases): on this shared VM the vCPUs are not always
// busy, so connects/s varies by ±20% from phase to phase while the CPU a
// connect costs varies by a few percent. bpfNS is the programs' own run
// time per connect (bpf_stats); the rest of the difference is the
// tracepoints' dispatch, the system-call slow path that syscall
// tracepoints turn on for every task, and cache effects.
func (o *Overhead) CPUCost(bpfNS float64) string {
	off, on := Median(o.CPUOff), Median(o.CPUOn)
	if off == 0 {
		return "CPU per connect: not measured"
	}
	// The machine drifts over a run: the difference of each round's two
	// adjacent phases is steadier than the difference of the medians.
	var diffs []float64
	for i := range min(len(o.CPUOff), len(o.CPUOn)) {
		diffs = append(diffs, o.CPUOn[i]-o.CPUOff[i])
	}
	d := Median(diffs)
	return fmt.Sprintf("CPU per connect (/proc/stat, every process; median of %d phases each): %.1f µs without, %.1f µs with; median of the rounds' differences +%.2f µs (+%.1f%%); programs' run time %.2f µs (bpf_stats, in separate phases) (phases without %.1f, with %.1f)",
		len(o.CPUOff), off, on, d, 100*d/off, bpfNS/1e3, o.CPUOff, o.CPUOn)
}

// Median is the median of xs (0 when empty).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Load runs the client threads for d: each connects and closes with RST (so
// no port stays in TIME_WAIT) as fast as it can. It returns connects/s.
func (o *Overhead) Load(d time.Duration) float64 {
	var (
		n    atomic.Int64
		wg   sync.WaitGroup
		stop = time.Now().Add(d)
		sa   = &unix.SockaddrInet4{Port: int(o.Dst.Port()), Addr: o.Dst.Addr().As4()}
	)
	start := time.Now()
	for range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o.NS.Do(func() error {
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
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// AddStats adds the programs' run time and run count to o.Progs; call it
// after Stats, before closing the tracer (programs count only while the
// statistics are on).
func (o *Overhead) AddStats(progs map[string]*ebpf.Program) {
	for name, p := range progs {
		st, err := p.Stats()
		if err != nil {
			continue
		}
		v := o.Progs[name]
		o.Progs[name] = [2]uint64{v[0] + uint64(st.Runtime.Nanoseconds()), v[1] + st.RunCount}
	}
}

// Report is the header of a benchmark's output: the machine, the
// throughput with and without the tracer, and one line per program that
// ran, with its runs per connect when connects > 0.
func (o *Overhead) Report(tracer, tiers string, connects float64) []string {
	mOff, mOn := mean(o.Off), mean(o.On)
	out := []string{
		fmt.Sprintf("%s overhead: kernel %s, %d CPUs, %d client threads, tiers %s", tracer, KernelRelease(), runtime.NumCPU(), o.Workers, tiers),
		fmt.Sprintf("connects/s without: %.0f (phases %.0f)", mOff, o.Off),
		fmt.Sprintf("connects/s with:    %.0f (phases %.0f)", mOn, o.On),
		fmt.Sprintf("throughput ratio:   %.3f (cost %.1f%%)", mOn/mOff, 100*(1-mOn/mOff)),
	}
	names := make([]string, 0, len(o.Progs))
	for n := range o.Progs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		v := o.Progs[n]
		if v[1] == 0 {
			continue
		}
		per := ""
		if connects > 0 {
			per = fmt.Sprintf(" (%5.2f per connect)", float64(v[1])/connects)
		}
		out = append(out, fmt.Sprintf("program %-18s runs %9d%s %6.0f ns/run", n, v[1], per, float64(v[0])/float64(v[1])))
	}
	return out
}

// TotalNS is the run time of every program, in ns.
func (o *Overhead) TotalNS() uint64 {
	var total uint64
	for _, v := range o.Progs {
		total += v[0]
	}
	return total
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

// KernelRelease is uname -r.
func KernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}
