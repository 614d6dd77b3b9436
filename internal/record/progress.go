package record

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/bundle"
	"github.com/nettrace/nettrace/internal/output"
)

// progress is the one-line display on a terminal: elapsed and remaining
// time, and the latest interval's headline figures.
type progress struct {
	w        io.Writer // nil: no display
	start    time.Time
	duration time.Duration
	width    int
}

func newProgress(w io.Writer, start time.Time, d time.Duration) *progress {
	p := &progress{start: start, duration: d, width: 120}
	f, ok := w.(*os.File)
	if !ok {
		return p
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return p // not a terminal
	}
	p.w = w
	if ws.Col > 20 {
		p.width = int(ws.Col) - 1
	}
	return p
}

// short are the headlines the progress line shows, with short labels.
var short = map[string]string{
	"ports.connects":          "connects",
	"ports.failures":          "failed",
	"listen.listen_overflows": "overflows",
	"softirq.softirq_cpu_pct": "softirq",
	"sched.switches":          "cswch",
	"sched.runq_p99_us":       "runq p99",
	"timewait.time_wait":      "TIME_WAIT",
}

// progressLine is the progress text for the latest frames.
func progressLine(elapsed, duration time.Duration, last map[string]output.Frame, names []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "recording %s", elapsed.Truncate(time.Second))
	if duration > 0 {
		left := max(duration-elapsed, 0)
		fmt.Fprintf(&b, " of %s (%s left)", duration, left.Round(time.Second))
	}
	for _, name := range names {
		f, ok := last[name]
		if !ok {
			continue
		}
		for _, h := range bundle.HeadlinesFor(name) {
			for _, fld := range f.Header {
				if fld.Key != h.Key {
					continue
				}
				v, ok := toFloat(fld.Value)
				if !ok {
					continue
				}
				unit := h.Unit
				if h.Kind == bundle.Count && f.Interval > 0 {
					v, unit = v/f.Interval.Seconds(), "/s"
				}
				label, ok := short[h.ID()]
				if !ok {
					continue
				}
				fmt.Fprintf(&b, "  %s %s%s", label, num(v), unit)
			}
		}
	}
	return b.String()
}

func (p *progress) update(now time.Time, last map[string]output.Frame, names []string) {
	if p.w == nil {
		return
	}
	line := progressLine(now.Sub(p.start), p.duration, last, names)
	if len(line) > p.width {
		line = line[:p.width]
	}
	fmt.Fprintf(p.w, "\r\x1b[K%s", line)
}

func (p *progress) done() {
	if p.w != nil {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
}

// toFloat converts a header value to a number.
func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case float32:
		return float64(x), true
	case int:
		return float64(x), true
	case int32:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint:
		return float64(x), true
	case uint32:
		return float64(x), true
	case uint64:
		return float64(x), true
	}
	return 0, false
}
