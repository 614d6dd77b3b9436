package report

import (
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"

	"github.com/nettrace/nettrace/internal/bundle"
)

// Chart geometry, in SVG user units.
const (
	chartW       = 600
	chartH       = 260
	marginLeft   = 64
	marginRight  = 18
	marginBottom = 42
)

type series struct {
	Letter, Name, Color string
	Points              []bundle.Point
	Stat                bundle.Stat
	HasStat             bool
	Duration            float64
}

// chart is one headline's time series for every run, on shared axes.
type chart struct {
	Headline bundle.Headline
	Series   []series
}

// svg draws the chart: title, one legend line per run with its run figure,
// y axis (value, shared by the runs) and x axis (seconds since each run's
// start), and one polyline per run.
func (c chart) svg() string {
	h := c.Headline
	top := 30 + 15*len(c.Series) + 4
	x0, x1 := float64(marginLeft), float64(chartW-marginRight)
	y0, y1 := float64(top), float64(chartH-marginBottom)

	ymin, ymax, xmax := 0.0, 0.0, 0.0
	for _, s := range c.Series {
		xmax = math.Max(xmax, s.Duration)
		for _, p := range s.Points {
			ymin, ymax, xmax = math.Min(ymin, p.V), math.Max(ymax, p.V), math.Max(xmax, p.T)
		}
	}
	peak := ymax
	if ymax == ymin {
		ymax = ymin + 1
	}
	ystep := niceStep((ymax - ymin) / 4)
	ymin, ymax = math.Floor(ymin/ystep)*ystep, math.Ceil(ymax/ystep)*ystep
	if ymax-peak < ystep/10 {
		ymax += ystep // keep a line at the maximum off the plot's border
	}
	if xmax <= 0 {
		xmax = 1
	}
	xstep := niceStep(xmax / 6)
	xmax = math.Ceil(xmax/xstep) * xstep
	px := func(t float64) float64 { return x0 + (x1-x0)*t/xmax }
	py := func(v float64) float64 { return y1 - (y1-y0)*(v-ymin)/(ymax-ymin) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" data-headline="%s" data-ymin="%s" data-ymax="%s" data-xmax="%s" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="%s">`+"\n",
		esc(h.ID()), num(ymin), num(ymax), num(xmax), chartW, chartH, chartW, chartH, esc(h.Label))
	fmt.Fprintf(&b, `<text class="title" x="%d" y="18">%s <tspan class="id">%s</tspan></text>`+"\n", marginLeft, esc(h.Label), esc(h.ID()))
	for i, s := range c.Series {
		y := 34 + 15*i
		fmt.Fprintf(&b, `<g class="legend" data-run="%d"><rect x="%d" y="%d" width="14" height="4" fill="%s"/><text x="%d" y="%d">%s · %s: %s</text></g>`+"\n",
			i, marginLeft, y-5, s.Color, marginLeft+20, y, s.Letter, esc(shorten(s.Name, 28)), esc(statText(s)))
	}
	fmt.Fprintf(&b, `<rect class="plot" x="%s" y="%s" width="%s" height="%s" fill="#fcfcfc" stroke="#bbb"/>`+"\n", num(x0), num(y0), num(x1-x0), num(y1-y0))

	b.WriteString(`<g class="yaxis">`)
	for v := ymin; v <= ymax+ystep/2; v += ystep {
		y := py(v)
		fmt.Fprintf(&b, `<line x1="%s" x2="%s" y1="%s" y2="%s" stroke="#e6e6e6"/><text x="%s" y="%s" text-anchor="end">%s</text>`,
			num(x0), num(x1), num(y), num(y), num(x0-6), num(y+4), tickLabel(v, ystep))
	}
	fmt.Fprintf(&b, `<text class="unit" transform="translate(14 %s) rotate(-90)" text-anchor="middle">%s</text></g>`+"\n", num((y0+y1)/2), esc(yLabel(h)))

	b.WriteString(`<g class="xaxis">`)
	for t := 0.0; t <= xmax+xstep/2; t += xstep {
		x := px(t)
		fmt.Fprintf(&b, `<line x1="%s" x2="%s" y1="%s" y2="%s" stroke="#999"/><text x="%s" y="%s" text-anchor="middle">%s</text>`,
			num(x), num(x), num(y1), num(y1+4), num(x), num(y1+17), tickLabel(t, xstep))
	}
	fmt.Fprintf(&b, `<text class="unit" x="%s" y="%d" text-anchor="middle">seconds since the run's start</text></g>`+"\n", num((x0+x1)/2), chartH-6)

	for i, s := range c.Series {
		if len(s.Points) == 0 {
			continue
		}
		pts := make([]string, len(s.Points))
		for j, p := range s.Points {
			pts[j] = num(px(p.T)) + "," + num(py(p.V))
		}
		// Earlier runs are drawn wider, so a later run's identical line
		// leaves them visible as an outline.
		fmt.Fprintf(&b, `<polyline class="series" data-run="%d" points="%s" fill="none" stroke="%s" stroke-width="%g" stroke-linejoin="round"/>`+"\n",
			i, strings.Join(pts, " "), s.Color, 2+1.5*float64(len(c.Series)-1-i))
		if len(s.Points) == 1 {
			fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", num(px(s.Points[0].T)), num(py(s.Points[0].V)), s.Color)
		}
	}
	b.WriteString("</svg>")
	return b.String()
}

