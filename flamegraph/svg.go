package flamegraph

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"math"
	"strconv"
	"strings"
)

// Options control WriteSVG. Zero values take flamegraph.pl's defaults.
type Options struct {
	Title     string  // "Flame Graph", "Icicle Graph" when Inverted
	Subtitle  string  // second line, omitted when empty
	Width     int     // image width in pixels (1200)
	FrameH    int     // frame height in pixels (16)
	FontSize  float64 // 12
	FontType  string  // "Verdana"
	CountName string  // what counts are ("samples")
	Palette   string  // see Palettes ("hot")
	Inverted  bool    // icicle graph: root at the top
	MinWidth  float64 // frames narrower than this many pixels are omitted (0.1)

	// Diff colours frames by their change from the tree's "before" side
	// (red grew, blue shrank), each frame by its own inclusive total.
	Diff bool
	// Normalize scales the before side to the after side's total first.
	Normalize bool
	// Negate draws the before side's shape (frames that vanished become
	// visible, in blue); red still means grew.
	Negate bool
}

func (o *Options) defaults() {
	if o.Width <= 0 {
		o.Width = 1200
	}
	if o.FrameH <= 0 {
		o.FrameH = 16
	}
	if o.FontSize <= 0 {
		o.FontSize = 12
	}
	if o.FontType == "" {
		o.FontType = "Verdana"
	}
	if o.CountName == "" {
		o.CountName = "samples"
	}
	if o.Palette == "" {
		o.Palette = "hot"
	}
	if o.MinWidth <= 0 {
		o.MinWidth = 0.1
	}
	if o.Title == "" {
		switch {
		case o.Diff:
			o.Title = "Differential Flame Graph"
		case o.Inverted:
			o.Title = "Icicle Graph"
		default:
			o.Title = "Flame Graph"
		}
	}
}

const (
	xpad      = 10.0
	fontWidth = 0.59 // average character width per font size unit
)

// frame is one box to draw.
type frame struct {
	node  int32
	depth int
	x, w  float64
	delta float64
}

// layout places the tree's frames: x and width in pixels, depth from the
// root (0), leaving out frames narrower than o.MinWidth and their subtrees.
func (t *Tree) layout(o *Options) (frames []frame, maxDepth int, maxDelta float64) {
	scaleBefore := 1.0
	negate := o.Diff && o.Negate
	if o.Diff && o.Normalize && t.value(0, true) > 0 {
		scaleBefore = float64(t.value(0, false)) / float64(t.value(0, true))
	}
	width := func(n int32) float64 {
		if negate {
			return float64(t.value(n, true)) * scaleBefore
		}
		return float64(t.node(n).value)
	}
	total := width(0)
	if total <= 0 {
		return nil, 0, 0
	}
	scale := (float64(o.Width) - 2*xpad) / total
	var buf []int32
	var walk func(n int32, depth int, x float64)
	walk = func(n int32, depth int, x float64) {
		w := width(n) * scale
		if w < o.MinWidth {
			return
		}
		f := frame{node: n, depth: depth, x: x, w: w}
		if o.Diff {
			f.delta = float64(t.value(n, false)) - float64(t.value(n, true))*scaleBefore
			maxDelta = math.Max(maxDelta, math.Abs(f.delta))
		}
		frames = append(frames, f)
		maxDepth = max(maxDepth, depth)
		start := len(buf)
		buf = t.sortedChildren(buf, n)
		end := len(buf)
		for i := start; i < end; i++ {
			c := buf[i]
			walk(c, depth+1, x)
			x += width(c) * scale
		}
		buf = buf[:start]
	}
	walk(0, 0, xpad)
	return frames, maxDepth, maxDelta
}

