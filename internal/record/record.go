// Package record runs tracers around a load test and writes everything they
// saw into one bundle directory (see internal/bundle): `nettrace record`.
package record

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/flamegraph"
	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/bundle"
	"github.com/nettrace/nettrace/internal/netns"
	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/internal/settings"
	"github.com/nettrace/nettrace/tracers/listen"
	"github.com/nettrace/nettrace/tracers/ports"
	"github.com/nettrace/nettrace/tracers/profile"
	"github.com/nettrace/nettrace/tracers/sched"
	"github.com/nettrace/nettrace/tracers/softirq"
	"github.com/nettrace/nettrace/tracers/timewait"
)

// Tracer is what record runs: a live tracer that turns each interval into
// an output frame.
type Tracer interface {
	Frame(now time.Time) (output.Frame, error)
	Close() error
}

// openers open each tracer record knows, in the order they run.
var openers = []struct {
	name string
	open func(o *Options) (Tracer, error)
}{
	{"ports", func(o *Options) (Tracer, error) {
		return ports.New(ports.Options{Netns: o.NetnsPath, Tier: o.Tier, Syscalls: o.Syscalls})
	}},
	{"listen", func(o *Options) (Tracer, error) {
		return listen.New(listen.Options{NetnsPath: o.NetnsPath, Tier: o.Tier, Syscalls: o.Syscalls})
	}},
	{"softirq", func(o *Options) (Tracer, error) { return softirq.New(softirq.Options{Tier: o.Tier}) }},
	{"sched", func(o *Options) (Tracer, error) { return sched.New(sched.Options{Tier: o.Tier}) }},
	{"timewait", func(o *Options) (Tracer, error) {
		var ns []string
		if o.NetnsPath != "" {
			ns = []string{o.NetnsPath}
		}
		return timewait.New(timewait.Options{Netns: ns, Tier: o.Tier})
	}},
}

// Names lists the tracers record can run, in the order they run.
func Names() []string {
	out := make([]string, len(openers))
	for i, o := range openers {
		out[i] = o.name
	}
	return out
}

// ParseTracers checks a --tracers list: known names, no repeats, at least one.
func ParseTracers(list []string) ([]string, error) {
	if len(list) == 0 {
		return nil, errors.New("no tracers given")
	}
	seen := map[string]bool{}
	for _, n := range list {
		known := false
		for _, o := range openers {
			known = known || o.name == n
		}
		if !known {
			return nil, fmt.Errorf("unknown tracer %q: want some of %s", n, strings.Join(Names(), ","))
		}
		if seen[n] {
			return nil, fmt.Errorf("tracer %q given twice", n)
		}
		seen[n] = true
	}
	// Run in the canonical order, whatever order they were given in.
	var out []string
	for _, o := range openers {
		if seen[o.name] {
			out = append(out, o.name)
		}
	}
	return out, nil
}

// Options configure a record.
type Options struct {
	Dir       string
	Force     bool          // write into a non-empty directory, replacing a previous bundle
	Duration  time.Duration // 0: until the command exits or Ctrl-C
	Interval  time.Duration // 1s when zero
	Tracers   []string      // from ParseTracers; every tracer when empty
	Profile   bool          // also sample on-CPU stacks for the whole record
	Command   []string      // run this and stop when it exits (optional)
	NetnsPath string        // network namespace the per-namespace tracers watch ("" = ours)
	Tier      attach.Tier
	// Syscalls: ports and listen use the syscall tracepoints in the
	// tracepoint tier (connects failing before a SYN, accept latency).
	Syscalls bool
	Version  string   // nettrace's version, for meta.json
	Args     []string // nettrace's command line, for meta.json
	// Progress gets a one-line progress display, redrawn in place, when it
	// is a terminal; nil or not a terminal: nothing.
	Progress io.Writer
	// Log gets one-line notes (command exit status, files written); nil: none.
	Log io.Writer
}

// recorder is one record under way.
type recorder struct {
	o       *Options
	w       *bundle.Writer
	meta    bundle.Meta
	tracers []Tracer
	names   []string
	series  []*bufio.Writer
	files   []*os.File
	prof    *profile.Tracer
	last    map[string]output.Frame
}

