package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nettrace/nettrace/internal/doctor"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/settings"
	"github.com/nettrace/nettrace/internal/testutil"
	"github.com/nettrace/nettrace/tracers/demo"
)

var binary string

// TestMain builds the binary once (or uses $NETTRACE_BIN, as in the VM,
// which has no Go toolchain).
func TestMain(m *testing.M) {
	binary = os.Getenv("NETTRACE_BIN")
	if binary == "" {
		dir, err := os.MkdirTemp("", "nettrace-bin")
		if err != nil {
			panic(err)
		}
		os.Chmod(dir, 0o755) // the non-root test runs it as nobody
		binary = filepath.Join(dir, "nettrace")
		out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
		if err != nil {
			os.Stderr.Write(out)
			panic(err)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

type result struct {
	stdout, stderr string
	code           int
}

func run(t *testing.T, cred *syscall.Credential, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{so.String(), se.String(), code}
}

// oneLineError checks the contract for bad input: non-zero exit, exactly one
// line on stderr that contains want.
func oneLineError(t *testing.T, r result, wantCode int, want string) {
	t.Helper()
	if r.code != wantCode {
		t.Errorf("exit code %d, want %d (stderr %q)", r.code, wantCode, r.stderr)
	}
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], want) {
		t.Errorf("stderr %q: want one line containing %q", r.stderr, want)
	}
	if !strings.HasPrefix(r.stderr, "nettrace: ") {
		t.Errorf("stderr %q does not start with nettrace:", r.stderr)
	}
}

func TestUnknownFlag(t *testing.T) {
	oneLineError(t, run(t, nil, "doctor", "--bogus"), 2, "unknown flag: --bogus")
	oneLineError(t, run(t, nil, "--attach=uprobe", "doctor"), 2, `parse attach tier "uprobe"`)
	oneLineError(t, run(t, nil, "doctor", "-o", "xml"), 2, `unknown output format "xml"`)
	oneLineError(t, run(t, nil, "frobnicate"), 2, `unknown command "frobnicate"`)
}

func TestMissingPID(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	pidMax, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	// PIDs are always below pid_max.
	oneLineError(t, run(t, nil, "doctor", "-p", strconv.Itoa(pidMax)), 2, "process "+strconv.Itoa(pidMax)+" does not exist")
}

func TestNotRoot(t *testing.T) {
	testutil.RequireBPF(t) // needs root to drop to nobody
	r := run(t, &syscall.Credential{Uid: 65534, Gid: 65534}, "doctor")
	oneLineError(t, r, 1, "missing capabilities CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN")
}

// TestDoctor runs doctor on a namespace with the settings of the seed cases
// (nginx capped by somaxconn=10, a 51-port range, tcp_tw_reuse=0) and checks
// the kernel probes against what this kernel must have.
func TestDoctor(t *testing.T) {
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	ns.SetSysctl(t, "net.core.somaxconn", "10")
	ns.SetSysctl(t, "net.ipv4.ip_local_port_range", "20000 20050")
	ns.SetSysctl(t, "net.ipv4.tcp_tw_reuse", "0")

	r := run(t, nil, "doctor", "-o", "json", "--netns", ns.Path())
	if r.code != 0 {
		t.Fatalf("doctor failed (%d): %s", r.code, r.stderr)
	}
	var rep doctor.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("decode doctor JSON: %v\n%s", err, r.stdout)
	}
	probes := map[string]bool{}
	for _, p := range rep.Probes {
		probes[p.Name] = p.OK
	}
	needBTF := []string{"tp_btf", "iter_tcp"} // refused without the kernel's own BTF (TestNoKernelBTFCLI)
	if !kernel.KernelHasBTF() {
		needBTF = nil
	}
	for _, name := range append([]string{"btf", "raw_tp", "tracepoint", "perf_event", "sockops", "sk_msg"}, needBTF...) {
		if !probes[name] {
			t.Errorf("doctor says %s is unavailable", name)
		}
	}
	switch os.Getenv("NETTRACE_EXPECT_TIER") {
	case "fentry":
		if !probes["fentry"] || !probes["kprobe"] {
			t.Errorf("doctor says fentry=%v kprobe=%v on a kernel that has both", probes["fentry"], probes["kprobe"])
		}
	case "kprobe":
		if probes["fentry"] || !probes["kprobe"] {
			t.Errorf("doctor says fentry=%v kprobe=%v on a kernel that has kprobes only", probes["fentry"], probes["kprobe"])
		}
	case "tracepoint":
		if probes["fentry"] || probes["kprobe"] {
			t.Errorf("doctor says fentry=%v kprobe=%v on a kernel that has neither", probes["fentry"], probes["kprobe"])
		}
	}
	var demo *doctor.TracerRow
	for i := range rep.Tracers {
		if rep.Tracers[i].Tracer == "demo" {
			demo = &rep.Tracers[i]
		}
	}
	if demo == nil || demo.Method == "" {
		t.Fatalf("doctor has no attach plan for the demo tracer: %+v", rep.Tracers)
	}
	if want := os.Getenv("NETTRACE_EXPECT_TIER"); want != "" && string(demo.Tier) != want {
		t.Errorf("demo tracer would use tier %s, want %s", demo.Tier, want)
	}

	got := map[string]settings.Setting{}
	for _, s := range rep.Settings.Settings {
		got[s.Name] = s
	}
	for name, want := range map[string]struct{ value, reason, fix string }{
		"net.core.somaxconn":           {"10", "10", "sysctl -w net.core.somaxconn="},
		"net.ipv4.ip_local_port_range": {"20000 20050", "51", "sysctl -w net.ipv4.ip_local_port_range="},
		"net.ipv4.tcp_tw_reuse":        {"0", "TIME_WAIT", "sysctl -w net.ipv4.tcp_tw_reuse=1"},
	} {
		s, ok := got[name]
		if !ok {
			t.Errorf("doctor did not report %s", name)
			continue
		}
		if !strings.HasPrefix(s.Value, want.value) || (s.Status != settings.Warn && s.Status != settings.Bad) ||
			!strings.Contains(s.Reason, want.reason) || !strings.Contains(s.Fix, want.fix) {
			t.Errorf("%s: got %+v; want value %q flagged, reason mentioning %q, fix %q", name, s, want.value, want.reason, want.fix)
		}
	}

	testutil.RequireNoOrphans(t, demoHooks()...)

	// The table form shows the same, with the fixes listed.
	r = run(t, nil, "doctor", "--netns", ns.Path())
	if r.code != 0 {
		t.Fatalf("doctor failed (%d): %s", r.code, r.stderr)
	}
	for _, want := range []string{"Kernel capabilities", "raw_tp", "Tracers", "demo", "net.core.somaxconn", "Fixes", "sysctl -w net.ipv4.tcp_tw_reuse=1"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("doctor table lacks %q", want)
		}
	}
}

func demoHooks() []string {
	var names []string
	for _, h := range demo.Hooks {
		for _, a := range h.Alternatives {
			names = append(names, a.Programs...)
		}
	}
	return names
}
