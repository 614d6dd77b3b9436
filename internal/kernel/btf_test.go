package kernel

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (CAP_BPF, CAP_PERFMON)")
		}
		t.Skip("needs root (CAP_BPF, CAP_PERFMON): run as root")
	}
}

// TestBTFFile checks what --btf accepts: a raw .btf or an ELF with .BTF,
// holding a kernel's types; anything else is refused naming the file.
func TestBTFFile(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.txt")
	os.WriteFile(text, []byte("this is a text file, long enough for a BTF header\n"), 0o644)
	for _, c := range []struct{ path, want string }{
		{filepath.Join(dir, "missing.btf"), "no such file"},
		{text, "no valid BTF header"},
		{os.Args[0], "not found"}, // an ELF (this test binary) without .BTF
	} {
		_, err := loadBTFFile(c.path)
		if err == nil || !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("loadBTFFile(%s) = %v; want one line naming the file and %q", c.path, err, c.want)
		}
	}
	src := os.Getenv(BTFEnv)
	if src == "" {
		src = SysfsBTF
	}
	if _, err := os.Stat(src); err != nil {
		t.Skipf("no BTF to read here (%v)", err)
	}
	spec, err := loadBTFFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := spec.AnyTypeByName("tcp_sock"); err != nil {
		t.Errorf("%s: no tcp_sock: %v", src, err)
	}
}

// tinyTaskBTF loads a raw_tp program that calls bpf_get_current_task_btf,
// in live code or (dead) behind a branch the verifier resolves; nil and
// why where the kernel refuses it itself (before 5.11 it has no such
// helper).
func tinyTaskBTF(t *testing.T, dead bool) (*ebpf.Program, error) {
	t.Helper()
	cond := int32(1)
	if dead {
		cond = 0
	}
	insns := asm.Instructions{
		asm.Mov.Imm(asm.R0, 0),
		asm.JEq.Imm(asm.R0, cond, "out"),
		asm.FnGetCurrentTaskBtf.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
	p, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{Type: ebpf.RawTracepoint, Instructions: insns, License: "GPL"},
		ebpf.ProgramOptions{LogDisabled: true})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { p.Close() })
	return p, nil
}

// TestVerifiedCalls checks that btfCall finds a typed-pointer helper in the
// kernel's verified instructions, and not one the verifier removed as dead
// code: what CheckVerified refuses on a kernel without BTF of its own.
func TestVerifiedCalls(t *testing.T) {
	requireRoot(t)
	if helperAddrs() == nil {
		t.Skip("kallsyms hides addresses: verified calls cannot be named")
	}
	live, err := tinyTaskBTF(t, false)
	if err != nil {
		t.Skipf("this kernel refuses bpf_get_current_task_btf in raw_tp itself: %v", err)
	}
	if got := btfCall(live); got != "bpf_get_current_task_btf" {
		t.Errorf("live call: btfCall = %q, want bpf_get_current_task_btf", got)
	}
	dead, err := tinyTaskBTF(t, true)
	if err != nil {
		t.Fatalf("the call in dead code: %v", err)
	}
	if got := btfCall(dead); got != "" {
		t.Errorf("dead call: btfCall = %q, want none", got)
	}
}

// TestNoKernelBTF is the no-BTF proof's check of the switch itself (the
// VM's second pass, NETTRACE_VMTEST_NOBTF=1): the kernel's BTF is hidden,
// the types come from NETTRACE_BTF, and what needs the kernel's own BTF is
// refused with one line naming CONFIG_DEBUG_INFO_BTF. With BTF, the types
// are the kernel's.
func TestNoKernelBTF(t *testing.T) {
	requireRoot(t)
	nobtf := os.Getenv("NETTRACE_VMTEST_NOBTF") == "1"
	src, err := BTFInfo()
	t.Logf("types: %s (%v); kernel BTF: %v", src, err, KernelHasBTF())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Types(); err != nil {
		t.Fatal(err)
	}
	if !nobtf {
		if KernelHasBTF() && os.Getenv(BTFEnv) == "" && src.Kind != "kernel" {
			t.Errorf("kernel with BTF, no file given: types from %s", src)
		}
		if KernelHasBTF() {
			if err := RequireKernelBTF("x"); err != nil {
				t.Errorf("RequireKernelBTF with kernel BTF: %v", err)
			}
			return
		}
	}
	if KernelHasBTF() {
		t.Fatalf("%s is still there: the BTF is not hidden", SysfsBTF)
	}
	if src.Kind != "file" || src.Path != os.Getenv(BTFEnv) || src.Origin != BTFEnv {
		t.Errorf("types from %s, want the file %s (%s)", src, os.Getenv(BTFEnv), BTFEnv)
	}
	if rt, err := RelocationTypes(); rt == nil || err != nil {
		t.Errorf("RelocationTypes = %v, %v; want the file's types", rt, err)
	}
	oneLine := func(what string, err error) {
		t.Helper()
		if err == nil || !errors.Is(err, ErrNoKernelBTF) || !strings.Contains(err.Error(), "CONFIG_DEBUG_INFO_BTF") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v; want one line naming CONFIG_DEBUG_INFO_BTF", what, err)
		}
	}
	oneLine("fentry probe", ProbeFentry(ProbeFunc))
	oneLine("tp_btf probe", ProbeTPBTF("sched_switch"))
	oneLine("iter/tcp probe", ProbeIterTCP())
	for _, f := range []*Feature{CurrentTaskBTF, RdonlyCast, TaskFromPid, MapIter, SkMsgTaskStorage} {
		oneLine(f.Name, f.Err())
	}
	// The verifier here still has the kernel's BTF: a program calling a
	// typed-pointer helper loads, and only CheckVerified refuses it, as a
	// kernel without BTF would.
	if helperAddrs() == nil {
		t.Fatal("kallsyms hides addresses: verified programs cannot be checked")
	}
	if live, err := tinyTaskBTF(t, false); err != nil {
		t.Logf("the kernel refuses bpf_get_current_task_btf itself (before 5.11): nothing for CheckVerified to find: %v", err)
	} else {
		err = CheckVerified(live)
		oneLine("raw_tp calling bpf_get_current_task_btf", err)
		if err != nil && !strings.Contains(err.Error(), "bpf_get_current_task_btf") {
			t.Errorf("refusal does not name the helper: %v", err)
		}
		dead, err := tinyTaskBTF(t, true)
		if err != nil {
			t.Fatalf("the call in dead code: %v", err)
		}
		if err := CheckVerified(dead); err != nil {
			t.Errorf("the same call in dead code: %v", err)
		}
	}
	if p, err := ProbeBTF(); err != nil || !strings.Contains(p, "file "+os.Getenv(BTFEnv)+" ("+BTFEnv+")") || !strings.Contains(p, "CONFIG_DEBUG_INFO_BTF") {
		t.Errorf("doctor's btf row: %q, %v", p, err)
	}
}
