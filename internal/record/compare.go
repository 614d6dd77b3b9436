package record

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"

	"github.com/nettrace/nettrace/internal/bundle"
	"github.com/nettrace/nettrace/internal/output"
)

// CompareRow is one headline figure of two records side by side.
type CompareRow struct {
	Tracer   string   `json:"tracer"`
	Key      string   `json:"key"`
	Figure   string   `json:"figure"`
	Unit     string   `json:"unit,omitempty"`
	A        *float64 `json:"a"` // nil: the record has no such figure
	B        *float64 `json:"b"`
	Delta    *float64 `json:"delta,omitempty"`
	DeltaPct *float64 `json:"delta_pct,omitempty"` // nil when A is 0
	RateA    *float64 `json:"a_per_s,omitempty"`   // counts: the mean rate
	RateB    *float64 `json:"b_per_s,omitempty"`
}

// WarningChange is a warning that fired in one record and not the other.
type WarningChange struct {
	Tracer  string `json:"tracer"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"`
}

// Comparison is what `nettrace compare` shows.
type Comparison struct {
	A, B        string              `json:"-"`
	RunA        bundle.Meta         `json:"a"`
	RunB        bundle.Meta         `json:"b"`
	Rows        []CompareRow        `json:"figures"`
	Appeared    []WarningChange     `json:"warnings_appeared"` // in B only
	Cleared     []WarningChange     `json:"warnings_cleared"`  // in A only
	Both        []WarningChange     `json:"warnings_in_both"`
	Differences []bundle.Difference `json:"conditions_differ"`
	Notices     []string            `json:"notices"` // incomplete records, missing tracers
	FlameGraph  string              `json:"flamegraph,omitempty"`
}

// Compare puts two records' headline figures and warnings side by side and
// lists the conditions they differ in.
func Compare(a, b *bundle.Bundle) *Comparison {
	c := &Comparison{A: a.Name(), B: b.Name(), RunA: a.Meta, RunB: b.Meta, Differences: bundle.Differences(a, b)}
	if c.A == c.B {
		c.A, c.B = a.Dir, b.Dir
	}
	sa, sb := statMap(a), statMap(b)
	for _, h := range bundle.Headlines {
		x, okA := sa[h.ID()]
		y, okB := sb[h.ID()]
		if !okA && !okB {
			continue
		}
		r := CompareRow{Tracer: h.Tracer, Key: h.Key, Figure: h.Label, Unit: h.Unit}
		if okA {
			r.A = ptr(x.Value())
			if h.Kind == bundle.Count {
				r.RateA = ptr(x.Mean)
			}
		}
		if okB {
			r.B = ptr(y.Value())
			if h.Kind == bundle.Count {
				r.RateB = ptr(y.Mean)
			}
		}
		if okA && okB {
			r.Delta = ptr(*r.B - *r.A)
			if *r.A != 0 {
				r.DeltaPct = ptr(100 * (*r.B - *r.A) / math.Abs(*r.A))
			}
		}
		c.Rows = append(c.Rows, r)
	}
	// What the load generator itself saw, when it printed a summary.
	fa, fb := figureMap(a), figureMap(b)
	for _, f := range append(a.CommandFigures(), b.CommandFigures()...) {
		if _, done := fa[f.Key+"\x00done"]; done {
			continue
		}
		fa[f.Key+"\x00done"] = bundle.CommandFigure{}
		r := CompareRow{Tracer: "command", Key: f.Key, Figure: f.Label, Unit: f.Unit}
		x, okA := fa[f.Key]
		y, okB := fb[f.Key]
		if okA {
			r.A = ptr(x.Value)
		}
		if okB {
			r.B = ptr(y.Value)
		}
		if okA && okB {
			r.Delta = ptr(y.Value - x.Value)
			if x.Value != 0 {
				r.DeltaPct = ptr(100 * (y.Value - x.Value) / math.Abs(x.Value))
			}
		}
		c.Rows = append(c.Rows, r)
	}
	wa, wb := warnMap(a), warnMap(b)
	for _, w := range b.Warnings() {
		if _, ok := wa[w.Key()]; ok {
			c.Both = append(c.Both, change(w))
		} else {
			c.Appeared = append(c.Appeared, change(w))
		}
	}
	for _, w := range a.Warnings() {
		if _, ok := wb[w.Key()]; !ok {
			c.Cleared = append(c.Cleared, change(w))
		}
	}
	for _, x := range []*bundle.Bundle{a, b} {
		if !x.Meta.Complete {
			c.Notices = append(c.Notices, fmt.Sprintf("%s is incomplete (status %s): its figures cover only what was recorded", x.Dir, x.Meta.Status))
		}
	}
	if c.Notices == nil {
		c.Notices = []string{}
	}
	return c
}