// WriteSVG writes an interactive flame graph: click a frame to zoom, "Reset
// Zoom" to go back, "Search" (or Ctrl-F) for a regular expression, which
// highlights matching frames and shows their share of the total; hovering
// shows a frame's name and counts on the info line.
func (t *Tree) WriteSVG(w io.Writer, o Options) error {
	o.defaults()
	if o.Diff && o.Palette == "hot" {
		o.Palette = ""
	}
	if !o.Diff && !ValidPalette(o.Palette) {
		return fmt.Errorf("write flame graph: unknown palette %q (want one of %s)", o.Palette, strings.Join(Palettes, ", "))
	}
	frames, maxDepth, maxDelta := t.layout(&o)
	fh := float64(o.FrameH)
	ypad1 := o.FontSize * 3
	if o.Subtitle != "" {
		ypad1 += o.FontSize * 2
	}
	ypad2 := o.FontSize*2 + 10
	height := float64(maxDepth+1)*fh + ypad1 + ypad2
	total := float64(t.value(0, o.Diff && o.Negate))

	bw := bufio.NewWriterSize(w, 1<<16)
	W := float64(o.Width)
	fmt.Fprintf(bw, `<?xml version="1.0" standalone="no"?>
<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">
<svg version="1.1" width="%d" height="%s" onload="init(evt)" viewBox="0 0 %d %s" xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">
<!-- Flame graph stack visualization in the manner of https://github.com/brendangregg/FlameGraph (CDDL 1.0), written by nettrace. -->
<defs><linearGradient id="background" y1="0" y2="1" x1="0" x2="0"><stop stop-color="#eeeeee" offset="5%%"/><stop stop-color="#eeeeb0" offset="95%%"/></linearGradient></defs>
<style type="text/css">
text { font-family:%s; font-size:%gpx; fill:rgb(0,0,0); }
#search, #ignorecase { opacity:0.1; cursor:pointer; }
#search:hover, #search.show, #ignorecase:hover, #ignorecase.show { opacity:1; }
#subtitle { text-anchor:middle; font-color:rgb(160,160,160); }
#title { text-anchor:middle; font-size:%gpx; }
#unzoom { cursor:pointer; }
#frames > *:hover { stroke:black; stroke-width:0.5; cursor:pointer; }
.hide { display:none; }
.parent { opacity:0.5; }
</style>
<script type="text/ecmascript"><![CDATA[
var fontsize = %g, fontwidth = %g, xpad = %g, inverted = %t, total = %g;
%s
]]></script>
<rect x="0" y="0" width="100%%" height="100%%" fill="url(#background)"/>
<text id="title" x="%s" y="%s">%s</text>
`, o.Width, ff(height), o.Width, ff(height), html.EscapeString(o.FontType), o.FontSize, o.FontSize+5,
		o.FontSize, fontWidth, xpad, o.Inverted, total, script,
		ff(W/2), ff(o.FontSize*2), html.EscapeString(o.Title))
	if o.Subtitle != "" {
		fmt.Fprintf(bw, "<text id=\"subtitle\" x=\"%s\" y=\"%s\">%s</text>\n", ff(W/2), ff(o.FontSize*4), html.EscapeString(o.Subtitle))
	}
	fmt.Fprintf(bw, `<text id="details" x="%s" y="%s"> </text>
<text id="unzoom" class="hide" x="%s" y="%s">Reset Zoom</text>
<text id="search" x="%s" y="%s">Search</text>
<text id="ignorecase" x="%s" y="%s">ic</text>
<text id="matched" x="%s" y="%s"> </text>
<g id="frames">
`, ff(xpad), ff(height-ypad2/2), ff(xpad), ff(o.FontSize*2), ff(W-xpad-100), ff(o.FontSize*2),
		ff(W-xpad-16), ff(o.FontSize*2), ff(W-xpad-100), ff(height-ypad2/2))

	var buf []byte
	for _, f := range frames {
		name := t.names[t.node(f.node).name]
		var y float64
		if o.Inverted {
			y = ypad1 + float64(f.depth)*fh
		} else {
			y = height - ypad2 - float64(f.depth+1)*fh
		}
		count := t.value(f.node, o.Diff && o.Negate)
		var fill rgb
		if o.Diff {
			fill = diffColor(f.delta, maxDelta)
		} else {
			fill = color(o.Palette, name)
		}
		if f.node == 0 {
			fill = rgb{200, 200, 200}
			if o.Diff {
				fill = diffColor(f.delta, maxDelta)
			}
		}
		info := name + " (" + commas(count) + " " + o.CountName + ", " + strconv.FormatFloat(100*float64(count)/total, 'f', 2, 64) + "%"
		if o.Diff {
			info += "; " + signed(100*f.delta/total) + "%"
		}
		info += ")"
		buf = buf[:0]
		buf = append(buf, "<g><title>"...)
		buf = append(buf, html.EscapeString(info)...)
		buf = append(buf, "</title><rect x=\""...)
		buf = appendF(buf, f.x)
		buf = append(buf, "\" y=\""...)
		buf = appendF(buf, y)
		buf = append(buf, "\" width=\""...)
		buf = appendF(buf, f.w)
		buf = append(buf, "\" height=\""...)
		buf = appendF(buf, fh-1)
		buf = append(buf, "\" fill=\""...)
		buf = append(buf, fill.String()...)
		buf = append(buf, "\" rx=\"2\" ry=\"2\"/><text x=\""...)
		buf = appendF(buf, f.x+3)
		buf = append(buf, "\" y=\""...)
		buf = appendF(buf, y+fh/2+o.FontSize/2-2)
		buf = append(buf, "\">"...)
		buf = append(buf, html.EscapeString(label(name, f.w, o.FontSize))...)
		buf = append(buf, "</text></g>\n"...)
		bw.Write(buf)
	}
	bw.WriteString("</g>\n</svg>\n")
	return bw.Flush()
}

// label fits name into a frame w pixels wide, as flamegraph.pl does.
func label(name string, w, fontSize float64) string {
	chars := int((w - 3) / (fontSize * fontWidth))
	if chars < 3 {
		return ""
	}
	if len(name) <= chars {
		return name
	}
	return name[:chars-2] + ".."
}

func ff(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

func appendF(b []byte, v float64) []byte {
	return strconv.AppendFloat(b, math.Round(v*100)/100, 'f', -1, 64)
}

func signed(v float64) string {
	s := strconv.FormatFloat(v, 'f', 2, 64)
	if v >= 0 {
		return "+" + s
	}
	return s
}

// commas formats n with thousands separators.
func commas(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