// statText is a run's figure of the headline, as compare shows it.
func statText(s series) string {
	if !s.HasStat {
		return "no data"
	}
	st := s.Stat
	switch st.Kind {
	case bundle.Count:
		return fmt.Sprintf("%s total, %s/s mean, %s/s peak", fmtNum(st.Total), fmtNum(st.Mean), fmtNum(st.Max))
	case bundle.Mean:
		return fmt.Sprintf("mean %s%s, peak %s%s", fmtNum(st.Mean), st.Unit, fmtNum(st.Max), st.Unit)
	}
	return fmt.Sprintf("peak %s%s, mean %s%s", fmtNum(st.Max), st.Unit, fmtNum(st.Mean), st.Unit)
}

// yLabel names the y axis: counts are charted per second.
func yLabel(h bundle.Headline) string {
	switch {
	case h.Kind == bundle.Count:
		return h.Label + " per second"
	case h.Unit == "%":
		return "percent"
	case h.Unit == "us":
		return "microseconds"
	case h.Unit == "/s":
		return "per second"
	}
	label := h.Label
	if i := strings.Index(label, " ("); i > 0 {
		label = label[:i]
	}
	return shorten(label, 30)
}

// niceStep rounds a raw tick step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 || math.IsNaN(raw) || math.IsInf(raw, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// tickLabel prints an axis value with as many decimals as the step needs,
// and k/M/G suffixes for large values.
func tickLabel(v, step float64) string {
	if math.Abs(v) < step/1e6 {
		return "0"
	}
	for _, u := range []struct {
		div float64
		sfx string
	}{{1e9, "G"}, {1e6, "M"}, {1e3, "k"}} {
		if math.Abs(v) >= u.div && step >= u.div/100 {
			return trimFloat(v/u.div, decimals(step/u.div)) + u.sfx
		}
	}
	return trimFloat(v, decimals(step))
}

func decimals(step float64) int {
	d := 0
	for step < 1 && d < 6 {
		step *= 10
		d++
	}
	return d
}

// fmtNum prints a figure: integers with thousands separators, others with
// three significant digits (at most two decimals above 1).
func fmtNum(v float64) string {
	a := math.Abs(v)
	switch {
	case v == math.Trunc(v) && a < 1e15:
		return commas(int64(v))
	case a >= 100:
		return commas(int64(math.Round(v)))
	case a >= 10:
		return trimFloat(v, 1)
	case a >= 1:
		return trimFloat(v, 2)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

func commas(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

func trimFloat(v float64, dec int) string {
	s := strconv.FormatFloat(v, 'f', dec, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	if s == "-0" {
		s = "0"
	}
	return s
}

// num prints an SVG coordinate.
func num(v float64) string { return strconv.FormatFloat(math.Round(v*100)/100, 'f', -1, 64) }

func esc(s string) string { return html.EscapeString(s) }

func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
