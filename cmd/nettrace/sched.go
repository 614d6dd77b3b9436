package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/tracers/sched"
	"github.com/nettrace/nettrace/tracers/softirq/dist"
)

func init() { subcommands = append(subcommands, newSched) }

func newSched() *cobra.Command {
	tc := &tracerCommand{rowType: sched.Row{}, caps: []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon}}
	var (
		opts     sched.Options
		distFlag bool
	)
	cmd := &cobra.Command{
		Use:   "sched",
		Short: "Context switches, run-queue delay, off-CPU and on-CPU time per process or thread",
		Long: `Per process (per thread with -T): voluntary and involuntary context
switches, run-queue delay (from wakeup or preemption to running) p50, p99
and max, off-CPU and on-CPU time, from the sched_switch and sched_wakeup
tracepoints. The header has the selection's totals, its average number of
runnable threads (on-CPU plus run-queue time per second) and its run-queue
delay percentiles; -D prints the run-queue delay histogram instead of rows.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.PID != 0 {
				if err := parsePID(opts.PID); err != nil {
					return err
				}
			}
			if opts.MinBlock < 0 {
				return usageError{fmt.Errorf("check --min-block: %v is negative", opts.MinBlock)}
			}
			if opts.MaxTasks < 0 {
				return usageError{fmt.Errorf("check --max-tasks: %d is negative", opts.MaxTasks)}
			}
			switch {
			case distFlag:
				tc.rowType = dist.Row{}
			case opts.Threads:
				tc.rowType = sched.ThreadRow{}
			}
			opts.Tier, opts.Dist = globals.tier, distFlag
			return tc.run(cmd, func() (framer, error) { return sched.New(opts) })
		},
	}
	tc.addFlags(cmd)
	fs := cmd.Flags()
	fs.IntVarP(&opts.PID, "pid", "p", 0, "only this process")
	fs.StringVar(&opts.Comm, "comm", "", "only threads whose name contains this")
	fs.StringVar(&opts.Cgroup, "cgroup", "", "only tasks in this cgroup v2 directory or below it (absolute, or relative to the cgroup2 mount)")
	fs.BoolVarP(&opts.Threads, "threads", "T", false, "one row per thread")
	fs.DurationVar(&opts.MinBlock, "min-block", 0, "count only off-CPU spans at least this long (e.g. 1ms)")
	fs.IntVar(&opts.MaxTasks, "max-tasks", sched.DefaultMaxTasks, "threads tracked at once")
	fs.BoolVarP(&distFlag, "dist", "D", false, "print the run-queue delay histogram instead of the rows")
	return cmd
}
