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
web UI for the profile just taken (on 127.0.0.1 unless a host is named).`,
		Example: `  nettrace profile -d 10s -o cpu.pb.gz -o cpu.svg
  nettrace profile -p 1234 -F 499 -d 5s > app.folded
  nettrace profile --comm nginx -d 30s --http :8080`,
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
		IncludeIdle: f.includeIdle, Tier: globals.tier})
	if err != nil {
		return err
	}
	defer t.Close()
	stderr := cmd.ErrOrStderr()
	ctx := cmd.Context()
	if f.duration > 0 {
		fmt.Fprintf(stderr, "Sampling at %d Hz for %s...\n", f.freq, f.duration)
		select {
		case <-ctx.Done():
		case <-time.After(f.duration):
		}
	} else {
		fmt.Fprintf(stderr, "Sampling at %d Hz... Hit Ctrl-C to end.\n", f.freq)
		<-ctx.Done()
	}
	p, err := t.Profile()
	if err != nil {
		return err
	}
	t.Close()
	fmt.Fprintf(stderr, "%d samples in %.1fs on %d CPUs", p.Total(), p.Duration.Seconds(), p.CPUs)
	if l := p.Lost; l != (profile.Lost{}) {
		fmt.Fprintf(stderr, " (lost: %d samples, %d user stacks, %d kernel stacks; %d processes captured late)",
			l.Samples, l.UserStacks, l.KernelStacks, l.LateCaptures)
	}
	fmt.Fprintln(stderr)
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
		err = p.Tree().WriteSVG(w, flamegraph.Options{
			Title:    "CPU Flame Graph",
			Subtitle: fmt.Sprintf("nettrace profile: %d samples at %d Hz over %.1fs on %d CPUs, %s", p.Total(), p.Frequency, p.Duration.Seconds(), p.CPUs, p.Start.Format(time.RFC3339)),
		})
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(name), err)
	}
	return nil
}
