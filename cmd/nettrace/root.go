package main

import (
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/kernel"
)

// usageError marks bad command-line input (exit status 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

var globals struct {
	attach  string
	tier    attach.Tier
	verbose bool
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "nettrace",
		Short:         "Show where a Linux server loses time and connections on the network path",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			t, err := attach.ParseTier(globals.attach)
			if err != nil {
				return usageError{err}
			}
			globals.tier = t
			return nil
		},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see %s --help)", err, cmd.CommandPath())}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&globals.attach, "attach", "auto", "attach tier: auto, fentry, kprobe or tracepoint (fails if the tier is not available)")
	pf.BoolVarP(&globals.verbose, "verbose", "v", false, "print full errors, with verifier logs")
	root.AddCommand(newDoctor())
	// Unknown subcommands are usage errors too.
	root.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Errorf("unknown command %q (see nettrace --help)", args[0])}
		}
		return nil
	}
	root.RunE = func(cmd *cobra.Command, args []string) error { return cmd.Help() }
	return root
}

// requireCaps fails with one line naming each missing capability.
func requireCaps(caps ...kernel.Cap) error {
	return kernel.RequireCaps(caps...)
}

// parsePID checks that a PID names a running process.
func parsePID(pid int) error {
	if pid <= 0 {
		return usageError{fmt.Errorf("invalid PID %d", pid)}
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
		return usageError{fmt.Errorf("process %d does not exist", pid)}
	}
	return nil
}
