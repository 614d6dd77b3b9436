package flamegraph

import (
	"bytes"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/pprof/profile"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test -update to accept):\n%s", name, firstDiff(got, want))
	}
}

func firstDiff(got, want []byte) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var a, b string
		if i < len(g) {
			a = g[i]
		}
		if i < len(w) {
			b = w[i]
		}
		if a != b {
			return fmt.Sprintf("line %d:\n got  %q\n want %q", i+1, a, b)
		}
	}
	return ""
}

func parseFile(t *testing.T, name string) *Tree {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr, err := ParseFolded(f)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestParseFolded(t *testing.T) {
	tr := parseFile(t, "stacks.folded")
	if tr.Total() != 110 {
		t.Errorf("total %d, want 110", tr.Total())
	}
	var b bytes.Buffer
	if err := tr.WriteFolded(&b); err != nil {
		t.Fatal(err)
	}
	golden(t, "stacks.golden", b.Bytes())
}

func TestParseFoldedErrors(t *testing.T) {
	for _, tc := range []struct {
		file string
		line int
		msg  string
	}{
		{"bad-count.folded", 2, "want an integer"},
		{"bad-nocount.folded", 3, "no count"},
		{"bad-emptyframe.folded", 1, "empty frame"},
		{"bad-negative.folded", 3, "negative"},
		{"bad-fraction.folded", 2, "want an integer"},
		{"bad-emptystack.folded", 1, "empty stack"},
	} {
		f, err := os.Open(filepath.Join("testdata", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		_, err = ParseFolded(f)
		f.Close()
		var le *LineError
		if !errors.As(err, &le) {
			t.Errorf("%s: error %v, want a *LineError", tc.file, err)
			continue
		}
		if le.Line != tc.line || !strings.Contains(err.Error(), tc.msg) || !strings.HasPrefix(err.Error(), fmt.Sprintf("line %d: ", tc.line)) {
			t.Errorf("%s: %q, want line %d and %q", tc.file, err, tc.line, tc.msg)
		}
	}
}

// TestReadFoldedSharedPrefixes checks the reuse of the previous line's frames
// against a plain split, on lines that share prefixes in every way.
func TestReadFoldedSharedPrefixes(t *testing.T) {
	lines := []string{"a;b;c 1", "a;b;c 2", "a;b 3", "a;bc;d 4", "a;b;c;d 5", "a 6", "ab;c 7", "ab;c;d 8", "x 9", "a;b;c 10"}
	var got []string
	err := ReadFolded(strings.NewReader(strings.Join(lines, "\n")), func(frames []string, count int64) {
		got = append(got, strings.Join(frames, ";")+" "+strconv.FormatInt(count, 10))
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, lines) {
		t.Errorf("got %q, want %q", got, lines)
	}
	err = ReadFolded(strings.NewReader("a;b 1\na;;b 2\n"), func([]string, int64) {})
	var le *LineError
	if !errors.As(err, &le) || le.Line != 2 {
		t.Errorf("empty frame after a shared prefix: got %v, want a *LineError for line 2", err)
	}
}

func TestReadDetectsPerfScript(t *testing.T) {
	f, err := os.Open("testdata/perf.script")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := NewTree()
	format, err := Read(f, tr.Add)
	if err != nil || format != PerfScript {
		t.Fatalf("Read: %s, %v", format, err)
	}
	var b bytes.Buffer
	tr.WriteFolded(&b)
	golden(t, "perf.golden", b.Bytes())
}

func TestReadPprof(t *testing.T) {
	fn := []*profile.Function{{ID: 1, Name: "main"}, {ID: 2, Name: "spin"}, {ID: 3, Name: "inlined"}, {ID: 4, Name: "do_syscall_64"}}
	m := []*profile.Mapping{{ID: 1, File: "/bin/app"}, {ID: 2, File: "[kernel.kallsyms]"}}
	loc := []*profile.Location{
		{ID: 1, Mapping: m[0], Line: []profile.Line{{Function: fn[0]}}},
		// Inlined: innermost first.
		{ID: 2, Mapping: m[0], Line: []profile.Line{{Function: fn[2]}, {Function: fn[1]}}},
		{ID: 3, Mapping: m[1], Line: []profile.Line{{Function: fn[3]}}},
	}
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		Sample: []*profile.Sample{
			{Location: []*profile.Location{loc[1], loc[0]}, Value: []int64{7, 70}, Label: map[string][]string{"comm": {"app"}}},
			{Location: []*profile.Location{loc[2], loc[0]}, Value: []int64{3, 30}, Label: map[string][]string{"comm": {"app"}}},
		},
		Mapping: m, Location: loc, Function: fn,
	}
	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		t.Fatal(err)
	}
	tr := NewTree()
	if format, err := Read(&buf, tr.Add); err != nil || format != Pprof {
		t.Fatalf("Read: %s, %v", format, err)
	}
	var b bytes.Buffer
	tr.WriteFolded(&b)
	want := "app;main;do_syscall_64_[k] 3\napp;main;spin;inlined 7\n"
	if b.String() != want {
		t.Errorf("folded from pprof:\n%s\nwant\n%s", b.String(), want)
	}
	tr = NewTree()
	if err := ReadPprof(p, "cpu", tr.Add); err != nil || tr.Total() != 100 {
		t.Errorf("cpu sample type: total %d, %v", tr.Total(), err)
	}
	if err := ReadPprof(p, "nope", tr.Add); err == nil {
		t.Error("unknown sample type: no error")
	}
}

type svgFrame struct {
	title      string
	x, y, w    float64
	fill, text string
}

// parseSVG checks that b is well-formed XML and returns its frames.
func parseSVG(t *testing.T, b []byte) []svgFrame {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	d.Strict = true
	var (
		frames []svgFrame
		cur    *svgFrame
		field  *string
	)
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v", err)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			switch e.Name.Local {
			case "g":
				if len(e.Attr) == 0 {
					frames = append(frames, svgFrame{})
					cur = &frames[len(frames)-1]
				}
			case "title":
				if cur != nil {
					field = &cur.title
				}
			case "text":
				if cur != nil {
					field = &cur.text
				}
			case "rect":
				if cur != nil {
					for _, a := range e.Attr {
						var v float64
						fmt.Sscan(a.Value, &v)
						switch a.Name.Local {
						case "x":
							cur.x = v
						case "y":
							cur.y = v
						case "width":
							cur.w = v
						case "fill":
							cur.fill = a.Value
						}
					}
				}
			}
		case xml.CharData:
			if field != nil {
				*field += string(e)
			}
		case xml.EndElement:
			field = nil
			if e.Name.Local == "g" {
				cur = nil
			}
		}
	}
	return frames
}

