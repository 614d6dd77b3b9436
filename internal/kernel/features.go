package kernel

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// Feature is a BPF facility some tracer's programs use that not every
// supported kernel has. Each is probed once per process by really loading
// (and where it matters attaching) a tiny program or creating a map, as
// the attach probes are; tracers ask Has before choosing a program or an
// alternative, and doctor lists every one.
type Feature struct {
	Name  string // "map_iter"
	What  string // what it is, for doctor
	Since string // the oldest kernel that has it: "5.8"

	once  sync.Once
	probe func() error
	err   error
}

// Err probes the feature once and returns why the kernel lacks it, or nil.
func (f *Feature) Err() error {
	f.once.Do(func() {
		_ = rlimit.RemoveMemlock()
		if err := f.probe(); err != nil {
			f.err = &MissingError{Feature: f, Err: err}
		}
	})
	return f.err
}

// Has reports whether the kernel has the feature.
func (f *Feature) Has() bool { return f.Err() == nil }

// MissingError says that the kernel lacks a feature, and since when
// kernels have it.
type MissingError struct {
	Feature *Feature
	Err     error
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("kernel lacks %s (Linux %s+): %v", e.Feature.What, e.Feature.Since, e.Err)
}

func (e *MissingError) Unwrap() error { return e.Err }

// Features lists every feature in doctor's order; NewFeature adds to it.
var Features []*Feature

// NewFeature declares a feature: probe says why the kernel lacks it.
func NewFeature(name, what, since string, probe func() error) *Feature {
	f := &Feature{Name: name, What: what, Since: since, probe: probe}
	Features = append(Features, f)
	return f
}

// The features, in the order doctor lists them. The oldest kernel is
// x86-64's; arm64's JIT gained some later (atomics: 5.18 on arm64 only
// with LSE, trampolines: 6.0).
var (
	// Atomics: atomic fetch-and-add, exchange and compare-and-exchange
	// (BPF_ATOMIC with BPF_FETCH); plain atomic add is older.
	Atomics = NewFeature("atomics", "BPF atomic fetch, xchg and cmpxchg", "5.12", probeAtomics)
	// HashLookupDelete: BPF_MAP_LOOKUP_AND_DELETE_ELEM on hash maps
	// (queue and stack maps had it before).
	HashLookupDelete = NewFeature("hash_lookup_delete", "lookup-and-delete of one hash map element", "5.14", probeHashLookupDelete)
	// TaskStorage: BPF_MAP_TYPE_TASK_STORAGE for tracing programs.
	TaskStorage = NewFeature("task_storage", "task local storage maps", "5.11", probeTaskStorage)
	// CurrentTaskBTF: the bpf_get_current_task_btf helper (a typed task
	// pointer) in tracing programs.
	CurrentTaskBTF = NewFeature("current_task_btf", "bpf_get_current_task_btf helper", "5.11", probeCurrentTaskBTF)
	// MapIter: iterators over a map's elements (iter/bpf_map_elem,
	// iter/sockmap). Some kernels refuse them while allowing the other
	// iterators (seen: a 6.18 build that answers EPERM).
	MapIter = NewFeature("map_iter", "BPF iterators over map elements (iter/bpf_map_elem, iter/sockmap)", "5.10", probeMapIter)
	// KfreeSkbReason: skb:kfree_skb carries the drop reason.
	KfreeSkbReason = NewFeature("kfree_skb_reason", "drop reason in skb:kfree_skb", "5.17", func() error {
		return btfFuncParam("btf_trace_kfree_skb", "skb_drop_reason")
	})
	// RdonlyCast: the bpf_rdonly_cast kfunc (plain loads through a typed
	// pointer instead of probe reads).
	RdonlyCast = NewFeature("rdonly_cast", "bpf_rdonly_cast kfunc", "6.2", func() error { return btfFunc("bpf_rdonly_cast") })
	// TaskFromPid: the bpf_task_from_pid kfunc.
	TaskFromPid = NewFeature("task_from_pid", "bpf_task_from_pid kfunc", "6.2", func() error { return btfFunc("bpf_task_from_pid") })
)

