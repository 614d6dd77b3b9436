// Package attach loads a tracer's BPF objects and attaches each hook with the
// best method the running kernel accepts.
//
// A hook is declared once with its ordered alternatives: fentry/fexit, then
// kprobe/kretprobe, then a tracepoint (tp_btf, raw_tp or classic) or an
// iterator. The choice is made by really loading and attaching: the maps are
// created once, then for each hook the programs of one alternative are loaded
// on their own (the programs of every other alternative are removed from the
// spec first), so an alternative that cannot verify on this kernel does not
// stop the rest. Each hook reports the method chosen, what it gives up, and
// why every better alternative was refused.
package attach

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/nettrace/nettrace/internal/kernel"
)

// Tier is a family of attach methods, best first.
type Tier string

// The tiers, in the order they are tried.
const (
	Auto       Tier = ""           // try every tier in order
	Fentry     Tier = "fentry"     // fentry/fexit (BPF trampolines): cheapest, typed arguments and return values
	Kprobe     Tier = "kprobe"     // kprobe/kretprobe: any function, about twice fentry's cost per call
	Tracepoint Tier = "tracepoint" // tp_btf, raw_tp, classic tracepoints and iterators: stable, but only where the kernel placed them
)

// Tiers lists the tiers in the order Auto tries them.
var Tiers = []Tier{Fentry, Kprobe, Tracepoint}

// ParseTier parses --attach: auto, fentry, kprobe or tracepoint.
func ParseTier(s string) (Tier, error) {
	switch Tier(s) {
	case "auto", Auto:
		return Auto, nil
	case Fentry, Kprobe, Tracepoint:
		return Tier(s), nil
	}
	return Auto, fmt.Errorf("parse attach tier %q: want auto, fentry, kprobe or tracepoint", s)
}

func (t Tier) String() string {
	if t == Auto {
		return "auto"
	}
	return string(t)
}

// Alternative is one way to implement a hook.
type Alternative struct {
	Tier     Tier
	Programs []string // names of the programs in the CollectionSpec, all attached together
	GivesUp  string   // what this alternative loses against the hook's best one; "" for nothing
	// Method names an alternative that user space serves with no program,
	// or with programs that only assist it ("sock_diag"); "" names it by
	// its programs' attach methods ("none" without programs).
	Method string
}

// Hook is one thing a tracer observes, with its alternatives best first.
type Hook struct {
	Name         string // "connect"
	Alternatives []Alternative
}

// GiveUpBefore returns a copy of hooks where hook's first alternative of
// tier is preceded by alt, an alternative without programs ("none": the
// hook is given up in that tier). Tracers use it to keep the syscall
// tracepoints, which put every system call of every task on the slow
// path, behind an option.
func GiveUpBefore(hooks []Hook, hook string, tier Tier, alt Alternative) []Hook {
	out := slices.Clone(hooks)
	for i, h := range out {
		if h.Name != hook {
			continue
		}
		at := slices.IndexFunc(h.Alternatives, func(a Alternative) bool { return a.Tier == tier })
		if at < 0 {
			continue
		}
		alt.Tier, alt.Programs, alt.Method = tier, nil, ""
		h.Alternatives = slices.Insert(slices.Clone(h.Alternatives), at, alt)
		out[i] = h
	}
	return out
}

// Refusal says why an alternative was not used.
type Refusal struct {
	Tier   Tier   `json:"tier"`
	Method string `json:"method"`
	Err    error  `json:"-"`
	Reason string `json:"reason"`
}

// Choice is the outcome for one hook.
type Choice struct {
	Hook    string    `json:"hook"`
	Tier    Tier      `json:"tier"`
	Method  string    `json:"method"` // "fentry", "kprobe", "tp_btf", "raw_tp", "tracepoint", "iter", joined with "+" when mixed
	GivesUp string    `json:"gives_up,omitempty"`
	Refused []Refusal `json:"refused,omitempty"`
}

func (c Choice) String() string {
	s := fmt.Sprintf("%s: %s (%s)", c.Hook, c.Method, c.Tier)
	if c.GivesUp != "" {
		s += ", gives up: " + c.GivesUp
	}
	return s
}

// Options control Load.
type Options struct {
	// Tier forces a tier for every hook that has an alternative in it
	// (failing when none of those attaches); hooks without one keep their
	// own order. Auto picks the best that works.
	Tier Tier
	// Constants sets `const volatile` globals before loading.
	Constants map[string]any
}

