package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/bundle"
	"github.com/nettrace/nettrace/internal/netns"
	"github.com/nettrace/nettrace/internal/socktable"
	"github.com/nettrace/nettrace/internal/testutil"
	"github.com/nettrace/nettrace/tracers/sched"
	"github.com/nettrace/nettrace/tracers/softirq"
)

// The load client that record tests run as their COMMAND: this test binary
// again, told what to do by the environment (so that two records of the
// same load have the same command line).
const loadEnv = "NETTRACE_TEST_LOAD" // "MODE NETNS HOST:PORT N"

// TestRecordLoadClient is not a test: it is the load client, run by the
// record tests as a child process. It prints what it saw as JSON.
func TestRecordLoadClient(t *testing.T) {
	spec := os.Getenv(loadEnv)
	if spec == "" {
		t.Skip("the record tests' load client; runs only as their child")
	}
	var (
		mode, ns, addr string
		n              int
	)
	if _, err := fmt.Sscan(spec, &mode, &ns, &addr, &n); err != nil {
		t.Fatalf("parse %s=%q: %v", loadEnv, spec, err)
	}
	res := map[string]int{}
	err := netns.Do(ns, func() error {
		switch mode {
		case "connect": // sequential connects, each closed by the client first
			res["ok"], res["failed"] = testutil.ConnectN(t, addr, n)
		case "flood": // n non-blocking connects at once, held for 1.5 s
			_, portStr, _ := strings.Cut(addr, ":")
			port, _ := strconv.Atoi(portStr)
			var fds []int
			for range n {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					return err
				}
				fds = append(fds, fd)
				err = unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
				if err != nil && !errors.Is(err, unix.EINPROGRESS) {
					res["failed"]++
					continue
				}
				res["started"]++
			}
			time.Sleep(1500 * time.Millisecond)
			for _, fd := range fds {
				unix.Close(fd)
			}
		default:
			return fmt.Errorf("unknown mode %q", mode)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A client that closed first is done when the server's FIN has put its
	// sockets in TIME_WAIT: wait for the stragglers (the server is the test
	// process, slow when the machine is loaded).
	for deadline := time.Now().Add(30 * time.Second); mode == "connect"; time.Sleep(20 * time.Millisecond) {
		socks, err := socktable.ReadProc(ns)
		if err != nil {
			t.Fatal(err)
		}
		res["closing"] = 0
		for _, s := range socks {
			if s.State == socktable.FinWait1 || s.State == socktable.FinWait2 || s.State == socktable.Established {
				res["closing"]++
			}
		}
		if res["closing"] == 0 || time.Now().After(deadline) {
			break
		}
	}
	b, _ := json.Marshal(res)
	fmt.Printf("LOAD %s\n", b)
}

// loadCommand is the record command line that runs the load client.
func loadCommand(t *testing.T, mode string, ns *testutil.Netns, addr string, n int) (args, env []string) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{"--", self, "-test.run=^TestRecordLoadClient$", "-test.count=1"},
		[]string{fmt.Sprintf("%s=%s %s %s %d", loadEnv, mode, ns.Path(), addr, n)}
}

// loadResult reads what the load client printed into the bundle.
func loadResult(t *testing.T, dir string) map[string]int {
	t.Helper()
	out, err := os.ReadFile(filepath.Join(dir, bundle.StdoutFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if j, ok := strings.CutPrefix(line, "LOAD "); ok {
			res := map[string]int{}
			if err := json.Unmarshal([]byte(j), &res); err != nil {
				t.Fatalf("load client output %q: %v", line, err)
			}
			return res
		}
	}
	t.Fatalf("the load client printed no result; its stdout:\n%s", out)
	return nil
}

// recordRun runs nettrace record with env added to the command's environment.
func recordRun(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run nettrace: %v", err)
	}
	return r
}

// sumHeader adds a header key over every interval of a tracer.
func sumHeader(t *testing.T, b *bundle.Bundle, tracer, key string) float64 {
	t.Helper()
	var sum float64
	n := 0
	for _, iv := range b.Series[tracer] {
		if v, ok := iv.Number(key); ok {
			sum += v
			n++
		}
	}
	if n == 0 {
		t.Fatalf("%s: no interval has %s", tracer, key)
	}
	return sum
}

// TestRecordBundle records a Go load client's 300 connects into a server in
// a fresh namespace: the bundle has every file, meta.json is complete, and
// the intervals add up to what the client counted.
func TestRecordBundle(t *testing.T) {
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	// No TIME_WAIT reuse: each connection the client closes first leaves
	// exactly one TIME_WAIT behind (with reuse, the default on loopback, a
	// TIME_WAIT taken over within one interval is never seen by a walk).
	ns.SetSysctl(t, "net.ipv4.tcp_tw_reuse", "0")
	ns.KeepTimeWait(t) // CI once saw 299 TIME_WAIT for 300 client-first closes
	var lfd int
	ns.Do(func() error { lfd, _ = testutil.Listen(t, "tcp4", "127.0.0.1:9300", 1024); return nil })
	testutil.Accept(t, lfd, true)

	dir := filepath.Join(t.TempDir(), "run")
	const n = 300
	cmdArgs, env := loadCommand(t, "connect", ns, "127.0.0.1:9300", n)
	args := append([]string{"record", "--out", dir, "--netns", ns.Path(), "-i", "300ms", "--profile", "-d", "120s"}, cmdArgs...)
	r := recordRun(t, env, args...)
	if r.code != 0 {
		t.Fatalf("record exited %d: %s", r.code, r.stderr)
	}
	client := loadResult(t, dir)
	if client["closing"] != 0 {
		t.Fatalf("%d client connections still closing after 30 s: the server did not close its side", client["closing"])
	}
	if client["ok"]+client["failed"] != n || client["ok"] == 0 {
		t.Fatalf("load client saw %v, want %d connects", client, n)
	}

	b, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"meta.json", "settings-before.json", "settings-after.json", "summary.txt",
		"command.stdout", "command.stderr", "profile.pb.gz", "profile.folded", "profile.svg"}
	for _, tr := range []string{"ports", "listen", "softirq", "sched", "timewait"} {
		want = append(want, tr+".ndjson")
		if len(b.Series[tr]) == 0 {
			t.Errorf("%s.ndjson has no intervals", tr)
		}
		if len(b.Meta.Tiers[tr]) == 0 {
			t.Errorf("meta.json has no tiers for %s", tr)
		}
	}
	for _, f := range want {
		if !b.HasFile(f) {
			t.Errorf("meta.json does not list %s (files %v)", f, b.Meta.Files)
		}
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || (st.Size() == 0 && f != "command.stderr") {
			t.Errorf("%s: missing or empty (%v)", f, err)
		}
	}
	m := b.Meta
	if m.Status != bundle.Complete || !m.Complete || m.StopReason != "command exited" {
		t.Errorf("status %q complete %v stop %q, want complete after the command exited", m.Status, m.Complete, m.StopReason)
	}
	if m.ExitCode == nil || *m.ExitCode != 0 || m.CommandPID == 0 || !slices.Equal(m.Command, cmdArgs[1:]) {
		t.Errorf("command %v pid %d exit %v", m.Command, m.CommandPID, m.ExitCode)
	}
	if m.Kernel == "" || m.KernelVersion == "" || m.Host == "" || m.CPUs < 1 || m.NettraceVersion == "" || m.Arch == "" ||
		!m.Start.Before(m.End) || m.DurationS <= 0 || m.IntervalS != 0.3 || m.NetnsPath != ns.Path() || !m.Profile ||
		len(m.Args) < 3 || m.Args[1] != "record" {
		t.Errorf("meta.json incomplete: %+v", m)
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	if m.Kernel != unix.ByteSliceToString(uts.Release[:]) {
		t.Errorf("kernel %q, uname says %q", m.Kernel, uts.Release)
	}
	if b.SettingsBefore == nil || b.SettingsAfter == nil || len(b.SettingsBefore.Settings) == 0 {
		t.Errorf("settings before/after missing")
	}

	// Every connect the client made, in the intervals; and each connection
	// the client closed first left one TIME_WAIT in the namespace.
	if got := sumHeader(t, b, "ports", "connects"); int(got) != n {
		t.Errorf("ports: %v connects over %d intervals, the client made %d", got, len(b.Series["ports"]), n)
	}
	if got := sumHeader(t, b, "timewait", "created"); int(got) != client["ok"] {
		t.Errorf("timewait: %v TIME_WAIT created, the client closed %d connections first", got, client["ok"])
	}
	var secs float64
	for _, iv := range b.Series["ports"] {
		secs += iv.IntervalS
	}
	if d := secs - m.DurationS; d < -0.05 || d > 0.05 {
		t.Errorf("intervals cover %.3fs of a %.3fs record", secs, m.DurationS)
	}
	summary, _ := b.ReadSummary()
	if !strings.Contains(summary, fmt.Sprintf("connects                                   %d", n)) && !strings.Contains(summary, fmt.Sprintf(" %d (", n)) {
		t.Errorf("summary.txt does not show the %d connects:\n%s", n, summary)
	}
	if !strings.Contains(r.stdout, "headline figures") {
		t.Errorf("record printed no summary: %q", r.stdout)
	}
}

// TestRecordCompare records the same load twice, with somaxconn 10 and
// 4096: compare shows the overflow difference and names somaxconn as the
// changed condition.
func TestRecordCompare(t *testing.T) {
	testutil.RequireBPF(t)
	root := t.TempDir()
	record := func(name, somaxconn string) (string, map[string]int) {
		ns := testutil.NewNetns(t)
		ns.SetSysctl(t, "net.core.somaxconn", somaxconn)
		// A server that never accepts: the queue holds somaxconn+1.
		ns.Do(func() error { testutil.Listen(t, "tcp4", "127.0.0.1:9301", 511); return nil })
		dir := filepath.Join(root, name)
		cmdArgs, env := loadCommand(t, "flood", ns, "127.0.0.1:9301", 100)
		args := append([]string{"record", "--out", dir, "--netns", ns.Path(), "--tracers", "listen,ports", "-i", "500ms"}, cmdArgs...)
		if r := recordRun(t, env, args...); r.code != 0 {
			t.Fatalf("record %s exited %d: %s", name, r.code, r.stderr)
		}
		return dir, loadResult(t, dir)
	}
	small, _ := record("small", "10")
	big, _ := record("big", "4096")

	r := run(t, nil, "compare", small, big, "-o", "json", "--flamegraph", "none")
	if r.code != 0 {
		t.Fatalf("compare exited %d: %s", r.code, r.stderr)
	}
	var c struct {
		Figures []struct {
			Key  string
			A, B *float64
		}
		Differ []bundle.Difference     `json:"conditions_differ"`
		Clear  []struct{ Code string } `json:"warnings_cleared"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &c); err != nil {
		t.Fatalf("compare -o json: %v\n%s", err, r.stdout)
	}
	var a, b float64 = -1, -1
	for _, f := range c.Figures {
		if f.Key == "listen_overflows" && f.A != nil && f.B != nil {
			a, b = *f.A, *f.B
		}
	}
	sb, err := bundle.Load(small)
	if err != nil {
		t.Fatal(err)
	}
	if want := sumHeader(t, sb, "listen", "listen_overflows"); a != want || a < 1 || b != 0 {
		t.Errorf("listen overflows A=%v B=%v, want A = its intervals' sum %v > 0 and B = 0", a, b, want)
	}
	if len(c.Differ) != 1 || c.Differ[0].What != "setting net.core.somaxconn" || c.Differ[0].A != "10" || c.Differ[0].B != "4096" {
		t.Errorf("conditions differ: %+v, want only net.core.somaxconn 10 -> 4096", c.Differ)
	}
	cleared := false
	for _, w := range c.Clear {
		cleared = cleared || strings.Contains(w.Code, "somaxconn") || strings.Contains(w.Code, "overflow")
	}
	if !cleared {
		t.Errorf("no overflow or somaxconn warning cleared in B: %+v", c.Clear)
	}

	r = run(t, nil, "compare", small, big, "--flamegraph", "none")
	if r.code != 0 || !strings.Contains(r.stdout, "conditions differ") || !strings.Contains(r.stdout, "setting net.core.somaxconn: 10 -> 4096") ||
		!strings.Contains(r.stdout, "listen overflows") {
		t.Errorf("compare table (exit %d):\n%s%s", r.code, r.stdout, r.stderr)
	}
}

func TestRecordBadInput(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x"), []byte("x"), 0o644)
	oneLineError(t, run(t, nil, "record", "-d", "1s"), 2, "--out DIR is required")
	oneLineError(t, run(t, nil, "record", "--out", filepath.Join(dir, "r"), "--tracers", "ports,bogus"), 2, `unknown tracer "bogus"`)
	oneLineError(t, run(t, nil, "record", "--out", filepath.Join(dir, "r"), "wrk"), 2, "after --")
	oneLineError(t, run(t, nil, "compare", dir), 2, "two record directories")
	oneLineError(t, run(t, nil, "compare", dir, dir), 1, "not a nettrace record")
	if os.Geteuid() != 0 {
		return
	}
	oneLineError(t, run(t, nil, "record", "--out", dir, "-d", "1s"), 1, "exists and is not empty")
	oneLineError(t, run(t, nil, "record", "--out", filepath.Join(dir, "r"), "--", "/no/such/load-generator"), 1, "start command")
	if _, err := os.Stat(filepath.Join(dir, "r")); err == nil {
		t.Errorf("a command that cannot start left a directory behind")
	}
}

// TestRecordInterrupted stops a record with SIGTERM before its duration:
// the bundle is readable and marked incomplete, and nothing stays attached.
func TestRecordInterrupted(t *testing.T) {
	testutil.RequireBPF(t)
	dir := filepath.Join(t.TempDir(), "run")
	cmd := exec.Command(binary, "record", "--out", dir, "--tracers", "sched,softirq", "-i", "200ms", "-d", "60s")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for the first intervals, then stop it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "sched.ndjson"))
		if err == nil && strings.Count(string(b), `"type":"interval"`) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no intervals written: %s", stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	cmd.Process.Signal(unix.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("record after SIGTERM: %v: %s", err, stderr.String())
	}
	b, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if b.Meta.Complete || b.Meta.Status != bundle.Interrupted || len(b.Series["sched"]) < 2 {
		t.Errorf("status %q complete %v, %d sched intervals: want an interrupted, incomplete bundle", b.Meta.Status, b.Meta.Complete, len(b.Series["sched"]))
	}
	testutil.RequireNoOrphans(t, hookPrograms(sched.Hooks, softirq.Hooks)...)
}

// hookPrograms lists every program of every alternative of the hooks.
func hookPrograms(hookSets ...[]attach.Hook) []string {
	var out []string
	for _, hooks := range hookSets {
		for _, h := range hooks {
			for _, a := range h.Alternatives {
				out = append(out, a.Programs...)
			}
		}
	}
	return out
}
