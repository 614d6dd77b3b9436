package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/flamegraph"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/tracers/profile"
)

func init() { subcommands = append(subcommands, newProfile) }

// profileFlags are `nettrace profile`'s flags.
type profileFlags struct {
	pid         int
	comm        string
	cgroup      string
	freq        int
	duration    time.Duration
	outputs     []string
	http        string
	includeIdle bool
	offCPU      bool
	minBlock    time.Duration
}

// outputKind maps an -o file name to its format by extension.
func outputKind(name string) (string, error) {
	switch {
	case name == "-":
		return "folded", nil
	case strings.HasSuffix(name, ".pb.gz"), strings.HasSuffix(name, ".pprof"):
		return "pprof", nil
	case strings.HasSuffix(name, ".folded"), strings.HasSuffix(name, ".txt"):
		return "folded", nil
	case strings.HasSuffix(name, ".svg"):
		return "svg", nil
	}
	return "", fmt.Errorf("unknown output %q: want a .pb.gz, .folded or .svg file name, or - for folded stacks on stdout", name)
}

func newProfile() *cobra.Command {
	var f profileFlags
	cmd := &cobra.Command{
		Use:   "profile",
		Short: "Sample on-CPU stacks (kernel and user) and write pprof profiles, folded stacks or flame graphs",
		Long: `Samples the stacks of every CPU with a perf_event cpu-clock BPF program
(default 99 Hz), kernel and user frames, for -d or until Ctrl-C, then writes
each -o file by its extension: .pb.gz (pprof), .folded (folded stacks), .svg
(flame graph); without -o, folded stacks go to stdout. --http serves pprof's
web UI for the profile just taken (on 127.0.0.1 unless a host is named).

--off-cpu records time blocked instead, like bcc's offcputime: every span a
thread spends off CPU (from sched_switch out to in, at least --min-block),
weighted by its duration and charged to the kernel and user stack where the
thread left the CPU; folded stacks then count microseconds.`,
		Example: `  nettrace profile -d 10s -o cpu.pb.gz -o cpu.svg
  nettrace profile -p 1234 -F 499 -d 5s > app.folded
  nettrace profile --comm nginx -d 30s --http :8080
  nettrace profile --off-cpu --min-block 1ms -p 1234 -d 10s -o offcpu.svg`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runProfile(cmd, f) },
	}
	fl := cmd.Flags()
	fl.IntVarP(&f.pid, "pid", "p", 0, "profile only this process")
	fl.StringVar(&f.comm, "comm", "", "profile only processes with this name")
	fl.StringVar(&f.cgroup, "cgroup", "", "profile only tasks in this cgroup v2 (path, absolute or under the cgroup2 mount)")
	fl.IntVarP(&f.freq, "frequency", "F", profile.DefaultFrequency, "samples per second on each CPU")
	fl.DurationVarP(&f.duration, "duration", "d", 0, "how long to sample (0: until Ctrl-C)")
	fl.StringArrayVarP(&f.outputs, "output", "o", nil, "write the profile to this file: .pb.gz, .folded or .svg (repeatable)")
	fl.StringVar(&f.http, "http", "", "serve pprof's web UI for the profile on this address (host:port, :port binds to 127.0.0.1)")
	fl.BoolVar(&f.includeIdle, "include-idle", false, "keep samples of idle CPUs (the swapper task)")
	fl.BoolVar(&f.offCPU, "off-cpu", false, "record time blocked off CPU by stack (sched_switch) instead of sampling CPUs")
	fl.DurationVar(&f.minBlock, "min-block", 0, "with --off-cpu: leave out spans off CPU shorter than this")
	return cmd
}

