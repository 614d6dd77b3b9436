package profile

import (
	"fmt"
	"sort"
	"strconv"
	"time"

	pprofile "github.com/google/pprof/profile"

	"github.com/nettrace/nettrace/flamegraph"
	"github.com/nettrace/nettrace/internal/symbolize"
)

// KernelSuffix marks kernel frames in folded stacks, as flamegraph.pl expects.
const KernelSuffix = "_[k]"

// Frames returns a sample's stack root first, as folded stacks have it:
// the process name, user frames, then kernel frames with KernelSuffix.
func (s *Sample) Frames() []string {
	out := make([]string, 0, 1+len(s.User)+len(s.Kernel)+2)
	out = append(out, s.Comm)
	if s.UserLost {
		out = append(out, "[lost user stack]")
	}
	for i := len(s.User) - 1; i >= 0; i-- {
		out = append(out, s.User[i].Name())
	}
	if s.KernelLost {
		out = append(out, "[lost kernel stack]"+KernelSuffix)
	}
	for i := len(s.Kernel) - 1; i >= 0; i-- {
		out = append(out, s.Kernel[i].Name()+KernelSuffix)
	}
	return out
}

// Tree merges the profile's stacks for folded and flame graph output:
// counts are samples, or for an off-CPU profile microseconds blocked (as
// bcc's offcputime -f writes them).
func (p *Profile) Tree() *flamegraph.Tree {
	t := flamegraph.NewTree()
	for i := range p.Samples {
		t.Add(p.Samples[i].Frames(), p.value(&p.Samples[i]))
	}
	return t
}

// value is what a sample weighs in folded stacks and flame graphs.
func (p *Profile) value(s *Sample) int64 {
	if p.OffCPU {
		return int64(s.Nanos / 1000)
	}
	return int64(s.Count)
}

// CountName is the unit of Tree's counts.
func (p *Profile) CountName() string {
	if p.OffCPU {
		return "us"
	}
	return "samples"
}

// Pprof converts the profile to pprof's format: sample types samples/count
// and cpu/nanoseconds; string labels comm (process name), thread (thread
// name) and cpu; numeric labels pid and tid (pprof's encoding drops a
// numeric label of 0, so the CPU number is a string). Kernel frames are in the
// [kernel.kallsyms] mapping.
//
// An off-CPU profile has sample types blocks/count (spans off CPU) and
// off-cpu/nanoseconds (time off CPU, the default), and no cpu label.
func (p *Profile) Pprof() *pprofile.Profile {
	period := int64(time.Second) / int64(max(p.Frequency, 1))
	pp := &pprofile.Profile{
		SampleType:        []*pprofile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		PeriodType:        &pprofile.ValueType{Type: "cpu", Unit: "nanoseconds"},
		Period:            period,
		TimeNanos:         p.Start.UnixNano(),
		DurationNanos:     int64(p.Duration),
		DefaultSampleType: "cpu",
		Comments:          []string{fmt.Sprintf("nettrace profile: cpu-clock at %d Hz on %d CPUs", p.Frequency, p.CPUs)},
	}
	if p.OffCPU {
		pp.SampleType = []*pprofile.ValueType{{Type: "blocks", Unit: "count"}, {Type: "off-cpu", Unit: "nanoseconds"}}
		pp.PeriodType = &pprofile.ValueType{Type: "off-cpu", Unit: "nanoseconds"}
		pp.Period = 1
		pp.DefaultSampleType = "off-cpu"
		pp.Comments = []string{fmt.Sprintf("nettrace profile --off-cpu: time off CPU (sched_switch), spans of at least %s", p.MinBlock)}
	}
	b := newBuilder(pp)
	for i := range p.Samples {
		s := &p.Samples[i]
		ps := &pprofile.Sample{
			Value:    []int64{int64(s.Count), int64(s.Nanos)},
			Label:    map[string][]string{"comm": {s.Comm}, "thread": {s.Thread}, "cpu": {strconv.Itoa(s.CPU)}},
			NumLabel: map[string][]int64{"pid": {int64(s.PID)}, "tid": {int64(s.TID)}},
		}
		if p.OffCPU {
			delete(ps.Label, "cpu")
		}
		if s.KernelLost {
			ps.Location = append(ps.Location, b.location(symbolize.Frame{Func: "[lost kernel stack]", Module: "[kernel.kallsyms]", Kernel: true}))
		}
		for _, f := range s.Kernel {
			ps.Location = append(ps.Location, b.location(f))
		}
		for _, f := range s.User {
			ps.Location = append(ps.Location, b.location(f))
		}
		if s.UserLost {
			ps.Location = append(ps.Location, b.location(symbolize.Frame{Func: "[lost user stack]"}))
		}
		pp.Sample = append(pp.Sample, ps)
	}
	// pprof takes the first mapping for the main binary: keep the kernel last.
	sort.SliceStable(pp.Mapping, func(i, j int) bool {
		return pp.Mapping[i].File != "[kernel.kallsyms]" && pp.Mapping[j].File == "[kernel.kallsyms]"
	})
	return pp
}

