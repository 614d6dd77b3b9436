// Package sched measures, per thread or process, context switches
// (voluntary and involuntary), run-queue delay (from wakeup or preemption
// to running), off-CPU and on-CPU time, from the sched_switch, sched_wakeup
// and sched_wakeup_new tracepoints.
package sched

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/hist"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/tracers/softirq/dist"
)

// NoStateGivesUp is what the switch hook's alternatives for kernels whose
// sched_switch has no prev_state (before 5.18) give up: the kernel refuses
// the others there (tp_btf at load, raw_tp at attach).
const NoStateGivesUp = "nothing measured: sched_switch has no prev_state before Linux 5.18, so a block is told by the task's " +
	"nvcsw, which __schedule raises before the tracepoint (at the first switch of a task already on a CPU when tracing starts, by its state)"

// Hooks declares the scheduler hooks. They exist only as tracepoints.
var Hooks = []attach.Hook{
	{Name: "switch", Alternatives: []attach.Alternative{
		{Tier: attach.Tracepoint, Programs: []string{"sched_switch_btf"}},
		{Tier: attach.Tracepoint, Programs: []string{"sched_switch_btf_nostate"}, GivesUp: NoStateGivesUp},
		{Tier: attach.Tracepoint, Programs: []string{"sched_switch_raw"}, GivesUp: "nothing measured; reads the tasks with probe_read, a little slower"},
		{Tier: attach.Tracepoint, Programs: []string{"sched_switch_raw_nostate"}, GivesUp: "reads the tasks with probe_read, a little slower; " + NoStateGivesUp},
	}},
	{Name: "wakeup", Alternatives: []attach.Alternative{
		{Tier: attach.Tracepoint, Programs: []string{"sched_wakeup_btf", "sched_wakeup_new_btf"}},
		{Tier: attach.Tracepoint, Programs: []string{"sched_wakeup_raw", "sched_wakeup_new_raw"}, GivesUp: "nothing measured; reads the tasks with probe_read, a little slower"},
	}},
}

func init() {
	attach.Register(attach.TracerInfo{
		Name: "sched", Summary: "context switches, run-queue delay, off-CPU and on-CPU time per task",
		Spec: loadSpec, Hooks: Hooks, Caps: []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon},
	})
}

// DefaultMaxTasks bounds the per-thread map.
const DefaultMaxTasks = 16384

// Options select what to trace.
type Options struct {
	Tier     attach.Tier   // force an attach tier
	PID      int           // only this process (0: all)
	Comm     string        // only tasks whose comm contains this (filtered in user space)
	Cgroup   string        // only tasks in this cgroup v2 directory or below it
	Threads  bool          // one row per thread instead of per process
	MinBlock time.Duration // off-CPU spans shorter than this are not counted
	MaxTasks int           // threads tracked at once (DefaultMaxTasks when 0)
	Dist     bool          // Frame returns the run-queue delay histogram instead of task rows

	noCAS bool          // tests: the _nocas programs whatever the kernel has
	hooks []attach.Hook // tests: these instead of Hooks
}

// TaskStat is one thread's cumulative figures, laid out as struct task_stat.
type TaskStat struct {
	TID         uint64 // the thread (in the slots map: 0 = free slot)
	TsOut       uint64 // kernel timestamps
	TsQueued    uint64
	Voluntary   uint64
	Involuntary uint64
	RunqNS      uint64
	OffCPUNS    uint64
	OnCPUNS     uint64
	RunqMaxNS   uint64
	TGID        uint32
	KernelStack int32 // with off-CPU stacks: where it last blocked
	UserStack   int32
	NVCSW       uint32 // without prev_state: 1<<31 | the low 31 bits of its nvcsw at its last switch
	Comm        [16]byte
	Runq        hist.Log2 // microseconds
}