// Objects are the loaded maps and programs of a tracer, with their links.
type Objects struct {
	Maps     map[string]*ebpf.Map
	Programs map[string]*ebpf.Program
	Iters    map[string]*link.Iter // iterator links by program name, to Open() per read
	Choices  []Choice

	base      *ebpf.Collection
	colls     []*ebpf.Collection
	links     []link.Link
	linkFor   []linkOf               // what each link attached
	hookLinks map[string][]link.Link // the links of each hook's choice
}

type linkOf struct{ prog, method string }

// Choice returns the choice made for a hook.
func (o *Objects) Choice(hook string) (Choice, bool) {
	for _, c := range o.Choices {
		if c.Hook == hook {
			return c, true
		}
	}
	return Choice{}, false
}

// Tiers returns hook -> method, for output headers.
func (o *Objects) Tiers() map[string]string {
	m := make(map[string]string, len(o.Choices))
	for _, c := range o.Choices {
		m[c.Hook] = c.Method
	}
	return m
}

// Detach detaches the programs of hook's chosen alternative and keeps them
// loaded, for a tracer that attaches them itself only while it needs them
// (the socket table's sock_diag kprobes).
func (o *Objects) Detach(hook string) error {
	var errs []error
	for _, l := range o.hookLinks[hook] {
		errs = append(errs, l.Close())
		if i := slices.Index(o.links, l); i >= 0 {
			o.links = slices.Delete(o.links, i, i+1)
			o.linkFor = slices.Delete(o.linkFor, i, i+1)
		}
	}
	delete(o.hookLinks, hook)
	return errors.Join(errs...)
}

// Close detaches every link and closes every map and program.
func (o *Objects) Close() error {
	var errs []error
	for i := len(o.links) - 1; i >= 0; i-- {
		errs = append(errs, o.links[i].Close())
	}
	o.links, o.linkFor = nil, nil
	for _, c := range o.colls {
		c.Close()
	}
	o.colls = nil
	if o.base != nil {
		o.base.Close()
		o.base = nil
	}
	return errors.Join(errs...)
}

// Load creates spec's maps, then attaches every hook with the first
// alternative that loads and attaches (only alternatives of opts.Tier when it
// is set). Programs not named by any hook are loaded but not attached. On
// failure everything opened is closed.
//
// CO-RE relocations use the kernel's types from kernel.RelocationTypes (a
// --btf file on a kernel without BTF of its own). On such a kernel an
// alternative that needs the kernel's own BTF (tp_btf, fentry/fexit,
// iterators; a verified program calling a typed-pointer helper) is refused
// with kernel.NoKernelBTFError's line, and such a program that no hook
// names is not loaded.
func Load(spec *ebpf.CollectionSpec, hooks []Hook, opts Options) (_ *Objects, err error) {
	// cilium/ebpf resolves tracefs once per process; mount it first.
	_, _ = kernel.EnsureTracefs()
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	_ = rlimit.RemoveMemlock()
	kernelTypes, err := kernel.RelocationTypes()
	if err != nil {
		return nil, err
	}

	spec = spec.Copy()
	for name, v := range opts.Constants {
		vs, ok := spec.Variables[name]
		if !ok {
			return nil, fmt.Errorf("set constant %s: no such variable in the BPF object", name)
		}
		if err := vs.Set(v); err != nil {
			return nil, fmt.Errorf("set constant %s: %w", name, err)
		}
	}

	inHook := map[string]bool{}
	for _, h := range hooks {
		for _, a := range h.Alternatives {
			for _, p := range a.Programs {
				if _, ok := spec.Programs[p]; !ok {
					return nil, fmt.Errorf("declare hook %s: program %s not in the BPF object", h.Name, p)
				}
				inHook[p] = true
			}
		}
	}

	cache := btf.NewCache()
	baseSpec := spec.Copy()
	for name := range baseSpec.Programs {
		if inHook[name] {
			delete(baseSpec.Programs, name)
		}
	}
	for name, ps := range baseSpec.Programs {
		if needsKernelBTF(ps) != nil {
			// Not attached by a hook, and this kernel could not load
			// it: left out of Objects.Programs.
			delete(baseSpec.Programs, name)
		}
	}
	copts := ebpf.CollectionOptions{Cache: cache, Programs: ebpf.ProgramOptions{KernelTypes: kernelTypes}}
	base, err := ebpf.NewCollectionWithOptions(baseSpec, copts)
	if err != nil {
		return nil, fmt.Errorf("create maps: %w", err)
	}
	o := &Objects{
		Maps:     base.Maps,
		Programs: map[string]*ebpf.Program{},
		Iters:    map[string]*link.Iter{},
		base:     base,
	}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()
	for name, p := range base.Programs {
		if err := kernel.CheckVerified(p); err != nil {
			return nil, fmt.Errorf("load %s: %w", name, err)
		}
		o.Programs[name] = p
	}
	copts.MapReplacements = o.Maps

	for _, h := range hooks {
		c := Choice{Hook: h.Name}
		// A forced tier applies to the hooks that offer it; a hook with no
		// alternative in that tier (one only a tracepoint can serve) keeps
		// its own order.
		forced := Auto
		for _, alt := range h.Alternatives {
			if opts.Tier != Auto && alt.Tier == opts.Tier {
				forced = opts.Tier
			}
		}
		done := false
		for _, alt := range h.Alternatives {
			if forced != Auto && alt.Tier != forced {
				continue
			}
			method := altMethod(spec, alt)
			if err := o.loadAlternative(spec, h.Name, alt, copts); err != nil {
				c.Refused = append(c.Refused, Refusal{Tier: alt.Tier, Method: method, Err: err, Reason: kernel.Explain(method, err)})
				continue
			}
			c.Tier, c.Method, c.GivesUp = alt.Tier, method, alt.GivesUp
			done = true
			break
		}
		if !done {
			return nil, &NoAlternativeError{Hook: h.Name, Tier: forced, Refused: c.Refused}
		}
		o.Choices = append(o.Choices, c)
	}
	return o, nil
}