type locKey struct {
	module, name string
	kernel       bool
}

type builder struct {
	pp    *pprofile.Profile
	maps  map[string]*pprofile.Mapping
	funcs map[locKey]*pprofile.Function
	locs  map[locKey]*pprofile.Location
}

func newBuilder(pp *pprofile.Profile) *builder {
	return &builder{pp: pp, maps: map[string]*pprofile.Mapping{}, funcs: map[locKey]*pprofile.Function{}, locs: map[locKey]*pprofile.Location{}}
}

// location returns one location per (module, function): addresses differ
// between processes, names do not.
func (b *builder) location(f symbolize.Frame) *pprofile.Location {
	module := f.Module
	if f.Kernel {
		module = "[kernel.kallsyms]"
	}
	key := locKey{module, f.Name(), f.Kernel}
	if l, ok := b.locs[key]; ok {
		return l
	}
	m, ok := b.maps[module]
	if !ok {
		m = &pprofile.Mapping{ID: uint64(len(b.pp.Mapping) + 1), File: module,
			HasFunctions: true, HasFilenames: true, HasLineNumbers: true}
		b.maps[module] = m
		b.pp.Mapping = append(b.pp.Mapping, m)
	}
	fn, ok := b.funcs[key]
	if !ok {
		fn = &pprofile.Function{ID: uint64(len(b.pp.Function) + 1), Name: key.name, SystemName: key.name, Filename: f.File}
		b.funcs[key] = fn
		b.pp.Function = append(b.pp.Function, fn)
	}
	l := &pprofile.Location{ID: uint64(len(b.pp.Location) + 1), Mapping: m,
		Line: []pprofile.Line{{Function: fn, Line: int64(f.Line)}}}
	b.locs[key] = l
	b.pp.Location = append(b.pp.Location, l)
	return l
}

// Top returns the functions with the most samples on-CPU in them (self
// samples, the leaf frame), most first; for an off-CPU profile, the most
// microseconds blocked.
func (p *Profile) Top(n int) []FuncCount {
	m := map[string]uint64{}
	for i := range p.Samples {
		fr := p.Samples[i].Frames()
		m[fr[len(fr)-1]] += uint64(p.value(&p.Samples[i]))
	}
	out := make([]FuncCount, 0, len(m))
	for k, v := range m {
		out = append(out, FuncCount{k, v})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Samples != out[j].Samples {
			return out[i].Samples > out[j].Samples
		}
		return out[i].Func < out[j].Func
	})
	if n > 0 && len(out) > n {
		out = out[:n]
	}
	return out
}

// FuncCount is a function and its self samples.
type FuncCount struct {
	Func    string `json:"func"`
	Samples uint64 `json:"samples"`
}