func frameNamed(frames []svgFrame, name string) *svgFrame {
	for i := range frames {
		if strings.HasPrefix(frames[i].title, name+" (") {
			return &frames[i]
		}
	}
	return nil
}

func TestSVGLayout(t *testing.T) {
	tr := parseFile(t, "stacks.folded")
	var b bytes.Buffer
	if err := tr.WriteSVG(&b, Options{Title: "Test <graph>", Subtitle: "sub & title"}); err != nil {
		t.Fatal(err)
	}
	golden(t, "stacks.svg", b.Bytes())
	frames := parseSVG(t, b.Bytes())
	// all, prog, other, main, start, operator new, read, spin, work, 2 kernel, memcpy
	if len(frames) != 12 {
		t.Fatalf("%d frames, want 12", len(frames))
	}
	all, spin, main := frameNamed(frames, "all"), frameNamed(frames, "spin"), frameNamed(frames, "main")
	if all == nil || spin == nil || main == nil {
		t.Fatalf("frames missing: %+v", frames)
	}
	if all.x != 10 || all.w != 1180 {
		t.Errorf("root at x=%g w=%g, want 10, 1180", all.x, all.w)
	}
	// spin has 93 of 110 samples.
	if want := 1180 * 93 / 110.0; spin.w < want-0.01 || spin.w > want+0.01 {
		t.Errorf("spin width %g, want %g", spin.w, want)
	}
	if !strings.Contains(spin.title, "93 samples, 84.55%") {
		t.Errorf("spin title %q", spin.title)
	}
	// Flame graphs grow up: a child is above its parent.
	if !(spin.y < main.y && main.y < all.y) {
		t.Errorf("y: spin %g, main %g, all %g: want decreasing", spin.y, main.y, all.y)
	}
	// Kernel frames are orange in the hot palette: blue channel 0.
	if k := frameNamed(frames, "ksys_read_[k]"); k == nil || !strings.HasSuffix(k.fill, ",0)") {
		t.Errorf("kernel frame %+v: want orange", k)
	}
	// Colours are stable: the same name, the same colour, in another graph.
	tr2 := NewTree()
	tr2.Add([]string{"x", "spin"}, 1)
	b.Reset()
	tr2.WriteSVG(&b, Options{})
	if s2 := frameNamed(parseSVG(t, b.Bytes()), "spin"); s2 == nil || s2.fill != spin.fill {
		t.Errorf("spin coloured %v in another graph, %s here", s2, spin.fill)
	}
}

