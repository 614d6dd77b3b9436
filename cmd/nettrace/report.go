package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/nettrace/nettrace/internal/bundle"
	"github.com/nettrace/nettrace/internal/report"
)

func init() { subcommands = append(subcommands, newReport) }

func newReport() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "report DIR [DIR_B]",
		Short: "Write one self-contained HTML page showing a record, or two records on the same axes",
		Long: `Reads the bundle(s) nettrace record wrote and writes one HTML file that
needs nothing else to open (no network fetches; charts are inline SVG): a
header per run, a time-series chart per headline figure (with two runs, both
on the same axes), the warnings that fired, the settings before and after,
and the flame graph (with two profiled runs, also a differential one).

The file goes to DIR/report.html for one run, and to
./report-A-vs-B.html (A and B the bundles' directory names) for two;
-o sets it (- for stdout). The path written is printed.`,
		Example: `  nettrace report before/
  nettrace report before/ after/ -o somaxconn.html`,
		RunE: func(cmd *cobra.Command, args []string) error { return runReport(cmd, out, args) },
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "output file (default DIR/report.html, or ./report-A-vs-B.html for two runs; - for stdout)")
	return cmd
}

func runReport(cmd *cobra.Command, out string, args []string) error {
	if len(args) < 1 || len(args) > 2 {
		return usageError{fmt.Errorf("report takes one or two record directories, got %d (see nettrace report --help)", len(args))}
	}
	var runs []*bundle.Bundle
	for _, dir := range args {
		b, err := bundle.Load(dir)
		if err != nil {
			return err
		}
		runs = append(runs, b)
	}
	if out == "" {
		out = defaultReportPath(runs)
	}
	if out == "-" {
		return report.Write(cmd.OutOrStdout(), runs...)
	}
	if err := writeReportFile(out, runs); err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), out)
	return nil
}

// defaultReportPath is DIR/report.html for one run and
// report-A-vs-B.html in the current directory for two.
func defaultReportPath(runs []*bundle.Bundle) string {
	if len(runs) == 1 {
		return filepath.Join(runs[0].Dir, "report.html")
	}
	return "report-" + runs[0].Name() + "-vs-" + runs[1].Name() + ".html"
}

// writeReportFile writes the report next to its final name and renames it
// into place, so a failed write leaves no half page.
func writeReportFile(path string, runs []*bundle.Bundle) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".report-*.html")
	if err != nil {
		return fmt.Errorf("create report: %w", err)
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 1<<16)
	err = report.Write(bw, runs...)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
