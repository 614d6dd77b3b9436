package kernel

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// ProbeFunc is the kernel function the fentry and kprobe probes attach to.
// It exists on every kernel nettrace supports and is on the connect path.
const ProbeFunc = "tcp_v4_connect"

// Probe is one kernel capability, found by really loading and attaching a
// tiny program (as libbpf-tools' fentry_can_attach and probe_tp_btf do).
type Probe struct {
	Name   string `json:"name"`             // "fentry"
	What   string `json:"what"`             // "fentry/fexit on tcp_v4_connect"
	OK     bool   `json:"ok"`               // available
	Detail string `json:"detail,omitempty"` // value, or why not
}

// Probes runs every probe. It needs root or CAP_BPF+CAP_PERFMON (+CAP_NET_ADMIN
// for sockops/sk_msg); a probe that fails for lack of privilege says so.
func Probes() []Probe {
	// cilium/ebpf looks for tracefs once per process: mount it before any
	// probe asks (a failure shows in the tracepoint probe).
	_, _ = EnsureTracefs()
	_ = rlimit.RemoveMemlock()
	var out []Probe
	add := func(name, what string, fn func() (string, error)) {
		detail, err := fn()
		p := Probe{Name: name, What: what, OK: err == nil, Detail: detail}
		if err != nil {
			p.Detail = Explain(name, err)
		}
		out = append(out, p)
	}
	add("btf", "kernel types (BTF) for CO-RE", ProbeBTF)
	add("fentry", "fentry/fexit on "+ProbeFunc, func() (string, error) { return "", ProbeFentry(ProbeFunc) })
	add("kprobe", "kprobe/kretprobe on "+ProbeFunc, func() (string, error) { return "", ProbeKprobe(ProbeFunc) })
	add("tp_btf", "BTF tracepoint (tp_btf/sched_switch)", func() (string, error) { return "", ProbeTPBTF("sched_switch") })
	add("raw_tp", "raw tracepoint (raw_tp/sched_switch)", func() (string, error) { return "", ProbeRawTP("sched_switch") })
	add("tracepoint", "tracepoint via tracefs (sched/sched_switch)", ProbeTracepoint)
	add("perf_event", "perf_event cpu-clock sampling with a BPF program", func() (string, error) { return "", ProbePerfEvent() })
	add("iter_tcp", "BPF iterator over TCP sockets (iter/tcp)", func() (string, error) { return "", ProbeIterTCP() })
	add("sockops", "sockops program on a cgroup v2", func() (string, error) { return "", ProbeSockops() })
	add("sk_msg", "sk_msg program on a sockhash", func() (string, error) { return "", ProbeSkMsg() })
	add("cgroup2", "cgroup v2 mount point", Cgroup2Path)
	add("bpffs", "BPF file system for pinning (mounted if missing)", EnsureBPFFS)
	add("ringbuf", "BPF ring buffer map", func() (string, error) { return "", features.HaveMapType(ebpf.RingBuf) })
	add("bpf_stats", "per-program run time statistics (bpf_stats)", ProbeBPFStats)
	add("lockdown", "kernel lockdown mode allows tracing", ProbeLockdown)
	add("kallsyms", "kernel symbol addresses readable (/proc/kallsyms)", ProbeKallsyms)
	return append(out, FeatureProbes()...)
}

var retZero = asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}

func loadTiny(spec *ebpf.ProgramSpec) (*ebpf.Program, error) {
	spec.License = "GPL"
	if spec.Instructions == nil {
		spec.Instructions = retZero
	}
	p, err := ebpf.NewProgramWithOptions(spec, ebpf.ProgramOptions{LogDisabled: true})
	if err != nil {
		return nil, fmt.Errorf("load %s program: %w", spec.Type, err)
	}
	return p, nil
}

func attachClose(l link.Link, err error) error {
	if err != nil {
		return err
	}
	return l.Close()
}

// ProbeBTF says where the kernel's types come from (see Types), and what
// is lost when the kernel has no BTF of its own.
func ProbeBTF() (string, error) {
	src, err := BTFInfo()
	if err != nil {
		return "", fmt.Errorf("none: %w", err)
	}
	if _, err := Types(); err != nil {
		return "", fmt.Errorf("%s: %w", src, err)
	}
	detail := src.String()
	if !KernelHasBTF() {
		detail += "; the kernel has no BTF of its own (CONFIG_DEBUG_INFO_BTF unset): no tp_btf, fentry, iterators, typed-pointer helpers or kfuncs, so kprobes, raw_tp and tracepoints serve every hook"
	}
	return detail, nil
}

