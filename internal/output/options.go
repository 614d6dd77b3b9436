package output

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"
)

// Format selects how frames are printed.
type Format int

// Output formats.
const (
	Table Format = iota // top-style table
	JSON                // NDJSON: one interval object, then one object per row
)

// String returns the -o name of f.
func (f Format) String() string {
	switch f {
	case Table:
		return "table"
	case JSON:
		return "json"
	}
	return fmt.Sprintf("Format(%d)", int(f))
}

// ParseFormat parses an -o value: "table" or "json".
func ParseFormat(s string) (Format, error) {
	switch s {
	case "table":
		return Table, nil
	case "json":
		return JSON, nil
	}
	return 0, fmt.Errorf("unknown output format %q: want table or json", s)
}

// Options control how often frames are taken and how they are printed.
type Options struct {
	Format   Format
	Interval time.Duration // -i; 1s when zero
	Count    int           // -c; 0 = unlimited
	Duration time.Duration // -d; 0 = unlimited
	Sort     string        // --sort: JSON key of the row struct
	Top      int           // --top N; 0 = all rows
	Out      io.Writer     // os.Stdout when nil
	Live     *bool         // redraw in place; nil = when Out is a terminal

	output string // -o as given; parsed into Format by Validate
}

// AddFlags registers -i/--interval, -c/--count, -d/--duration, --sort,
// --top and -o/--output on fs, storing into o. Call o.Validate after parsing.
func AddFlags(fs *pflag.FlagSet, o *Options) {
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	o.output = o.Format.String()
	fs.DurationVarP(&o.Interval, "interval", "i", o.Interval, "length of one interval")
	fs.IntVarP(&o.Count, "count", "c", o.Count, "stop after this many intervals (0: no limit)")
	fs.DurationVarP(&o.Duration, "duration", "d", o.Duration, "stop after this long (0: no limit)")
	fs.StringVar(&o.Sort, "sort", o.Sort, "sort rows by this JSON key (numbers descending, text ascending)")
	fs.IntVar(&o.Top, "top", o.Top, "show only the first N rows (0: all)")
	fs.StringVarP(&o.output, "output", "o", o.output, "output format: table or json")
}

// Validate checks the flag values and parses -o into o.Format.
func (o *Options) Validate() error {
	if o.output != "" {
		f, err := ParseFormat(o.output)
		if err != nil {
			return err
		}
		o.Format = f
	}
	switch {
	case o.Interval < 0:
		return fmt.Errorf("check interval: %v is negative", o.Interval)
	case o.Count < 0:
		return fmt.Errorf("check count: %d is negative", o.Count)
	case o.Duration < 0:
		return fmt.Errorf("check duration: %v is negative", o.Duration)
	case o.Top < 0:
		return fmt.Errorf("check top: %d is negative", o.Top)
	}
	return nil
}
