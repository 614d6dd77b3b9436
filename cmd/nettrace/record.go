package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/internal/bundle"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/record"
)

func init() { subcommands = append(subcommands, newRecord, newCompare) }

func newRecord() *cobra.Command {
	var (
		o       record.Options
		tracers []string
		pid     int
	)
	cmd := &cobra.Command{
		Use:   "record --out DIR [flags] [-- COMMAND ARGS...]",
		Short: "Capture the tracers (and a profile) around a load test into one directory",
		Long: `Starts the tracers, runs COMMAND if one is given (a load generator such as
wrk, or a test script), and stops when it exits, at -d, or on Ctrl-C. DIR then
holds meta.json (times, host, kernel, CPUs, version, tiers, command line and
exit code), settings-before.json and settings-after.json (the doctor audit),
<tracer>.ndjson (each interval, as -o json prints it), profile.pb.gz,
profile.folded and profile.svg with --profile, command.stdout and
command.stderr, and summary.txt (headline figures, warnings that fired).

COMMAND runs in nettrace's own network namespace, with its output going to
the bundle only; to watch a server in another namespace, give --netns (or
-p) and run the command with ip netns exec or nsenter. A command still
running at -d gets SIGTERM, then SIGKILL after 5 seconds. A record stopped
by Ctrl-C before -d or the command's end is marked incomplete.`,
		Example: `  nettrace record --out before -- wrk -t2 -c400 -d30s http://127.0.0.1:8080/
  nettrace record --out after --profile --tracers listen,sched -d 60s
  nettrace compare before after`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dash := cmd.ArgsLenAtDash(); dash < 0 && len(args) > 0 || dash > 0 {
				return usageError{fmt.Errorf("unexpected argument %q: put the command to run after --", args[0])}
			}
			if o.Dir == "" {
				return usageError{fmt.Errorf("--out DIR is required")}
			}
			if o.Duration < 0 || o.Interval <= 0 {
				return usageError{fmt.Errorf("invalid duration or interval")}
			}
			var err error
			if o.Tracers, err = record.ParseTracers(tracers); err != nil {
				return usageError{err}
			}
			if o.NetnsPath, err = resolveNetns(pid, o.NetnsPath); err != nil {
				return err
			}
			o.Command = args
			if err := requireCaps(kernel.CapBPF, kernel.CapPerfmon, kernel.CapSysAdmin); err != nil {
				return err
			}
			o.Tier, o.Version, o.Args = globals.tier, version, os.Args
			o.Progress, o.Log = os.Stderr, cmd.ErrOrStderr()
			start := time.Now()
			m, err := record.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "recorded %.1fs into %s (%s", time.Since(start).Seconds(), o.Dir, m.Status)
			if m.StopReason != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), ": %s", m.StopReason)
			}
			fmt.Fprintln(cmd.ErrOrStderr(), ")")
			summary, err := os.ReadFile(filepath.Join(o.Dir, bundle.SummaryFile))
			if err == nil {
				_, err = cmd.OutOrStdout().Write(summary)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "out", "", "directory to write the record to (must not exist or be empty)")
	f.BoolVar(&o.Force, "force", false, "write into a non-empty DIR, replacing a previous record there")
	f.DurationVarP(&o.Duration, "duration", "d", 0, "stop after this long (0: when COMMAND exits, or on Ctrl-C)")
	f.DurationVarP(&o.Interval, "interval", "i", time.Second, "interval between snapshots")
	f.StringSliceVar(&tracers, "tracers", record.Names(), "tracers to run: "+strings.Join(record.Names(), ","))
	f.BoolVar(&o.Profile, "profile", false, "also sample on-CPU stacks: profile.pb.gz, profile.folded, profile.svg")
	f.StringVar(&o.NetnsPath, "netns", "", "network namespace the ports, listen and timewait tracers watch")
	f.IntVarP(&pid, "pid", "p", 0, "watch this process's network namespace")
	f.BoolVar(&o.Syscalls, "syscalls", false, "tracepoint tier: ports and listen also hook the connect and accept system calls (see their --syscalls)")
	return cmd
}

func newCompare() *cobra.Command {
	var (
		out   string
		graph string
	)
	cmd := &cobra.Command{
		Use:   "compare DIR_A DIR_B",
		Short: "Compare two records: headline figures, warnings, conditions, differential flame graph",
		Long: `Puts the headline figures of two records side by side with their change
(totals and mean rates for counts, time-weighted means, peaks), lists the
warnings that appeared or cleared, and says where the two runs' conditions
differ (kernel, CPUs, settings, command line): a comparison is fair only when
the one change you made is the only difference. When both records have a
profile, writes a differential flame graph (B coloured by its change from A).`,
		Example: `  nettrace compare before after
  nettrace compare before after -o json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError{fmt.Errorf("compare takes two record directories, DIR_A and DIR_B (got %d)", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if out != "table" && out != "json" {
				return usageError{fmt.Errorf("unknown output format %q: want table or json", out)}
			}
			a, err := bundle.Load(args[0])
			if err != nil {
				return err
			}
			b, err := bundle.Load(args[1])
			if err != nil {
				return err
			}
			c := record.Compare(a, b)
			if graph == "" {
				graph = a.Name() + "-vs-" + b.Name() + ".svg"
			}
			if graph != "none" {
				ok, err := record.WriteDiffFlameGraph(graph, a, b)
				if err != nil {
					return err
				}
				if ok {
					c.FlameGraph = graph
				}
			}
			if out == "json" {
				return c.WriteJSON(cmd.OutOrStdout())
			}
			return c.WriteText(cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "table", "output format: table or json")
	cmd.Flags().StringVar(&graph, "flamegraph", "", `differential flame graph file, when both records have a profile (default "A-vs-B.svg"; "none": do not write one)`)
	return cmd
}
