package profile

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pprofile "github.com/google/pprof/profile"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/flamegraph"
	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/symbolize"
	"github.com/nettrace/nettrace/internal/testutil"
)

// The test binary doubles as the Go CPU burner: with NETTRACE_PROFILE_HELPER
// set it runs goSpin (or goReadZero) instead of the tests.
func TestMain(m *testing.M) {
	switch os.Getenv("NETTRACE_PROFILE_HELPER") {
	case "spin":
		goSpin(time.Now().Add(30 * time.Second))
		os.Exit(0)
	case "spin-briefly":
		goSpin(time.Now().Add(time.Second))
		os.Exit(0)
	case "spin-then-exec":
		// Spin, then exec the program in NETTRACE_PROFILE_EXEC.
		goSpin(time.Now().Add(400 * time.Millisecond))
		bin := os.Getenv("NETTRACE_PROFILE_EXEC")
		syscall.Exec(bin, []string{bin, "spin", "1.5"}, os.Environ())
		os.Exit(1)
	case "syscalls":
		goReadZero(time.Now().Add(30 * time.Second))
		os.Exit(0)
	case "sleep":
		goSleep(3)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

var sink uint64

//go:noinline
func goSpin(until time.Time) {
	for time.Now().Before(until) {
		for i := uint64(0); i < 1_000_000; i++ {
			sink += i * i
		}
	}
}

// goSleep prints its thread id, then spins 500 ms and sleeps 500 ms
// (nanosleep) on one thread, n times.
//
//go:noinline
func goSleep(n int) {
	runtime.LockOSThread()
	fmt.Println(unix.Gettid())
	for range n {
		goSpin(time.Now().Add(500 * time.Millisecond))
		ts := unix.NsecToTimespec(int64(500 * time.Millisecond))
		for unix.Nanosleep(&ts, &ts) == unix.EINTR {
		}
	}
}

//go:noinline
func goReadZero(until time.Time) {
	f, err := os.Open("/dev/zero")
	if err != nil {
		os.Exit(1)
	}
	buf := make([]byte, 1<<20)
	for time.Now().Before(until) {
		if _, err := f.Read(buf); err != nil {
			os.Exit(1)
		}
	}
}

// startHelper starts cmd and kills it at the end of the test.
func startHelper(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	time.Sleep(100 * time.Millisecond) // past exec and the dynamic loader
	return cmd.Process.Pid
}

func goHelper(t *testing.T, mode string) int {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "NETTRACE_PROFILE_HELPER="+mode)
	return startHelper(t, cmd)
}

// profilePID samples one process for d at a high rate.
func profilePID(t *testing.T, pid int, d time.Duration) *Profile {
	t.Helper()
	tr, err := New(Options{PID: pid, Frequency: 499})
	if err != nil {
		t.Fatalf("New: %+v", err)
	}
	defer tr.Close()
	time.Sleep(d)
	p, err := tr.Profile()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// share returns the fraction of samples whose stack has a frame for which
// match is true, and a description of the top stacks for failures.
func share(p *Profile, match func(string) bool) (float64, string) {
	var hit, all uint64
	for _, s := range p.Samples {
		all += s.Count
		for _, f := range s.Frames() {
			if match(f) {
				hit += s.Count
				break
			}
		}
	}
	var b bytes.Buffer
	p.Tree().WriteFolded(&b)
	desc := b.String()
	if len(desc) > 3000 {
		desc = desc[:3000]
	}
	if all == 0 {
		return 0, "no samples"
	}
	return float64(hit) / float64(all), desc
}

func leafIs(name string) func(string) bool {
	return func(f string) bool { return f == name || strings.HasSuffix(f, "."+name) }
}

// checkOutputs asserts that fn holds most samples in the pprof, folded and
// SVG outputs too.
func checkOutputs(t *testing.T, p *Profile, fn string) {
	t.Helper()
	// pprof: write, parse back, check validity, labels and sample types.
	var buf bytes.Buffer
	if err := p.Pprof().Write(&buf); err != nil {
		t.Fatal(err)
	}
	pp, err := pprofile.Parse(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := pp.CheckValid(); err != nil {
		t.Fatal(err)
	}
	if len(pp.SampleType) != 2 || pp.SampleType[0].Type != "samples" || pp.SampleType[1].Type != "cpu" || pp.SampleType[1].Unit != "nanoseconds" {
		t.Fatalf("sample types %v", pp.SampleType)
	}
	var in, all int64
	for _, s := range pp.Sample {
		for _, l := range []string{"comm", "thread", "cpu"} {
			if len(s.Label[l]) != 1 {
				t.Fatalf("sample without label %s: %v", l, s.Label)
			}
		}
		for _, l := range []string{"pid", "tid"} {
			if len(s.NumLabel[l]) != 1 {
				t.Fatalf("sample without numeric label %s: %v", l, s.NumLabel)
			}
		}
		all += s.Value[0]
		for _, loc := range s.Location {
			if strings.HasSuffix(loc.Line[0].Function.Name, fn) {
				in += s.Value[0]
				break
			}
		}
	}
	if all == 0 || float64(in)/float64(all) < 0.5 {
		t.Errorf("pprof: %s in %d of %d samples", fn, in, all)
	}
	// Folded: parse back.
	buf.Reset()
	if err := p.Tree().WriteFolded(&buf); err != nil {
		t.Fatal(err)
	}
	tree, err := flamegraph.ParseFolded(&buf)
	if err != nil {
		t.Fatal(err)
	}
	var fin int64
	for _, s := range tree.Stacks() {
		for _, f := range s.Frames {
			if strings.HasSuffix(f, fn) {
				fin += s.Count
				break
			}
		}
	}
	if float64(fin)/float64(tree.Total()) < 0.5 {
		t.Errorf("folded: %s in %d of %d samples", fn, fin, tree.Total())
	}
	// SVG: the frame is drawn with its share in the title.
	buf.Reset()
	if err := tree.WriteSVG(&buf, flamegraph.Options{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), fn) {
		t.Errorf("SVG has no frame %s", fn)
	}
}

func TestGoSpin(t *testing.T) {
	testutil.RequireBPF(t)
	pid := goHelper(t, "spin")
	p := profilePID(t, pid, 2*time.Second)
	sh, desc := share(p, leafIs("goSpin"))
	t.Logf("%d samples, goSpin in %.0f%%", p.Total(), 100*sh)
	if p.Total() < 50 || sh < 0.5 {
		t.Fatalf("goSpin holds %.0f%% of %d samples, want most:\n%s", 100*sh, p.Total(), desc)
	}
	for _, s := range p.Samples {
		if s.PID != pid {
			t.Fatalf("sample of pid %d, filtered to %d", s.PID, pid)
		}
	}
	checkOutputs(t, p, "goSpin")
}

// TestExitedProcess profiles a process that exits a second into the
// profile: its symbols were read at its first sample, so it is still named.
func TestExitedProcess(t *testing.T) {
	testutil.RequireBPF(t)
	tr, err := New(Options{Frequency: 499})
	if err != nil {
		t.Fatalf("New: %+v", err)
	}
	defer tr.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "NETTRACE_PROFILE_HELPER=spin-briefly")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	time.Sleep(200 * time.Millisecond)
	p, err := tr.Profile()
	if err != nil {
		t.Fatal(err)
	}
	// The figure: every sample of the exited process whose leaf is in its
	// own binary is named, and the spin loop is among them (leaves in
	// libc or ld.so, whose symbol tables Debian strips, may stay unnamed).
	// How much of its life the spin got, against the Go runtime's start,
	// depends on the machine: under arm64 TCG 25-70%.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var mine, unnamed, spin uint64
	for _, s := range p.Samples {
		if s.PID != pid || len(s.User) == 0 || s.User[0].Module != exe {
			continue
		}
		mine += s.Count
		if s.User[0].Func == "" {
			unnamed += s.Count
			t.Logf("unnamed leaf: %+v", s.User[0])
		}
		if strings.HasSuffix(s.User[0].Func, ".goSpin") {
			spin += s.Count
		}
	}
	t.Logf("exited process: %d samples with a leaf in %s, %d in goSpin, %d unnamed", mine, exe, spin, unnamed)
	if mine < 50 || spin < 25 || unnamed != 0 {
		t.Fatalf("exited process: %d samples, %d named goSpin, %d with an unnamed leaf: want every sample named and goSpin among them", mine, spin, unnamed)
	}
}

// TestExec profiles a Go process that execs a C program: the exec hook makes
// its next sample announce it again, so the C program's frames are named from
// its own mappings, not the Go binary's.
func TestExec(t *testing.T) {
	testutil.RequireBPF(t)
	bin := testutil.CProgram(t, "pie", "spin-exec")
	tr, err := New(Options{Frequency: 499})
	if err != nil {
		t.Fatalf("New: %+v", err)
	}
	defer tr.Close()
	if c, ok := tr.objs.Choice("exec"); !ok || c.Tier != attach.Tracepoint {
		t.Fatalf("exec hook: %+v", c)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "NETTRACE_PROFILE_HELPER=spin-then-exec", "NETTRACE_PROFILE_EXEC="+bin)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	p, err := tr.Profile()
	if err != nil {
		t.Fatal(err)
	}
	// The figure: after the exec the C program's frames are named from its
	// own mappings (1.5 s of spinning at 499 Hz: hundreds of samples in
	// nettrace_spin_c), and no leaf in either binary, or in no known
	// mapping (what naming from the Go binary's mappings would give), is
	// left unnamed. The share of the C spin depends on how long the Go
	// part took to start, which the machine decides.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var mine, c, unnamed uint64
	for _, s := range p.Samples {
		if s.PID != cmd.Process.Pid || len(s.User) == 0 {
			continue
		}
		mine += s.Count
		leaf := s.User[0]
		if leaf.Func == "nettrace_spin_c" {
			c += s.Count
		}
		if leaf.Func == "" && (leaf.Module == "" || leaf.Module == exe || filepath.Base(leaf.Module) == filepath.Base(bin)) {
			unnamed += s.Count
			t.Logf("unnamed leaf: %+v", leaf)
		}
	}
	t.Logf("%d samples, %d in nettrace_spin_c after exec, %d unnamed in the programs; lost %+v", mine, c, unnamed, p.Lost)
	if c < 100 || unnamed != 0 {
		t.Fatalf("nettrace_spin_c named in %d of %d samples, %d unnamed leaves in the programs", c, mine, unnamed)
	}
}

func TestCSpin(t *testing.T) {
	testutil.RequireBPF(t)
	for _, tc := range []struct {
		name, variant string
	}{
		{"frame-pointers", "fp"},
		{"stripped-pie", "stripped-pie"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := testutil.CProgram(t, tc.variant, "spin-"+tc.name)
			pid := startHelper(t, exec.Command(bin, "spin", "30"))
			p := profilePID(t, pid, 2*time.Second)
			sh, desc := share(p, leafIs("nettrace_spin_c"))
			t.Logf("%d samples, nettrace_spin_c in %.0f%%", p.Total(), 100*sh)
			if p.Total() < 50 || sh < 0.5 {
				t.Fatalf("nettrace_spin_c holds %.0f%% of %d samples, want most:\n%s", 100*sh, p.Total(), desc)
			}
			checkOutputs(t, p, "nettrace_spin_c")
		})
	}
}

func TestKernelFrames(t *testing.T) {
	testutil.RequireBPF(t)
	pid := goHelper(t, "syscalls")
	p := profilePID(t, pid, 2*time.Second)
	if p.KernelRestricted {
		t.Skip("kallsyms is restricted")
	}
	kern, desc := share(p, func(f string) bool { return strings.HasSuffix(f, "_[k]") })
	read, _ := share(p, func(f string) bool {
		return f == "read_zero_[k]" || f == "iov_iter_zero_[k]" || strings.Contains(f, "clear_user") || strings.Contains(f, "ksys_read")
	})
	t.Logf("%d samples: %.0f%% with kernel frames, %.0f%% in the read path", p.Total(), 100*kern, 100*read)
	if kern < 0.5 || read < 0.5 {
		t.Fatalf("a /dev/zero reader: %.0f%% of samples with _[k] frames, %.0f%% in the read path; want most:\n%s", 100*kern, 100*read, desc)
	}
	// User frames lead to the kernel: goReadZero is below the kernel frames.
	if sh, _ := share(p, leafIs("goReadZero")); sh < 0.5 {
		t.Errorf("goReadZero in %.0f%% of samples", 100*sh)
	}
}

func TestCPUList(t *testing.T) {
	got, err := parseCPUList("0-3,5,7-8")
	if err != nil || len(got) != 7 || got[4] != 5 || got[6] != 8 {
		t.Fatalf("parseCPUList = %v, %v", got, err)
	}
	if _, err := parseCPUList("x"); err == nil {
		t.Fatal("parseCPUList(x): no error")
	}
	if runtime.NumCPU() < 1 {
		t.Fatal("no CPUs")
	}
}

// TestOffCPU runs a thread that sleeps 500 ms of every second for 3 s and
// exits: about half its wall time must be charged off CPU under the
// nanosleep syscall's kernel frames and its own (named) user frames. The
// helper runs under a name of its own, so that the tracer sees it alone
// (not this test's own threads, whose stacks would share the stack map).
// A stack that collides with another in the stack map is lost, which the
// profile says (the sample's lost flag, counted in Lost): every span of the
// thread under nanosleep must be named goSleep or said lost, none may come
// out unnamed.
func TestOffCPU(t *testing.T) {
	testutil.RequireBPF(t)
	const name = "offcpu-sleeper"
	self, err := filepath.Abs(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), name)
	if err := os.Symlink(self, link); err != nil {
		t.Fatal(err)
	}
	tr, err := New(Options{OffCPU: true, Comm: name, MinBlock: time.Millisecond})
	if err != nil {
		t.Fatalf("New: %+v", err)
	}
	defer tr.Close()
	t.Logf("tiers: %v", tr.objs.Tiers())
	cmd := exec.Command(link, "-test.run=^$")
	cmd.Env = append(os.Environ(), "NETTRACE_PROFILE_HELPER=sleep")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	tid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("helper printed %q", out)
	}
	pid := cmd.Process.Pid
	p, err := tr.Profile()
	if err != nil {
		t.Fatal(err)
	}
	// Stacks may collide in the stack map (counted), spans must not be lost.
	if !p.OffCPU || p.Lost.Samples != 0 {
		t.Errorf("OffCPU %v, lost %+v", p.OffCPU, p.Lost)
	}
	var (
		sleep, all      time.Duration // under nanosleep, off CPU in all
		named, userLost time.Duration // under nanosleep: in goSleep, user stack lost
		kernelLost      time.Duration // kernel stack lost
		desc            strings.Builder
	)
	for _, s := range p.Samples {
		if s.TID != tid {
			continue
		}
		if s.PID != pid {
			t.Fatalf("thread %d in process %d, want %d", tid, s.PID, pid)
		}
		if s.Comm != name {
			t.Errorf("thread %d in process %q, want %q", tid, s.Comm, name)
		}
		fmt.Fprintf(&desc, "  %v in %d spans, user %v (lost %v), kernel %v (lost %v)\n", time.Duration(s.Nanos), s.Count, s.User, s.UserLost, s.Kernel, s.KernelLost)
		d := time.Duration(s.Nanos)
		all += d
		if s.KernelLost {
			kernelLost += d
		}
		if !slices.ContainsFunc(s.Kernel, func(f symbolize.Frame) bool { return strings.Contains(f.Name(), "nanosleep") }) {
			continue
		}
		sleep += d
		switch {
		case slices.ContainsFunc(s.User, func(f symbolize.Frame) bool { return strings.HasSuffix(f.Func, ".goSleep") }):
			named += d
		case s.UserLost:
			userLost += d
		}
	}
	var b bytes.Buffer
	p.Tree().WriteFolded(&b)
	t.Logf("thread %d: %s off CPU under nanosleep (%s named goSleep, %s with its user stack lost), %s in all (%s with the kernel stack lost), of 3s; lost %+v",
		tid, sleep, named, userLost, all, kernelLost, p.Lost)
	if share := (sleep + kernelLost).Seconds() / 3; share < 0.35 || share > 0.65 {
		t.Errorf("thread %d off CPU under nanosleep %.0f%% of 3s, want 35-65%%\n%s\n%.3000s", tid, share*100, desc.String(), b.String())
	}
	if named+userLost != sleep || named == 0 && userLost == 0 {
		t.Errorf("thread %d: of %s under nanosleep, %s named goSleep and %s said lost: the rest is unnamed; its stacks:\n%s\n%.3000s",
			tid, sleep, named, userLost, desc.String(), b.String())
	}
	if userLost > 0 && p.Lost.UserStacks == 0 || kernelLost > 0 && p.Lost.KernelStacks == 0 {
		t.Errorf("stacks lost (%s user, %s kernel) but not counted: %+v", userLost, kernelLost, p.Lost)
	}
	// The writers: folded in microseconds, pprof with off-CPU sample types.
	folded := b.String()
	if !strings.Contains(folded, "nanosleep") {
		t.Errorf("folded stacks lack nanosleep")
	}
	pp := p.Pprof()
	if err := pp.CheckValid(); err != nil {
		t.Fatal(err)
	}
	if pp.DefaultSampleType != "off-cpu" || pp.SampleType[1].Unit != "nanoseconds" {
		t.Errorf("pprof sample types %v, default %q", pp.SampleType, pp.DefaultSampleType)
	}
	// Folded counts are microseconds: the goSleep;...nanosleep lines add up
	// to the thread's time under nanosleep.
	var us int64
	for _, l := range strings.Split(folded, "\n") {
		i := strings.LastIndexByte(l, ' ')
		if i < 0 || !strings.Contains(l, ".goSleep;") || !strings.Contains(l, "nanosleep") {
			continue
		}
		n, _ := strconv.ParseInt(l[i+1:], 10, 64)
		us += n
	}
	if d := time.Duration(us)*time.Microsecond - named; d > 10*time.Millisecond || d < -10*time.Millisecond {
		t.Errorf("folded goSleep;...nanosleep lines sum to %dus, want %s", us, named)
	}
}
