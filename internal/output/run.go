package output

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ANSI cursor home and clear screen, to redraw a frame in place.
const clearScreen = "\x1b[H\x1b[2J"

// Run calls snap at the end of every interval and renders the frame it
// returns, until opts.Count frames are out, opts.Duration has elapsed (the
// last interval is then cut short) or ctx is done. On a terminal (or with
// opts.Live set) each frame redraws the screen; otherwise frames are appended.
//
// When ctx is cancelled (Ctrl-C), a table run prints "summary" and the last
// frame in append mode, so it stays on screen after exit; if no frame was out
// yet, it takes one for the partial interval. JSON runs print nothing extra.
// Run returns nil then. A snap or write error stops Run and is returned.
//
// A frame without Time or Interval gets the wake-up time and the time since
// the previous one.
func Run(ctx context.Context, opts Options, snap func(now time.Time) (Frame, error)) error {
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	live := isTerminal(opts.Out)
	if opts.Live != nil {
		live = *opts.Live
	}
	live = live && opts.Format == Table

	start := time.Now()
	next := start.Add(opts.Interval)
	timer := time.NewTimer(opts.Interval)
	defer timer.Stop()
	var (
		last Frame
		prev = start
	)
	take := func(now time.Time) (Frame, error) {
		f, err := snap(now)
		if err != nil {
			return f, fmt.Errorf("take snapshot: %w", err)
		}
		if f.Time.IsZero() {
			f.Time = now
		}
		if f.Interval == 0 {
			f.Interval = now.Sub(prev)
		}
		prev = now
		return f, nil
	}
	for n := 0; ; {
		wake, final := next, false
		if opts.Duration > 0 && !start.Add(opts.Duration).After(next) {
			wake, final = start.Add(opts.Duration), true
		}
		timer.Reset(time.Until(wake))
		var now time.Time
		select {
		case <-ctx.Done():
		case now = <-timer.C:
		}
		// A cancel wins over a tick that is due at the same time (a
		// frame that took longer than the interval).
		if ctx.Err() != nil {
			if opts.Format != Table {
				return nil
			}
			if n == 0 {
				f, err := take(time.Now())
				if err != nil {
					return err
				}
				last = f
			}
			return summary(opts, last)
		}
		f, err := take(now)
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		if live {
			buf.WriteString(clearScreen)
		} else if n > 0 && opts.Format == Table {
			buf.WriteByte('\n')
		}
		if err := Render(&buf, f, opts); err != nil {
			return fmt.Errorf("render %s frame: %w", f.Tracer, err)
		}
		if _, err := opts.Out.Write(buf.Bytes()); err != nil {
			return fmt.Errorf("write frame: %w", err)
		}
		last = f
		n++
		if final || (opts.Count > 0 && n >= opts.Count) {
			return nil
		}
		next = next.Add(opts.Interval)
		if next.Before(now) { // snap or write fell behind; skip missed ticks
			next = now.Add(opts.Interval)
		}
	}
}

// summary prints "summary" and f in append mode.
func summary(opts Options, f Frame) error {
	var buf bytes.Buffer
	buf.WriteString("\nsummary\n")
	if err := Render(&buf, f, opts); err != nil {
		return fmt.Errorf("render %s summary: %w", f.Tracer, err)
	}
	if _, err := opts.Out.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	return nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
