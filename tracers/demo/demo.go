// Package demo is the attach layer's proof: one hook that counts a process's
// IPv4 TCP connect() calls, with fentry, kprobe and tracepoint alternatives.
package demo

import (
	"fmt"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/kernel"
)

// Hooks declares the connect hook, best alternative first.
var Hooks = []attach.Hook{{
	Name: "connect",
	Alternatives: []attach.Alternative{
		{Tier: attach.Fentry, Programs: []string{"connect_fentry"}},
		{Tier: attach.Kprobe, Programs: []string{"connect_kprobe"}, GivesUp: "nothing counted, about twice the cost per call"},
		{Tier: attach.Tracepoint, Programs: []string{"connect_tp_btf"},
			GivesUp: "counts connects that reach SYN_SENT, not those refused by the route lookup"},
		{Tier: attach.Tracepoint, Programs: []string{"connect_raw_tp"},
			GivesUp: "counts connects that reach SYN_SENT, not those refused by the route lookup; reads the socket with probe_read"},
	},
}}

func init() {
	attach.Register(attach.TracerInfo{
		Name: "demo", Summary: "counts connect() calls (attach layer self-test)",
		Spec: loadDemo, Hooks: Hooks, Caps: []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon}, Hidden: true,
	})
}

// Options select what to count.
type Options struct {
	PID  int         // count only this process (0: all)
	Tier attach.Tier // force an attach tier
}

// Tracer counts connect() calls.
type Tracer struct {
	objs *attach.Objects
}

// New loads and attaches the connect hook.
func New(opts Options) (*Tracer, error) {
	spec, err := loadDemo()
	if err != nil {
		return nil, fmt.Errorf("load demo spec: %w", err)
	}
	objs, err := attach.Load(spec, Hooks, attach.Options{
		Tier:      opts.Tier,
		Constants: map[string]any{"targ_tgid": uint32(opts.PID)},
	})
	if err != nil {
		return nil, err
	}
	return &Tracer{objs: objs}, nil
}

// Choice returns how the connect hook was attached.
func (t *Tracer) Choice() attach.Choice {
	c, _ := t.objs.Choice("connect")
	return c
}

// Connects returns the number of connect() calls counted so far.
func (t *Tracer) Connects() (uint64, error) {
	var perCPU []uint64
	if err := t.objs.Maps["connects"].Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read connects: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// Close detaches and frees everything.
func (t *Tracer) Close() error { return t.objs.Close() }
