package attach

import (
	"sort"

	"github.com/cilium/ebpf"

	"github.com/nettrace/nettrace/internal/kernel"
)

// TracerInfo describes a tracer for `nettrace doctor`: its hooks, and the
// capabilities it needs.
type TracerInfo struct {
	Name    string                               // "ports"
	Summary string                               // one line
	Spec    func() (*ebpf.CollectionSpec, error) // the generated loadX function
	Hooks   []Hook
	Caps    []kernel.Cap
	Hidden  bool // not a user command (the demo hook)
	// Tracers whose programs are not hooks (sockops, sk_msg) give the method
	// they use and a check that says whether this kernel can run them.
	Method string
	Check  func() error
	// ForKernel, when set, returns the hooks as the tracer attaches them
	// on the running kernel (an alternative given up where it lacks a
	// feature), for doctor's plan; called only when planning.
	ForKernel func([]Hook) []Hook
	// Untiered: the tracer ignores --attach (its alternatives are ways to
	// do one thing, best first); doctor plans it in Auto.
	Untiered bool
}

var registry = map[string]TracerInfo{}

// Register adds a tracer; each tracer package calls it from init.
func Register(t TracerInfo) { registry[t.Name] = t }

// Registered returns the registered tracers sorted by name.
func Registered() []TracerInfo {
	out := make([]TracerInfo, 0, len(registry))
	for _, t := range registry {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Plan loads and attaches a tracer's hooks as it would run, records the
// choices, and detaches again.
func Plan(t TracerInfo, tier Tier) ([]Choice, error) {
	if t.Check != nil {
		if err := t.Check(); err != nil {
			return nil, err
		}
		if len(t.Hooks) == 0 {
			return []Choice{{Hook: t.Name, Method: t.Method}}, nil
		}
	}
	spec, err := t.Spec()
	if err != nil {
		return nil, err
	}
	hooks := t.Hooks
	if t.ForKernel != nil {
		hooks = t.ForKernel(hooks)
	}
	if t.Untiered {
		tier = Auto
	}
	objs, err := Load(spec, hooks, Options{Tier: tier})
	if err != nil {
		return nil, err
	}
	defer objs.Close()
	return objs.Choices, nil
}
