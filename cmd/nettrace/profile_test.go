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
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("needs gcc for the C test program")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "spin")
	if out, err := exec.Command(gcc, "-O2", "-fno-omit-frame-pointer", "-o", bin, "../../tracers/profile/testdata/spin.c").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
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
