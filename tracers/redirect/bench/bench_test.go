package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/testutil"
	"github.com/nettrace/nettrace/tracers/redirect"
)

// checkFigures asserts the counts are non-zero and every byte the clients
// sent was checked by the receivers: both ping-pong directions and the stream.
func checkFigures(t *testing.T, mode string, size int, f Figures) {
	t.Helper()
	if f.RoundTrips == 0 || f.StreamBytes == 0 || f.RoundTripsPerS <= 0 || f.MBPerS <= 0 || f.P50Us <= 0 || f.P99Us < f.P50Us {
		t.Errorf("%s size %d: figures %+v", mode, size, f)
	}
	if want := 2*f.RoundTrips*int64(size) + f.StreamBytes; f.CheckedBytes != want {
		t.Errorf("%s size %d: checked %d bytes, want %d (2 x %d round trips x %d + %d streamed)", mode, size, f.CheckedBytes, want, f.RoundTrips, size, f.StreamBytes)
	}
}

func TestLoopbackPlain(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t)
	sizes := []int{64, 5000}
	rep, err := Run(context.Background(), Options{Sizes: sizes, Duration: 200 * time.Millisecond, Conns: 2, Netns: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != len(sizes) {
		t.Fatalf("%d results for %d sizes", len(rep.Results), len(sizes))
	}
	for i, r := range rep.Results {
		if r.Size != sizes[i] || r.Redirect != nil {
			t.Errorf("result %d: size %d, redirect %v", i, r.Size, r.Redirect)
		}
		checkFigures(t, "plain", r.Size, r.Plain)
	}
}

// A byte changed before it is written must be reported at its offset, in
// each test and direction.
func TestLoopbackDetectsCorruption(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t)
	for _, tc := range []struct {
		test, dir string
		at        int64
	}{
		{"ping-pong", toServer, 3000},
		{"ping-pong", toClient, 777},
		{"stream", toServer, 100000},
	} {
		corrupt = func(test, dir string, off int64, b []byte) {
			if test == tc.test && dir == tc.dir && off <= tc.at && tc.at < off+int64(len(b)) {
				b[tc.at-off] ^= 0x5a
			}
		}
		_, err := Run(context.Background(), Options{Sizes: []int{1000}, Duration: 200 * time.Millisecond, Netns: ns.Path()})
		corrupt = nil
		var m *MismatchError
		if !errors.As(err, &m) {
			t.Fatalf("%s %s: corrupted byte %d not detected: %v", tc.test, tc.dir, tc.at, err)
		}
		if m.Test != tc.test || m.Dir != tc.dir || m.Offset != tc.at || m.Size != 1000 {
			t.Errorf("%s %s: corrupted byte %d reported as %+v", tc.test, tc.dir, tc.at, m)
		}
	}
}

func TestParseSizes(t *testing.T) {
	got, err := ParseSizes("64, 1k,64K,1m")
	if err != nil || fmt.Sprint(got) != "[64 1024 65536 1048576]" {
		t.Errorf("ParseSizes: %v %v", got, err)
	}
	for _, bad := range []string{"", "0", "x", "2m", "-1", "1g"} {
		if _, err := ParseSizes(bad); err == nil {
			t.Errorf("ParseSizes(%q) accepted", bad)
		}
	}
}

// redirects says whether redirect runs on this kernel. Where it does not,
// it checks that a redirected benchmark refuses with that one line, and
// leaves this process where it was.
func redirects(t *testing.T) bool {
	t.Helper()
	testutil.RequireBPF(t)
	serr := redirect.Supported()
	if serr == nil {
		return true
	}
	root, _ := kernel.Cgroup2Path()
	orig, err := ownCgroup(root)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), Options{Sizes: []int{64}, Duration: 50 * time.Millisecond, Redirect: true})
	if err == nil || !strings.Contains(err.Error(), serr.Error()) || strings.Contains(err.Error(), "\n") || !strings.Contains(serr.Error(), "kernel lacks ") {
		t.Errorf("redirected benchmark on a kernel that refuses redirect (%v): %v, want that one line", serr, err)
	}
	leftovers(t, orig)
	t.Logf("redirect refuses this kernel, as documented: %v", err)
	return false
}

