package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/tracers/timewait"
)

func init() { subcommands = append(subcommands, newTimewait) }

func newTimewait() *cobra.Command {
	tc := &tracerCommand{rowType: timewait.NetnsRow{}, caps: timewait.Caps}
	var (
		paths []string
		all   bool
		pid   int
	)
	cmd := &cobra.Command{
		Use:   "timewait",
		Short: "TIME_WAIT and other closing TCP states by rate, age and destination, and who closes first",
		Long: `timewait counts TIME_WAIT, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK and CLOSING sockets
per (local address, remote address:port) — per (local address:port, client
address) on the server side — with the TIME_WAIT sockets created and expired
per second, their age, the share of the ephemeral port range they hold, and
which end closed first. It warns when TIME_WAIT holds most of the port range
toward a destination, when a server closes first and collects TIME_WAIT, when
CLOSE_WAIT grows, and when tcp_max_tw_buckets overflows.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if all && (len(paths) > 0 || pid != 0) {
				return usageError{errors.New("--all-netns excludes --netns and --pid")}
			}
			if pid != 0 {
				p, err := resolveNetns(pid, "")
				if err != nil {
					return err
				}
				paths = append(paths, p)
			}
			for _, p := range paths {
				if _, err := resolveNetns(0, p); err != nil {
					return err
				}
			}
			if tc.out.Sort == "netns" && !all && len(paths) < 2 {
				return usageError{errors.New("--sort netns needs --all-netns or several --netns")}
			}
			return tc.run(cmd, func() (framer, error) {
				return timewait.New(timewait.Options{Netns: paths, AllNetns: all, Tier: globals.tier})
			})
		},
	}
	tc.addFlags(cmd)
	f := cmd.Flags()
	f.StringArrayVar(&paths, "netns", nil, "watch this network namespace (e.g. /var/run/netns/NAME); repeatable")
	f.BoolVar(&all, "all-netns", false, "watch every network namespace (processes' and /var/run/netns), found again each interval")
	f.IntVarP(&pid, "pid", "p", 0, "watch the network namespace of this process")
	return cmd
}
