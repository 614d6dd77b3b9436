package report

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"html"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/nettrace/nettrace/internal/bundle"
	"github.com/nettrace/nettrace/internal/bundle/bundletest"
)

const (
	foldedA = "main;serve;read 30\nmain;serve;write 20\nmain;gc 10\n"
	foldedB = "main;serve;read 60\nmain;serve;write 10\nmain;accept 25\n"
)

func load(t *testing.T, name string, o bundletest.Options) *bundle.Bundle {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	bundletest.Write(t, dir, o)
	b, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func render(t *testing.T, runs ...*bundle.Bundle) string {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, runs...); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// svgChart is a chart parsed back from the page.
type svgChart struct {
	Headline string  `xml:"data-headline,attr"`
	YMin     float64 `xml:"data-ymin,attr"`
	YMax     float64 `xml:"data-ymax,attr"`
	XMax     float64 `xml:"data-xmax,attr"`
	Rects    []struct {
		Class string  `xml:"class,attr"`
		X     float64 `xml:"x,attr"`
		Y     float64 `xml:"y,attr"`
		W     float64 `xml:"width,attr"`
		H     float64 `xml:"height,attr"`
	} `xml:"rect"`
	Groups []struct {
		Class string `xml:"class,attr"`
		Run   string `xml:"data-run,attr"`
		Text  string `xml:"text"`
	} `xml:"g"`
	Legend []legend
	Lines  []struct {
		Class  string `xml:"class,attr"`
		Run    string `xml:"data-run,attr"`
		Points string `xml:"points,attr"`
		Stroke string `xml:"stroke,attr"`
	} `xml:"polyline"`
}

type legend struct{ Run, Text string }

// flameGraph returns the SVG an <img class="flamegraph"> of the run embeds,
// or nil.
func flameGraph(t *testing.T, page, run string) []byte {
	t.Helper()
	m := regexp.MustCompile(`<img class="flamegraph" data-run="` + run + `" alt="[^"]*" src="([^"]+)">`).FindStringSubmatch(page)
	if m == nil {
		return nil
	}
	b64, ok := strings.CutPrefix(html.UnescapeString(m[1]), "data:image/svg+xml;base64,")
	svg, err := base64.StdEncoding.DecodeString(b64)
	if !ok || err != nil {
		t.Fatalf("flame graph of run %s is not a base64 SVG data URI (%v)", run, err)
	}
	return svg
}

// value maps a point of the chart back to (seconds, value) with the chart's
// one scale.
func (c *svgChart) value(t *testing.T, px, py float64) (float64, float64) {
	t.Helper()
	for _, r := range c.Rects {
		if r.Class == "plot" {
			return (px - r.X) / r.W * c.XMax, c.YMin + (r.Y+r.H-py)/r.H*(c.YMax-c.YMin)
		}
	}
	t.Fatalf("chart %s has no plot rect", c.Headline)
	return 0, 0
}

func points(t *testing.T, s string) [][2]float64 {
	t.Helper()
	var out [][2]float64
	for _, p := range strings.Fields(s) {
		x, y, ok := strings.Cut(p, ",")
		fx, err1 := strconv.ParseFloat(x, 64)
		fy, err2 := strconv.ParseFloat(y, 64)
		if !ok || err1 != nil || err2 != nil {
			t.Fatalf("bad point %q", p)
		}
		out = append(out, [2]float64{fx, fy})
	}
	return out
}

var chartRE = regexp.MustCompile(`(?s)<svg class="chart".*?</svg>`)

func parseCharts(t *testing.T, page string) map[string]*svgChart {
	t.Helper()
	out := map[string]*svgChart{}
	for _, s := range chartRE.FindAllString(page, -1) {
		c := &svgChart{}
		if err := xml.Unmarshal([]byte(s), c); err != nil {
			t.Fatalf("chart is not well-formed: %v\n%s", err, s)
		}
		for _, g := range c.Groups {
			if g.Class == "legend" {
				c.Legend = append(c.Legend, legend{g.Run, g.Text})
			}
		}
		if out[c.Headline] != nil {
			t.Errorf("two charts for %s", c.Headline)
		}
		out[c.Headline] = c
	}
	return out
}

// checkSeries checks that a run's polyline has one point per interval at
// the interval's time and value.
func checkSeries(t *testing.T, c *svgChart, b *bundle.Bundle, h bundle.Headline, run string) {
	t.Helper()
	want := b.Points(h)
	for _, l := range c.Lines {
		if l.Run != run {
			continue
		}
		got := points(t, l.Points)
		if len(got) != len(want) || len(want) != len(b.Series[h.Tracer]) {
			t.Fatalf("%s run %s: %d points, want %d (one per interval)", h.ID(), run, len(got), len(want))
		}
		for i, p := range got {
			x, v := c.value(t, p[0], p[1])
			if math.Abs(x-want[i].T) > 0.05 || math.Abs(v-want[i].V) > 0.01*math.Max(1, c.YMax-c.YMin) {
				t.Errorf("%s run %s point %d reads (%g s, %g), want (%g s, %g)", h.ID(), run, i, x, v, want[i].T, want[i].V)
			}
		}
		return
	}
	t.Errorf("%s: no polyline for run %s", h.ID(), run)
}

var externalRE = regexp.MustCompile(`(?i)(src|href|action|data)\s*=\s*["']?\s*(https?:|//)|url\(\s*["']?(https?:|//)|@import`)

func checkSelfContained(t *testing.T, page string) {
	t.Helper()
	if m := externalRE.FindString(page); m != "" {
		t.Errorf("page references an external resource: %q", m)
	}
	for _, tag := range []string{"<link", "<iframe", "<object", "<embed"} {
		if strings.Contains(page, tag) {
			t.Errorf("page has a %s element", tag)
		}
	}
	if !strings.Contains(page, `Content-Security-Policy" content="default-src 'none'`) {
		t.Error("page has no CSP that forbids fetches")
	}
}

func section(t *testing.T, page, id string) string {
	t.Helper()
	i := strings.Index(page, `<section id="`+id+`"`)
	if i < 0 {
		t.Fatalf("no section %s", id)
	}
	j := strings.Index(page[i:], "</section>")
	return page[i : i+j]
}

func TestReportOneRun(t *testing.T) {
	b := load(t, "before", bundletest.Options{Somaxconn: "10", SomaxconnAfter: "4096", Overflows: 7, Connects: 100,
		Complete: true, Profile: foldedA, ProfileSVG: true})
	page := render(t, b)
	checkSelfContained(t, page)

	charts := parseCharts(t, page)
	stats := b.Stats()
	if len(charts) != len(stats) {
		t.Errorf("%d charts, want one per headline present (%d)", len(charts), len(stats))
	}
	for _, s := range stats {
		c := charts[s.ID()]
		if c == nil {
			t.Errorf("no chart for %s", s.ID())
			continue
		}
		if len(c.Lines) != 1 || c.Lines[0].Stroke != Colors[0] {
			t.Errorf("%s: %d polylines, want 1 in %s", s.ID(), len(c.Lines), Colors[0])
		}
		checkSeries(t, c, b, s.Headline, "0")
	}
	if c := charts["listen.listen_overflows"]; c == nil || len(c.Legend) != 1 || !strings.Contains(c.Legend[0].Text, "70 total, 7/s mean") {
		t.Errorf("overflow chart legend: %+v", c)
	}
	for _, id := range []string{"softirq.softirqs", "timewait.time_wait"} {
		if charts[id] != nil {
			t.Errorf("chart for %s, which the bundle did not record", id)
		}
	}

	runs := section(t, page, "runs")
	for _, want := range []string{"testhost", "6.18.0 #1 SMP", "<dd>2</dd>", "2026-11-21 10:00:00 UTC", "2026-11-21 10:00:10 UTC",
		"10s", "<code>loadgen</code>", `<dd class="exit">0</dd>`, "listen: drop=tracepoint", "complete (command exited)"} {
		if !strings.Contains(runs, want) {
			t.Errorf("run header lacks %q", want)
		}
	}
	if strings.Contains(page, "incomplete-0") || strings.Contains(page, `id="differences"`) {
		t.Error("a complete single run flagged incomplete or compared")
	}

	warn := section(t, page, "warnings")
	if !regexp.MustCompile(`<tr class="warning" data-code="accept_queue_overflow"><td>listen</td>.*127.0.0.1:8080 overflowed 7 times.*accept faster.*>10</td>.*>(\+|&#43;)1s<`).MatchString(warn) {
		t.Errorf("warning row missing or wrong:\n%s", warn)
	}

	set := section(t, page, "settings")
	rows := regexp.MustCompile(`(?s)<tr class="setting([^"]*)" data-name="([^"]+)">(.*?)</tr>`).FindAllStringSubmatch(set, -1)
	if len(rows) != 2 {
		t.Fatalf("%d setting rows, want 2:\n%s", len(rows), set)
	}
	for _, r := range rows {
		switch r[2] {
		case "net.core.somaxconn":
			if !strings.Contains(r[1], "changed-row") || !strings.Contains(r[3], `<td class="st-ok">10</td><td class="changed">4096</td>`) {
				t.Errorf("somaxconn changed 10 -> 4096 during the run, row: %q %q", r[1], r[3])
			}
		case "net.ipv4.tcp_tw_reuse":
			if strings.Contains(r[1], "changed") || strings.Contains(r[3], "changed") {
				t.Errorf("tcp_tw_reuse marked changed: %q", r[0])
			}
		}
	}

	want, _ := os.ReadFile(b.Path(bundle.ProfileSVGFile))
	if svg := flameGraph(t, page, "0"); len(want) == 0 || !bytes.Equal(svg, want) {
		t.Errorf("embedded flame graph is not profile.svg")
	}
	if strings.Contains(page, `data-run="diff"`) {
		t.Error("differential flame graph with one run")
	}
}

func TestReportTwoRuns(t *testing.T) {
	a := load(t, "somaxconn10", bundletest.Options{Somaxconn: "10", Overflows: 7, Connects: 100, Complete: true, Profile: foldedA})
	b := load(t, "somaxconn4096", bundletest.Options{Somaxconn: "4096", Overflows: 3, Connects: 120, Intervals: 8, Profile: foldedB})
	page := render(t, a, b)
	checkSelfContained(t, page)
	if !strings.Contains(page, "<title>nettrace report: somaxconn10 vs somaxconn4096</title>") {
		t.Error("title does not name both runs")
	}

	charts := parseCharts(t, page)
	if len(charts) != len(a.Stats()) {
		t.Errorf("%d charts, want %d", len(charts), len(a.Stats()))
	}
	for _, s := range a.Stats() {
		c := charts[s.ID()]
		if c == nil {
			t.Errorf("no chart for %s", s.ID())
			continue
		}
		if len(c.Lines) != 2 || c.Lines[0].Stroke == c.Lines[1].Stroke || len(c.Legend) != 2 {
			t.Errorf("%s: want two polylines in distinct colours and two legend entries, got %+v", s.ID(), c.Lines)
			continue
		}
		// Both read back on the chart's one scale: the same axes.
		checkSeries(t, c, a, s.Headline, "0")
		checkSeries(t, c, b, s.Headline, "1")
	}
	if c := charts["listen.listen_overflows"]; c != nil {
		if c.YMax < 7 || !strings.Contains(c.Legend[0].Text, "A · somaxconn10: 70 total") || !strings.Contains(c.Legend[1].Text, "B · somaxconn4096: 24 total") {
			t.Errorf("overflow chart: ymax %g, legend %+v", c.YMax, c.Legend)
		}
	}

	if !strings.Contains(page, `id="incomplete-1"`) || strings.Contains(page, `id="incomplete-0"`) {
		t.Error("want run B (status running) flagged incomplete, and run A not")
	}
	diff := section(t, page, "differences")
	if !strings.Contains(diff, "<td>setting net.core.somaxconn</td><td>10</td><td>4096</td>") || strings.Count(diff, `class="difference"`) != len(bundle.Differences(a, b)) {
		t.Errorf("conditions-differ notice:\n%s", diff)
	}
	if !regexp.MustCompile(`<tr class="setting differs" data-name="net.core.somaxconn">`).MatchString(page) ||
		!regexp.MustCompile(`<tr class="setting" data-name="net.ipv4.tcp_tw_reuse">`).MatchString(page) {
		t.Errorf("settings rows not marked by difference:\n%s", section(t, page, "settings"))
	}
	warn := section(t, page, "warnings")
	if !strings.Contains(warn, `<table class="warnings" data-run="0">`) || !strings.Contains(warn, `<table class="warnings" data-run="1">`) {
		t.Errorf("warnings of both runs not listed:\n%s", warn)
	}

	svg := flameGraph(t, page, "diff")
	if !bytes.Contains(svg, []byte("Differential flame graph")) || !bytes.Contains(svg, []byte("<title>accept (25 samples")) {
		t.Errorf("no differential flame graph drawing B's stacks")
	}
	if strings.Count(page, `<img class="flamegraph"`) != 3 {
		t.Errorf("want flame graphs of A, B (drawn from profile.folded) and the difference")
	}
}

func TestReportEscapes(t *testing.T) {
	b := load(t, `a<b>&"c`, bundletest.Options{Overflows: 1})
	page := render(t, b)
	if strings.Contains(page, `a<b>`) {
		t.Error("run name not escaped")
	}
	if len(parseCharts(t, page)) == 0 {
		t.Error("no charts")
	}
}

func TestReportRunCount(t *testing.T) {
	b := load(t, "a", bundletest.Options{})
	for _, runs := range [][]*bundle.Bundle{nil, {b, b, b}} {
		if err := Write(&bytes.Buffer{}, runs...); err == nil {
			t.Errorf("Write of %d runs: no error", len(runs))
		}
	}
}

func TestNiceTicks(t *testing.T) {
	for _, c := range []struct{ raw, want float64 }{{0.7, 1}, {1.2, 2}, {3, 5}, {7, 10}, {1700, 2000}, {0.013, 0.02}, {0, 1}} {
		if got := niceStep(c.raw); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("niceStep(%g) = %g, want %g", c.raw, got, c.want)
		}
	}
	for _, c := range []struct {
		v, step float64
		want    string
	}{{0, 1, "0"}, {2500, 500, "2.5k"}, {10000, 5000, "10k"}, {0.25, 0.05, "0.25"}, {3e6, 1e6, "3M"}, {150, 50, "150"}} {
		if got := tickLabel(c.v, c.step); got != c.want {
			t.Errorf("tickLabel(%g, %g) = %q, want %q", c.v, c.step, got, c.want)
		}
	}
	for v, want := range map[float64]string{1234567: "1,234,567", 12.345: "12.3", 0.01234: "0.0123", -5: "-5", 2.5: "2.5"} {
		if got := fmtNum(v); got != want {
			t.Errorf("fmtNum(%g) = %q, want %q", v, got, want)
		}
	}
}
