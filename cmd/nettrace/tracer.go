package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/output"
)

// framer is what a live tracer command runs: a tracer that turns its
// per-interval snapshot into an output frame (header, warnings, rows).
type framer interface {
	Frame(now time.Time) (output.Frame, error)
	Close() error
}

// tracerCommand holds what every live tracer command shares: the output
// flags, the sort check, the capability check, and the run loop that closes
// the tracer on exit, Ctrl-C or SIGTERM.
type tracerCommand struct {
	out     output.Options
	rowType any // a zero row value, to check --sort against
	caps    []kernel.Cap
}

// addFlags registers -i, -c, -d, --sort, --top and -o.
func (tc *tracerCommand) addFlags(cmd *cobra.Command) {
	output.AddFlags(cmd.Flags(), &tc.out)
}

// validate checks the output flags (a usage error when bad) and privileges.
func (tc *tracerCommand) validate() error {
	if err := tc.out.Validate(); err != nil {
		return usageError{err}
	}
	if tc.out.Sort != "" {
		if err := output.ValidateSort(tc.rowType, tc.out.Sort); err != nil {
			return usageError{err}
		}
	}
	return requireCaps(tc.caps...)
}

// run opens the tracer and prints a frame every interval until -c, -d, or
// the command's context ends (Ctrl-C, SIGTERM), then detaches everything.
func (tc *tracerCommand) run(cmd *cobra.Command, open func() (framer, error)) error {
	if err := tc.validate(); err != nil {
		return err
	}
	t, err := open()
	if err != nil {
		return err
	}
	defer t.Close()
	if tc.out.Out == nil {
		tc.out.Out = cmd.OutOrStdout()
	}
	return output.Run(cmd.Context(), tc.out, t.Frame)
}
