package output

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
)

type countRow struct {
	Seq uint64 `json:"seq" col:"SEQ"`
}

// seqSnap returns a snap func whose n-th frame carries one row with Seq n.
func seqSnap(calls *int) func(time.Time) (Frame, error) {
	return func(now time.Time) (Frame, error) {
		*calls++
		return Frame{Tracer: "test", Rows: []countRow{{Seq: uint64(*calls)}}}, nil
	}
}

// frameHeader matches a table frame's first line and captures its interval.
var frameHeader = regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d  test  interval (\d+\.\d\d)s$`)

func TestRunCount(t *testing.T) {
	var buf bytes.Buffer
	var snaps []time.Time
	start := time.Now()
	err := Run(context.Background(), Options{Interval: 10 * time.Millisecond, Count: 3, Out: &buf},
		func(now time.Time) (Frame, error) {
			snaps = append(snaps, now)
			return Frame{Tracer: "test", Rows: []countRow{{Seq: uint64(len(snaps))}}}, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed < 30*time.Millisecond {
		t.Errorf("3 intervals of 10ms took %v", elapsed)
	}
	if len(snaps) != 3 {
		t.Fatalf("snap called %d times, want 3", len(snaps))
	}
	out := buf.String()
	// One header per frame, each with the time since the previous snap
	// (however late a loaded machine woke Run), the first at least the
	// 10ms asked for.
	headers := frameHeader.FindAllStringSubmatch(out, -1)
	if len(headers) != 3 {
		t.Fatalf("%d frame headers, want 3:\n%s", len(headers), out)
	}
	for i, h := range headers {
		got, _ := strconv.ParseFloat(h[1], 64)
		switch want := 0.01; {
		case i == 0 && got < want:
			t.Errorf("first interval %ss, want at least %.2fs", h[1], want)
		case i > 0 && h[1] != fmt.Sprintf("%.2f", snaps[i].Sub(snaps[i-1]).Seconds()):
			t.Errorf("frame %d interval %ss, want the %v between its snap and the previous", i+1, h[1], snaps[i].Sub(snaps[i-1]))
		}
	}
	for _, seq := range []string{"SEQ\n  1\n", "SEQ\n  2\n", "SEQ\n  3\n"} {
		if !strings.Contains(out, seq) {
			t.Errorf("row %q missing:\n%s", strings.TrimSpace(seq), out)
		}
	}
	if n := strings.Count(out, "\n\n"); n != 2 {
		t.Errorf("%d blank lines between 3 appended frames, want 2:\n%s", n, out)
	}
	if strings.Contains(out, "\x1b[") || strings.Contains(out, "summary") {
		t.Errorf("non-terminal output has escape codes or a summary:\n%q", out)
	}
}

func TestRunMeasuresInterval(t *testing.T) {
	var buf bytes.Buffer
	var snaps []time.Time
	err := Run(context.Background(), Options{Format: JSON, Interval: 20 * time.Millisecond, Count: 2, Out: &buf},
		func(now time.Time) (Frame, error) {
			snaps = append(snaps, now)
			return Frame{Tracer: "test"}, nil // no Time, no Interval: Run fills them in
		})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || len(snaps) != 2 {
		t.Fatalf("%d snaps, output:\n%s", len(snaps), buf.String())
	}
	var got []float64
	for i, l := range lines {
		var obj struct {
			Time      time.Time `json:"time"`
			IntervalS float64   `json:"interval_s"`
		}
		if err := json.Unmarshal([]byte(l), &obj); err != nil {
			t.Fatal(err)
		}
		if !obj.Time.Equal(snaps[i]) {
			t.Errorf("frame %d time %v, want the snap time %v", i, obj.Time, snaps[i])
		}
		// Measured, so at least the 20ms asked for (timer slack allowed above).
		if obj.IntervalS < 0.019 || obj.IntervalS > 1 {
			t.Errorf("frame %d interval_s = %v, want about 0.02", i, obj.IntervalS)
		}
		got = append(got, obj.IntervalS)
	}
	if d := snaps[1].Sub(snaps[0]).Seconds(); got[1] != d {
		t.Errorf("second interval_s = %v, want the time between snaps %v", got[1], d)
	}
}

func TestRunDuration(t *testing.T) {
	var buf bytes.Buffer
	calls := 0
	start := time.Now()
	err := Run(context.Background(), Options{Format: JSON, Interval: 20 * time.Millisecond, Duration: 50 * time.Millisecond, Out: &buf}, seqSnap(&calls))
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	// Ticks at 20ms and 40ms, then a short last interval ending at 50ms.
	if calls != 3 || elapsed < 50*time.Millisecond {
		t.Errorf("snap called %d times in %v, want 3 in >= 50ms", calls, elapsed)
	}
	if n := strings.Count(buf.String(), `"type":"interval"`); n != calls {
		t.Errorf("%d interval objects for %d snaps", n, calls)
	}
}

func TestRunCancel(t *testing.T) {
	var buf bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := 0
	snap := func(now time.Time) (Frame, error) {
		calls++
		if calls == 2 {
			cancel() // Ctrl-C during the third interval
		}
		return Frame{Tracer: "test", Rows: []countRow{{Seq: uint64(calls)}}}, nil
	}
	if err := Run(ctx, Options{Interval: 10 * time.Millisecond, Out: &buf}, snap); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if calls != 2 {
		t.Errorf("snap called %d times, want 2", calls)
	}
	out := buf.String()
	before, after, ok := strings.Cut(out, "\nsummary\n")
	if !ok {
		t.Fatalf("no summary:\n%s", out)
	}
	if len(frameHeader.FindAllString(before, -1)) != 2 || len(frameHeader.FindAllString(after, -1)) != 1 {
		t.Errorf("want 2 frames, then a summary of one:\n%s", out)
	}
	if !strings.HasSuffix(after, "SEQ\n  2\n") {
		t.Errorf("summary is not the last frame:\n%s", after)
	}
}

func TestRunCancelBeforeFirstFrame(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var buf bytes.Buffer
	calls := 0
	if err := Run(ctx, Options{Interval: time.Hour, Out: &buf}, seqSnap(&calls)); err != nil {
		t.Fatal(err)
	}
	if calls != 1 || !strings.HasPrefix(buf.String(), "\nsummary\n") || !strings.HasSuffix(buf.String(), "SEQ\n  1\n") {
		t.Errorf("calls %d, output:\n%s", calls, buf.String())
	}

	// JSON prints nothing extra.
	buf.Reset()
	calls = 0
	if err := Run(ctx, Options{Format: JSON, Interval: time.Hour, Out: &buf}, seqSnap(&calls)); err != nil {
		t.Fatal(err)
	}
	if calls != 0 || buf.Len() != 0 {
		t.Errorf("JSON cancel: calls %d, output %q", calls, buf.String())
	}
}

func TestRunSnapError(t *testing.T) {
	errBoom := errors.New("read map: boom")
	calls := 0
	err := Run(context.Background(), Options{Interval: time.Millisecond, Count: 5, Out: &bytes.Buffer{}},
		func(time.Time) (Frame, error) {
			calls++
			if calls == 2 {
				return Frame{}, errBoom
			}
			return Frame{Tracer: "test"}, nil
		})
	if !errors.Is(err, errBoom) || err.Error() == errBoom.Error() {
		t.Errorf("Run = %v, want %v wrapped", err, errBoom)
	}
	if calls != 2 {
		t.Errorf("snap called %d times after error, want 2", calls)
	}
}

func TestRunLive(t *testing.T) {
	var buf bytes.Buffer
	live := true
	calls := 0
	if err := Run(context.Background(), Options{Interval: time.Millisecond, Count: 2, Out: &buf, Live: &live}, seqSnap(&calls)); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(buf.String(), clearScreen); n != 2 {
		t.Errorf("%d screen clears, want 2: %q", n, buf.String())
	}
	if !strings.HasPrefix(buf.String(), clearScreen) {
		t.Errorf("frame does not start with a clear: %q", buf.String())
	}
}

func TestIsTerminal(t *testing.T) {
	if isTerminal(&bytes.Buffer{}) {
		t.Error("bytes.Buffer is a terminal")
	}
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) {
		t.Error("regular file is a terminal")
	}

	// The replica side of a fresh pseudo-terminal is a terminal.
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("get pty number: %v", err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	defer pts.Close()
	if !isTerminal(pts) {
		t.Errorf("%s is not a terminal", pts.Name())
	}
}

func TestFlags(t *testing.T) {
	var o Options
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	AddFlags(fs, &o)
	if err := fs.Parse([]string{"-i", "250ms", "-c", "4", "-d", "1m", "--sort", "connects", "--top", "5", "-o", "json"}); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.Interval != 250*time.Millisecond || o.Count != 4 || o.Duration != time.Minute ||
		o.Sort != "connects" || o.Top != 5 || o.Format != JSON {
		t.Errorf("options = %+v", o)
	}

	var d Options
	fs = pflag.NewFlagSet("test", pflag.ContinueOnError)
	AddFlags(fs, &d)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := d.Validate(); err != nil || d.Interval != time.Second || d.Format != Table {
		t.Errorf("defaults: %+v, %v", d, err)
	}

	var b Options
	fs = pflag.NewFlagSet("test", pflag.ContinueOnError)
	AddFlags(fs, &b)
	if err := fs.Parse([]string{"--output=xml"}); err != nil {
		t.Fatal(err)
	}
	want := `unknown output format "xml": want table or json`
	if err := b.Validate(); err == nil || err.Error() != want {
		t.Errorf("Validate(-o xml) = %v, want %s", err, want)
	}
	for _, args := range [][]string{{"-c", "-1"}, {"--top", "-2"}, {"-i", "-1s"}, {"-d", "-1s"}} {
		var o Options
		fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
		AddFlags(fs, &o)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if err := o.Validate(); err == nil {
			t.Errorf("Validate(%v) = nil", args)
		}
	}
}
