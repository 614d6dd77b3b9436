package kernel

import (
	"os"
	"strings"
	"testing"
)

func TestProbesThisKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)")
		}
		t.Skip("needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN): run as root")
	}
	got := map[string]Probe{}
	for _, p := range Probes() {
		got[p.Name] = p
		t.Logf("%-10s ok=%-5v %s", p.Name, p.OK, p.Detail)
	}
	// What every kernel nettrace supports has (5.8+; with its own BTF or
	// a --btf file for the types).
	for _, name := range []string{"btf", "raw_tp", "tracepoint", "perf_event", "sockops", "sk_msg", "cgroup2", "ringbuf", "bpf_stats"} {
		if !got[name].OK {
			t.Errorf("probe %s failed: %s", name, got[name].Detail)
		}
	}
	// What needs the kernel's own BTF: there, or refused naming it.
	for _, name := range []string{"tp_btf", "iter_tcp"} {
		switch p := got[name]; {
		case KernelHasBTF() && !p.OK:
			t.Errorf("probe %s failed: %s", name, p.Detail)
		case !KernelHasBTF() && (p.OK || !strings.Contains(p.Detail, "CONFIG_DEBUG_INFO_BTF")):
			t.Errorf("probe %s without kernel BTF: ok=%v %q, want refused naming CONFIG_DEBUG_INFO_BTF", name, p.OK, p.Detail)
		}
	}
	// What the test environment says this kernel must (not) have.
	switch os.Getenv("NETTRACE_EXPECT_TIER") {
	case "fentry": // the Debian 6.1 VM
		for _, name := range []string{"fentry", "kprobe"} {
			if !got[name].OK {
				t.Errorf("probe %s failed on a kernel that must have it: %s", name, got[name].Detail)
			}
		}
	case "kprobe": // arm64 before 6.4 (no BPF trampolines), or a kernel with its BTF hidden (vmtest's second pass)
		if !got["kprobe"].OK {
			t.Errorf("probe kprobe failed on a kernel that must have it: %s", got["kprobe"].Detail)
		}
		if got["fentry"].OK {
			t.Errorf("probe fentry succeeded on a kernel that cannot have it")
		}
	case "tracepoint": // the CI machine: no CONFIG_KPROBES, fentry refused
		for _, name := range []string{"fentry", "kprobe"} {
			if got[name].OK {
				t.Errorf("probe %s succeeded on a kernel that cannot have it", name)
			}
		}
	}
}

func TestResolveSuffixed(t *testing.T) {
	k := &Kallsyms{names: map[string]struct{}{"tcp_v4_connect": {}, "foo.isra.0": {}},
		suffixed: map[string]string{"foo": "foo.isra.0"}}
	for in, want := range map[string]string{"tcp_v4_connect": "tcp_v4_connect", "foo": "foo.isra.0"} {
		got, err := k.Resolve(in)
		if err != nil || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := k.Resolve("nope"); err == nil {
		t.Error("Resolve(nope) succeeded")
	}
}

// TestFeaturesSince checks each feature's oldest kernel against the
// running one: in the VM (stock Debian kernels 5.10, 6.1, 6.12) a feature
// must be there exactly when the kernel is at least as new as Since says.
func TestFeaturesSince(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (CAP_BPF, CAP_PERFMON)")
		}
		t.Skip("needs root (CAP_BPF, CAP_PERFMON): run as root")
	}
	release, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	ver := strings.TrimSpace(string(release))
	if i := strings.IndexAny(ver, "-+"); i >= 0 {
		ver = ver[:i]
	}
	stock := os.Getenv("NETTRACE_VMTEST") == "1"
	for _, f := range Features {
		want := compareVersions(ver, f.Since) >= 0
		t.Logf("%-18s since %-5s has=%-5v %v", f.Name, f.Since, f.Has(), f.Err())
		if stock && f.Has() != want {
			t.Errorf("kernel %s: %s available=%v, but it is %s+ (%v)", ver, f.Name, f.Has(), f.Since, f.Err())
		}
	}
	if !stock {
		t.Log("not a stock kernel (NETTRACE_VMTEST unset): availability logged, not checked against Since")
	}
}
