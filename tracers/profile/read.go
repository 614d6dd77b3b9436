package profile

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/symbolize"
)

// Sample is one aggregated stack of one thread on one CPU.
type Sample struct {
	PID, TID, CPU int
	Comm          string            // process name
	Thread        string            // thread name
	User          []symbolize.Frame // leaf first; empty for kernel threads
	Kernel        []symbolize.Frame // leaf first; empty for samples in user mode
	UserLost      bool              // the user stack could not be stored (stack map full or collision)
	KernelLost    bool
	Count         uint64 // samples
	Nanos         uint64 // CPU time the samples stand for (sum of sampling periods)
}

// Lost counts what the kernel side could not keep.
type Lost struct {
	Samples      uint64 `json:"samples"`       // samples map full
	UserStacks   uint64 `json:"user_stacks"`   // stack map full or hash collision
	KernelStacks uint64 `json:"kernel_stacks"` // same, kernel stacks
	LateCaptures uint64 `json:"late_captures"` // processes announced late (symbols read at the end)
}

// Profile is a finished profile.
type Profile struct {
	Start            time.Time
	Duration         time.Duration
	Frequency        int // Hz per CPU
	CPUs             int
	Samples          []Sample
	Lost             Lost          // off-CPU: Samples counts spans lost
	OffCPU           bool          // time blocked (Nanos) per stack, not CPU samples
	MinBlock         time.Duration // off-CPU: shorter spans were left out
	KernelRestricted bool          // /proc/kallsyms reads as zeros: kernel frames unnamed
}

// Total returns the number of samples (off-CPU: of spans).
func (p *Profile) Total() uint64 {
	var n uint64
	for _, s := range p.Samples {
		n += s.Count
	}
	return n
}

// Profile stops sampling and returns the symbolized profile. The tracer
// must still be closed.
func (t *Tracer) Profile() (*Profile, error) {
	t.stop()
	if t.offcpu {
		return t.offCPUProfile()
	}
	p := &Profile{Start: t.start, Duration: t.stopped.Sub(t.start), Frequency: t.freq, CPUs: t.cpus}
	if k, err := t.sym.KernelSymbols(); err == nil && k.Restricted {
		p.KernelRestricted = true
	}
	var perCPU []uint64
	for i, dst := range []*uint64{&p.Lost.Samples, &p.Lost.UserStacks, &p.Lost.KernelStacks, &p.Lost.LateCaptures} {
		if err := t.objs.Maps["lost"].Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read lost counters: %w", err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	readStack := stackReader(t.objs.Maps["stacks"])
	var (
		key profileSampleKey
		val profileSampleValue
	)
	it := t.objs.Maps["samples"].Iterate()
	for it.Next(&key, &val) {
		s := Sample{PID: int(key.Pid), TID: int(key.Tid), CPU: int(key.Cpu),
			Comm: cString(key.Comm[:]), Thread: cString(key.Thread[:]), Count: val.Count, Nanos: val.PeriodNs}
		t.symbolizeStacks(&s, key.Gen, readStack, key.UserStack, key.KernelStack)
		p.Samples = append(p.Samples, s)
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrIterationAborted) {
		return nil, fmt.Errorf("read samples: %w", err)
	}
	return p, nil
}

// stackReader returns a function that reads a stack by id from a stack
// map, with a cache; lost is true when the id says the stack could not be
// stored (any error but EFAULT, which means there is no such stack) or it
// is gone from the map.
func stackReader(stacks *ebpf.Map) func(id int32) (pcs []uint64, lost bool) {
	cache := map[int32][]uint64{}
	return func(id int32) ([]uint64, bool) {
		if id < 0 {
			return nil, id != -int32(unix.EFAULT)
		}
		if s, ok := cache[id]; ok {
			return s, false
		}
		var raw [127]uint64
		if err := stacks.Lookup(uint32(id), &raw); err != nil {
			cache[id] = nil
			return nil, true
		}
		n := 0
		for n < len(raw) && raw[n] != 0 {
			n++
		}
		s := append([]uint64(nil), raw[:n]...)
		cache[id] = s
		return s, false
	}
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// symbolizeStacks reads a sample's user and kernel stacks by their ids and
// names their frames, noting a stack that was lost.
func (t *Tracer) symbolizeStacks(s *Sample, gen uint32, readStack func(int32) ([]uint64, bool), ustackID, kstackID int32) {
	var ustack, kstack []uint64
	ustack, s.UserLost = readStack(ustackID)
	kstack, s.KernelLost = readStack(kstackID)
	if len(ustack) > 0 {
		s.User = t.sym.User(symbolize.Image{PID: s.PID, Gen: gen}, ustack)
	}
	if len(kstack) > 0 {
		s.Kernel = t.sym.Kernel(kstack)
	}
}
