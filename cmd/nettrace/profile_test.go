package main

import (
	"bufio"
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pprofile "github.com/google/pprof/profile"

	"github.com/nettrace/nettrace/internal/testutil"
)

func TestProfileBadInput(t *testing.T) {
	oneLineError(t, run(t, nil, "profile", "-o", "out.png"), 2, "unknown output")
	oneLineError(t, run(t, nil, "profile", "-F", "0"), 2, "invalid frequency")
	oneLineError(t, run(t, nil, "profile", "-p", "999999999"), 2, "does not exist")
	oneLineError(t, run(t, nil, "profile", "--http", "127.0.0.1:x:y"), 2, "parse HTTP address")
	oneLineError(t, run(t, nil, "profile", "--cgroup", "/nonexistent-nettrace"), 2, "stat cgroup")
}

func TestFlamegraphBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.folded")
	os.WriteFile(bad, []byte("a;b 1\na;b 2\na;c x\n"), 0o644)
	oneLineError(t, run(t, nil, "flamegraph", bad), 2, "line 3: parse count")
	oneLineError(t, run(t, nil, "flamegraph", "--diff", bad), 2, "--diff takes two profiles")
	oneLineError(t, run(t, nil, "flamegraph", "--colors", "plaid", bad), 2, "unknown palette")
	oneLineError(t, run(t, nil, "flamegraph", "--negate", bad), 2, "need --diff")
	oneLineError(t, run(t, nil, "flamegraph", filepath.Join(dir, "missing")), 2, "open")
}

func TestFlamegraphCommand(t *testing.T) {
	dir := t.TempDir()
	before, after := filepath.Join(dir, "before.folded"), filepath.Join(dir, "after.folded")
	os.WriteFile(before, []byte("app;main;parse 50\napp;main;send;write_[k] 20\n"), 0o644)
	os.WriteFile(after, []byte("app;main;parse 50\napp;main;send;write_[k] 60\n"), 0o644)
	out := filepath.Join(dir, "g.svg")
	if r := run(t, nil, "flamegraph", "--title", "T", "--colors", "blue", "--reverse", "-o", out, after); r.code != 0 {
		t.Fatalf("flamegraph: %d %s", r.code, r.stderr)
	}
	b, _ := os.ReadFile(out)
	// Reversed: the leaves are roots now.
	if !strings.Contains(string(b), "<title>write_[k] (60 samples, 54.55%)</title>") || !strings.Contains(string(b), ">T</text>") {
		t.Errorf("reversed SVG lacks the write_[k] root frame:\n%.2000s", b)
	}
	r := run(t, nil, "flamegraph", "--diff", before, after)
	if r.code != 0 || !strings.Contains(r.stdout, "<title>send (60 samples, 54.55%; +36.36%)</title>") {
		t.Errorf("diff: %d %s\n%.3000s", r.code, r.stderr, r.stdout)
	}
	// Folded output merges the inputs.
	r = run(t, nil, "flamegraph", "-o", filepath.Join(dir, "m.folded"), before, after)
	m, _ := os.ReadFile(filepath.Join(dir, "m.folded"))
	if r.code != 0 || string(m) != "app;main;parse 100\napp;main;send;write_[k] 80\n" {
		t.Errorf("merged folded: %d %s %q", r.code, r.stderr, m)
	}
}