// Run records until the duration, the command's end, or ctx (Ctrl-C,
// SIGTERM), and returns the bundle's meta. A record that cannot start (a
// tracer that does not load, a command that does not start) returns an
// error after leaving what it wrote marked failed. A record ended by ctx
// before its duration or command ended is marked interrupted; its bundle
// is still complete as far as it got and readable.
func Run(ctx context.Context, o Options) (*bundle.Meta, error) {
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if len(o.Tracers) == 0 {
		o.Tracers = Names()
	}
	if len(o.Command) > 0 {
		if _, err := exec.LookPath(o.Command[0]); err != nil {
			return nil, fmt.Errorf("start command: %w", err)
		}
	}
	w, err := bundle.Create(o.Dir, o.Force)
	if err != nil {
		return nil, err
	}
	r := &recorder{o: &o, w: w, last: map[string]output.Frame{}}
	r.meta = bundle.Meta{
		NettraceVersion: o.Version,
		Status:          bundle.Running,
		IntervalS:       o.Interval.Seconds(),
		CPUs:            runtime.NumCPU(),
		Arch:            runtime.GOARCH,
		Tracers:         o.Tracers,
		Tiers:           map[string]map[string]string{},
		Profile:         o.Profile,
		Args:            o.Args,
		Command:         o.Command,
		NetnsPath:       o.NetnsPath,
	}
	r.meta.Host, _ = os.Hostname()
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		r.meta.Kernel = unix.ByteSliceToString(uts.Release[:])
		r.meta.KernelVersion = unix.ByteSliceToString(uts.Version[:])
	}
	if id, err := netns.ID(o.NetnsPath); err == nil {
		r.meta.Netns = netns.Name(id)
	}
	err = r.run(ctx)
	if cerr := r.close(); err == nil {
		err = cerr
	}
	if err != nil {
		r.meta.Status, r.meta.Complete = bundle.Failed, false
		r.meta.Errors = append(r.meta.Errors, err.Error())
	}
	if r.meta.End.IsZero() {
		r.meta.End = time.Now()
	}
	if !r.meta.Start.IsZero() {
		r.meta.DurationS = r.meta.End.Sub(r.meta.Start).Seconds()
	}
	if merr := r.finish(); err == nil {
		err = merr
	}
	return &r.meta, err
}

// run opens everything, records, and takes the last partial interval.
func (r *recorder) run(ctx context.Context) error {
	o := r.o
	before, err := settings.Audit(settings.Options{NetnsPath: o.NetnsPath})
	if err != nil {
		return fmt.Errorf("audit settings: %w", err)
	}
	if err := r.w.WriteJSON(bundle.SettingsBeforeFile, before); err != nil {
		return err
	}
	for _, name := range o.Tracers {
		for _, op := range openers {
			if op.name != name {
				continue
			}
			t, err := op.open(o)
			if err != nil {
				return fmt.Errorf("start %s: %w", name, err)
			}
			f, err := r.w.Create(bundle.SeriesFile(name))
			if err != nil {
				t.Close()
				return err
			}
			r.tracers = append(r.tracers, t)
			r.names = append(r.names, name)
			r.files = append(r.files, f)
			r.series = append(r.series, bufio.NewWriterSize(f, 256<<10))
		}
	}
	if o.Profile {
		p, err := profile.New(profile.Options{Tier: o.Tier})
		if err != nil {
			return fmt.Errorf("start profile: %w", err)
		}
		r.prof = p
	}

	// The tracers took their first reading in New, one after the other: a
	// first frame, thrown away, sets every baseline to the same moment, the
	// start of the record, so that all series cover the same intervals.
	r.meta.Start = time.Now()
	for i, t := range r.tracers {
		if _, err := t.Frame(r.meta.Start); err != nil {
			return fmt.Errorf("take %s snapshot: %w", r.names[i], err)
		}
	}
	if err := r.w.WriteMeta(&r.meta); err != nil {
		return err
	}
	var (
		cmd  *exec.Cmd
		done = make(chan error, 1)
	)
	if len(o.Command) > 0 {
		c, err := r.startCommand()
		if err != nil {
			return err
		}
		cmd = c
		go func() { done <- cmd.Wait() }()
	}

	ticker := time.NewTicker(o.Interval)
	defer ticker.Stop()
	var deadline <-chan time.Time
	if o.Duration > 0 {
		t := time.NewTimer(time.Until(r.meta.Start.Add(o.Duration)))
		defer t.Stop()
		deadline = t.C
	}
	progress := newProgress(o.Progress, r.meta.Start, o.Duration)
	stop := ""
loop:
	for {
		select {
		case now := <-ticker.C:
			if err := r.frame(now); err != nil {
				stopCommand(cmd, done)
				return err
			}
			progress.update(now, r.last, r.names)
		case <-deadline:
			stop = "duration"
			break loop
		case err := <-done:
			stop = "command exited"
			r.commandExited(err)
			cmd = nil
			break loop
		case <-ctx.Done():
			stop = "interrupted"
			break loop
		}
	}
	// The last, partial interval: the run's totals must include it.
	now := time.Now()
	ferr := r.frame(now)
	r.meta.End = now
	progress.done()
	if cmd != nil {
		r.commandExited(stopCommand(cmd, done))
	}
	r.meta.StopReason = stop
	r.meta.Status, r.meta.Complete = bundle.Complete, true
	if stop == "interrupted" && (o.Duration > 0 || len(o.Command) > 0) {
		r.meta.Status, r.meta.Complete = bundle.Interrupted, false
	}
	return ferr
}

