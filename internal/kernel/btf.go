package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// The kernel's types (BTF), and where nettrace reads them from.
//
// Two uses are told apart. The kernel's types — struct layouts for CO-RE
// relocations, enum values, tracepoint prototypes — come from the kernel's
// own BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y) or, on a
// kernel built without it, from a file: --btf FILE or NETTRACE_BTF, a raw
// .btf as BTFHub ships it or a vmlinux ELF with a .BTF section. Every read
// of the kernel's types goes through Types, and every CO-RE relocation
// through RelocationTypes. What the kernel itself resolves by BTF id needs
// its own BTF, which no file stands in for: tp_btf, fentry/fexit and
// iterator programs (their attach targets), helpers that return or take
// typed pointers (bpf_get_current_task_btf, the bpf_skc_to_* casts, task
// storage), and kfuncs (bpf_rdonly_cast). RequireKernelBTF refuses those
// with one line naming CONFIG_DEBUG_INFO_BTF when KernelHasBTF is false.

// SysfsBTF is where the kernel exposes its own BTF.
const SysfsBTF = "/sys/kernel/btf/vmlinux"

// BTFEnv names the environment variable that gives a BTF file, as --btf
// does.
const BTFEnv = "NETTRACE_BTF"

// BTFSource says where the kernel's types come from.
type BTFSource struct {
	Kind   string `json:"kind"`             // "kernel", "file" or "none"
	Path   string `json:"path,omitempty"`   // the file read
	Origin string `json:"origin,omitempty"` // file: "--btf", "NETTRACE_BTF", or "found" (a vmlinux ELF on the kernel's usual paths)
}

func (s BTFSource) String() string {
	switch s.Kind {
	case "kernel":
		return "kernel (" + s.Path + ")"
	case "file":
		return fmt.Sprintf("file %s (%s)", s.Path, s.Origin)
	}
	return "none"
}

// ErrNoKernelBTF is what RequireKernelBTF's errors match with errors.Is.
var ErrNoKernelBTF = errors.New("kernel has no BTF of its own")

// NoKernelBTFError says that something needs the kernel's own BTF.
type NoKernelBTFError struct {
	What string // "tp_btf", "kfunc bpf_rdonly_cast"
}

func (e *NoKernelBTFError) Error() string {
	return e.What + " needs the kernel's own BTF, which this kernel lacks (no " + SysfsBTF +
		": CONFIG_DEBUG_INFO_BTF=y gives it; a --btf file serves CO-RE relocations only)"
}

// Is makes errors.Is(err, ErrNoKernelBTF) true.
func (e *NoKernelBTFError) Is(target error) bool { return target == ErrNoKernelBTF }

var ownBTF = sync.OnceValue(func() bool {
	_, err := os.Stat(SysfsBTF)
	return err == nil
})

// KernelHasBTF reports whether the kernel exposes its own BTF, which
// tp_btf, fentry, iterators, typed-pointer helpers and kfuncs need.
func KernelHasBTF() bool { return ownBTF() }

// RequireKernelBTF returns a *NoKernelBTFError for what when the kernel
// has no BTF of its own, else nil.
func RequireKernelBTF(what string) error {
	if KernelHasBTF() {
		return nil
	}
	return &NoKernelBTFError{What: what}
}

var btfState struct {
	mu     sync.Mutex
	chosen bool // UseBTFFile was called or the environment read: source is final
	source BTFSource
	spec   *btf.Spec // the types, once loaded
	err    error     // why there are none
}

// UseBTFFile makes the file at path the kernel's types; origin says where
// the path came from ("--btf"). It fails, with the file named, when the
// file cannot be read, holds no BTF, or holds no kernel's types. Call it
// before anything loads BPF; it replaces NETTRACE_BTF.
func UseBTFFile(path, origin string) error {
	spec, err := loadBTFFile(path)
	btfState.mu.Lock()
	defer btfState.mu.Unlock()
	if err != nil {
		return err
	}
	btfState.chosen = true
	btfState.source = BTFSource{Kind: "file", Path: path, Origin: origin}
	btfState.spec, btfState.err = spec, nil
	return nil
}

func loadBTFFile(path string) (*btf.Spec, error) {
	spec, err := btf.LoadSpec(path)
	if err != nil {
		return nil, fmt.Errorf("read BTF file %s: %w (want a raw .btf, as BTFHub ships, or a vmlinux ELF with a .BTF section)", path, err)
	}
	var sk *btf.Struct
	if err := spec.TypeByName("sock", &sk); err != nil {
		return nil, fmt.Errorf("read BTF file %s: no struct sock in it: not a kernel's types (want the BTF of this kernel's vmlinux)", path)
	}
	return spec, nil
}

// vmlinuxPaths are where cilium/ebpf (and libbpf) look for a vmlinux ELF
// when the kernel exposes no BTF; %s is the kernel release.
var vmlinuxPaths = []string{
	"/boot/vmlinux-%s",
	"/lib/modules/%s/vmlinux-%[1]s",
	"/lib/modules/%s/build/vmlinux",
	"/usr/lib/modules/%s/kernel/vmlinux",
	"/usr/lib/debug/boot/vmlinux-%s",
	"/usr/lib/debug/boot/vmlinux-%s.debug",
	"/usr/lib/debug/lib/modules/%s/vmlinux",
}