// ProbeFentry loads and attaches fentry and fexit programs on fn.
func ProbeFentry(fn string) error {
	if err := RequireKernelBTF("fentry"); err != nil {
		return err
	}
	for _, at := range []ebpf.AttachType{ebpf.AttachTraceFEntry, ebpf.AttachTraceFExit} {
		p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: at, AttachTo: fn})
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w (the kernel refuses BPF trampolines; as root this means no ftrace direct calls or a security policy)", err)
		}
		if err != nil {
			return err
		}
		err = attachClose(link.AttachTracing(link.TracingOptions{Program: p}))
		p.Close()
		if err != nil {
			return fmt.Errorf("attach %s to %s: %w", at, fn, err)
		}
	}
	return nil
}

// ProbeKprobe attaches a kprobe and a kretprobe to fn (resolving
// compiler-suffixed names through /proc/kallsyms).
func ProbeKprobe(fn string) error {
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.Kprobe})
	if err != nil {
		return err
	}
	defer p.Close()
	sym := fn
	if ks, err := LoadKallsyms(); err == nil {
		if s, err := ks.Resolve(fn); err == nil {
			sym = s
		}
	}
	if err := attachClose(link.Kprobe(sym, p, nil)); err != nil {
		if !kprobesBuiltIn() {
			return fmt.Errorf("attach kprobe to %s: kernel has no kprobes (CONFIG_KPROBES unset: no kprobe PMU, no kprobe_events): %w", sym, err)
		}
		return fmt.Errorf("attach kprobe to %s: %w", sym, err)
	}
	if err := attachClose(link.Kretprobe(sym, p, nil)); err != nil {
		return fmt.Errorf("attach kretprobe to %s: %w", sym, err)
	}
	return nil
}

// ProbeTPBTF loads and attaches a tp_btf program to tracepoint tp.
func ProbeTPBTF(tp string) error {
	if err := RequireKernelBTF("tp_btf"); err != nil {
		return err
	}
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: tp})
	if err != nil {
		return err
	}
	defer p.Close()
	if err := attachClose(link.AttachTracing(link.TracingOptions{Program: p})); err != nil {
		return fmt.Errorf("attach tp_btf/%s: %w", tp, err)
	}
	return nil
}

// ProbeRawTP loads and attaches a raw_tp program to tracepoint tp.
func ProbeRawTP(tp string) error {
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.RawTracepoint})
	if err != nil {
		return err
	}
	defer p.Close()
	if err := attachClose(link.AttachRawTracepoint(link.RawTracepointOptions{Name: tp, Program: p})); err != nil {
		return fmt.Errorf("attach raw_tp/%s: %w", tp, err)
	}
	return nil
}

// ProbeTracepoint mounts tracefs if needed and attaches to sched/sched_switch.
func ProbeTracepoint() (string, error) {
	path, err := EnsureTracefs()
	if err != nil {
		return "", err
	}
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.TracePoint})
	if err != nil {
		return "", err
	}
	defer p.Close()
	if err := attachClose(link.Tracepoint("sched", "sched_switch", p, nil)); err != nil {
		return "", fmt.Errorf("attach tracepoint sched/sched_switch: %w", err)
	}
	return "tracefs at " + path, nil
}

// ProbePerfEvent opens a cpu-clock perf event on CPU 0 and attaches a
// perf_event program to it.
func ProbePerfEvent() error {
	attr := unix.PerfEventAttr{
		Type:   unix.PERF_TYPE_SOFTWARE,
		Config: unix.PERF_COUNT_SW_CPU_CLOCK,
		Size:   uint32(unsafeSizeofPerfAttr),
		Sample: 99,
		Bits:   unix.PerfBitFreq | unix.PerfBitDisabled,
	}
	fd, err := unix.PerfEventOpen(&attr, -1, 0, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open cpu-clock perf event: %w", err)
	}
	defer unix.Close(fd)
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.PerfEvent})
	if err != nil {
		return err
	}
	defer p.Close()
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: fd, Program: p, Attach: ebpf.AttachPerfEvent})
	if err == nil {
		return l.Close()
	}
	// Kernels before 5.15 have no perf_event links: attach with the ioctl.
	if err2 := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_SET_BPF, p.FD()); err2 != nil {
		return fmt.Errorf("attach BPF to perf event: %w", errors.Join(err, err2))
	}
	return nil
}

// ProbeIterTCP loads an iter/tcp program, attaches it and reads it once.
func ProbeIterTCP() error {
	if err := RequireKernelBTF("iter/tcp"); err != nil {
		return err
	}
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceIter, AttachTo: "tcp"})
	if err != nil {
		return err
	}
	defer p.Close()
	it, err := link.AttachIter(link.IterOptions{Program: p})
	if err != nil {
		return fmt.Errorf("attach iter/tcp: %w", err)
	}
	defer it.Close()
	rd, err := it.Open()
	if err != nil {
		return fmt.Errorf("open iter/tcp: %w", err)
	}
	defer rd.Close()
	if _, err := io.Copy(io.Discard, rd); err != nil {
		return fmt.Errorf("read iter/tcp: %w", err)
	}
	return nil
}

