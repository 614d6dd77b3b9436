package sched

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/testutil"
	"github.com/nettrace/nettrace/tracers/softirq/dist"
)

// measured is one workload's figures for its two threads, from BPF and /proc.
type measured struct {
	elapsed   time.Duration
	bpf       [2]Delta
	proc      [2]procTask
	frame     []Row
	other     uint32 // the helper's PID
	bpfOthers int    // rows of other processes (must be 0: filtered by PID)
}

// measure runs a helper workload under a tracer filtered on the helper.
func measure(t *testing.T, mode string, opts Options) measured {
	t.Helper()
	c := startHelper(t, mode)
	opts.PID = c.pid
	tr, err := New(opts)
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer tr.Close()
	s1, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	p1 := [2]procTask{c.proc(c.tids[0]), c.proc(c.tids[1])}
	tr.prev = s1
	elapsed := c.run()
	s2, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	p2 := [2]procTask{c.proc(c.tids[0]), c.proc(c.tids[1])}
	m := measured{elapsed: elapsed, other: uint32(c.pid)}
	for _, d := range Deltas(s1, s2) {
		if d.TGID != uint32(c.pid) {
			m.bpfOthers++
		}
		for i, tid := range c.tids {
			if d.TID == uint32(tid) {
				m.bpf[i] = d
			}
		}
	}
	for i := range p2 {
		m.proc[i] = procTask{
			vol: p2[i].vol - p1[i].vol, invol: p2[i].invol - p1[i].invol,
			oncpuNS: p2[i].oncpuNS - p1[i].oncpuNS, runDelayNS: p2[i].runDelayNS - p1[i].runDelayNS,
		}
	}
	tr.prev = s1
	f, err := tr.Frame(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	m.frame = f.Rows.([]Row)
	if s2.Dropped != 0 {
		t.Errorf("%d threads dropped", s2.Dropped)
	}
	for i := range 2 {
		t.Logf("%s thread %d: BPF vol %d invol %d runq %v oncpu %v offcpu %v; /proc vol %d invol %d run_delay %v oncpu %v",
			mode, i, m.bpf[i].Voluntary, m.bpf[i].Involuntary, time.Duration(m.bpf[i].RunqNS), time.Duration(m.bpf[i].OnCPUNS), time.Duration(m.bpf[i].OffNS),
			m.proc[i].vol, m.proc[i].invol, time.Duration(m.proc[i].runDelayNS), time.Duration(m.proc[i].oncpuNS))
	}
	return m
}

// near reports whether a is within frac of b, plus abs.
func near(a, b uint64, frac float64, abs uint64) bool {
	d := float64(a) - float64(b)
	if d < 0 {
		d = -d
	}
	return d <= frac*float64(b)+float64(abs)
}

func TestVoluntaryPingPong(t *testing.T) {
	testutil.RequireBPF(t)
	const n = 20000
	m := measure(t, "pingpong 20000", Options{})
	for i := range 2 {
		b, p := m.bpf[i], m.proc[i]
		if p.vol < n/2 {
			t.Fatalf("thread %d: only %d voluntary switches in /proc for %d round trips", i, p.vol, n)
		}
		if !near(b.Voluntary, p.vol, 0.01, 1) {
			t.Errorf("thread %d: BPF %d voluntary switches, /proc %d", i, b.Voluntary, p.vol)
		}
		if !near(b.Involuntary, p.invol, 0.01, 1) {
			t.Errorf("thread %d: BPF %d involuntary switches, /proc %d", i, b.Involuntary, p.invol)
		}
		// Runnable time (waiting plus running) agrees closely; where the
		// kernel puts the boundary between the two differs from the
		// tracepoint by a microsecond or two per switch, which adds up
		// over 40,000 switches on a loaded VM (seen: 113 ms on CPU by BPF,
		// 150 ms by schedstat, the sums 198 and 194 ms).
		if !near(b.OnCPUNS+b.RunqNS, p.oncpuNS+p.runDelayNS, 0.1, uint64(5*time.Millisecond)) {
			t.Errorf("thread %d: BPF %v runnable (%v on CPU), schedstat %v (%v)", i, time.Duration(b.OnCPUNS+b.RunqNS), time.Duration(b.OnCPUNS),
				time.Duration(p.oncpuNS+p.runDelayNS), time.Duration(p.oncpuNS))
		}
		// Run-queue delay is stamped with the run queue's clock at the
		// wakeup and at the switch, as schedstat's run_delay is: the two
		// agree to microseconds (56.566181 ms both, on 6.18), except
		// where the tracer is still reading when the thread switches.
		if !near(b.RunqNS, p.runDelayNS, 0.05, uint64(2*time.Millisecond)) {
			t.Errorf("thread %d: BPF run-queue delay %v, schedstat run_delay %v", i, time.Duration(b.RunqNS), time.Duration(p.runDelayNS))
		}
		// A blocked thread is off CPU from the switch-out until it runs.
		if b.OffNS+b.OnCPUNS > uint64(m.elapsed)*11/10 || b.OffNS == 0 {
			t.Errorf("thread %d: off CPU %v + on CPU %v in %v", i, time.Duration(b.OffNS), time.Duration(b.OnCPUNS), m.elapsed)
		}
	}
	if m.bpfOthers != 0 {
		t.Errorf("%d threads of other processes despite the PID filter", m.bpfOthers)
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", m.other))
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, r := range m.frame {
		if r.PID != m.other {
			t.Errorf("row of process %d despite the PID filter", r.PID)
			continue
		}
		found = true
		if r.Voluntary < m.bpf[0].Voluntary+m.bpf[1].Voluntary || r.VolPS <= 0 || r.Comm != strings.TrimSpace(string(comm)) {
			t.Errorf("process row %+v does not add up its threads", r)
		}
	}
	if !found {
		t.Error("no row for the helper process")
	}
}

func TestHogsRunQueue(t *testing.T) {
	testutil.RequireBPF(t)
	if testing.Short() {
		t.Skip("short")
	}
	shared := measure(t, "hogs-shared 1500ms", Options{})
	var sharedRunq uint64
	for i := range 2 {
		b, p := shared.bpf[i], shared.proc[i]
		if p.invol < 20 {
			t.Fatalf("hog %d: only %d involuntary switches in /proc sharing one CPU", i, p.invol)
		}
		if !near(b.Involuntary, p.invol, 0.01, 1) {
			t.Errorf("hog %d: BPF %d involuntary switches, /proc %d", i, b.Involuntary, p.invol)
		}
		if !near(b.Voluntary, p.vol, 0.01, 1) {
			t.Errorf("hog %d: BPF %d voluntary switches, /proc %d", i, b.Voluntary, p.vol)
		}
		checkTimes(t, i, b, p)
		sharedRunq += b.RunqNS
	}
	// Two threads that never sleep on one CPU: while one runs, the other waits.
	if sharedRunq < uint64(shared.elapsed)*8/10 {
		t.Errorf("two hogs on one CPU waited %v in all over %v", time.Duration(sharedRunq), shared.elapsed)
	}

	split := measure(t, "hogs-split 1500ms", Options{})
	var splitRunq uint64
	for i := range 2 {
		b, p := split.bpf[i], split.proc[i]
		checkRunnable(t, i, b, p)
		if !near(b.Involuntary, p.invol, 0.01, 1) {
			t.Errorf("hog %d: BPF %d involuntary switches, /proc %d", i, b.Involuntary, p.invol)
		}
		splitRunq += b.RunqNS
	}
	// On their own CPUs the hogs wait only for other work on the machine
	// (other tests run concurrently), which schedstat sees too: checkTimes
	// holds BPF to it.
	t.Logf("run-queue delay of the two hogs: %v on one CPU, %v on two over %v", time.Duration(sharedRunq), time.Duration(splitRunq), split.elapsed)
	// The per-process row carries the hogs' waits.
	for _, r := range shared.frame {
		if r.PID == shared.other && r.RunqMS < float64(sharedRunq)/1e6 {
			t.Errorf("hogs sharing a CPU: process row has %.1f ms of run-queue delay, its hogs %v", r.RunqMS, time.Duration(sharedRunq))
		}
	}
}

// checkRunnable compares the time a hog was runnable (waiting or running)
// with /proc/PID/task/TID/schedstat's: the two agree closely whatever else
// loads the machine. On a CPU of its own a hog waits only for other work,
// and how the kernel splits that time between run_delay and
// sum_exec_runtime depends on the interrupt and softirq load there (seen in
// CI: 225 ms waiting by BPF, 458 ms by schedstat, the sums equal); so the
// split is checked only where it is the point, with two hogs on one CPU.
func checkRunnable(t *testing.T, i int, b Delta, p procTask) {
	t.Helper()
	if !near(b.RunqNS+b.OnCPUNS, p.runDelayNS+p.oncpuNS, 0.05, uint64(10*time.Millisecond)) {
		t.Errorf("hog %d: BPF runnable %v, schedstat %v", i, time.Duration(b.RunqNS+b.OnCPUNS), time.Duration(p.runDelayNS+p.oncpuNS))
	}
}

// checkTimes compares a hog's run-queue delay and on-CPU time with
// /proc/PID/task/TID/schedstat. Their sum is the time the hog was runnable
// and agrees closely; the split between them less so: the kernel's on-CPU
// time (sum_exec_runtime) leaves out interrupt and softirq time when
// IRQ_TIME_ACCOUNTING is on (tens of ms a second when other tests load
// the network), and it stamps with the run-queue clock.
func checkTimes(t *testing.T, i int, b Delta, p procTask) {
	t.Helper()
	checkRunnable(t, i, b, p)
	if !near(b.RunqNS, p.runDelayNS, 0.3, uint64(10*time.Millisecond)) {
		t.Errorf("hog %d: BPF run-queue delay %v, schedstat %v", i, time.Duration(b.RunqNS), time.Duration(p.runDelayNS))
	}
	if !near(b.OnCPUNS, p.oncpuNS, 0.3, uint64(10*time.Millisecond)) {
		t.Errorf("hog %d: BPF on CPU %v, schedstat %v", i, time.Duration(b.OnCPUNS), time.Duration(p.oncpuNS))
	}
}

func TestMinBlock(t *testing.T) {
	testutil.RequireBPF(t)
	// Ping-pong sleeps are microseconds: a 1 s minimum leaves none.
	m := measure(t, "pingpong 2000", Options{MinBlock: time.Second})
	// One of the two may be preempted at each wakeup instead of blocking
	// (seen in the 6.1 VM: 2 voluntary and 2037 involuntary switches, as
	// /proc counted them): the other then blocks at every round.
	if max(m.bpf[0].Voluntary, m.bpf[1].Voluntary) < 100 {
		t.Errorf("voluntary switches %d and %d: the ping-pong did not block", m.bpf[0].Voluntary, m.bpf[1].Voluntary)
	}
	for i := range 2 {
		if m.bpf[i].OffNS != 0 {
			t.Errorf("thread %d: %d voluntary switches, off CPU %v with --min-block 1s", i, m.bpf[i].Voluntary, time.Duration(m.bpf[i].OffNS))
		}
	}
}

func TestViews(t *testing.T) {
	testutil.RequireBPF(t)
	for _, opts := range []Options{{Threads: true}, {Dist: true}, {Comm: "no-such-comm"}} {
		c := startHelper(t, "pingpong 3000")
		opts.PID = c.pid
		tr, err := New(opts)
		if err != nil {
			t.Fatalf("%+v", err)
		}
		c.run()
		f, err := tr.Frame(time.Now())
		tr.Close()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case opts.Threads:
			rows, ok := f.Rows.([]ThreadRow)
			var busy int
			for _, r := range rows {
				if (r.TID == uint32(c.tids[0]) || r.TID == uint32(c.tids[1])) && r.Voluntary >= 300 {
					busy++
				}
			}
			if !ok || busy != 2 {
				t.Errorf("-T: want a row with the switches of each ping-pong thread, got %+v", f.Rows)
			}
		case opts.Dist:
			rows, ok := f.Rows.([]dist.Row)
			var n uint64
			for _, r := range rows {
				n += r.Count
			}
			if !ok || n < 3000 {
				t.Errorf("--dist: %d run-queue delays for 3000 round trips (%T)", n, f.Rows)
			}
		default:
			if rows := f.Rows.([]Row); len(rows) != 0 {
				t.Errorf("--comm no-such-comm gave %d rows", len(rows))
			}
		}
	}
}

// TestRawTP forces the raw_tp alternatives and checks they count like tp_btf.
func TestRawTP(t *testing.T) {
	testutil.RequireBPF(t)
	c := startHelper(t, "pingpong 5000")
	spec, err := loadSched()
	if err != nil {
		t.Fatal(err)
	}
	var hooks []attach.Hook
	for _, h := range Hooks {
		hooks = append(hooks, attach.Hook{Name: h.Name, Alternatives: h.Alternatives[1:]})
	}
	objs, err := attach.Load(spec, hooks, attach.Options{Constants: map[string]any{"targ_tgid": uint32(c.pid)}})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	tr := &Tracer{objs: objs}
	defer tr.Close()
	for _, ch := range objs.Choices {
		if ch.Method != "raw_tp" {
			t.Fatalf("hook %s: method %s, want raw_tp", ch.Hook, ch.Method)
		}
	}
	s1, _ := tr.Snapshot()
	p1 := c.proc(c.tids[0])
	c.run()
	s2, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	p2 := c.proc(c.tids[0])
	got := s2.Tasks[uint32(c.tids[0])].Voluntary - s1.Tasks[uint32(c.tids[0])].Voluntary
	if want := p2.vol - p1.vol; !near(got, want, 0.01, 1) || want < 1000 {
		t.Fatalf("raw_tp: %d voluntary switches, /proc %d", got, want)
	}
	// The run queue's clock read through probe_read, as tp_btf reads it.
	runq := s2.Tasks[uint32(c.tids[0])].RunqNS - s1.Tasks[uint32(c.tids[0])].RunqNS
	if want := p2.runDelayNS - p1.runDelayNS; !near(runq, want, 0.05, uint64(2*time.Millisecond)) {
		t.Errorf("raw_tp: run-queue delay %v, schedstat run_delay %v", time.Duration(runq), time.Duration(want))
	}
}

func TestForcedTiers(t *testing.T) {
	testutil.RequireBPF(t)
	// A forced tier applies to the hooks that offer it: sched's hooks are
	// tracepoints only, so they keep that tier.
	for _, tier := range []attach.Tier{attach.Fentry, attach.Kprobe} {
		tr, err := New(Options{Tier: tier, PID: os.Getpid()})
		if err != nil {
			t.Fatalf("forcing %s: %+v", tier, err)
		}
		for _, c := range tr.Choices() {
			if c.Tier != attach.Tracepoint {
				t.Errorf("forcing %s: hook %s got tier %s", tier, c.Hook, c.Tier)
			}
		}
		tr.Close()
	}
}

func TestCgroupID(t *testing.T) {
	testutil.RequireBPF(t)
	id, level, err := cgroupID("/")
	if err != nil {
		t.Skipf("no cgroup2: %v", err)
	}
	if level != 0 || id == 0 {
		t.Errorf("root cgroup: id %d level %d", id, level)
	}
	if _, _, err := cgroupID("/no/such/cgroup"); err == nil {
		t.Error("a missing cgroup resolved")
	}
}

// TestSlotsShared runs the ping-pong with one slot for every thread, so
// all but one of the helper's threads live in the tasks hash: the counts
// stay exact. When the helper is gone, two intervals free the slot and
// empty the hash.
func TestSlotsShared(t *testing.T) {
	testutil.RequireBPF(t)
	c := startHelper(t, "pingpong 5000")
	tr, err := New(Options{PID: c.pid, MaxTasks: 1})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer tr.Close()
	if n := tr.objs.Maps["slots"].MaxEntries(); n != 1 {
		t.Fatalf("%d slots for MaxTasks 1", n)
	}
	s1, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	p1 := [2]procTask{c.proc(c.tids[0]), c.proc(c.tids[1])}
	c.run()
	s2, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	p2 := [2]procTask{c.proc(c.tids[0]), c.proc(c.tids[1])}
	for i, tid := range c.tids {
		a, b := s1.Tasks[uint32(tid)], s2.Tasks[uint32(tid)]
		vol, pvol := b.Voluntary-a.Voluntary, p2[i].vol-p1[i].vol
		if pvol < 1000 || !near(vol, pvol, 0.01, 1) { // 5000 round trips: about half block
			t.Errorf("thread %d: BPF %d voluntary switches, /proc %d", i, vol, pvol)
		}
		if b.CommString() == "" || b.TGID != uint32(c.pid) || b.TID != uint64(tid) {
			t.Errorf("thread %d: entry %d/%d %q, want %d/%d", i, b.TGID, b.TID, b.CommString(), c.pid, tid)
		}
	}
	var inHash int
	var tid uint32
	var val TaskStat
	for it := tr.objs.Maps["tasks"].Iterate(); it.Next(&tid, &val); {
		inHash++
	}
	if inHash == 0 {
		t.Fatal("no thread in the tasks hash with one slot")
	}

	c.stdin.Close()
	c.cmd.Process.Kill()
	c.cmd.Wait()
	for range 2 { // a thread is forgotten after an interval with no change
		if _, err := tr.Frame(time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	left, err := ReadTasks(tr.objs)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("%d threads left after the helper exited (%d were in the hash)", len(left), inHash)
	}
}