// chooseBTF settles the source once: NETTRACE_BTF when UseBTFFile was not
// called, else the kernel's own, else a vmlinux on the usual paths.
// Called with btfState.mu held.
func chooseBTF() {
	if btfState.chosen {
		return
	}
	btfState.chosen = true
	if p := os.Getenv(BTFEnv); p != "" {
		btfState.source = BTFSource{Kind: "file", Path: p, Origin: BTFEnv}
		btfState.spec, btfState.err = loadBTFFile(p)
		return
	}
	if KernelHasBTF() {
		btfState.source = BTFSource{Kind: "kernel", Path: SysfsBTF}
		return
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	release := unix.ByteSliceToString(uts.Release[:])
	for _, loc := range vmlinuxPaths {
		p := fmt.Sprintf(loc, release)
		if _, err := os.Stat(p); err == nil {
			btfState.source = BTFSource{Kind: "file", Path: p, Origin: "found"}
			btfState.spec, btfState.err = loadBTFFile(p)
			return
		}
	}
	btfState.source = BTFSource{Kind: "none"}
	btfState.err = errors.New("no kernel types (BTF): no " + SysfsBTF + " and no --btf file: " +
		"build the kernel with CONFIG_DEBUG_INFO_BTF=y, or pass --btf FILE (or NETTRACE_BTF) with this kernel's BTF, e.g. from BTFHub")
}

// BTFInfo says where the kernel's types come from, and why there are none.
func BTFInfo() (BTFSource, error) {
	btfState.mu.Lock()
	defer btfState.mu.Unlock()
	chooseBTF()
	return btfState.source, btfState.err
}

// Types returns the kernel's types: the file given (--btf, NETTRACE_BTF),
// else the kernel's own BTF, else a vmlinux found on the usual paths. Read
// the kernel's types only through it.
func Types() (*btf.Spec, error) {
	btfState.mu.Lock()
	defer btfState.mu.Unlock()
	chooseBTF()
	if btfState.err != nil {
		return nil, btfState.err
	}
	if btfState.spec == nil {
		return ownSpec()
	}
	return btfState.spec, nil
}

// RelocationTypes returns the types CO-RE relocations are resolved
// against, for ebpf.ProgramOptions.KernelTypes: the file given, or nil for
// the kernel's own (which cilium/ebpf reads itself, with its modules'). It
// fails when there are no types at all.
func RelocationTypes() (*btf.Spec, error) {
	btfState.mu.Lock()
	defer btfState.mu.Unlock()
	chooseBTF()
	if btfState.err != nil {
		return nil, btfState.err
	}
	if btfState.source.Kind == "file" {
		return btfState.spec, nil
	}
	return nil, nil
}

var ownSpec = sync.OnceValues(func() (*btf.Spec, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("load kernel BTF: %w", err)
	}
	return spec, nil
})

// OwnTypes returns the kernel's own BTF, for what the kernel resolves
// itself (kfuncs): a *NoKernelBTFError naming what when it has none.
func OwnTypes(what string) (*btf.Spec, error) {
	if err := RequireKernelBTF(what); err != nil {
		return nil, err
	}
	return ownSpec()
}

// btfHelpers are the kernel functions of BPF helpers whose arguments or
// results the verifier types by BTF id: on a kernel without its own BTF it
// refuses a program that calls one. Prefixes of kallsyms names.
var btfHelpers = []string{
	"bpf_get_current_task_btf", "bpf_task_storage_", "bpf_skc_to_", "bpf_sock_from_file",
	"bpf_per_cpu_ptr", "bpf_this_cpu_ptr", "bpf_d_path", "bpf_snprintf_btf", "bpf_seq_printf_btf",
	"bpf_task_pt_regs", "bpf_get_task_stack", "bpf_find_vma", "bpf_kptr_xchg",
	"bpf_cgrp_storage_", "bpf_inode_storage_",
}

// helperAddrs maps the offsets from __bpf_call_base that the kernel's
// verified instructions call helpers with to the names of the btfHelpers;
// nil when kallsyms hides addresses.
var helperAddrs = sync.OnceValue(func() map[int64]string {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return nil
	}
	defer f.Close()
	var base uint64
	named := map[uint64]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 3 || (fs[1] != "t" && fs[1] != "T") {
			continue
		}
		name := fs[2]
		isBase := name == "__bpf_call_base"
		if !isBase && !hasAnyPrefix(name, btfHelpers) {
			continue
		}
		a, err := strconv.ParseUint(fs[0], 16, 64)
		if err != nil || a == 0 {
			continue
		}
		if isBase {
			base = a
		} else {
			named[a] = name
		}
	}
	if base == 0 {
		return nil
	}
	out := make(map[int64]string, len(named))
	for a, n := range named {
		out[int64(a-base)] = n
	}
	return out
})

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// CheckVerified returns a *NoKernelBTFError when the kernel's verified
// instructions of p (after the verifier removed dead code) call a helper
// or a kfunc that needs the kernel's own BTF, and the kernel has none. A
// kernel without BTF refuses such a program itself; this finds it where
// the BTF is hidden from nettrace but not from the verifier (the VM's
// proof of the no-BTF path). Nil when it cannot tell (kallsyms hides
// addresses).
func CheckVerified(p *ebpf.Program) error {
	if KernelHasBTF() {
		return nil
	}
	if call := btfCall(p); call != "" {
		name := "?"
		if info, err := p.Info(); err == nil {
			name = info.Name
		}
		return &NoKernelBTFError{What: "program " + name + " (it calls " + call + ")"}
	}
	return nil
}

// btfCall returns the first helper of btfHelpers, or "a kfunc", that the
// verified instructions of p call; "" for none or when it cannot tell.
func btfCall(p *ebpf.Program) string {
	addrs := helperAddrs()
	if addrs == nil {
		return ""
	}
	info, err := p.Info()
	if err != nil {
		return ""
	}
	insns, err := info.Instructions()
	if err != nil {
		return ""
	}
	for _, ins := range insns {
		switch {
		case ins.IsKfuncCall():
			return "a kfunc"
		case ins.IsBuiltinCall():
			if h, ok := addrs[ins.Constant]; ok {
				return h
			}
		}
	}
	return ""
}
