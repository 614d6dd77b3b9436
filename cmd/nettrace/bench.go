package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/tracers/redirect"
	"github.com/nettrace/nettrace/tracers/redirect/bench"
)

func init() { subcommands = append(subcommands, newBench) }

func newBench() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmarks: loopback TCP, plain and redirected",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	var (
		opts   bench.Options
		sizes  string
		format string
	)
	loopback := &cobra.Command{
		Use:   "loopback",
		Short: "Ping-pong round trips and one-way throughput over loopback TCP, every byte checked",
		Long: `loopback measures, for each message size, ping-pong round trips (rate,
p50/p99 latency) and one-way throughput over 127.0.0.1, with every byte
received compared to what was sent (any difference is an error). With
--redirect it measures each size again with redirect enabled on a private
cgroup (or --cgroup) that this process moves into, and disables it after;
nothing stays attached when it exits or is interrupted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := output.ParseFormat(format)
			if err != nil {
				return usageError{err}
			}
			if opts.Sizes, err = bench.ParseSizes(sizes); err != nil {
				return usageError{err}
			}
			if opts.Duration <= 0 || opts.Conns <= 0 {
				return usageError{errors.New("-d and --conns must be positive")}
			}
			if opts.Cgroup != "" && !opts.Redirect {
				return usageError{errors.New("--cgroup needs --redirect")}
			}
			if opts.Redirect {
				if err := requireCaps(redirect.Caps...); err != nil {
					return err
				}
			}
			rep, err := bench.Run(cmd.Context(), opts)
			if err != nil {
				return err
			}
			if f == output.JSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(rep)
			}
			return writeBench(cmd.OutOrStdout(), rep)
		},
	}
	fl := loopback.Flags()
	fl.BoolVar(&opts.Redirect, "redirect", false, "also measure each size with redirect enabled")
	fl.StringVar(&sizes, "sizes", "64,1k,64k,1m", "message sizes in bytes (k = KiB, m = MiB)")
	fl.DurationVarP(&opts.Duration, "duration", "d", 2*time.Second, "per size, test and mode")
	fl.IntVar(&opts.Conns, "conns", 1, "concurrent connections")
	fl.StringVar(&opts.Cgroup, "cgroup", "", "with --redirect: cgroup v2 to run in and enable on (default: a private one)")
	fl.StringVarP(&format, "output", "o", "table", "table or json")
	fl.StringVar(&opts.Netns, "netns", "", "network namespace file to run in (e.g. /run/netns/NAME)")
	_ = fl.MarkHidden("netns")
	cmd.AddCommand(loopback)
	return cmd
}

func writeBench(w io.Writer, rep *bench.Report) error {
	fmt.Fprintf(w, "loopback TCP, Linux %s, %d CPUs, %d conns, %v per size and test\n", rep.Kernel, rep.CPUs, rep.Conns, time.Duration(rep.DurationNs))
	headers := []string{"SIZE", "RT/s", "p50 µs", "p99 µs", "MB/s", "CHECKED"}
	redirected := len(rep.Results) > 0 && rep.Results[0].Redirect != nil
	if redirected {
		headers = []string{"SIZE", "RT/s", "REDIR RT/s", "x", "p50 µs", "REDIR", "p99 µs", "REDIR", "MB/s", "REDIR MB/s", "x", "REDIRECTED RT / STREAM", "sk_msg ns", "CHECKED"}
	}
	var rows [][]string
	for _, r := range rep.Results {
		p := r.Plain
		if !redirected {
			rows = append(rows, []string{sizeName(r.Size), f0(p.RoundTripsPerS), f1(p.P50Us), f1(p.P99Us), f1(p.MBPerS), sizeName(int(p.CheckedBytes))})
			continue
		}
		d := *r.Redirect
		share := pct(d.PingPongRedirectedBytes, d.PingPongPassedBytes) + " / " + pct(d.StreamRedirectedBytes, uint64(max(d.StreamBytes, int64(d.StreamRedirectedBytes)))-d.StreamRedirectedBytes)
		rows = append(rows, []string{sizeName(r.Size),
			f0(p.RoundTripsPerS), f0(d.RoundTripsPerS), ratio(d.RoundTripsPerS, p.RoundTripsPerS),
			f1(p.P50Us), f1(d.P50Us), f1(p.P99Us), f1(d.P99Us),
			f1(p.MBPerS), f1(d.MBPerS), ratio(d.MBPerS, p.MBPerS),
			share, f0(d.MsgNsPerRun), sizeName(int(p.CheckedBytes + d.CheckedBytes))})
	}
	return output.WriteTable(w, headers, rows)
}

// pct is the share of redirected bytes.
func pct(redir, passed uint64) string {
	if redir+passed == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(redir)/float64(redir+passed))
}

func f0(v float64) string { return fmt.Sprintf("%.0f", v) }
func f1(v float64) string { return fmt.Sprintf("%.1f", v) }

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// sizeName prints a byte count in the largest unit that divides it, or
// with one decimal above 10 MiB.
func sizeName(n int) string {
	switch {
	case n >= 10<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return fmt.Sprint(n)
}
