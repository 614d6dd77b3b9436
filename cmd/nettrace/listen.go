package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/tracers/listen"
)

func init() { subcommands = append(subcommands, newListen) }

func newListen() *cobra.Command {
	var (
		opts listen.Options
		tc   = tracerCommand{rowType: listen.Row{}, caps: []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon, kernel.CapSysAdmin}}
	)
	cmd := &cobra.Command{
		Use:   "listen",
		Short: "Accept-queue depth and listen drops per listening socket",
		Long: `One row per listening TCP socket: its backlog and what set it (listen() or
net.core.somaxconn), accept and SYN queues now and at their peak in the
interval, connections dropped with the accept queue full (overflows), SYN
drops, SYN cookies, SYN-ACK retransmits, and the time from handshake done to
accept() where the attach tier can measure it (fentry and kprobe; the
tracepoint tier with --syscalls). The header has the namespace's sysctls
and its ListenOverflows/ListenDrops/SyncookiesSent.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.Port < 0 || opts.Port > 65535 {
				return usageError{fmt.Errorf("invalid port %d", opts.Port)}
			}
			p, err := resolveNetns(opts.PID, opts.NetnsPath)
			if err != nil {
				return err
			}
			opts.NetnsPath = p
			if opts.Events && tc.out.Sort == "" {
				tc.rowType = listen.DropRow{}
			}
			opts.Tier = globals.tier
			return tc.run(cmd, func() (framer, error) { return listen.New(opts) })
		},
	}
	tc.addFlags(cmd)
	f := cmd.Flags()
	f.IntVar(&opts.Port, "port", 0, "only listeners on this local port")
	f.IntVarP(&opts.PID, "pid", "p", 0, "only listeners this process holds (in its network namespace)")
	f.StringVar(&opts.NetnsPath, "netns", "", "watch this network namespace (e.g. /var/run/netns/NAME)")
	f.BoolVar(&opts.Events, "events", false, "print each drop (time, listener, peer, reason) instead of the per-socket rows")
	f.BoolVar(&opts.Syscalls, "syscalls", false, "tracepoint tier: time accept() with the syscall tracepoints (accept latency); they put every system call on the slow path")
	return cmd
}