func runProfile(cmd *cobra.Command, f profileFlags) error {
	if f.pid != 0 {
		if err := parsePID(f.pid); err != nil {
			return err
		}
	}
	if f.freq <= 0 || f.freq > 100000 {
		return usageError{fmt.Errorf("invalid frequency %d: want 1 to 100000 Hz", f.freq)}
	}
	if f.minBlock < 0 {
		return usageError{fmt.Errorf("invalid minimum block time %s", f.minBlock)}
	}
	if f.minBlock > 0 && !f.offCPU {
		return usageError{fmt.Errorf("--min-block needs --off-cpu")}
	}
	if f.duration < 0 {
		return usageError{fmt.Errorf("invalid duration %s", f.duration)}
	}
	for _, o := range f.outputs {
		if _, err := outputKind(o); err != nil {
			return usageError{err}
		}
	}
	if f.http != "" {
		if _, err := profile.LoopbackAddr(f.http); err != nil {
			return usageError{err}
		}
	}
	if f.cgroup != "" {
		if _, err := profile.CgroupID(f.cgroup); err != nil {
			return usageError{err}
		}
	}
	if len(f.outputs) == 0 && f.http == "" {
		f.outputs = []string{"-"}
	}
	if err := requireCaps(kernel.CapBPF, kernel.CapPerfmon); err != nil {
		return err
	}
	t, err := profile.New(profile.Options{PID: f.pid, Comm: f.comm, Cgroup: f.cgroup, Frequency: f.freq,
		IncludeIdle: f.includeIdle, Tier: globals.tier, OffCPU: f.offCPU, MinBlock: f.minBlock})
	if err != nil {
		return err
	}
	defer t.Close()
	stderr := cmd.ErrOrStderr()
	ctx := cmd.Context()
	what := fmt.Sprintf("Sampling at %d Hz", f.freq)
	if f.offCPU {
		what = "Recording time off CPU"
	}
	if f.duration > 0 {
		fmt.Fprintf(stderr, "%s for %s...\n", what, f.duration)
		select {
		case <-ctx.Done():
		case <-time.After(f.duration):
		}
	} else {
		fmt.Fprintf(stderr, "%s... Hit Ctrl-C to end.\n", what)
		<-ctx.Done()
	}
	p, err := t.Profile()
	if err != nil {
		return err
	}
	t.Close()
	fmt.Fprintln(stderr, p.Summary())
	if p.KernelRestricted {
		fmt.Fprintln(stderr, "warning: /proc/kallsyms shows only zero addresses (kernel.kptr_restrict): kernel frames are written as kernel+0xADDR")
	}
	for _, o := range f.outputs {
		if err := writeProfile(cmd.OutOrStdout(), o, p); err != nil {
			return err
		}
		if o != "-" {
			fmt.Fprintf(stderr, "wrote %s\n", o)
		}
	}
	if f.http == "" {
		return nil
	}
	// Serve until Ctrl-C: a fresh context, since the first Ctrl-C may have
	// ended sampling.
	sctx, stop := signalContext(ctx)
	defer stop()
	return profile.Serve(sctx, f.http, p.Pprof(), func(url string) {
		fmt.Fprintf(stderr, "Serving pprof web UI on %s (Ctrl-C to stop)\n", url)
	})
}

// signalContext returns a context that ends at the next SIGINT/SIGTERM
// when ctx already ended (Ctrl-C stopped the sampling), else with ctx.
func signalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Err() == nil {
		return context.WithCancel(ctx)
	}
	return notifyContext()
}

func writeProfile(stdout io.Writer, name string, p *profile.Profile) (err error) {
	kind, _ := outputKind(name)
	var w io.Writer = stdout
	if name != "-" {
		f, err := os.Create(name)
		if err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
		defer func() {
			if cerr := f.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("close %s: %w", name, cerr)
			}
		}()
		bw := bufio.NewWriter(f)
		defer func() {
			if ferr := bw.Flush(); err == nil && ferr != nil {
				err = fmt.Errorf("write %s: %w", name, ferr)
			}
		}()
		w = bw
	}
	switch kind {
	case "pprof":
		err = p.Pprof().Write(w)
	case "folded":
		err = p.Tree().WriteFolded(w)
	case "svg":
		o := flamegraph.Options{
			Title:    "CPU Flame Graph",
			Subtitle: fmt.Sprintf("nettrace profile: %d samples at %d Hz over %.1fs on %d CPUs, %s", p.Total(), p.Frequency, p.Duration.Seconds(), p.CPUs, p.Start.Format(time.RFC3339)),
		}
		if p.OffCPU {
			o.Title, o.CountName, o.Palette = "Off-CPU Time Flame Graph", p.CountName(), "io"
			o.Subtitle = fmt.Sprintf("nettrace profile --off-cpu: %.3fs off CPU in %d spans over %.1fs, %s", p.Blocked().Seconds(), p.Total(), p.Duration.Seconds(), p.Start.Format(time.RFC3339))
		}
		err = p.Tree().WriteSVG(w, o)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(name), err)
	}
	return nil
}
