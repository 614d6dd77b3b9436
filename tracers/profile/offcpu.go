package profile

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nettrace/nettrace/internal/symbolize"
	"github.com/nettrace/nettrace/tracers/sched"
)

// newOffCPU loads the sched tracer's programs with off-CPU stacks on: its
// sched_switch program records the stacks where threads leave the CPU and
// charges each span to them when they come back.
func newOffCPU(opts Options) (_ *Tracer, err error) {
	if opts.MinBlock < 0 {
		return nil, fmt.Errorf("set minimum block time %s: want zero or more", opts.MinBlock)
	}
	objs, err := sched.LoadOffCPU(sched.OffCPUOptions{Tier: opts.Tier, PID: opts.PID, Comm: opts.Comm,
		Cgroup: opts.Cgroup, MinBlock: opts.MinBlock})
	if err != nil {
		return nil, err
	}
	t := &Tracer{objs: objs, sym: symbolize.New(), filter: opts, offcpu: true}
	if _, err := t.begin(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// recaptureDelay is how long after its announcement an off-CPU process is
// read again.
const recaptureDelay = 200 * time.Millisecond

// recapture reads a process's mappings again a little later, unless it
// exited. Off CPU, a process is announced at its first switch, often while
// the dynamic loader is still mapping its libraries (or before exec).
func (t *Tracer) recapture(pid int) {
	t.wg.Add(1)
	time.AfterFunc(recaptureDelay, func() {
		defer t.wg.Done()
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid) + "/maps"); err != nil {
			return
		}
		t.sym.Forget(symbolize.Image{PID: pid})
		_ = t.sym.Capture(symbolize.Image{PID: pid})
	})
}

// offCPUProfile reads the off-CPU aggregate: one Sample per (thread, kernel
// stack, user stack), Nanos the time blocked there, Count the spans. The
// programs stay attached until Close, but the profile ends now.
func (t *Tracer) offCPUProfile() (*Profile, error) {
	if t.stopped.IsZero() {
		t.stopped = time.Now()
	}
	p := &Profile{Start: t.start, Duration: t.stopped.Sub(t.start), CPUs: t.cpus, OffCPU: true, MinBlock: t.filter.MinBlock}
	if k, err := t.sym.KernelSymbols(); err == nil && k.Restricted {
		p.KernelRestricted = true
	}
	var perCPU []uint64
	for i, dst := range []*uint64{&p.Lost.Samples, &p.Lost.UserStacks, &p.Lost.KernelStacks, &p.Lost.LateCaptures} {
		if err := t.objs.Maps["offcpu_lost"].Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read lost counters: %w", err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	// Names of threads and processes, from the sched tracer's task map.
	names := map[uint32]string{}
	tasks, err := sched.ReadTasks(t.objs)
	if err != nil {
		return nil, err
	}
	for tid, ts := range tasks {
		names[tid] = ts.CommString()
	}
	readStack := stackReader(t.objs.Maps["offcpu_stackmap"])
	var (
		key sched.OffCPUKey
		val sched.OffCPUValue
	)
	it := t.objs.Maps["offcpu"].Iterate()
	for it.Next(&key, &val) {
		s := Sample{PID: int(key.Tgid), TID: int(key.Pid), CPU: -1, Thread: names[key.Pid], Count: val.Count, Nanos: val.Ns}
		if s.Comm = names[key.Tgid]; s.Comm == "" {
			s.Comm = s.Thread
		}
		t.symbolizeStacks(&s, 0, readStack, key.Ustack, key.Kstack)
		p.Samples = append(p.Samples, s)
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrIterationAborted) {
		return nil, fmt.Errorf("read off-CPU spans: %w", err)
	}
	return p, nil
}

// Blocked returns the time off CPU in the profile.
func (p *Profile) Blocked() time.Duration {
	var ns uint64
	for _, s := range p.Samples {
		ns += s.Nanos
	}
	return time.Duration(ns)
}

// Summary describes the profile in one line for stderr.
func (p *Profile) Summary() string {
	var b strings.Builder
	if p.OffCPU {
		fmt.Fprintf(&b, "%.3fs off CPU in %d spans over %.1fs", p.Blocked().Seconds(), p.Total(), p.Duration.Seconds())
		if p.MinBlock > 0 {
			fmt.Fprintf(&b, " (spans of %s or more)", p.MinBlock)
		}
	} else {
		fmt.Fprintf(&b, "%d samples in %.1fs on %d CPUs", p.Total(), p.Duration.Seconds(), p.CPUs)
	}
	if l := p.Lost; l != (Lost{}) {
		what := "samples"
		if p.OffCPU {
			what = "spans"
		}
		fmt.Fprintf(&b, " (lost: %d %s, %d user stacks, %d kernel stacks; %d processes captured late)",
			l.Samples, what, l.UserStacks, l.KernelStacks, l.LateCaptures)
	}
	return b.String()
}