// frame takes one frame of every tracer and appends it to its series.
func (r *recorder) frame(now time.Time) error {
	jopts := output.Options{Format: output.JSON}
	for i, t := range r.tracers {
		f, err := t.Frame(now)
		if err != nil {
			return fmt.Errorf("take %s snapshot: %w", r.names[i], err)
		}
		if f.Time.IsZero() {
			f.Time = now
		}
		if f.Interval == 0 {
			prev := r.meta.Start
			if l, ok := r.last[r.names[i]]; ok {
				prev = l.Time
			}
			f.Interval = now.Sub(prev)
		}
		if err := output.Render(r.series[i], f, jopts); err != nil {
			return fmt.Errorf("write %s interval: %w", r.names[i], err)
		}
		if _, ok := r.meta.Tiers[r.names[i]]; !ok && len(f.Tiers) > 0 {
			r.meta.Tiers[r.names[i]] = f.Tiers
		}
		r.last[r.names[i]] = f
	}
	return nil
}

// startCommand starts the command with its output going to the bundle.
func (r *recorder) startCommand() (*exec.Cmd, error) {
	stdout, err := r.w.Create(bundle.StdoutFile)
	if err != nil {
		return nil, err
	}
	stderr, err := r.w.Create(bundle.StderrFile)
	if err != nil {
		stdout.Close()
		return nil, err
	}
	r.files = append(r.files, stdout, stderr)
	cmd := exec.Command(r.o.Command[0], r.o.Command[1:]...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		r.meta.CommandError = err.Error()
		return nil, fmt.Errorf("start command %s: %w", r.o.Command[0], err)
	}
	r.meta.CommandPID = cmd.Process.Pid
	return cmd, nil
}

// commandExited notes the command's exit status.
func (r *recorder) commandExited(err error) {
	code := 0
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.meta.CommandError = "killed by " + unix.SignalName(ws.Signal())
			code = 128 + int(ws.Signal())
		}
	default:
		r.meta.CommandError = err.Error()
		code = -1
	}
	r.meta.ExitCode = &code
	if r.o.Log != nil {
		if code == 0 {
			fmt.Fprintf(r.o.Log, "command exited with status 0\n")
		} else {
			fmt.Fprintf(r.o.Log, "command exited with status %d%s\n", code, suffix(r.meta.CommandError))
		}
	}
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

// stopCommand ends a command still running when the record stops: SIGTERM,
// then SIGKILL after 5 seconds. It returns the command's wait error.
func stopCommand(cmd *exec.Cmd, done chan error) error {
	if cmd == nil {
		return nil
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
	}
	cmd.Process.Kill()
	return <-done
}

// close detaches the tracers, writes the profile and the settings after.
func (r *recorder) close() error {
	var errs []error
	for i, s := range r.series {
		if err := s.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("write %s: %w", bundle.SeriesFile(r.names[i]), err))
		}
	}
	for _, f := range r.files {
		if err := f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", f.Name(), err))
		}
	}
	for i, t := range r.tracers {
		if err := t.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", r.names[i], err))
		}
	}
	r.tracers = nil
	if r.prof != nil {
		if !r.meta.Start.IsZero() {
			if err := r.writeProfile(); err != nil {
				errs = append(errs, err)
			}
		}
		r.prof.Close()
	}
	if !r.meta.Start.IsZero() {
		after, err := settings.Audit(settings.Options{NetnsPath: r.o.NetnsPath})
		if err == nil {
			err = r.w.WriteJSON(bundle.SettingsAfterFile, after)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("audit settings after the record: %w", err))
		}
	}
	return errors.Join(errs...)
}

