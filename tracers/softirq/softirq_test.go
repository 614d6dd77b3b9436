package softirq

import (
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/testutil"
	"github.com/nettrace/nettrace/tracers/softirq/dist"
)

// pingPong runs request/response round trips over loopback TCP in a fresh
// network namespace for d and returns how many the client completed.
func pingPong(t *testing.T, d time.Duration) int {
	t.Helper()
	ns := testutil.NewNetns(t)
	var c net.Conn
	if err := ns.Do(func() error {
		fd, port := testutil.Listen(t, "tcp4", "127.0.0.1:0", 16)
		testutil.Accept(t, fd, true)
		var err error
		c, err = net.Dial("tcp4", testutil.Addr("127.0.0.1", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 512)
	n := 0
	for end := time.Now().Add(d); time.Now().Before(end); n++ {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// window is what measureWindow saw: /proc/softirqs (p1, p2, names) and
// the tracer's snapshots (s1, s2) around a load, the time between the two
// reads at the start and end (edges), and the load's length (window).
type window struct {
	p1, p2        [][]uint64
	names         []string
	s1, s2        *Snapshot
	edges, window time.Duration
}

// measureWindow reads /proc/softirqs and the tracer, runs load, and reads
// them again in the reverse order, so only the events between the two
// reads at each edge can differ.
func measureWindow(t *testing.T, tr *Tracer, load func()) window {
	t.Helper()
	var w window
	var err error
	e1 := time.Now()
	if w.p1, w.names, err = ReadProcSoftirqs(); err != nil {
		t.Fatal(err)
	}
	if w.s1, err = tr.Snapshot(); err != nil {
		t.Fatal(err)
	}
	w.edges = time.Since(e1)
	start := time.Now()
	load()
	e2 := time.Now()
	if w.s2, err = tr.Snapshot(); err != nil {
		t.Fatal(err)
	}
	if w.p2, _, err = ReadProcSoftirqs(); err != nil {
		t.Fatal(err)
	}
	w.edges += time.Since(e2)
	w.window = time.Since(start)
	return w
}

// cpuSoftirqTicks sums the softirq column of the cpu lines of /proc/stat.
func statSoftirq(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq
	v, err := strconv.ParseUint(f[7], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(v) * 10 * time.Millisecond // USER_HZ is 100
}

func TestCountsMatchProcSoftirqs(t *testing.T) {
	testutil.RequireBPF(t)
	tr, err := New(Options{})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer tr.Close()
	t.Logf("attached: %s", tr.Choice())

	st1 := statSoftirq(t)
	var rounds int
	w := measureWindow(t, tr, func() { rounds = pingPong(t, 1500*time.Millisecond) })
	p1, p2, s1, s2, names, edges, window := w.p1, w.p2, w.s1, w.s2, w.names, w.edges, w.window
	st2 := statSoftirq(t)
	t.Logf("edges (between the /proc/softirqs and map reads) %v of %v", edges, window)

	var bpfTime time.Duration
	for v, name := range names {
		if tr.VectorName(v) != name {
			t.Fatalf("vector %d: tracer calls it %s, /proc/softirqs %s", v, tr.VectorName(v), name)
		}
		var proc, bpf uint64
		for cpu := range p2[v] {
			proc += p2[v][cpu] - p1[v][cpu]
		}
		for cpu := range s2.Vecs {
			d := sub(s2.Vecs[cpu][v], s1.Vecs[cpu][v])
			bpf += d.Count
			bpfTime += time.Duration(d.TimeNS)
			if n := d.Hist.Count(); n > d.Count+1 || n+1 < d.Count {
				t.Errorf("%s CPU %d: %d durations for %d entries", name, cpu, n, d.Count)
			}
		}
		diff := int64(proc) - int64(bpf)
		t.Logf("%-8s /proc/softirqs %7d  BPF %7d  diff %d", name, proc, bpf, diff)
		// Only the events between the two reads at each edge may differ:
		// 1%, plus what the vector's rate puts in the edges (long under
		// emulation) several times over, plus a few: the reads themselves
		// (closing files, bpf syscalls) raise RCU and SCHED softirqs.
		atEdges := float64(proc) / window.Seconds() * edges.Seconds()
		if tol := int64(float64(proc)/100+4*atEdges) + 8; diff > tol || diff < -tol {
			t.Errorf("%s: BPF counted %d softirqs, /proc/softirqs rose by %d", name, bpf, proc)
		}
		if name == "NET_RX" && bpf < uint64(rounds) {
			t.Errorf("NET_RX: %d softirqs for %d loopback round trips, want at least one per round trip", bpf, rounds)
		}
	}
	var ksoft time.Duration
	for cpu, ns := range s2.Ksoftirqd {
		ksoft += time.Duration(ns - s1.Ksoftirqd[cpu])
	}
	stat := st2 - st1
	t.Logf("%d round trips; softirq time: BPF %v, /proc/stat %v, ksoftirqd on CPU %v", rounds, bpfTime, stat, ksoft)
	// /proc/stat counts softirq time outside ksoftirqd (in ksoftirqd it is
	// the thread's system time), in 10 ms ticks, and without
	// IRQ_TIME_ACCOUNTING (Debian's cloud kernel) by sampling at the tick:
	// plausible is within a factor of two.
	const slack = 30 * time.Millisecond
	if stat > bpfTime*2+slack {
		t.Errorf("/proc/stat has %v of softirq time, BPF only %v", stat, bpfTime)
	}
	if bpfTime > (stat+ksoft)*2+slack {
		t.Errorf("BPF measured %v of softirq time, /proc/stat %v plus ksoftirqd %v", bpfTime, stat, ksoft)
	}
	if rounds < 1000 {
		t.Errorf("only %d round trips: too little load to compare", rounds)
	}
	if s2.Dropped-s1.Dropped > 2 {
		t.Errorf("%d events dropped", s2.Dropped-s1.Dropped)
	}
}

func TestFrame(t *testing.T) {
	testutil.RequireBPF(t)
	for _, distView := range []bool{false, true} {
		tr, err := New(Options{Dist: distView})
		if err != nil {
			t.Fatalf("%+v", err)
		}
		start := time.Now()
		rounds := pingPong(t, 500*time.Millisecond)
		f, err := tr.Frame(time.Now())
		tr.Close()
		if err != nil {
			t.Fatal(err)
		}
		if f.Interval <= 0 || f.Interval > time.Since(start)+time.Second {
			t.Errorf("interval %v", f.Interval)
		}
		if distView {
			rows := f.Rows.([]dist.Row)
			var n uint64
			for _, r := range rows {
				if r.Hist == "NET_RX" {
					n += r.Count
				}
			}
			if n < uint64(rounds) {
				t.Errorf("NET_RX histogram holds %d softirqs for %d round trips", n, rounds)
			}
			continue
		}
		rows := f.Rows.([]Row)
		var netrx uint64
		for _, r := range rows {
			if r.Vector == "NET_RX" {
				netrx += r.Count
				if r.Count > 0 && (r.AvgUS <= 0 || r.P99US < r.AvgUS/2 || r.CPUPct <= 0 || r.CPUPct > 100) {
					t.Errorf("implausible NET_RX row %+v", r)
				}
			}
		}
		if netrx < uint64(rounds) {
			t.Errorf("NET_RX rows count %d softirqs for %d round trips", netrx, rounds)
		}
	}
}

// TestRawTP forces the raw_tp alternative, which auto never reaches where
// tp_btf works, and checks it counts like tp_btf.
func TestRawTP(t *testing.T) {
	testutil.RequireBPF(t)
	spec, err := loadSoftirq()
	if err != nil {
		t.Fatal(err)
	}
	hooks := []attach.Hook{{Name: "softirq", Alternatives: Hooks[0].Alternatives[1:]}}
	objs, err := attach.Load(spec, hooks, attach.Options{})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	tr := &Tracer{objs: objs, names: vectorNames()}
	defer tr.Close()
	if m := tr.Choice().Method; m != "raw_tp" {
		t.Fatalf("method %s, want raw_tp", m)
	}
	s1, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	rounds := pingPong(t, 300*time.Millisecond)
	s2, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for cpu := range s2.Vecs {
		n += s2.Vecs[cpu][netRX].Count - s1.Vecs[cpu][netRX].Count
	}
	if n < uint64(rounds) {
		t.Fatalf("raw_tp counted %d NET_RX softirqs for %d round trips", n, rounds)
	}
}

func TestForcedTiers(t *testing.T) {
	testutil.RequireBPF(t)
	// A forced tier applies to the hooks that offer it: softirq's hook is
	// a tracepoint only, so it keeps that tier.
	for _, tier := range []attach.Tier{attach.Fentry, attach.Kprobe} {
		tr, err := New(Options{Tier: tier})
		if err != nil {
			t.Fatalf("forcing %s: %+v", tier, err)
		}
		if c := tr.Choice(); c.Tier != attach.Tracepoint {
			t.Errorf("forcing %s: got tier %s", tier, c.Tier)
		}
		tr.Close()
	}
	tr, err := New(Options{Tier: attach.Tracepoint})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	tr.Close()
}

func TestParseSoftirqs(t *testing.T) {
	in := "                    CPU0       CPU1\n          HI:          1          2\n      NET_RX:        30         40\n"
	counts, names, err := parseSoftirqs([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 2 || names[1] != "NET_RX" || counts[1][1] != 40 || counts[0][0] != 1 {
		t.Fatalf("got %v %v", names, counts)
	}
	if _, _, err := parseSoftirqs([]byte("CPU0\nHI 1\n")); err == nil {
		t.Fatal("parsed a line without a colon")
	}
	var e *strconv.NumError
	if _, _, err := parseSoftirqs([]byte("CPU0\nHI: x\n")); !errors.As(err, &e) {
		t.Fatalf("bad number: %v", err)
	}
}