// TestProfileCommand profiles a C program spinning in a known function and
// checks every output format, and that go tool pprof names it on top.
func TestProfileCommand(t *testing.T) {
	testutil.RequireBPF(t)
	bin := testutil.CProgram(t, "pie", "spin")
	dir := t.TempDir()
	spin := exec.Command(bin, "spin", "20")
	if err := spin.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { spin.Process.Kill(); spin.Wait() }()
	time.Sleep(100 * time.Millisecond)
	pb, folded, svg := filepath.Join(dir, "p.pb.gz"), filepath.Join(dir, "p.folded"), filepath.Join(dir, "p.svg")
	r := run(t, nil, "profile", "-p", itoa(spin.Process.Pid), "-F", "499", "-d", "2s", "-o", pb, "-o", folded, "-o", svg)
	if r.code != 0 {
		t.Fatalf("profile: exit %d: %s", r.code, r.stderr)
	}
	f, err := os.Open(pb)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pprofile.Parse(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckValid(); err != nil {
		t.Fatal(err)
	}
	var in, all int64
	for _, s := range p.Sample {
		all += s.Value[0]
		if s.Location[0].Line[0].Function.Name == "nettrace_spin_c" {
			in += s.Value[0]
		}
		if s.Label["comm"][0] != "spin" {
			t.Fatalf("sample of comm %v", s.Label["comm"])
		}
	}
	if all < 100 || float64(in)/float64(all) < 0.5 {
		t.Errorf("nettrace_spin_c leaf of %d of %d samples", in, all)
	}
	fb, _ := os.ReadFile(folded)
	if !regexp.MustCompile(`(?m)^spin;.*nettrace_spin_c \d+$`).Match(fb) {
		t.Errorf("folded:\n%s", fb)
	}
	sb, _ := os.ReadFile(svg)
	if !bytes.Contains(sb, []byte("<title>nettrace_spin_c (")) {
		t.Errorf("SVG lacks nettrace_spin_c")
	}
	if gobin, err := exec.LookPath("go"); err == nil {
		out, err := exec.Command(gobin, "tool", "pprof", "-top", pb).CombinedOutput()
		if err != nil {
			t.Fatalf("go tool pprof: %v\n%s", err, out)
		}
		// The first row after the header names the top function.
		lines := strings.Split(string(out), "\n")
		for i, l := range lines {
			if strings.Contains(l, "flat%") && i+1 < len(lines) {
				if !strings.HasSuffix(strings.TrimSpace(lines[i+1]), "nettrace_spin_c") {
					t.Errorf("go tool pprof -top: top row %q\n%s", lines[i+1], out)
				}
			}
		}
	}
}

// TestProfileHTTP serves pprof's web UI on loopback and fetches /top and
// /flamegraph.
func TestProfileHTTP(t *testing.T) {
	testutil.RequireBPF(t)
	cmd := exec.Command(binary, "profile", "-d", "1s", "--http", "127.0.0.1:0")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	url := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`Serving pprof web UI on (http://127\.0\.0\.1:\d+/)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				url <- m[1]
			}
		}
		close(url)
	}()
	var base string
	select {
	case base = <-url:
	case <-time.After(20 * time.Second):
		t.Fatal("no 'Serving pprof web UI' line")
	}
	if base == "" {
		t.Fatal("profile exited before serving")
	}
	for _, path := range []string{"top", "flamegraph"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body := new(bytes.Buffer)
		body.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || body.Len() < 100 {
			t.Errorf("GET /%s: %d, %d bytes", path, resp.StatusCode, body.Len())
		}
	}
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("after SIGINT: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("still serving 10s after SIGINT")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestProfileOffCPU records off-CPU time of a C program (found by --comm)
// that spins 500 ms and sleeps 500 ms in turn for 3 s and exits before the
// profile ends: about half its 3 s must be blocked under nanosleep, in
// every output format.
func TestProfileOffCPU(t *testing.T) {
	testutil.RequireBPF(t)
	bin := testutil.CProgram(t, "pie", "offcpu_sleeper")
	dir := t.TempDir()
	pb, folded, svg := filepath.Join(dir, "o.pb.gz"), filepath.Join(dir, "o.folded"), filepath.Join(dir, "o.svg")
	prof := exec.Command(binary, "profile", "--off-cpu", "--min-block", "1ms", "--comm", "offcpu_sleeper", "-d", "6s", "-o", pb, "-o", folded, "-o", svg)
	var stderr bytes.Buffer
	prof.Stderr = &stderr
	if err := prof.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { prof.Process.Kill(); prof.Wait() }()
	time.Sleep(1500 * time.Millisecond) // loaded and attached
	if err := exec.Command(bin, "sleep", "3").Run(); err != nil {
		t.Fatal(err)
	}
	if err := prof.Wait(); err != nil {
		t.Fatalf("profile: %v: %s", err, stderr.String())
	}
	t.Logf("%s", stderr.String())
	// Folded: microseconds; the sleeper's nanosleep stacks hold about half
	// of its 3 s, under its own function.
	fb, _ := os.ReadFile(folded)
	var us, named int64
	for _, l := range strings.Split(string(fb), "\n") {
		i := strings.LastIndexByte(l, ' ')
		if i < 0 || !strings.HasPrefix(l, "offcpu_sleeper;") || !strings.Contains(l, "nanosleep") {
			continue
		}
		n, _ := strconv.ParseInt(l[i+1:], 10, 64)
		us += n
		// The executable's frames are named although it exited before
		// the profile ended (libc's nanosleep keeps no frame pointer, so
		// frame-pointer unwinding skips nettrace_sleep_c itself).
		if strings.Contains(l, ";main;") {
			named += n
		}
	}
	if share := float64(us) / 3e6; share < 0.35 || share > 0.65 {
		t.Errorf("blocked under nanosleep %dus: %.0f%% of 3s, want 35-65%%\n%.3000s", us, share*100, fb)
	}
	if named < us/2 {
		t.Errorf("%dus of %dus under nanosleep name main\n%.3000s", named, us, fb)
	}
	f, err := os.Open(pb)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pprofile.Parse(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckValid(); err != nil {
		t.Fatal(err)
	}
	if p.DefaultSampleType != "off-cpu" || len(p.SampleType) != 2 || p.SampleType[1].Type != "off-cpu" || p.SampleType[1].Unit != "nanoseconds" {
		t.Errorf("pprof sample types %v, default %q", p.SampleType, p.DefaultSampleType)
	}
	var ns int64
	for _, s := range p.Sample {
		if s.Label["comm"][0] != "offcpu_sleeper" {
			t.Fatalf("sample of comm %v", s.Label["comm"])
		}
		for _, l := range s.Location {
			if strings.Contains(l.Line[0].Function.Name, "nanosleep") {
				ns += s.Value[1]
				break
			}
		}
	}
	if d := ns/1000 - us; d > 1000 || d < -1000 {
		t.Errorf("pprof: %dns under nanosleep, folded %dus", ns, us)
	}
	sb, _ := os.ReadFile(svg)
	if !bytes.Contains(sb, []byte(">Off-CPU Time Flame Graph</text>")) || !bytes.Contains(sb, []byte("nanosleep")) {
		t.Errorf("SVG lacks the off-CPU title or nanosleep frames")
	}
}
