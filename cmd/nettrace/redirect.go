package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/tracers/redirect"
)

func init() { subcommands = append(subcommands, newRedirect) }

func newRedirect() *cobra.Command {
	var pinDir string
	cmd := &cobra.Command{
		Use:   "redirect",
		Short: "Safe sockops/sk_msg short-cut for loopback TCP: enable, status, disable",
		Long: `redirect hands sends between two established loopback TCP sockets of a
cgroup v2 straight to the peer's receive queue, skipping the TCP/IP stack,
only when that cannot lose or reorder data; every other send goes through TCP
and is counted with its reason (see status). It stays pinned under
/sys/fs/bpf/nettrace/redirect after enable exits; disable drains it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	cmd.PersistentFlags().StringVar(&pinDir, "pin-dir", redirect.DefaultPinDir, "bpffs directory holding the pinned objects")
	_ = cmd.PersistentFlags().MarkHidden("pin-dir")

	var (
		cgroup string
		ports  string
		comm   string
	)
	enable := &cobra.Command{
		Use:   "enable",
		Short: "Attach to a cgroup v2 and pin (default: the root of the cgroup v2 mount)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := parsePorts(ports)
			if err != nil {
				return usageError{err}
			}
			if len(comm) > 15 {
				return usageError{fmt.Errorf("--comm %q: a comm has at most 15 bytes", comm)}
			}
			if err := requireCaps(redirect.Caps...); err != nil {
				return err
			}
			if err := redirect.Enable(redirect.Options{Cgroup: cgroup, Ports: ps, PinDir: pinDir, Comm: comm}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "redirect enabled, pinned in %s\n", pinDir)
			return nil
		},
	}
	enable.Flags().StringVar(&cgroup, "cgroup", "", "cgroup v2 directory whose sockets are redirected (default: the cgroup v2 root)")
	enable.Flags().StringVar(&ports, "ports", "", "only connections with one of these ports at either end, e.g. 8080,6379")
	enable.Flags().StringVar(&comm, "comm", "", "only between sockets whose sending tasks have this comm at both ends (a peer that never sent is not redirected to)")

	var format string
	status := &cobra.Command{
		Use:   "status",
		Short: "What is attached, sockets in the map, bytes redirected, and misses by reason",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := output.ParseFormat(format)
			if err != nil {
				return usageError{err}
			}
			if err := requireCaps(redirect.Caps...); err != nil {
				return err
			}
			st, err := redirect.ReadStatus(pinDir)
			if err != nil {
				return err
			}
			if f == output.JSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(st)
			}
			return writeRedirectStatus(cmd.OutOrStdout(), st)
		},
	}
	status.Flags().StringVarP(&format, "output", "o", "table", "table or json")

	var timeout time.Duration
	disable := &cobra.Command{
		Use:   "disable",
		Short: "Stop redirecting, wait for redirected data to be read, then remove everything",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return usageError{errors.New("--timeout must be positive")}
			}
			if err := requireCaps(redirect.Caps...); err != nil {
				return err
			}
			res, err := redirect.Disable(pinDir, timeout)
			if err != nil {
				return err
			}
			if !res.WasEnabled {
				fmt.Fprintln(cmd.OutOrStdout(), "redirect was not enabled")
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "redirect disabled: %d sockets drained in %v\n", res.Drained, res.Waited.Round(time.Millisecond))
			return nil
		},
	}
	disable.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for readers to drain redirected data")
	cmd.AddCommand(enable, status, disable)
	return cmd
}

func parsePorts(s string) ([]uint16, error) {
	if s == "" {
		return nil, nil
	}
	var ps []uint16
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("parse --ports: %q is not a port", f)
		}
		ps = append(ps, uint16(n))
	}
	if len(ps) > redirect.MaxPorts {
		return nil, fmt.Errorf("parse --ports: at most %d ports", redirect.MaxPorts)
	}
	return ps, nil
}

func writeRedirectStatus(w io.Writer, st *redirect.Status) error {
	state := "disabled"
	switch {
	case st.Draining:
		state = "draining"
	case st.Enabled:
		state = "enabled"
	case len(st.Pins) > 0:
		state = "partly enabled (run disable)"
	}
	c := st.Counters
	fmt.Fprintf(w, "redirect: %s (%s)\n", state, st.PinDir)
	if len(st.Pins) == 0 {
		return nil
	}
	rows := [][]string{
		{"cgroup", fmt.Sprintf("%s (id %d)", st.Cgroup, st.CgroupID)},
		{"sockops program", fmt.Sprintf("id %d, attached per kernel: %v", st.SockopsProgID, st.SockopsAttached)},
		{"sk_msg programs", fmt.Sprint(st.SkMsgProgIDs)},
		{"sockets in map", fmt.Sprint(st.Sockets)},
		{"queued bytes", fmt.Sprint(st.QueuedBytes)},
		{"redirected", fmt.Sprintf("%d msgs, %d bytes", c.RedirectedMsgs, c.RedirectedBytes)},
		{"through TCP", fmt.Sprintf("%d msgs, %d bytes", c.PassedMsgs, c.PassedBytes)},
	}
	for _, r := range redirect.MissReasons {
		rows = append(rows, []string{"  miss: " + r, fmt.Sprint(c.Misses[r])})
	}
	rows = append(rows,
		[]string{"sockets added", fmt.Sprintf("%d (%d failed, %d refused while draining)", c.SocketsAdded, c.SocketAddFailed, c.NotAddedDraining)},
		[]string{"splice readers", fmt.Sprintf("%d marked (%d failed), %d stranded with %d bytes", c.SpliceMarked, c.SpliceMarkFailed, c.SpliceStranded, c.SpliceStrandedBytes)},
		[]string{"bulk senders", fmt.Sprintf("%d left the map, %d peers with them (%d leaves put off)", c.SocketsLeftBulk, c.PeersLeft, c.LeaveDeferred)},
	)
	return output.WriteTable(w, []string{"WHAT", "VALUE"}, rows)
}
