package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/tracers/ports"
)

func init() { subcommands = append(subcommands, newPorts) }

func newPorts() *cobra.Command {
	tc := &tracerCommand{rowType: ports.Row{}, caps: []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon, kernel.CapSysAdmin}}
	var (
		opts       ports.Options
		dst        string
		ipv4, ipv6 bool
	)
	cmd := &cobra.Command{
		Use:   "ports",
		Short: "connect() and ephemeral port allocation per destination: connects, EADDRNOTAVAIL, port search latency, ports held",
		Long: `connect() and ephemeral port allocation per destination (address:port) in
one network namespace: connects/s, EADDRNOTAVAIL/s and other errors, the
latency of the local port search (time in inet_hash_connect with fentry or
kprobes; on a kernel with tracepoints only, the time from SYN_SENT until
connect() returns, named in the header), the local ports held toward each
destination by state from the socket table, as a share of
ip_local_port_range, and the process that connects most. Warnings name the
fix: a range nearly used up, EADDRNOTAVAIL, slow allocation, TIME_WAIT
holding the range with tcp_tw_reuse=0, clients that bind() before connect().

With --events, prints one line per connect instead (time, process,
source -> destination, latency, result); -c then counts events.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ipv4 && ipv6 {
				return usageError{errors.New("-4 and -6 exclude each other")}
			}
			f, err := ports.ParseDst(dst)
			if err != nil {
				return usageError{err}
			}
			if ipv4 {
				f.Family = 4
			} else if ipv6 {
				f.Family = 6
			}
			opts.Dst = f
			if len(opts.Comm) > 15 {
				return usageError{fmt.Errorf("--comm %q: the kernel keeps 15 characters of a command name", opts.Comm)}
			}
			if opts.Netns, err = resolveNetns(opts.PID, opts.Netns); err != nil {
				return err
			}
			opts.Tier = globals.tier
			if opts.Events {
				return runPortEvents(cmd, tc, opts)
			}
			return tc.run(cmd, func() (framer, error) { return ports.New(opts) })
		},
	}
	tc.addFlags(cmd)
	fl := cmd.Flags()
	fl.IntVarP(&opts.PID, "pid", "p", 0, "only connects of this process (and its network namespace)")
	fl.StringVar(&opts.Comm, "comm", "", "only connects of tasks with this command name")
	fl.StringVar(&dst, "dst", "", "only these destinations: an address, a CIDR prefix, :port or address:port")
	fl.BoolVarP(&ipv4, "ipv4", "4", false, "only IPv4 destinations")
	fl.BoolVarP(&ipv6, "ipv6", "6", false, "only IPv6 destinations")
	fl.StringVar(&opts.Netns, "netns", "", "trace this network namespace (e.g. /var/run/netns/NAME); default: nettrace's, or that of -p")
	fl.BoolVar(&opts.Events, "events", false, "print one line per connect instead of the per-destination table")
	fl.BoolVar(&opts.Syscalls, "syscalls", false, "tracepoint tier: hook connect() with the syscall tracepoints, which also count connects that fail before a SYN (no route, EACCES); they put every system call on the slow path")
	return cmd
}

// eventJSON is an event's NDJSON object.
type eventJSON struct {
	Type      string  `json:"type"`
	Tracer    string  `json:"tracer"`
	Time      string  `json:"time"`
	PID       int     `json:"pid"`
	Comm      string  `json:"comm"`
	Source    string  `json:"source"`
	Dest      string  `json:"dest"`
	LatencyUS float64 `json:"latency_us"`
	ConnectUS float64 `json:"connect_us"`
	Result    string  `json:"result"`
}

// lostJSON reports events the ring buffer could not take.
type lostJSON struct {
	Type   string `json:"type"`
	Tracer string `json:"tracer"`
	Time   string `json:"time"`
	Lost   uint64 `json:"lost_events"`
}

// runPortEvents prints one line per connect until -d, -c events, or Ctrl-C,
// and a line with the count of lost events whenever it grows.
func runPortEvents(cmd *cobra.Command, tc *tracerCommand, opts ports.Options) error {
	if err := tc.validate(); err != nil {
		return err
	}
	tr, err := ports.New(opts)
	if err != nil {
		return err
	}
	defer tr.Close()
	w := tc.out.Out
	if w == nil {
		w = cmd.OutOrStdout()
	}
	ctx := cmd.Context()
	if tc.out.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, tc.out.Duration)
		defer cancel()
	}
	evc := make(chan ports.Event, 1024)
	errc := make(chan error, 1)
	go func() {
		for {
			e, err := tr.ReadEvent()
			if err != nil {
				errc <- err
				return
			}
			evc <- e
		}
	}()
	jsonOut := tc.out.Format == output.JSON
	if !jsonOut {
		fmt.Fprintf(w, "# latency: %s\n%-15s %-7s %-16s %-47s %-47s %10s %10s %s\n", tr.Latency(),
			"TIME", "PID", "COMM", "SOURCE", "DESTINATION", "LAT_us", "CONNECT_us", "RESULT")
	}
	tick := time.NewTicker(tc.out.Interval)
	defer tick.Stop()
	var lost uint64
	n := 0
	for {
		select {
		case <-ctx.Done():
			return reportLost(w, tr, &lost, jsonOut)
		case err := <-errc:
			return err
		case <-tick.C:
			if err := reportLost(w, tr, &lost, jsonOut); err != nil {
				return err
			}
		case e := <-evc:
			if err := writeEvent(w, e, jsonOut); err != nil {
				return err
			}
			if n++; tc.out.Count > 0 && n >= tc.out.Count {
				return nil
			}
		}
	}
}

func writeEvent(w io.Writer, e ports.Event, jsonOut bool) error {
	if jsonOut {
		b, err := json.Marshal(eventJSON{Type: "event", Tracer: "ports", Time: e.Time.Format(time.RFC3339Nano),
			PID: e.PID, Comm: e.Comm, Source: e.Source.String(), Dest: e.Dest.String(),
			LatencyUS: float64(e.LatencyNS) / 1e3, ConnectUS: float64(e.ConnectNS) / 1e3, Result: e.Result()})
		if err != nil {
			return fmt.Errorf("encode event: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintf(w, "%-15s %-7d %-16s %-47s %-47s %10.1f %10.1f %s\n", e.Time.Format("15:04:05.000000"),
		e.PID, e.Comm, e.Source, e.Dest, float64(e.LatencyNS)/1e3, float64(e.ConnectNS)/1e3, e.Result())
	return err
}

func reportLost(w io.Writer, tr *ports.Tracer, lost *uint64, jsonOut bool) error {
	n, err := tr.LostEvents()
	if err != nil || n == *lost {
		return err
	}
	*lost = n
	if jsonOut {
		b, _ := json.Marshal(lostJSON{Type: "lost", Tracer: "ports", Time: time.Now().Format(time.RFC3339Nano), Lost: n})
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	_, err = fmt.Fprintf(w, "# %d events lost so far (ring buffer full)\n", n)
	return err
}
