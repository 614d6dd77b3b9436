package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/flamegraph"
)

func init() { subcommands = append(subcommands, newFlamegraph) }

// notifyContext ends at the next SIGINT or SIGTERM.
func notifyContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

type flamegraphFlags struct {
	out        string
	opts       flamegraph.Options
	reverse    bool
	diff       bool
	sampleType string
}

func newFlamegraph() *cobra.Command {
	var f flamegraphFlags
	cmd := &cobra.Command{
		Use:   "flamegraph [FILE...] | --diff BEFORE AFTER",
		Short: "Draw an interactive SVG flame graph from folded stacks, perf script output or a pprof file",
		Long: `Reads folded stacks ("root;...;leaf count" lines, from nettrace profile,
bcc's profile -f or the stackcollapse scripts), perf script output, or a pprof
file (the format is detected; several files are merged; none or - reads
stdin), and writes an interactive SVG flame graph in the manner of
flamegraph.pl: click to zoom, Search for a regular expression (with the
matched share), hover for counts. With -o NAME.folded it writes the merged
folded stacks instead.

--diff BEFORE AFTER draws AFTER's shape coloured by the change from BEFORE:
red grew, blue shrank, every frame by its own inclusive total; --normalize
scales BEFORE to AFTER's total first; --negate draws BEFORE's shape, so
what vanished shows (in blue).`,
		Example: `  nettrace profile -d 10s | nettrace flamegraph > cpu.svg
  perf script | nettrace flamegraph --title "perf" -o perf.svg
  nettrace flamegraph --diff before.folded after.folded --normalize -o diff.svg`,
		RunE: func(cmd *cobra.Command, args []string) error { return runFlamegraph(cmd, f, args) },
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.out, "output", "o", "-", "output file: .svg or .folded (- for SVG on stdout)")
	fl.StringVar(&f.opts.Title, "title", "", "title (default \"Flame Graph\")")
	fl.StringVar(&f.opts.Subtitle, "subtitle", "", "second title line")
	fl.IntVar(&f.opts.Width, "width", 1200, "image width in pixels")
	fl.IntVar(&f.opts.FrameH, "height", 16, "frame height in pixels")
	fl.StringVar(&f.opts.CountName, "countname", "samples", "what the counts are")
	fl.StringVar(&f.opts.Palette, "colors", "hot", "palette: "+strings.Join(flamegraph.Palettes, ", "))
	fl.BoolVar(&f.opts.Inverted, "inverted", false, "icicle graph: root at the top")
	fl.BoolVar(&f.reverse, "reverse", false, "reverse the stacks (leaf becomes root): merges callers of the hottest functions")
	fl.Float64Var(&f.opts.MinWidth, "minwidth", 0.1, "omit frames narrower than this many pixels")
	fl.BoolVar(&f.diff, "diff", false, "differential flame graph of two profiles: BEFORE AFTER")
	fl.BoolVar(&f.opts.Normalize, "normalize", false, "with --diff: scale BEFORE to AFTER's total")
	fl.BoolVar(&f.opts.Negate, "negate", false, "with --diff: draw BEFORE's shape (shows what vanished)")
	fl.StringVar(&f.sampleType, "sample-type", "", "pprof input: the sample type to draw (default: the profile's default)")
	return cmd
}

func runFlamegraph(cmd *cobra.Command, f flamegraphFlags, args []string) error {
	svg := !strings.HasSuffix(f.out, ".folded")
	if f.out != "-" && svg && !strings.HasSuffix(f.out, ".svg") {
		return usageError{fmt.Errorf("unknown output %q: want a .svg or .folded file name, or - for stdout", f.out)}
	}
	if !flamegraph.ValidPalette(f.opts.Palette) {
		return usageError{fmt.Errorf("unknown palette %q: want one of %s", f.opts.Palette, strings.Join(flamegraph.Palettes, ", "))}
	}
	if f.opts.Width <= 0 || f.opts.FrameH <= 0 || f.opts.MinWidth < 0 {
		return usageError{fmt.Errorf("invalid size: --width and --height must be positive, --minwidth not negative")}
	}
	if f.diff && len(args) != 2 {
		return usageError{fmt.Errorf("--diff takes two profiles, BEFORE and AFTER (got %d)", len(args))}
	}
	if !f.diff && (f.opts.Normalize || f.opts.Negate) {
		return usageError{fmt.Errorf("--normalize and --negate need --diff")}
	}
	if len(args) == 0 {
		args = []string{"-"}
	}
	tree := flamegraph.NewTree()
	for i, name := range args {
		add := tree.Add
		if f.diff && i == 0 {
			add = tree.AddBefore
		}
		if f.reverse {
			inner := add
			add = func(frames []string, n int64) {
				rev := make([]string, len(frames))
				for j, s := range frames {
					rev[len(frames)-1-j] = s
				}
				inner(rev, n)
			}
		}
		if err := readProfileFile(cmd.InOrStdin(), name, f.sampleType, add); err != nil {
			return usageError{err}
		}
	}
	var w io.Writer = cmd.OutOrStdout()
	var file *os.File
	if f.out != "-" {
		var err error
		if file, err = os.Create(f.out); err != nil {
			return fmt.Errorf("create %s: %w", f.out, err)
		}
		defer file.Close()
		w = file
	}
	bw := bufio.NewWriterSize(w, 1<<16)
	var err error
	if svg {
		f.opts.Diff = f.diff
		err = tree.WriteSVG(bw, f.opts)
	} else {
		err = tree.WriteFolded(bw)
	}
	if err == nil {
		err = bw.Flush()
	}
	if err == nil && file != nil {
		err = file.Close()
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", f.out, err)
	}
	return nil
}

// readProfileFile reads one input ("-" is stdin) in any format Read knows.
func readProfileFile(stdin io.Reader, name, sampleType string, add flamegraph.AddFunc) error {
	r := stdin
	if name != "-" {
		fh, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("open %s: %w", name, err)
		}
		defer fh.Close()
		r = fh
	}
	var err error
	if sampleType != "" {
		err = flamegraph.ReadPprofFile(r, sampleType, add)
	} else {
		_, err = flamegraph.Read(r, add)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return nil
}