// writeProfile writes the profile as pprof, folded stacks and SVG.
func (r *recorder) writeProfile() error {
	p, err := r.prof.Profile()
	if err != nil {
		return fmt.Errorf("read profile: %w", err)
	}
	var pb, folded, svg bytes.Buffer
	if err := p.Pprof().Write(&pb); err != nil {
		return fmt.Errorf("encode profile: %w", err)
	}
	tree := p.Tree()
	if err := tree.WriteFolded(&folded); err != nil {
		return fmt.Errorf("fold profile: %w", err)
	}
	if err := tree.WriteSVG(&svg, flamegraph.Options{
		Title:    "CPU Flame Graph",
		Subtitle: fmt.Sprintf("nettrace record: %d samples at %d Hz over %.1fs on %d CPUs, %s", p.Total(), p.Frequency, p.Duration.Seconds(), p.CPUs, p.Start.Format(time.RFC3339)),
	}); err != nil {
		return fmt.Errorf("draw flame graph: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{bundle.ProfilePprofFile, pb.Bytes()}, {bundle.ProfileFoldedFile, folded.Bytes()}, {bundle.ProfileSVGFile, svg.Bytes()}} {
		if err := r.w.WriteFile(f.name, f.data); err != nil {
			return err
		}
	}
	return nil
}

// finish writes meta.json, summary.txt from the bundle as written, and
// meta.json again listing summary.txt.
func (r *recorder) finish() error {
	if err := r.w.WriteMeta(&r.meta); err != nil {
		return err
	}
	b, err := bundle.Load(r.o.Dir)
	if err != nil {
		return fmt.Errorf("read back the bundle: %w", err)
	}
	if err := r.w.WriteFile(bundle.SummaryFile, []byte(Summary(b))); err != nil {
		return err
	}
	return r.w.WriteMeta(&r.meta)
}

// Summary is summary.txt: the record's conditions, headline figures and
// the warnings that fired, with their fixes.
func Summary(b *bundle.Bundle) string {
	var s strings.Builder
	m := b.Meta
	fmt.Fprintf(&s, "nettrace record %s: %s", b.Name(), m.Status)
	if m.StopReason != "" {
		fmt.Fprintf(&s, " (%s)", m.StopReason)
	}
	fmt.Fprintf(&s, "\n%s to %s (%.1fs), host %s, kernel %s, %d CPUs, %s\n",
		m.Start.Format(time.RFC3339), m.End.Format(time.RFC3339), m.DurationS, m.Host, m.Kernel, m.CPUs, m.Netns)
	if len(m.Command) > 0 {
		fmt.Fprintf(&s, "command: %s", strings.Join(m.Command, " "))
		if m.ExitCode != nil {
			fmt.Fprintf(&s, " (exit status %d%s)", *m.ExitCode, suffix(m.CommandError))
		}
		s.WriteByte('\n')
	}
	for _, tr := range m.Tracers {
		if t := m.Tiers[tr]; len(t) > 0 {
			var parts []string
			for k, v := range t {
				parts = append(parts, k+"="+v)
			}
			sort.Strings(parts)
			fmt.Fprintf(&s, "tiers %s: %s\n", tr, strings.Join(parts, " "))
		}
	}
	for _, e := range m.Errors {
		fmt.Fprintf(&s, "error: %s\n", e)
	}
	s.WriteString("\nheadline figures\n")
	var rows [][]string
	for _, st := range b.Stats() {
		rows = append(rows, []string{st.Tracer, st.Label, FormatStat(st)})
	}
	for _, f := range b.CommandFigures() {
		rows = append(rows, []string{"command", f.Label, num(f.Value) + f.Unit})
	}
	output.WriteTable(&s, []string{"TRACER", "FIGURE", "VALUE"}, rows)
	ws := b.Warnings()
	if len(ws) == 0 {
		s.WriteString("\nno warnings fired\n")
		return s.String()
	}
	s.WriteString("\nwarnings that fired\n")
	for _, w := range ws {
		fmt.Fprintf(&s, "! [%s] %s (in %d intervals, first at +%.0fs)\n", w.Tracer, w.Message, w.Intervals, w.FirstT)
		if w.Fix != "" {
			fmt.Fprintf(&s, "  fix: %s\n", w.Fix)
		}
	}
	return s.String()
}

// FormatStat prints a run's figure with its unit: a total with its mean
// rate for counts.
func FormatStat(st bundle.Stat) string {
	switch st.Kind {
	case bundle.Count:
		return fmt.Sprintf("%s (%s/s)", num(st.Total), num(st.Mean))
	case bundle.Mean:
		return num(st.Mean) + st.Unit
	}
	return num(st.Max) + st.Unit
}

func num(v float64) string {
	switch a := math.Abs(v); {
	case v == float64(int64(v)):
		return fmt.Sprintf("%d", int64(v))
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