// ProbeSockops attaches a sockops program to a temporary child cgroup.
func ProbeSockops() error {
	root, err := Cgroup2Path()
	if err != nil {
		return err
	}
	dir := filepath.Join(root, fmt.Sprintf("nettrace-probe-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create probe cgroup: %w", err)
	}
	defer os.Remove(dir)
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.SockOps, Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}})
	if err != nil {
		return err
	}
	defer p.Close()
	if err := attachClose(link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: ebpf.AttachCGroupSockOps, Program: p})); err != nil {
		return fmt.Errorf("attach sockops to cgroup: %w", err)
	}
	return nil
}

// ProbeSkMsg attaches an sk_msg verdict program to a sockhash map.
func ProbeSkMsg() error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.SockHash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create sockhash: %w", err)
	}
	defer m.Close()
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.SkMsg, AttachType: ebpf.AttachSkMsgVerdict,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}})
	if err != nil {
		return err
	}
	defer p.Close()
	opts := link.RawAttachProgramOptions{Target: m.FD(), Program: p, Attach: ebpf.AttachSkMsgVerdict}
	if err := link.RawAttachProgram(opts); err != nil {
		return fmt.Errorf("attach sk_msg to sockhash: %w", err)
	}
	if err := link.RawDetachProgram(link.RawDetachProgramOptions{Target: m.FD(), Program: p, Attach: ebpf.AttachSkMsgVerdict}); err != nil {
		return fmt.Errorf("detach sk_msg: %w", err)
	}
	return nil
}

// ProbeBPFStats turns on bpf_stats (run_time_ns/run_cnt) and off again.
func ProbeBPFStats() (string, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return "", fmt.Errorf("enable bpf_stats: %w", err)
	}
	c.Close()
	b, _ := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	return "kernel.bpf_stats_enabled=" + strings.TrimSpace(string(b)), nil
}

// ProbeLockdown reads the lockdown mode; "confidentiality" blocks reading
// kernel memory from BPF and so most tracing.
func ProbeLockdown() (string, error) {
	b, err := os.ReadFile("/sys/kernel/security/lockdown")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "no lockdown LSM (or securityfs not mounted)", nil
		}
		return "", fmt.Errorf("read lockdown mode: %w", err)
	}
	mode := strings.TrimSpace(string(b))
	if i := strings.IndexByte(mode, '['); i >= 0 {
		if j := strings.IndexByte(mode[i:], ']'); j > 0 {
			mode = mode[i+1 : i+j]
		}
	}
	if mode == "confidentiality" {
		return "", fmt.Errorf("lockdown=confidentiality: BPF cannot read kernel memory; boot with lockdown=integrity or none")
	}
	return "lockdown=" + mode, nil
}

// ProbeKallsyms checks that /proc/kallsyms shows real addresses, which kernel
// stack symbolization needs.
func ProbeKallsyms() (string, error) {
	k, err := LoadKallsyms()
	if err != nil {
		return "", err
	}
	b, _ := os.ReadFile("/proc/sys/kernel/kptr_restrict")
	kr := strings.TrimSpace(string(b))
	if k.Restricted {
		return "", fmt.Errorf("all addresses read as zero (kernel.kptr_restrict=%s): kernel frames cannot be named; run as root or set kernel.kptr_restrict=0", kr)
	}
	return "kernel.kptr_restrict=" + kr, nil
}

// kprobesBuiltIn reports whether the kernel has kprobe support at all.
func kprobesBuiltIn() bool {
	for _, p := range []string{"/sys/bus/event_source/devices/kprobe", TracefsPath + "/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events"} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// Explain turns an attach failure into a short reason a user can act on,
// naming what the kernel lacks where that is known.
func Explain(method string, err error) string {
	switch {
	case errors.Is(err, ErrNoKernelBTF):
		var nb *NoKernelBTFError
		if errors.As(err, &nb) {
			return nb.Error()
		}
		return err.Error()
	case strings.Contains(method, "kprobe") && !kprobesBuiltIn():
		return "kernel has no kprobes (CONFIG_KPROBES unset)"
	case (method == "fentry" || method == "fexit") && errors.Is(err, unix.EPERM):
		return "kernel refuses BPF trampolines (fentry/fexit load fails with EPERM)"
	case (method == "fentry" || method == "fexit") && errors.Is(err, ebpf.ErrNotSupported):
		return "kernel cannot attach BPF trampolines on this architecture (fentry/fexit: x86-64 5.5+, arm64 6.4+)"
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
		return "permission denied: " + err.Error()
	}
	return err.Error()
}