// CommString returns the thread's name.
func (s *TaskStat) CommString() string {
	b := s.Comm[:]
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// Snapshot holds cumulative figures since the tracer started.
type Snapshot struct {
	Time    time.Time
	Tasks   map[uint32]TaskStat // by thread id
	Dropped uint64              // threads not tracked: map full
}

// Tracer measures scheduling.
type Tracer struct {
	objs *attach.Objects
	opts Options
	prev *Snapshot
	ncpu int
	// clockGen is the last generation written to clock_sync.
	clockGen uint32
}

// New loads and attaches the scheduler programs.
func New(opts Options) (*Tracer, error) {
	if opts.MaxTasks <= 0 {
		opts.MaxTasks = DefaultMaxTasks
	}
	spec, consts, err := prepare(opts)
	if err != nil {
		return nil, err
	}
	hooks := Hooks
	if opts.hooks != nil {
		hooks = opts.hooks
		onlyHooked(spec, Hooks, hooks)
	}
	objs, err := attach.Load(spec, hooks, attach.Options{Tier: opts.Tier, Constants: consts})
	if err != nil {
		return nil, err
	}
	t := &Tracer{objs: objs, opts: opts, ncpu: runtime.NumCPU()}
	if t.prev, err = t.Snapshot(); err != nil {
		objs.Close()
		return nil, err
	}
	return t, nil
}

// noCASSuffix ends the names of the programs that claim a thread's slot
// without a compare-and-swap, for kernels that have none (before 5.12).
const noCASSuffix = "_nocas"

// loadSpec returns the sched objects with the programs this kernel loads,
// under the names Hooks give: where it lacks compare-and-swap (before
// 5.12; it refuses any program holding one) the _nocas programs stand in
// for the others, else they are left out. The figures are the same; the
// _nocas programs claim a slot through the slot_claims hash, once per
// thread, which costs a hash update where the others compare-and-swap.
func loadSpec() (*ebpf.CollectionSpec, error) { return loadSpecFor(kernel.Atomics.Has()) }

// loadSpecFor is loadSpec with the compare-and-swap programs (cas) or the
// _nocas ones.
func loadSpecFor(cas bool) (*ebpf.CollectionSpec, error) {
	spec, err := loadSched()
	if err != nil {
		return nil, err
	}
	for name, p := range spec.Programs {
		base, ok := strings.CutSuffix(name, noCASSuffix)
		if !ok {
			continue
		}
		delete(spec.Programs, name)
		if !cas {
			p.Name = base
			spec.Programs[base] = p
		}
	}
	return spec, nil
}

// prepare returns the spec, sized for opts, and the filter constants.
func prepare(opts Options) (*ebpf.CollectionSpec, map[string]any, error) {
	cas := kernel.Atomics.Has() && !opts.noCAS
	spec, err := loadSpecFor(cas)
	if err != nil {
		return nil, nil, fmt.Errorf("load sched spec: %w", err)
	}
	// Threads live in a direct-mapped array of slots (tid & mask); those
	// whose slot another live thread holds overflow into the tasks hash.
	slots := 1
	for slots < opts.MaxTasks {
		slots <<= 1
	}
	spec.Maps["slots"].MaxEntries = uint32(slots)
	if !cas {
		spec.Maps["slot_claims"].MaxEntries = uint32(slots)
	}
	spec.Maps["tasks"].MaxEntries = uint32(max(1024, opts.MaxTasks/4))
	spec.Maps["new_pids"].MaxEntries = uint32(os.Getpagesize())
	consts := map[string]any{
		"slot_mask":    uint32(slots - 1),
		"targ_tgid":    uint32(opts.PID),
		"min_block_ns": uint64(opts.MinBlock.Nanoseconds()),
	}
	if opts.Cgroup != "" {
		id, level, err := cgroupID(opts.Cgroup)
		if err != nil {
			return nil, nil, err
		}
		consts["targ_cgid"], consts["targ_cglevel"] = id, level
	}
	return spec, consts, nil
}

// OffCPUHooks are Hooks plus the exec hook of the off-CPU profiler, which
// makes a process that execs be announced again.
var OffCPUHooks = append(append([]attach.Hook(nil), Hooks...), attach.Hook{
	Name: "exec", Alternatives: []attach.Alternative{
		{Tier: attach.Tracepoint, Programs: []string{"sched_exec_btf"}},
		{Tier: attach.Tracepoint, Programs: []string{"sched_exec_raw"}, GivesUp: "nothing (reads no arguments)"},
	},
})

// OffCPUOptions select what the off-CPU profiler records.
type OffCPUOptions struct {
	Tier      attach.Tier
	PID       int           // only this process (0: all)
	Comm      string        // only processes with this name (the first 15 bytes)
	Cgroup    string        // only tasks in this cgroup v2 directory or below it
	MinBlock  time.Duration // spans shorter than this are not charged
	MaxTasks  int           // threads tracked at once (DefaultMaxTasks when 0)
	MaxStacks int           // distinct stacks (DefaultMaxStacks when 0)
}

// DefaultMaxStacks bounds the off-CPU stack and aggregate maps.
const DefaultMaxStacks = 16384

// OffCPUKey and OffCPUValue are an entry of the off-CPU aggregate ("offcpu"
// map): time spent off CPU by a thread, by where it left the CPU (stack ids
// in the "offcpu_stackmap" map; negative: -errno of bpf_get_stackid,
// -EFAULT for no user stack). "offcpu_lost" counts per CPU what was lost:
// spans (map full), user stacks, kernel stacks (stack map full or hash
// collision), and processes announced late; "new_pids" is the ring buffer
// announcing each process at its first switch, "tasks" names the threads.
type (
	OffCPUKey   = schedOffcpuKey
	OffCPUValue = schedOffcpuVal
)

// CPURun is a CPU's entry in the "running" map: the thread it switched to
// at its last context switch, and when (0: no switch seen yet).
type CPURun = schedCpuRun

// LoadOffCPU loads the scheduler programs with off-CPU stack capture
// (offcpu_stacks) and attaches them: the same sched_switch program as New.
func LoadOffCPU(opts OffCPUOptions) (*attach.Objects, error) {
	if opts.MaxTasks <= 0 {
		opts.MaxTasks = DefaultMaxTasks
	}
	if opts.MaxStacks <= 0 {
		opts.MaxStacks = DefaultMaxStacks
	}
	spec, consts, err := prepare(Options{PID: opts.PID, Cgroup: opts.Cgroup, MinBlock: opts.MinBlock, MaxTasks: opts.MaxTasks})
	if err != nil {
		return nil, err
	}
	spec.Maps["offcpu"].MaxEntries = uint32(4 * opts.MaxStacks)
	spec.Maps["offcpu_stackmap"].MaxEntries = uint32(opts.MaxStacks)
	spec.Maps["seen"].MaxEntries = 8192
	spec.Maps["new_pids"].MaxEntries = uint32(max(64*1024, os.Getpagesize()))
	consts["offcpu_stacks"] = true
	if opts.Comm != "" {
		var c [16]int8
		for i := 0; i < len(opts.Comm) && i < 15; i++ {
			c[i] = int8(opts.Comm[i])
		}
		consts["filter_comm"], consts["targ_comm"] = true, c
	}
	return attach.Load(spec, OffCPUHooks, attach.Options{Tier: opts.Tier, Constants: consts})
}

// onlyHooked removes from spec the programs of all that hooks do not name
// (so that they are not loaded unattached).
func onlyHooked(spec *ebpf.CollectionSpec, all, hooks []attach.Hook) {
	named := map[string]bool{}
	for _, h := range hooks {
		for _, a := range h.Alternatives {
			for _, p := range a.Programs {
				named[p] = true
			}
		}
	}
	for _, h := range all {
		for _, a := range h.Alternatives {
			for _, p := range a.Programs {
				if !named[p] {
					delete(spec.Programs, p)
				}
			}
		}
	}
}

// cgroupID returns the id (inode) of a cgroup v2 directory and its depth
// below the cgroup2 mount; path is absolute or relative to the mount.
func cgroupID(path string) (uint64, uint32, error) {
	root, err := kernel.Cgroup2Path()
	if err != nil {
		return 0, 0, fmt.Errorf("find cgroup2 mount: %w", err)
	}
	if !filepath.IsAbs(path) || !strings.HasPrefix(path, root) {
		path = filepath.Join(root, path)
	}
	rel, err := filepath.Rel(root, path)
	if err != nil || strings.HasPrefix(rel, "..") {
		return 0, 0, fmt.Errorf("resolve cgroup %s: not below %s", path, root)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	level := 0
	if rel != "." {
		level = len(strings.Split(rel, "/"))
	}
	return st.Ino, uint32(level), nil
}

// Tiers returns hook -> attach method.
func (t *Tracer) Tiers() map[string]string { return t.objs.Tiers() }

// Choices returns how each hook was attached.
func (t *Tracer) Choices() []attach.Choice { return t.objs.Choices }

// Programs returns the loaded programs by name (for bpf_stats).
func (t *Tracer) Programs() map[string]*ebpf.Program { return t.objs.Programs }

// Close detaches and frees everything.
func (t *Tracer) Close() error { return t.objs.Close() }

// Snapshot reads the cumulative figures.
func (t *Tracer) Snapshot() (*Snapshot, error) {
	tasks, err := ReadTasks(t.objs)
	if err != nil {
		return nil, err
	}
	s := &Snapshot{Time: time.Now(), Tasks: tasks}
	// The programs add a span when it ends: a thread on a CPU of its own
	// may run for seconds between two switches. Credit the spans under way
	// up to now, as schedstat does; the next snapshot's completed span then
	// adds only the rest.
	var running []CPURun
	if err := t.objs.Maps["running"].Lookup(uint32(0), &running); err != nil {
		return nil, fmt.Errorf("read sched running: %w", err)
	}
	now, ok := t.clockNow(running)
	if err := t.requestClockSync(); err != nil {
		return nil, err
	}
	if ok {
		for _, r := range running {
			if v, ok := s.Tasks[r.Tid]; ok && r.Since != 0 && now > r.Since {
				v.OnCPUNS += now - r.Since
				s.Tasks[r.Tid] = v
			}
		}
		for tid, v := range s.Tasks {
			if v.TsQueued != 0 && now > v.TsQueued {
				v.RunqNS += now - v.TsQueued
				s.Tasks[tid] = v
			}
		}
	}
	var drops []uint64
	if err := t.objs.Maps["dropped"].Lookup(uint32(0), &drops); err != nil {
		return nil, fmt.Errorf("read sched drops: %w", err)
	}
	for _, d := range drops {
		s.Dropped += d
	}
	return s, nil
}

// Row is one process over one interval.
type Row struct {
	PID        uint32  `json:"pid" col:"PID"`
	Comm       string  `json:"comm" col:"COMM"`
	Threads    int     `json:"threads"` // threads seen in the interval
	Voluntary  uint64  `json:"voluntary"`
	VolPS      float64 `json:"voluntary_per_s" col:"VCSW/s,%.0f"`
	Invol      uint64  `json:"involuntary"`
	InvolPS    float64 `json:"involuntary_per_s" col:"ICSW/s,%.0f"`
	RunqP50US  float64 `json:"runq_p50_us" col:"RUNQ P50(us),%.0f"`
	RunqP99US  float64 `json:"runq_p99_us" col:"P99(us),%.0f"`
	RunqMaxUS  float64 `json:"runq_max_us" col:"MAX(us),%.0f"`
	RunqMS     float64 `json:"runq_ms"` // total run-queue delay
	OffCPUMS   float64 `json:"offcpu_ms" col:"OFFCPU(ms),%.0f"`
	OnCPUMS    float64 `json:"oncpu_ms" col:"ONCPU(ms),%.0f"`
	RunqDelays uint64  `json:"runq_delays"` // run-queue waits in the interval
}

// ThreadRow is one thread over one interval (Options.Threads).
type ThreadRow struct {
	TID uint32 `json:"tid" col:"TID"`
	Row
}

// Delta is one thread's figures over an interval.
type Delta struct {
	TID, TGID                         uint32
	Comm                              string
	Voluntary, Involuntary            uint64
	RunqNS, RunqMaxNS, OffNS, OnCPUNS uint64
	Runq                              hist.Log2
}

// Deltas returns each thread's figures between two snapshots (threads with
// no change are left out). RunqMaxNS is the maximum since the thread was
// first seen when it rose in the interval, else 0.
func Deltas(prev, cur *Snapshot) []Delta {
	var out []Delta
	for tid, c := range cur.Tasks {
		p := prev.Tasks[tid]
		if p.TGID != c.TGID || c.Voluntary < p.Voluntary || c.Involuntary < p.Involuntary {
			p = TaskStat{} // tid reused
		}
		d := Delta{
			TID: tid, TGID: c.TGID, Comm: c.CommString(),
			Voluntary: c.Voluntary - p.Voluntary, Involuntary: c.Involuntary - p.Involuntary,
			RunqNS: sub0(c.RunqNS, p.RunqNS), OffNS: c.OffCPUNS - p.OffCPUNS, OnCPUNS: sub0(c.OnCPUNS, p.OnCPUNS),
			Runq: c.Runq.Sub(&p.Runq),
		}
		if c.RunqMaxNS > p.RunqMaxNS {
			d.RunqMaxNS = c.RunqMaxNS
		}
		if d.Voluntary == 0 && d.Involuntary == 0 && d.RunqNS == 0 && d.OnCPUNS == 0 && d.OffNS == 0 {
			continue
		}
		out = append(out, d)
	}
	return out
}

// sub0 is a-b, or 0 when a span credited as under way at the previous
// snapshot (read a moment before the clock) came out a little shorter.
func sub0(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// clockNow returns the programs' clock now: the run queues' clock
// (sched_clock) where the kernel lets them read it, else bpf_ktime_get_ns.
// CLOCK_MONOTONIC less the offset the CPUs last recorded between the two
// (the newest pair); false before any CPU has recorded one.
func (t *Tracer) clockNow(running []CPURun) (uint64, bool) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, false
	}
	var newest CPURun
	for _, r := range running {
		if r.SyncKtime > newest.SyncKtime {
			newest = r
		}
	}
	if newest.SyncKtime == 0 {
		return 0, false
	}
	return uint64(ts.Nano()) - (newest.SyncKtime - newest.SyncClock), true
}

// requestClockSync asks each CPU's next switch to record both clocks.
func (t *Tracer) requestClockSync() error {
	t.clockGen++
	if err := t.objs.Maps["clock_sync"].Update(uint32(0), t.clockGen, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("request sched clock sync: %w", err)
	}
	return nil
}

// Frame returns the figures of the interval since the previous call.
func (t *Tracer) Frame(now time.Time) (output.Frame, error) {
	cur, err := t.Snapshot()
	if err != nil {
		return output.Frame{}, err
	}
	prev := t.prev
	t.prev = cur
	ivl := cur.Time.Sub(prev.Time)
	secs := ivl.Seconds()
	t.forgetExited(prev, cur)

	type agg struct {
		tid  uint32
		row  Row
		runq hist.Log2
		max  uint64
	}
	groups := map[uint64]*agg{}
	var order []uint64
	var (
		runnableNS float64   // on-CPU plus run-queue time of the selection
		sw, invol  uint64    // switches of the selection
		runq       hist.Log2 // run-queue delays of every task traced
	)
	for _, d := range Deltas(prev, cur) {
		runq.Add(&d.Runq)
		if t.opts.Comm != "" && !strings.Contains(d.Comm, t.opts.Comm) {
			continue
		}
		key := uint64(d.TGID)
		if t.opts.Threads {
			key = uint64(d.TGID)<<32 | uint64(d.TID)
		}
		g := groups[key]
		if g == nil {
			g = &agg{tid: d.TID, row: Row{PID: d.TGID, Comm: d.Comm}}
			groups[key] = g
			order = append(order, key)
		}
		if d.TID == d.TGID { // the process is named after its main thread
			g.row.Comm = d.Comm
		}
		g.row.Threads++
		g.row.Voluntary += d.Voluntary
		g.row.Invol += d.Involuntary
		g.row.RunqMS += float64(d.RunqNS) / 1e6
		g.row.OffCPUMS += float64(d.OffNS) / 1e6
		g.row.OnCPUMS += float64(d.OnCPUNS) / 1e6
		g.runq.Add(&d.Runq)
		g.max = max(g.max, d.RunqMaxNS)
		runnableNS += float64(d.OnCPUNS + d.RunqNS)
		sw += d.Voluntary + d.Involuntary
		invol += d.Involuntary
	}
	rows := make([]Row, 0, len(groups))
	var threadRows []ThreadRow
	for _, k := range order {
		g := groups[k]
		r := g.row
		if secs > 0 {
			r.VolPS = float64(r.Voluntary) / secs
			r.InvolPS = float64(r.Invol) / secs
		}
		r.RunqDelays = g.runq.Count()
		r.RunqP50US = g.runq.Quantile(0.5)
		r.RunqP99US = g.runq.Quantile(0.99)
		r.RunqMaxUS = float64(g.max) / 1e3
		if t.opts.Threads {
			threadRows = append(threadRows, ThreadRow{TID: g.tid, Row: r})
			continue
		}
		rows = append(rows, r)
	}

	runnable := 0.0
	if ivl > 0 {
		runnable = runnableNS / float64(ivl.Nanoseconds())
	}
	f := output.Frame{Tracer: "sched", Time: now, Interval: ivl, Tiers: t.Tiers(), Sort: "involuntary_per_s"}
	f.Header = []output.Field{
		{Key: "switches", Value: sw},
		{Key: "switches_per_s", Label: "switches/s", Value: rate(sw, secs), Format: "%.0f"},
		{Key: "involuntary_per_s", Label: "involuntary/s", Value: rate(invol, secs), Format: "%.0f"},
		{Key: "runq_p50_us", Label: "runq p50(us)", Value: runq.Quantile(0.5), Format: "%.0f"},
		{Key: "runq_p99_us", Label: "p99(us)", Value: runq.Quantile(0.99), Format: "%.0f"},
		{Key: "runnable_avg", Label: "runnable avg", Value: runnable, Format: "%.2f"},
		{Key: "cpus", Value: t.ncpu},
		{Key: "tasks_dropped", Label: "tasks dropped", Value: cur.Dropped - prev.Dropped},
	}
	f.Warnings = warnings(sw, invol, runnable, t.ncpu, &runq, cur.Dropped-prev.Dropped, t.opts.MaxTasks)
	if t.opts.Dist {
		f.Rows, f.Sort = dist.Rows("runq", &runq, 1), ""
		return f, nil
	}
	if t.opts.Threads {
		f.Rows = threadRows
		return f, nil
	}
	f.Rows = rows
	return f, nil
}

// forgetExited frees the slots and entries of threads that did nothing in
// the interval and no longer exist, so the bounded maps do not fill with
// the dead.
func (t *Tracer) forgetExited(prev, cur *Snapshot) {
	for tid, c := range cur.Tasks {
		p, ok := prev.Tasks[tid]
		if !ok || p.Voluntary != c.Voluntary || p.Involuntary != c.Involuntary || p.OnCPUNS != c.OnCPUNS {
			continue
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(int(tid))); errors.Is(err, os.ErrNotExist) {
			if err := forget(t.objs, tid); err != nil {
				continue
			}
			delete(cur.Tasks, tid)
		}
	}
}

func rate(n uint64, secs float64) float64 {
	if secs <= 0 {
		return 0
	}
	return float64(n) / secs
}

// Warning thresholds.
const (
	involShare    = 0.5    // involuntary share of the switches
	runqHighP99US = 10_000 // run-queue delay p99 considered high
	minSwitches   = 1000   // switches in an interval before judging
)

func warnings(sw, invol uint64, runnable float64, ncpu int, runq *hist.Log2, dropped uint64, maxTasks int) []output.Warning {
	var ws []output.Warning
	if sw >= minSwitches && float64(invol) >= involShare*float64(sw) && runnable > float64(ncpu) {
		ws = append(ws, output.Warning{
			Code: "too_many_runnable",
			Message: fmt.Sprintf("%.0f%% of %d context switches were preemptions, with %.1f threads runnable on average for %d CPUs",
				float64(invol)/float64(sw)*100, sw, runnable, ncpu),
			Fix: fmt.Sprintf("run fewer worker threads (about %d, one per CPU, for CPU-bound work) or give the service more CPUs", ncpu),
		})
	}
	if p99 := runq.Quantile(0.99); runq.Count() > 0 && p99 >= runqHighP99US {
		ws = append(ws, output.Warning{
			Code:    "runq_delay_high",
			Message: fmt.Sprintf("run-queue delay p99 is %.1f ms: runnable threads wait that long for a CPU", p99/1e3),
			Fix:     "reduce CPU contention: fewer busy threads, CPU limits (cgroup cpu.max) that fit the load, or pin noisy neighbours elsewhere",
		})
	}
	if dropped > 0 {
		ws = append(ws, output.Warning{
			Code:    "tasks_dropped",
			Message: fmt.Sprintf("%d threads were not tracked: the map of %d threads is full", dropped, maxTasks),
			Fix:     fmt.Sprintf("nettrace sched --max-tasks %d, or filter with -p/--cgroup", 4*maxTasks),
		})
	}
	return ws
}
