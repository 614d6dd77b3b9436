package ports

import (
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/testutil"
)

// atomicOps counts the BPF atomic instructions other than a plain add (the
// one older kernels have) in insns.
func atomicOps(insns asm.Instructions) int {
	n := 0
	for _, ins := range insns {
		if op := ins.OpCode.AtomicOp(); op != asm.InvalidAtomic && op != asm.AddAtomic {
			n++
		}
	}
	return n
}

// loadedAtomicOps counts them in the programs the tracer attached, as the
// kernel holds them.
func loadedAtomicOps(t *testing.T, tr *Tracer) map[string]int {
	t.Helper()
	out := map[string]int{}
	for name, p := range tr.objs.Programs {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		insns, err := info.Instructions()
		if err != nil {
			t.Fatalf("%s: instructions: %v", name, err)
		}
		out[name] = atomicOps(insns)
	}
	return out
}

// TestKernelSpec: kernelSpec gives each kernel programs it can load: the
// variants without BPF atomics under the usual names where the kernel lacks
// them (the rest where it has them), and the sysc map as task storage or as
// the hash keyed by thread id. In the VM, 5.10 lacks both and the newer
// kernels have both, so the matrix runs every test on both sets.
func TestKernelSpec(t *testing.T) {
	testutil.RequireBPF(t)
	atomics, storage := kernel.Atomics.Has(), hasTaskStorage()
	t.Logf("atomics %v (%v), task storage %v", atomics, kernel.Atomics.Err(), storage)
	switch os.Getenv("NETTRACE_VMTEST_KERNEL") {
	case "5.10":
		if atomics || storage {
			t.Errorf("5.10: atomics %v, task storage %v; want neither", atomics, storage)
		}
	case "6.1", "6.12":
		if !atomics || !storage {
			t.Errorf("%s: atomics %v, task storage %v; want both", os.Getenv("NETTRACE_VMTEST_KERNEL"), atomics, storage)
		}
	}
	spec, err := kernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range Hooks {
		for _, a := range h.Alternatives {
			for _, name := range a.Programs {
				if _, ok := spec.Programs[name]; !ok {
					t.Errorf("hook %s: no program %s", h.Name, name)
				}
			}
		}
	}
	withAtomics := 0
	for name, p := range spec.Programs {
		if strings.HasSuffix(name, noAtomics) || p.Name != name {
			t.Errorf("program %s (named %s) in the spec", name, p.Name)
		}
		n := atomicOps(p.Instructions)
		if n > 0 {
			withAtomics++
		}
		if n > 0 && !atomics {
			t.Errorf("%s: %d atomic instructions on a kernel without BPF atomics", name, n)
		}
	}
	if atomics && withAtomics == 0 {
		t.Errorf("the kernel has BPF atomics but no program uses them: the variants for older kernels were loaded")
	}
	var ts uint32
	if err := spec.Variables["task_storage"].Get(&ts); err != nil {
		t.Fatal(err)
	}
	wantType, wantTS := ebpf.TaskStorage, uint32(1)
	if !storage {
		wantType, wantTS = ebpf.Hash, 0
	}
	if m := spec.Maps["sysc"]; m.Type != wantType || ts != wantTS {
		t.Errorf("sysc is %s with task_storage = %d; want %s and %d", m.Type, ts, wantType, wantTS)
	}
}

// olderKernel makes kernelSpec choose the programs for a kernel without
// task storage and BPF atomics (5.10) for the rest of the test.
func olderKernel(t *testing.T) {
	savedTS, savedAtomics := hasTaskStorage, hasAtomics
	t.Cleanup(func() { hasTaskStorage, hasAtomics = savedTS, savedAtomics })
	hasTaskStorage = func() bool { return false }
	hasAtomics = func() bool { return false }
}

// TestOlderKernelPrograms runs the programs for kernels without task
// storage and BPF atomics on this one, in every tier it has: exact counts
// for connects that succeed, are refused (also after connect() returned
// EINPROGRESS, answered from the timer on any CPU), fail before a SYN, and
// are restarted after a signal, and no atomic instruction in what the
// kernel loaded. On a kernel that lacks both, every test runs them.
func TestOlderKernelPrograms(t *testing.T) {
	testutil.RequireBPF(t)
	if !kernel.Atomics.Has() && !hasTaskStorage() {
		t.Skip("this kernel has neither task storage nor BPF atomics: every test runs these programs")
	}
	olderKernel(t)
	check := func(t *testing.T, tr *Tracer) {
		t.Helper()
		if m := tr.objs.Maps["sysc"]; m.Type() != ebpf.Hash {
			t.Errorf("sysc is %s, want the hash", m.Type())
		}
		for name, n := range loadedAtomicOps(t, tr) {
			if n > 0 {
				t.Errorf("%s: %d atomic instructions loaded", name, n)
			}
		}
	}
	tiers(t, func(t *testing.T, tier attach.Tier) {
		ns := testutil.NewNetns(t)
		tr := newTracerOpts(t, ns, Options{Tier: tier, Syscalls: true})
		check(t, tr)
		connectMix(t, tr, ns, 8095, true)
		asyncOutcome(t, Options{Tier: tier, Syscalls: true})
		restartedConnect(t, Options{Tier: tier, Syscalls: true})
	})
	t.Run("tracepoint-state-only", func(t *testing.T) {
		ns := testutil.NewNetns(t)
		tr := newTracerOpts(t, ns, Options{Tier: attach.Tracepoint})
		check(t, tr)
		connectMix(t, tr, ns, 8097, false)
		asyncOutcome(t, Options{Tier: attach.Tracepoint})
		restartedConnect(t, Options{Tier: attach.Tracepoint})
	})
}