// KprobeMissed returns, per program attached as a kprobe or kretprobe, how
// many hits of its probe the kernel skipped: a probe hit while another
// probe's handler runs on that CPU (an interrupt's softirq inside a probe on
// a system call path), a return when kretprobe instances run out, or a run
// while another BPF program of the kind runs on that CPU. ok is false where
// the kernel does not count them (kernel.KprobeMissed, 6.7+) and some
// program is attached so.
func (o *Objects) KprobeMissed() (missed map[string]uint64, ok bool, err error) {
	missed = map[string]uint64{}
	for i, l := range o.links {
		lf := o.linkFor[i]
		if lf.method != "kprobe" && lf.method != "kretprobe" {
			continue
		}
		if !kernel.KprobeMissed.Has() {
			return nil, false, nil
		}
		info, err := l.Info()
		if err != nil {
			return nil, false, fmt.Errorf("link info of %s: %w", lf.prog, err)
		}
		if pe := info.PerfEvent(); pe != nil && pe.Kprobe() != nil {
			missed[lf.prog] += pe.Kprobe().Missed
		}
		st, err := o.Programs[lf.prog].Stats()
		if err != nil {
			return nil, false, fmt.Errorf("stats of %s: %w", lf.prog, err)
		}
		missed[lf.prog] += st.RecursionMisses
	}
	return missed, true, nil
}

// NoAlternativeError is returned when no alternative of a hook could be used.
type NoAlternativeError struct {
	Hook    string
	Tier    Tier
	Refused []Refusal
}

func (e *NoAlternativeError) Error() string {
	var parts []string
	for _, r := range e.Refused {
		parts = append(parts, fmt.Sprintf("%s: %s", r.Method, r.Reason))
	}
	what := "no attach method works on this kernel"
	if e.Tier != Auto {
		what = fmt.Sprintf("tier %s is not available on this kernel (try --attach=auto)", e.Tier)
	}
	return fmt.Sprintf("attach hook %s: %s: %s", e.Hook, what, strings.Join(parts, "; "))
}

// Format prints verifier logs with %+v.
func (e *NoAlternativeError) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('+') {
		fmt.Fprintf(f, "attach hook %s:", e.Hook)
		for _, r := range e.Refused {
			fmt.Fprintf(f, "\n  %s: %+v", r.Method, r.Err)
		}
		return
	}
	fmt.Fprint(f, e.Error())
}

// Unwrap gives errors.Is/As access to each refusal.
func (e *NoAlternativeError) Unwrap() []error {
	errs := make([]error, 0, len(e.Refused))
	for _, r := range e.Refused {
		errs = append(errs, r.Err)
	}
	return errs
}

// needsKernelBTF refuses, on a kernel without BTF of its own, a program
// whose attach target the kernel names by BTF id.
func needsKernelBTF(ps *ebpf.ProgramSpec) error {
	switch ps.Type {
	case ebpf.Tracing, ebpf.LSM, ebpf.StructOps:
		return kernel.RequireKernelBTF(Method(ps))
	}
	return nil
}

