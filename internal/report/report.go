// Package report renders one or two record bundles as a single
// self-contained HTML page: a header per run, a time-series chart per
// headline figure (inline SVG drawn here, both runs on the same axes), the
// warnings that fired, the settings before and after, and the flame graphs.
// The page fetches nothing: its Content-Security-Policy allows only inline
// styles, one inline script and data: images.
package report

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"html/template"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nettrace/nettrace/flamegraph"
	"github.com/nettrace/nettrace/internal/bundle"
)

// Colors are the series colours of the runs, in order (also in the legend).
var Colors = []string{"#1f77b4", "#d62728"}

// runLetters name the runs in the page: A, B.
var runLetters = []string{"A", "B"}

// Write writes the HTML report of one run, or of two runs compared (the
// first is A, the "before"; the second is B, the "after").
func Write(w io.Writer, runs ...*bundle.Bundle) error {
	if len(runs) < 1 || len(runs) > 2 {
		return fmt.Errorf("write report: want one or two runs, got %d", len(runs))
	}
	p, err := build(runs)
	if err != nil {
		return err
	}
	if err := page.Execute(w, p); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// view is what the template renders.
type view struct {
	Title       string
	Runs        []runView
	Differences []bundle.Difference
	Charts      []template.HTML
	Warnings    bool // any run has warnings
	Settings    []settingRow
	Counters    []counterRow
	Flames      []flameView
}

type runView struct {
	Index      int
	Letter     string
	Name       string
	Dir        string
	Color      string
	Meta       bundle.Meta
	Incomplete string // why the bundle is incomplete; "" when complete
	Start, End string
	Duration   string
	Command    string
	Exit       string
	Tiers      []string
	Warnings   []warningView
	Stdout     string
	Stderr     string
}

type warningView struct {
	bundle.Fired
	First string
}

type settingRow struct {
	Name    string
	Cells   []settingCell // per run
	Changed bool          // before != after in some run
	Differs bool          // the runs' before values differ
	Note    string        // reason of a warn/bad status
}

type settingCell struct {
	Before, After string
	Status        string
	Changed       bool
}

type counterRow struct {
	Name  string
	Delta []string // per run: after - before ("" when missing)
}

type flameView struct {
	Title string
	Run   string // "0", "1" or "diff"
	Src   template.URL
}

func build(runs []*bundle.Bundle) (*view, error) {
	v := &view{}
	var names []string
	for i, b := range runs {
		rv := runView{
			Index: i, Letter: runLetters[i], Name: b.Name(), Dir: b.Dir, Color: Colors[i], Meta: b.Meta,
			Start: fmtTime(b.Meta.Start), End: fmtTime(b.Meta.End),
			Duration: (time.Duration(b.Meta.DurationS * float64(time.Second))).Round(time.Millisecond).String(),
			Command:  strings.Join(b.Meta.Command, " "),
		}
		if !b.Meta.Complete {
			rv.Incomplete = incompleteReason(b.Meta)
		}
		switch {
		case b.Meta.ExitCode != nil && b.Meta.CommandError != "":
			rv.Exit = fmt.Sprintf("%d (%s)", *b.Meta.ExitCode, b.Meta.CommandError)
		case b.Meta.ExitCode != nil:
			rv.Exit = fmt.Sprint(*b.Meta.ExitCode)
		case b.Meta.CommandError != "":
			rv.Exit = "did not run: " + b.Meta.CommandError
		case len(b.Meta.Command) > 0:
			rv.Exit = "unknown (the record did not see it end)"
		}
		for _, tr := range b.Meta.Tracers {
			var hooks []string
			for _, h := range sortedKeys(b.Meta.Tiers[tr]) {
				hooks = append(hooks, h+"="+b.Meta.Tiers[tr][h])
			}
			rv.Tiers = append(rv.Tiers, tr+": "+strings.Join(hooks, " "))
		}
		for _, f := range b.Warnings() {
			rv.Warnings = append(rv.Warnings, warningView{f, fmtSeconds(f.FirstT)})
			v.Warnings = true
		}
		rv.Stdout = tail(b, bundle.StdoutFile)
		rv.Stderr = tail(b, bundle.StderrFile)
		v.Runs = append(v.Runs, rv)
		names = append(names, b.Name())
	}
	v.Title = "nettrace report: " + strings.Join(names, " vs ")
	if len(runs) == 2 {
		v.Differences = bundle.Differences(runs[0], runs[1])
	}
	v.Charts = charts(runs)
	v.Settings = settingRows(runs)
	v.Counters = counterRows(runs)
	flames, err := flameViews(runs)
	if err != nil {
		return nil, err
	}
	v.Flames = flames
	return v, nil
}

func incompleteReason(m bundle.Meta) string {
	switch m.Status {
	case bundle.Running:
		return "INCOMPLETE: the record never finished (nettrace was killed or is still running); figures cover only what was written."
	case bundle.Interrupted:
		return "INCOMPLETE: the record was interrupted before its duration or its command's end."
	case bundle.Failed:
		return "INCOMPLETE: the record failed (" + strings.Join(m.Errors, "; ") + ")."
	}
	return "INCOMPLETE: status " + m.Status + "."
}

// charts draws one chart per headline that some run carries.
func charts(runs []*bundle.Bundle) []template.HTML {
	stats := make([]map[string]bundle.Stat, len(runs))
	present := map[string]bool{}
	for i, b := range runs {
		stats[i] = map[string]bundle.Stat{}
		for _, s := range b.Stats() {
			stats[i][s.ID()] = s
			present[s.ID()] = true
		}
	}
	var out []template.HTML
	for _, h := range bundle.Headlines {
		if !present[h.ID()] {
			continue
		}
		c := chart{Headline: h}
		for i, b := range runs {
			s, ok := stats[i][h.ID()]
			c.Series = append(c.Series, series{
				Letter: runLetters[i], Name: b.Name(), Color: Colors[i],
				Points: b.Points(h), Stat: s, HasStat: ok, Duration: b.Meta.DurationS,
			})
		}
		out = append(out, template.HTML(c.svg()))
	}
	return out
}

// settingRows lines up the runs' settings by name.
func settingRows(runs []*bundle.Bundle) []settingRow {
	type pair struct{ before, after map[string]int }
	var order []string
	seen := map[string]bool{}
	idx := make([]pair, len(runs))
	for i, b := range runs {
		idx[i] = pair{map[string]int{}, map[string]int{}}
		if b.SettingsBefore != nil {
			for j, s := range b.SettingsBefore.Settings {
				idx[i].before[s.Name] = j
				if !seen[s.Name] {
					seen[s.Name] = true
					order = append(order, s.Name)
				}
			}
		}
		if b.SettingsAfter != nil {
			for j, s := range b.SettingsAfter.Settings {
				idx[i].after[s.Name] = j
				if !seen[s.Name] {
					seen[s.Name] = true
					order = append(order, s.Name)
				}
			}
		}
	}
	var rows []settingRow
	for _, name := range order {
		r := settingRow{Name: name}
		for i, b := range runs {
			c := settingCell{Before: "—", After: "—"}
			if j, ok := idx[i].before[name]; ok {
				s := b.SettingsBefore.Settings[j]
				c.Before, c.Status = s.Value, string(s.Status)
				if s.Reason != "" {
					r.Note = s.Reason
				}
			}
			if j, ok := idx[i].after[name]; ok {
				c.After = b.SettingsAfter.Settings[j].Value
			} else if b.SettingsAfter == nil {
				c.After = "(not recorded)"
			}
			c.Changed = b.SettingsAfter != nil && c.After != c.Before
			r.Changed = r.Changed || c.Changed
			r.Cells = append(r.Cells, c)
		}
		if len(r.Cells) == 2 && r.Cells[0].Before != r.Cells[1].Before {
			r.Differs = true
		}
		rows = append(rows, r)
	}
	return rows
}

// counterRows lists the counters (netstat, snmp) that moved during a run,
// with how much.
func counterRows(runs []*bundle.Bundle) []counterRow {
	deltas := make([]map[string]int64, len(runs))
	var names []string
	seen := map[string]bool{}
	for i, b := range runs {
		deltas[i] = map[string]int64{}
		if b.SettingsBefore == nil || b.SettingsAfter == nil {
			continue
		}
		before := map[string]uint64{}
		for _, c := range b.SettingsBefore.Counters {
			before[c.Name] = c.Value
		}
		for _, c := range b.SettingsAfter.Counters {
			bv, ok := before[c.Name]
			if !ok || c.Value == bv {
				continue
			}
			deltas[i][c.Name] = int64(c.Value - bv)
			if !seen[c.Name] {
				seen[c.Name] = true
				names = append(names, c.Name)
			}
		}
	}
	sort.Strings(names)
	var rows []counterRow
	for _, n := range names {
		r := counterRow{Name: n}
		for i := range runs {
			d, ok := deltas[i][n]
			s := ""
			if ok {
				s = fmt.Sprintf("%+d", d)
			}
			r.Delta = append(r.Delta, s)
		}
		rows = append(rows, r)
	}
	return rows
}

// flameViews embeds each run's flame graph (profile.svg, else one drawn from
// profile.folded) and, with two folded profiles, a differential one.
func flameViews(runs []*bundle.Bundle) ([]flameView, error) {
	var out []flameView
	for i, b := range runs {
		var svg []byte
		switch {
		case b.HasFile(bundle.ProfileSVGFile):
			data, err := os.ReadFile(b.Path(bundle.ProfileSVGFile))
			if err != nil {
				return nil, fmt.Errorf("read flame graph: %w", err)
			}
			svg = data
		case b.HasFile(bundle.ProfileFoldedFile):
			tree, err := readFolded(b)
			if err != nil {
				return nil, err
			}
			var buf bytes.Buffer
			if err := tree.WriteSVG(&buf, flamegraph.Options{Title: "Flame Graph: " + b.Name()}); err != nil {
				return nil, err
			}
			svg = buf.Bytes()
		default:
			continue
		}
		out = append(out, flameView{Title: runLetters[i] + " · " + b.Name(), Run: fmt.Sprint(i), Src: dataURI(svg)})
	}
	if len(runs) == 2 {
		var buf bytes.Buffer
		ok, err := bundle.WriteDiffFlameGraph(&buf, runs[0], runs[1])
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, flameView{Title: "Differential: B vs A", Run: "diff", Src: dataURI(buf.Bytes())})
		}
	}
	return out, nil
}

func readFolded(b *bundle.Bundle) (*flamegraph.Tree, error) {
	f, err := b.Open(bundle.ProfileFoldedFile)
	if err != nil {
		return nil, fmt.Errorf("open profile: %w", err)
	}
	defer f.Close()
	tree, err := flamegraph.ParseFolded(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", b.Path(bundle.ProfileFoldedFile), err)
	}
	return tree, nil
}

func dataURI(svg []byte) template.URL {
	return template.URL("data:image/svg+xml;base64," + base64.StdEncoding.EncodeToString(svg))
}

// tail returns the last lines of a command output file (at most 4 KiB).
func tail(b *bundle.Bundle, name string) string {
	if !b.HasFile(name) {
		return ""
	}
	data, err := os.ReadFile(b.Path(name))
	if err != nil {
		return ""
	}
	const max = 4 << 10
	if len(data) > max {
		data = data[len(data)-max:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
		return "…\n" + string(data)
	}
	return string(data)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.Format("2006-01-02 15:04:05 MST")
}

func fmtSeconds(s float64) string { return "+" + trimFloat(s, 1) + "s" }

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