func ptr(v float64) *float64 { return &v }

func statMap(b *bundle.Bundle) map[string]bundle.Stat {
	m := map[string]bundle.Stat{}
	for _, s := range b.Stats() {
		m[s.ID()] = s
	}
	return m
}

func figureMap(b *bundle.Bundle) map[string]bundle.CommandFigure {
	m := map[string]bundle.CommandFigure{}
	for _, f := range b.CommandFigures() {
		m[f.Key] = f
	}
	return m
}

func warnMap(b *bundle.Bundle) map[string]bundle.Fired {
	m := map[string]bundle.Fired{}
	for _, w := range b.Warnings() {
		m[w.Key()] = w
	}
	return m
}

func change(w bundle.Fired) WarningChange {
	return WarningChange{Tracer: w.Tracer, Code: w.Code, Message: w.Message, Fix: w.Fix}
}

// WriteText prints the comparison for people.
func (c *Comparison) WriteText(w io.Writer) error {
	var s strings.Builder
	fmt.Fprintf(&s, "A: %s  %s, %.1fs, %s\n", c.A, c.RunA.Start.Format("2006-01-02 15:04:05"), c.RunA.DurationS, c.RunA.Status)
	fmt.Fprintf(&s, "B: %s  %s, %.1fs, %s\n", c.B, c.RunB.Start.Format("2006-01-02 15:04:05"), c.RunB.DurationS, c.RunB.Status)
	for _, n := range c.Notices {
		fmt.Fprintf(&s, "! %s\n", n)
	}
	if len(c.Differences) == 0 {
		s.WriteString("conditions: the same kernel, CPUs, settings and command\n")
	} else {
		s.WriteString("! conditions differ: figures below are comparable only if this is the one change you meant to make\n")
		for _, d := range c.Differences {
			fmt.Fprintf(&s, "  %s: %s -> %s\n", d.What, orNone(d.A), orNone(d.B))
		}
	}
	s.WriteByte('\n')
	var rows [][]string
	for _, r := range c.Rows {
		rows = append(rows, []string{r.Tracer, r.Figure, cell(r.A, r.RateA, r.Unit), cell(r.B, r.RateB, r.Unit), deltaCell(r)})
	}
	if err := output.WriteTable(&s, []string{"TRACER", "FIGURE", "A", "B", "CHANGE"}, rows); err != nil {
		return err
	}
	for _, part := range []struct {
		title string
		ws    []WarningChange
	}{{"warnings that appeared in B", c.Appeared}, {"warnings that cleared in B", c.Cleared}, {"warnings in both", c.Both}} {
		if len(part.ws) == 0 {
			continue
		}
		fmt.Fprintf(&s, "\n%s\n", part.title)
		for _, x := range part.ws {
			fmt.Fprintf(&s, "  [%s] %s\n", x.Tracer, x.Message)
			if x.Fix != "" && part.title != "warnings that cleared in B" {
				fmt.Fprintf(&s, "    fix: %s\n", x.Fix)
			}
		}
	}
	if c.FlameGraph != "" {
		fmt.Fprintf(&s, "\ndifferential flame graph (B coloured by its change from A): %s\n", c.FlameGraph)
	}
	_, err := io.WriteString(w, s.String())
	return err
}

// WriteJSON prints the comparison as one JSON object.
func (c *Comparison) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(c)
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func cell(v, rate *float64, unit string) string {
	if v == nil {
		return "-"
	}
	if rate != nil {
		return fmt.Sprintf("%s (%s/s)", num(*v), num(*rate))
	}
	return num(*v) + unit
}

func deltaCell(r CompareRow) string {
	if r.Delta == nil {
		return "-"
	}
	sign := "+"
	if *r.Delta < 0 {
		sign = ""
	}
	s := sign + num(*r.Delta)
	if r.DeltaPct != nil {
		s += fmt.Sprintf(" (%s%.0f%%)", sign, *r.DeltaPct)
	} else if *r.Delta != 0 {
		s += " (new)"
	}
	return s
}

// WriteDiffFlameGraph writes the differential flame graph of two records
// (bundle.WriteDiffFlameGraph) to path, when both have a profile. It
// reports whether it wrote one.
func WriteDiffFlameGraph(path string, a, b *bundle.Bundle) (bool, error) {
	if !a.HasFile(bundle.ProfileFoldedFile) || !b.HasFile(bundle.ProfileFoldedFile) {
		return false, nil
	}
	out, err := os.Create(path)
	if err != nil {
		return false, fmt.Errorf("create %s: %w", path, err)
	}
	bw := bufio.NewWriter(out)
	_, err = bundle.WriteDiffFlameGraph(bw, a, b)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	return true, nil
}