func (o *Objects) loadAlternative(spec *ebpf.CollectionSpec, hook string, alt Alternative, copts ebpf.CollectionOptions) error {
	s := spec.Copy()
	want := map[string]bool{}
	for _, p := range alt.Programs {
		want[p] = true
		if err := needsKernelBTF(s.Programs[p]); err != nil {
			return err
		}
	}
	for name := range s.Programs {
		if !want[name] {
			delete(s.Programs, name)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(s, copts)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	for _, p := range coll.Programs {
		if err := kernel.CheckVerified(p); err != nil {
			coll.Close()
			return err
		}
	}
	var links []link.Link
	iters := map[string]*link.Iter{}
	for _, name := range alt.Programs {
		l, err := attachProgram(s.Programs[name], coll.Programs[name])
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			coll.Close()
			return err
		}
		links = append(links, l)
		if it, ok := l.(*link.Iter); ok {
			iters[name] = it
		}
	}
	o.colls = append(o.colls, coll)
	o.links = append(o.links, links...)
	for _, name := range alt.Programs {
		o.linkFor = append(o.linkFor, linkOf{name, Method(s.Programs[name])})
	}
	if o.hookLinks == nil {
		o.hookLinks = map[string][]link.Link{}
	}
	o.hookLinks[hook] = links
	for name, p := range coll.Programs {
		o.Programs[name] = p
	}
	for name, it := range iters {
		o.Iters[name] = it
	}
	return nil
}

// Method names how a program attaches: fentry, fexit, tp_btf, iter, kprobe,
// kretprobe, tracepoint, raw_tp.
func Method(p *ebpf.ProgramSpec) string {
	switch p.Type {
	case ebpf.Tracing:
		switch p.AttachType {
		case ebpf.AttachTraceFEntry:
			return "fentry"
		case ebpf.AttachTraceFExit:
			return "fexit"
		case ebpf.AttachTraceRawTp:
			return "tp_btf"
		case ebpf.AttachTraceIter:
			return "iter"
		case ebpf.AttachModifyReturn:
			return "fmod_ret"
		}
	case ebpf.Kprobe:
		if strings.HasPrefix(p.SectionName, "kretprobe") {
			return "kretprobe"
		}
		return "kprobe"
	case ebpf.TracePoint:
		return "tracepoint"
	case ebpf.RawTracepoint:
		return "raw_tp"
	}
	return p.Type.String()
}

func altMethod(spec *ebpf.CollectionSpec, alt Alternative) string {
	if alt.Method != "" {
		return alt.Method
	}
	if len(alt.Programs) == 0 {
		return "none" // the hook is given up in this alternative
	}
	var ms []string
	seen := map[string]bool{}
	for _, name := range alt.Programs {
		m := Method(spec.Programs[name])
		// fentry+fexit and kprobe+kretprobe read as one method.
		m = strings.NewReplacer("fexit", "fentry", "kretprobe", "kprobe").Replace(m)
		if !seen[m] {
			seen[m] = true
			ms = append(ms, m)
		}
	}
	return strings.Join(ms, "+")
}

func attachProgram(ps *ebpf.ProgramSpec, p *ebpf.Program) (link.Link, error) {
	m := Method(ps)
	var (
		l   link.Link
		err error
	)
	switch m {
	case "fentry", "fexit", "tp_btf", "fmod_ret":
		l, err = link.AttachTracing(link.TracingOptions{Program: p})
	case "iter":
		l, err = link.AttachIter(link.IterOptions{Program: p})
	case "kprobe", "kretprobe":
		sym := ps.AttachTo
		if ks, kerr := kernel.LoadKallsyms(); kerr == nil {
			if s, rerr := ks.Resolve(sym); rerr == nil {
				sym = s
			}
		}
		if m == "kprobe" {
			l, err = link.Kprobe(sym, p, nil)
		} else {
			l, err = link.Kretprobe(sym, p, nil)
		}
	case "tracepoint":
		group, name, ok := strings.Cut(ps.AttachTo, "/")
		if !ok {
			return nil, fmt.Errorf("attach tracepoint %q: want group/name", ps.AttachTo)
		}
		l, err = link.Tracepoint(group, name, p, nil)
	case "raw_tp":
		l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: ps.AttachTo, Program: p})
	default:
		return nil, fmt.Errorf("attach %s: program type %s is attached by its tracer, not by a hook", ps.Name, ps.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("attach %s %s: %w", m, ps.AttachTo, err)
	}
	return l, nil
}
