package output

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/olekukonko/tablewriter"
	"github.com/olekukonko/tablewriter/renderer"
	"github.com/olekukonko/tablewriter/tw"
)

// Render writes one frame to w as a table or as NDJSON, sorted by opts.Sort
// (or f.Sort) and cut to opts.Top rows.
func Render(w io.Writer, f Frame, opts Options) error {
	key := opts.Sort
	if key == "" {
		key = f.Sort
	}
	rows, s, err := rowValues(f.Rows, key, opts.Top)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	switch opts.Format {
	case Table:
		err = renderTable(&buf, f, rows, s)
	case JSON:
		err = renderJSON(&buf, f, rows)
	default:
		err = fmt.Errorf("render frame: unknown format %d", opts.Format)
	}
	if err != nil {
		return err
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	return nil
}

func renderTable(buf *bytes.Buffer, f Frame, rows []reflect.Value, s *schema) error {
	fmt.Fprintf(buf, "%s  %s  interval %.2fs", f.Time.Format(time.TimeOnly), f.Tracer, f.Interval.Seconds())
	if len(f.Tiers) > 0 {
		buf.WriteString("  tier")
		for _, hook := range sortedKeys(f.Tiers) {
			fmt.Fprintf(buf, " %s=%s", hook, f.Tiers[hook])
		}
	}
	buf.WriteByte('\n')
	if len(f.Header) > 0 {
		figs := make([]string, len(f.Header))
		for i, h := range f.Header {
			label := h.Label
			if label == "" {
				label = h.Key
			}
			figs[i] = label + " " + formatValue(h.Format, reflect.ValueOf(h.Value))
		}
		buf.WriteString(strings.Join(figs, "  ") + "\n")
	}
	for _, w := range f.Warnings {
		buf.WriteString("! " + w.Message)
		if w.Fix != "" {
			buf.WriteString(" (fix: " + w.Fix + ")")
		}
		buf.WriteByte('\n')
	}
	if len(rows) == 0 {
		buf.WriteString("(no rows)\n")
		return nil
	}
	var (
		headers []string
		align   []tw.Align
		cols    []field
	)
	for _, c := range s.fields {
		if c.header == "" {
			continue
		}
		cols = append(cols, c)
		headers = append(headers, c.header)
		if c.numeric {
			align = append(align, tw.AlignRight)
		} else {
			align = append(align, tw.AlignLeft)
		}
	}
	if len(cols) == 0 {
		return nil
	}
	cells := make([][]string, len(rows))
	for i, r := range rows {
		cells[i] = make([]string, len(cols))
		for j, c := range cols {
			cells[i][j] = formatValue(c.format, r.FieldByIndex(c.index))
		}
	}
	return writeTable(buf, headers, align, cells)
}

// WriteTable writes a plain top-style table (no borders, two spaces between
// columns, left-aligned) for commands that print fixed tables, like doctor.
func WriteTable(w io.Writer, headers []string, rows [][]string) error {
	align := make([]tw.Align, len(headers))
	for i := range align {
		align[i] = tw.AlignLeft
	}
	var buf bytes.Buffer
	if err := writeTable(&buf, headers, align, rows); err != nil {
		return err
	}
	_, err := w.Write(buf.Bytes())
	return err
}

func writeTable(buf *bytes.Buffer, headers []string, align []tw.Align, rows [][]string) error {
	var tbuf bytes.Buffer
	t := tablewriter.NewTable(&tbuf,
		tablewriter.WithRenderer(renderer.NewBlueprint(tw.Rendition{
			Borders: tw.BorderNone,
			Symbols: tw.NewSymbols(tw.StyleNone),
			Settings: tw.Settings{
				Lines:      tw.LinesNone,
				Separators: tw.SeparatorsNone,
			},
		})),
		tablewriter.WithHeaderAutoFormat(tw.Off),
		tablewriter.WithPadding(tw.Padding{Right: "  ", Overwrite: true}),
		tablewriter.WithTrimSpace(tw.Off),
		tablewriter.WithHeaderAlignmentConfig(tw.CellAlignment{PerColumn: align}),
		tablewriter.WithRowAlignmentConfig(tw.CellAlignment{PerColumn: align}),
	)
	t.Header(headers)
	for _, r := range rows {
		if err := t.Append(r); err != nil {
			return fmt.Errorf("append table row: %w", err)
		}
	}
	if err := t.Render(); err != nil {
		return fmt.Errorf("render table: %w", err)
	}
	// The right padding of the last column leaves trailing blanks; drop them.
	for line := range strings.Lines(tbuf.String()) {
		buf.WriteString(strings.TrimRight(line, " \n") + "\n")
	}
	return nil
}

// formatValue prints v with format; pointers are followed and nil prints "-".
// An empty format means %.1f for floats and %v otherwise.
func formatValue(format string, v reflect.Value) string {
	for v.IsValid() && (v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface) {
		if v.IsNil() {
			return "-"
		}
		v = v.Elem()
	}
	if !v.IsValid() {
		return "-"
	}
	if format == "" {
		format = "%v"
		if k := v.Kind(); k == reflect.Float32 || k == reflect.Float64 {
			format = "%.1f"
		}
	}
	return fmt.Sprintf(format, v.Interface())
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func renderJSON(buf *bytes.Buffer, f Frame, rows []reflect.Value) error {
	var env bytes.Buffer // envelope shared by the interval and the row objects
	if err := writeMembers(&env,
		"tracer", f.Tracer,
		"time", f.Time.Format(time.RFC3339Nano),
		"interval_s", f.Interval.Seconds()); err != nil {
		return err
	}
	tiers := f.Tiers
	if tiers == nil {
		tiers = map[string]string{}
	}
	warnings := f.Warnings
	if warnings == nil {
		warnings = []Warning{}
	}
	var header bytes.Buffer
	header.WriteByte('{')
	for i, h := range f.Header {
		if i > 0 {
			header.WriteByte(',')
		}
		if err := writeMembers(&header, h.Key, h.Value); err != nil {
			return err
		}
	}
	header.WriteByte('}')

	buf.WriteString(`{"type":"interval",`)
	buf.Write(env.Bytes())
	buf.WriteByte(',')
	if err := writeMembers(buf, "tiers", tiers, "header", header.Bytes(), "warnings", warnings); err != nil {
		return err
	}
	buf.WriteString("}\n")

	for _, r := range rows {
		b, err := json.Marshal(r.Interface())
		if err != nil {
			return fmt.Errorf("encode %s row: %w", f.Tracer, err)
		}
		buf.WriteString(`{"type":"row",`)
		buf.Write(env.Bytes())
		if len(b) > 2 { // not "{}"
			buf.WriteByte(',')
		}
		buf.Write(b[1:])
		buf.WriteByte('\n')
	}
	return nil
}

// writeMembers writes "key":value pairs, comma-separated, to buf. A
// []byte value is written as is (already encoded JSON).
func writeMembers(buf *bytes.Buffer, kv ...any) error {
	for i := 0; i < len(kv); i += 2 {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, _ := json.Marshal(kv[i])
		buf.Write(k)
		buf.WriteByte(':')
		if raw, ok := kv[i+1].([]byte); ok {
			buf.Write(raw)
			continue
		}
		v, err := json.Marshal(kv[i+1])
		if err != nil {
			return fmt.Errorf("encode %s: %w", kv[i], err)
		}
		buf.Write(v)
	}
	return nil
}
