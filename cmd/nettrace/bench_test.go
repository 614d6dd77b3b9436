package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/testutil"
	"github.com/nettrace/nettrace/tracers/redirect"
	"github.com/nettrace/nettrace/tracers/redirect/bench"
)

func TestBenchBadSizes(t *testing.T) {
	oneLineError(t, run(t, nil, "bench", "loopback", "--sizes", "64,2g"), 2, `"2g" is not a size`)
	oneLineError(t, run(t, nil, "bench", "loopback", "--cgroup", "/x"), 2, "--cgroup needs --redirect")
}

// JSON and table from real loopback traffic in a fresh namespace: every
// byte the clients sent was checked.
func TestBenchLoopbackCLI(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t)
	d := "150ms"
	if os.Getenv("NETTRACE_VMTEST") == "1" {
		d = "1s" // under TCG, 150 ms once ended before the first round trip
	}
	r := run(t, nil, "bench", "loopback", "--netns", ns.Path(), "-d", d, "--sizes", "64,2k", "-o", "json")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var rep bench.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("-o json: %v (%q)", err, r.stdout)
	}
	if len(rep.Results) != 2 || rep.Results[0].Size != 64 || rep.Results[1].Size != 2048 {
		t.Fatalf("results %+v", rep.Results)
	}
	for _, res := range rep.Results {
		f := res.Plain
		if f.RoundTrips == 0 || f.StreamBytes == 0 || f.CheckedBytes != 2*f.RoundTrips*int64(res.Size)+f.StreamBytes {
			t.Errorf("size %d: %+v", res.Size, f)
		}
	}
	r = run(t, nil, "bench", "loopback", "--netns", ns.Path(), "-d", "100ms", "--sizes", "1k")
	if r.code != 0 || !strings.Contains(r.stdout, "SIZE") || !strings.Contains(r.stdout, "\n1K ") {
		t.Errorf("table: %d %q %q", r.code, r.stdout, r.stderr)
	}
}

// Ctrl-C while redirected: non-zero exit, and no cgroup, pins or programs
// left behind.
func TestBenchRedirectInterrupt(t *testing.T) {
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	if !redirectRuns(t, "bench", "loopback", "--redirect", "--netns", ns.Path(), "-d", "50ms", "--sizes", "64") {
		return
	}
	cmd := exec.Command(binary, "bench", "loopback", "--redirect", "--netns", ns.Path(), "-d", "1s", "--sizes", "1k")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitRedirect(t, cmd.Process.Pid)
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Errorf("interrupted bench exited 0")
	}
	root, err := kernel.Cgroup2Path()
	if err != nil {
		t.Fatal(err)
	}
	pid := fmt.Sprint(cmd.Process.Pid)
	for _, p := range []string{filepath.Join(root, "nettrace-bench-"+pid), filepath.Join(kernel.BPFFSPath, "nettrace", "bench-"+pid)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind after Ctrl-C (%v)", p, err)
		}
	}
	testutil.RequireNoOrphansBeside(t, kernel.BPFFSPath, filepath.Join(kernel.BPFFSPath, "nettrace", "bench-"+pid), "redirect_sockops", "redirect_msg", "redirect_splice", "redirect_send_done")
}

// SIGKILL leaves the redirect pinned on the benchmark's cgroup; the next
// `bench loopback --redirect` removes it.
func TestBenchRedirectKilled(t *testing.T) {
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	if !redirectRuns(t, "bench", "loopback", "--redirect", "--netns", ns.Path(), "-d", "50ms", "--sizes", "64") {
		return
	}
	cmd := exec.Command(binary, "bench", "loopback", "--redirect", "--netns", ns.Path(), "-d", "1s", "--sizes", "1k")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitRedirect(t, cmd.Process.Pid)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	root, err := kernel.Cgroup2Path()
	if err != nil {
		t.Fatal(err)
	}
	pid := fmt.Sprint(cmd.Process.Pid)
	cg, pins := filepath.Join(root, "nettrace-bench-"+pid), filepath.Join(kernel.BPFFSPath, "nettrace", "bench-"+pid)
	if st, err := redirect.ReadStatus(pins); err != nil || !st.Enabled || st.Cgroup != cg {
		t.Fatalf("after SIGKILL: status %+v, %v; want enabled on %s", st, err, cg)
	}
	if r := run(t, nil, "bench", "loopback", "--redirect", "--netns", ns.Path(), "-d", "50ms", "--sizes", "64"); r.code != 0 {
		t.Fatalf("next run: %d %s", r.code, r.stderr)
	}
	for _, p := range []string{cg, pins} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind after the next run (%v)", p, err)
		}
	}
	testutil.RequireNoOrphansBeside(t, kernel.BPFFSPath, pins, "redirect_sockops", "redirect_msg", "redirect_splice", "redirect_send_done")
}

// waitRedirect waits until the benchmark of pid has redirect enabled (its
// redirected half), for at most 20s.
func waitRedirect(t *testing.T, pid int) {
	t.Helper()
	pins := filepath.Join(kernel.BPFFSPath, "nettrace", fmt.Sprintf("bench-%d", pid))
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if st, err := redirect.ReadStatus(pins); err == nil && st.Enabled {
			time.Sleep(100 * time.Millisecond) // into the traffic
			return
		}
	}
	t.Fatalf("benchmark %d never enabled redirect", pid)
}
