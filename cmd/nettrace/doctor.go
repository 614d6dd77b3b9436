package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/internal/doctor"
	"github.com/nettrace/nettrace/internal/kernel"
)

func newDoctor() *cobra.Command {
	var (
		opts   doctor.Options
		format string
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the kernel, the attach method each tracer gets, and the network settings",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != "table" && format != "json" {
				return usageError{fmt.Errorf("unknown output format %q: want table or json", format)}
			}
			p, err := resolveNetns(opts.PID, opts.NetnsPath)
			if err != nil {
				return err
			}
			opts.NetnsPath = p
			if err := requireCaps(kernel.CapBPF, kernel.CapPerfmon, kernel.CapNetAdmin, kernel.CapSysAdmin); err != nil {
				return err
			}
			opts.Tier = globals.tier
			r, err := doctor.Run(opts)
			if err != nil {
				return err
			}
			if format == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			return r.WriteText(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.NetnsPath, "netns", "", "audit this network namespace (e.g. /var/run/netns/NAME)")
	f.IntVarP(&opts.PID, "pid", "p", 0, "audit the network namespace and RLIMIT_NOFILE of this process")
	f.StringVarP(&format, "output", "o", "table", "output format: table or json")
	return cmd
}
