package main

import (
	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/tracers/softirq"
	"github.com/nettrace/nettrace/tracers/softirq/dist"
)

func init() { subcommands = append(subcommands, newSoftirq) }

func newSoftirq() *cobra.Command {
	tc := &tracerCommand{rowType: softirq.Row{}, caps: []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon}}
	var distFlag bool
	cmd := &cobra.Command{
		Use:   "softirq",
		Short: "Softirq count, time and duration per CPU and vector, softnet drops and squeezes, ksoftirqd CPU",
		Long: `Softirq count, time and duration per CPU and vector (HI, TIMER, NET_TX,
NET_RX, ...) from the softirq_entry/softirq_exit tracepoints. The NET_RX row
of each CPU also carries that CPU's /proc/net/softnet_stat deltas (packets
processed, dropped for a full backlog, time_squeeze) and its ksoftirqd
thread's share of the CPU. Counts are system-wide, like /proc/softirqs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if distFlag {
				tc.rowType = dist.Row{}
			}
			return tc.run(cmd, func() (framer, error) {
				return softirq.New(softirq.Options{Tier: globals.tier, Dist: distFlag})
			})
		},
	}
	tc.addFlags(cmd)
	cmd.Flags().BoolVarP(&distFlag, "dist", "D", false, "print each vector's duration histogram instead of the per-CPU rows")
	return cmd
}