// leftovers fails when the benchmark left its cgroup, pins, programs or
// this process's cgroup changed.
func leftovers(t *testing.T, origCgroup string) {
	t.Helper()
	root, err := kernel.Cgroup2Path()
	if err != nil {
		t.Fatal(err)
	}
	pid := fmt.Sprint(os.Getpid())
	for _, p := range []string{filepath.Join(root, cgroupPrefix+pid), filepath.Join(kernel.BPFFSPath, "nettrace", pinPrefix+pid)} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
	if cg, err := ownCgroup(root); err != nil || cg != origCgroup {
		t.Errorf("process left in cgroup %s (%v), was in %s", cg, err, origCgroup)
	}
	// Another package's tests (tracers/redirect) may have redirect
	// enabled under their own pin directories meanwhile.
	ours := filepath.Join(kernel.BPFFSPath, "nettrace", pinPrefix+pid)
	testutil.RequireNoOrphansBeside(t, kernel.BPFFSPath, ours, "redirect_sockops", "redirect_msg", "redirect_splice", "redirect_send_done")
}

// With redirect: both modes measured, every byte checked, the ping-pong
// really redirected, and the kernel's counters of redirected plus passed
// bytes match what the benchmark sent, exactly.
func TestLoopbackRedirect(t *testing.T) {
	if !redirects(t) {
		return
	}
	root, _ := kernel.Cgroup2Path()
	orig, err := ownCgroup(root)
	if err != nil {
		t.Fatal(err)
	}
	ns := testutil.NewNetns(t)
	rep, err := Run(context.Background(), Options{Sizes: []int{64, 4096}, Duration: 300 * time.Millisecond, Redirect: true, Netns: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Results {
		checkFigures(t, "plain", r.Size, r.Plain)
		if r.Redirect == nil {
			t.Fatalf("size %d: no redirected figures", r.Size)
		}
		d := *r.Redirect
		checkFigures(t, "redirect", r.Size, d)
		t.Logf("size %d: %.0f vs %.0f round trips/s, %.1f vs %.1f MB/s; ping-pong %d redirected %d passed, stream %d redirected %d passed",
			r.Size, r.Plain.RoundTripsPerS, d.RoundTripsPerS, r.Plain.MBPerS, d.MBPerS, d.PingPongRedirectedBytes, d.PingPongPassedBytes, d.StreamRedirectedBytes, d.StreamPassedBytes)
		if sent := uint64(2 * d.RoundTrips * int64(r.Size)); d.PingPongRedirectedBytes+d.PingPongPassedBytes != sent || d.PingPongRedirectedBytes < sent/2 {
			t.Errorf("size %d ping-pong: %d redirected + %d passed bytes, want %d in all, mostly redirected", r.Size, d.PingPongRedirectedBytes, d.PingPongPassedBytes, sent)
		}
		if d.MsgRoundTrips == 0 || d.MsgRuns < uint64(2*d.MsgRoundTrips) || d.MsgNsPerRun <= 0 {
			t.Errorf("size %d: sk_msg ran %d times (%.0f ns each) for %d ping-pong sends", r.Size, d.MsgRuns, d.MsgNsPerRun, 2*d.MsgRoundTrips)
		}
		// The writer leaves the map once it is a bulk sender: its later
		// bytes skip sk_msg and are in neither count.
		if d.StreamRedirectedBytes+d.StreamPassedBytes > uint64(d.StreamBytes) || d.StreamRedirectedBytes > 2*redirect.DefaultBulkBytes {
			t.Errorf("size %d stream: %d redirected + %d passed bytes of %d (at most %d redirected)", r.Size, d.StreamRedirectedBytes, d.StreamPassedBytes, d.StreamBytes, 2*redirect.DefaultBulkBytes)
		}
	}
	leftovers(t, orig)
}

// Cancelled in the middle (Ctrl-C): an error, and nothing left attached.
func TestLoopbackRedirectCancel(t *testing.T) {
	if !redirects(t) {
		return
	}
	root, _ := kernel.Cgroup2Path()
	orig, err := ownCgroup(root)
	if err != nil {
		t.Fatal(err)
	}
	ns := testutil.NewNetns(t)
	ctx, cancel := context.WithCancel(context.Background())
	// Cancel once redirect is enabled and traffic runs.
	go func() {
		pins := filepath.Join(kernel.BPFFSPath, "nettrace", fmt.Sprintf("%s%d", pinPrefix, os.Getpid()))
		for ctx.Err() == nil {
			if st, err := redirect.ReadStatus(pins); err == nil && st.Enabled {
				time.Sleep(100 * time.Millisecond)
				cancel()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	_, err = Run(ctx, Options{Sizes: []int{1024}, Duration: time.Second, Redirect: true, Netns: ns.Path()})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled run returned %v, want context.Canceled", err)
	}
	leftovers(t, orig)
}