func TestSVGInvertedAndMinWidth(t *testing.T) {
	tr := parseFile(t, "stacks.folded")
	var b bytes.Buffer
	if err := tr.WriteSVG(&b, Options{Inverted: true, MinWidth: 60}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), ">Icicle Graph<") {
		t.Error("no Icicle Graph title")
	}
	frames := parseSVG(t, b.Bytes())
	spin, all := frameNamed(frames, "spin"), frameNamed(frames, "all")
	if spin == nil || all == nil || spin.y <= all.y {
		t.Fatalf("icicle: spin %+v below all %+v", spin, all)
	}
	// 1180*5/110 = 53.6 px < 60: read and its kernel frames are omitted.
	if frameNamed(frames, "read") != nil || frameNamed(frames, "ksys_read_[k]") != nil {
		t.Error("frames narrower than --minwidth drawn")
	}
	if err := tr.WriteSVG(io.Discard, Options{Palette: "nope"}); err == nil {
		t.Error("unknown palette: no error")
	}
}

var rgbRE = regexp.MustCompile(`rgb\((\d+),(\d+),(\d+)\)`)

func rgbOf(t *testing.T, f *svgFrame) (r, g, b int) {
	t.Helper()
	m := rgbRE.FindStringSubmatch(f.fill)
	if m == nil {
		t.Fatalf("fill %q", f.fill)
	}
	fmt.Sscan(m[1]+" "+m[2]+" "+m[3], &r, &g, &b)
	return
}