// FeatureProbes returns the features as doctor's probe rows, oldest kernel
// first.
func FeatureProbes() []Probe {
	fs := slices.Clone(Features)
	slices.SortStableFunc(fs, func(a, b *Feature) int {
		if c := compareVersions(a.Since, b.Since); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	out := make([]Probe, 0, len(fs))
	for _, f := range fs {
		p := Probe{Name: f.Name, What: f.What + ", Linux " + f.Since + "+", OK: f.Has()}
		if err := f.Err(); err != nil {
			var me *MissingError
			if errors.As(err, &me) {
				err = me.Err
			}
			p.Detail = Explain(f.Name, err)
		}
		out = append(out, p)
	}
	return out
}

// probeAtomics loads a socket filter that does what the programs do on an
// array map value: a 64-bit compare-and-exchange (sched claims a slot with
// one), a 64-bit fetch-and-add, a 32-bit exchange and fetch-or. Kernels
// before 5.12 know only the plain atomic add (BPF_XADD, imm 0) and refuse
// any other atomic before verifying ("BPF_STX uses reserved fields").
func probeAtomics() error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create array map: %w", err)
	}
	defer m.Close()
	insns := asm.Instructions{
		asm.Mov.Imm(asm.R0, 0),
		asm.StoreMem(asm.R10, -4, asm.R0, asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Reg(asm.R6, asm.R0),
		asm.Mov.Imm(asm.R1, 1),
		asm.Mov.Imm(asm.R0, 0),
		atomicOp(asm.CmpXchg, asm.R6, asm.R1, asm.DWord, 0),
		atomicOp(asm.FetchAdd, asm.R6, asm.R1, asm.DWord, 0),
		atomicOp(asm.Xchg, asm.R6, asm.R1, asm.Word, 8),
		atomicOp(asm.FetchOr, asm.R6, asm.R1, asm.Word, 12),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, Instructions: insns})
	if err != nil {
		return err
	}
	return p.Close()
}

// atomicOp is op.Mem with the operation in the immediate too: cilium/ebpf
// encodes an atomic's immediate from Instruction.Constant, which Mem leaves
// 0, so op.Mem alone emits a plain atomic add whatever op is (objects read
// from ELF keep their immediate).
func atomicOp(op asm.AtomicOp, dst, src asm.Register, size asm.Size, off int16) asm.Instruction {
	ins := op.Mem(dst, src, size, off)
	ins.Constant = int64(op >> 8)
	return ins
}

func probeHashLookupDelete() error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create hash map: %w", err)
	}
	defer m.Close()
	if err := m.Put(uint32(1), uint32(2)); err != nil {
		return fmt.Errorf("update hash map: %w", err)
	}
	var v uint32
	if err := m.LookupAndDelete(uint32(1), &v); err != nil {
		return fmt.Errorf("lookup and delete: %w", err)
	}
	return nil
}

func probeTaskStorage() error { return features.HaveMapType(ebpf.TaskStorage) }

// probeCurrentTaskBTF loads a tp_btf program on sched_switch that calls
// bpf_get_current_task_btf.
func probeCurrentTaskBTF() error {
	if err := RequireKernelBTF("bpf_get_current_task_btf"); err != nil {
		return err
	}
	insns := asm.Instructions{asm.FnGetCurrentTaskBtf.Call(), asm.Mov.Imm(asm.R0, 0), asm.Return()}
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: "sched_switch", Instructions: insns})
	if err != nil {
		return err
	}
	return p.Close()
}

// btfFunc reports whether the kernel's own BTF has kfunc name (the
// verifier resolves kfuncs by their BTF id there; a --btf file cannot).
func btfFunc(name string) error {
	spec, err := OwnTypes("kfunc " + name)
	if err != nil {
		return err
	}
	var fn *btf.Func
	if err := spec.TypeByName(name, &fn); err != nil {
		return fmt.Errorf("no %s in the kernel's BTF", name)
	}
	return nil
}

// btfFuncParam reports whether typedef name (a tracepoint's btf_trace_*
// function pointer) has a parameter of type enum param (the parameters have
// no names in BTF).
func btfFuncParam(name, param string) error {
	spec, err := Types()
	if err != nil {
		return err
	}
	var td *btf.Typedef
	if err := spec.TypeByName(name, &td); err != nil {
		return fmt.Errorf("no %s in the kernel's BTF", name)
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return fmt.Errorf("%s is not a function pointer", name)
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	if !ok {
		return fmt.Errorf("%s is not a function pointer", name)
	}
	for _, p := range proto.Params {
		if e, ok := btf.UnderlyingType(p.Type).(*btf.Enum); ok && e.Name == param {
			return nil
		}
	}
	return fmt.Errorf("%s has no parameter of type enum %s", name, param)
}

// compareVersions orders kernel versions such as "5.10" and "6.2".
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

func probeMapIter() error {
	if err := RequireKernelBTF("iter/bpf_map_elem"); err != nil {
		return err
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create array map: %w", err)
	}
	defer m.Close()
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceIter, AttachTo: "bpf_map_elem"})
	if err != nil {
		return err
	}
	defer p.Close()
	it, err := link.AttachIter(link.IterOptions{Program: p, Map: m})
	if err != nil {
		return fmt.Errorf("attach iter/bpf_map_elem: %w", err)
	}
	defer it.Close()
	rd, err := it.Open()
	if err != nil {
		return fmt.Errorf("open iter/bpf_map_elem: %w", err)
	}
	defer rd.Close()
	_, err = io.Copy(io.Discard, rd)
	return err
}