func TestDiff(t *testing.T) {
	tr := NewTree()
	for i, name := range []string{"before.folded", "after.folded"} {
		f, err := os.Open(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		add := tr.Add
		if i == 0 {
			add = tr.AddBefore
		}
		if err := ReadFolded(f, add); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	var b bytes.Buffer
	if err := tr.WriteSVG(&b, Options{Diff: true}); err != nil {
		t.Fatal(err)
	}
	golden(t, "diff.svg", b.Bytes())
	frames := parseSVG(t, b.Bytes())
	// before 100, after 120: send grew 20 -> 60 (+40, the largest change),
	// compress shrank 30 -> 10, parse unchanged.
	send, write, compress, parse, main := frameNamed(frames, "send"), frameNamed(frames, "write_[k]"),
		frameNamed(frames, "compress"), frameNamed(frames, "parse"), frameNamed(frames, "main")
	if r, g, bl := rgbOf(t, send); r != 255 || g != 0 || bl != 0 {
		t.Errorf("send (largest growth) rgb(%d,%d,%d), want rgb(255,0,0)", r, g, bl)
	}
	if r, g, bl := rgbOf(t, write); r != 255 || g != 0 || bl != 0 {
		t.Errorf("write_[k] rgb(%d,%d,%d), want rgb(255,0,0)", r, g, bl)
	}
	// -20 of max 40: blue at half saturation: 210*(40-20)/40 = 105.
	if r, g, bl := rgbOf(t, compress); r != 105 || g != 105 || bl != 255 {
		t.Errorf("compress rgb(%d,%d,%d), want rgb(105,105,255)", r, g, bl)
	}
	if r, g, bl := rgbOf(t, parse); r != 255 || g != 255 || bl != 255 {
		t.Errorf("parse (unchanged) rgb(%d,%d,%d), want white", r, g, bl)
	}
	// Parents are coloured by their own totals (main grew 100 -> 120: +20),
	// not left white as difffolded.pl leaves them.
	if r, g, bl := rgbOf(t, main); r != 255 || g != 105 || bl != 105 {
		t.Errorf("main rgb(%d,%d,%d), want rgb(255,105,105)", r, g, bl)
	}
	if !strings.Contains(send.title, "60 samples") || !strings.Contains(send.title, "+33.33%") {
		t.Errorf("send title %q", send.title)
	}

	// --normalize scales before to 120: main's change is 0, send grew 24 -> 60.
	b.Reset()
	tr.WriteSVG(&b, Options{Diff: true, Normalize: true})
	frames = parseSVG(t, b.Bytes())
	if r, g, bl := rgbOf(t, frameNamed(frames, "main")); r != 255 || g != 255 || bl != 255 {
		t.Errorf("normalized main rgb(%d,%d,%d), want white", r, g, bl)
	}
	// --negate draws before's shape: compress is 30 of 100 wide.
	b.Reset()
	tr.WriteSVG(&b, Options{Diff: true, Negate: true})
	frames = parseSVG(t, b.Bytes())
	c := frameNamed(frames, "compress")
	if want := 1180 * 30 / 100.0; c == nil || c.w < want-0.01 || c.w > want+0.01 {
		t.Errorf("negated compress %+v, want width %g", c, want)
	}
	if r, _, bl := rgbOf(t, c); bl != 255 || r == 255 {
		t.Errorf("negated compress shrank: want blue, got %s", c.fill)
	}
}

func TestCommas(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := commas(n); got != want {
			t.Errorf("commas(%d) = %q, want %q", n, got, want)
		}
	}
}

// BenchmarkSVG renders a 1,000,000-line folded file (see scripts/bench-profile.sh).
func BenchmarkSVG(b *testing.B) {
	data := synthFolded(1_000_000)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		tr, err := ParseFolded(bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		if err := tr.WriteSVG(io.Discard, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSVGFile renders the folded file named by NETTRACE_BENCH_FOLDED
// (scripts/bench-flamegraph.sh makes one), as `nettrace flamegraph` does.
func BenchmarkSVGFile(b *testing.B) {
	name := os.Getenv("NETTRACE_BENCH_FOLDED")
	if name == "" {
		b.Skip("NETTRACE_BENCH_FOLDED is not set")
	}
	for b.Loop() {
		f, err := os.Open(name)
		if err != nil {
			b.Fatal(err)
		}
		tr, err := ParseFolded(f)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		if err := tr.WriteSVG(io.Discard, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// synthFolded makes n folded lines, 8 to 31 frames deep, by random walks in
// a call graph of 5,000 functions where each calls one of 3 others, as real
// programs do (so stacks share prefixes and the tree has millions of nodes,
// not n*depth).
func synthFolded(n int) []byte {
	var b bytes.Buffer
	x := uint64(88172645463325252)
	next := func() uint64 { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x }
	for i := 0; i < n; i++ {
		depth := 8 + int(next()%24)
		b.WriteString("proc")
		fn := next() % 8
		for d := 0; d < depth; d++ {
			fmt.Fprintf(&b, ";pkg%d.function_%d", fn%7, fn)
			fn = (fn*2654435761 + 1 + next()%3) % 5000
		}
		fmt.Fprintf(&b, " %d\n", 1+next()%100)
	}
	return b.Bytes()
}
