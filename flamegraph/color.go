package flamegraph

import (
	"fmt"
	"hash/fnv"
	"sort"
	"strings"
)

// Palettes lists the colour schemes WriteSVG knows, as flamegraph.pl names them.
var Palettes = []string{"hot", "mem", "io", "red", "green", "blue", "aqua", "yellow", "purple", "orange", "wakeup"}

// namehash derives three stable values in [0,1) from a frame's name, so a
// function keeps its colour between graphs.
func namehash(name string) (v1, v2, v3 float64) {
	name = strings.TrimSuffix(name, "_[k]")
	h := fnv.New64a()
	h.Write([]byte(name))
	x := h.Sum64()
	return float64(x&0xffff) / 0x10000, float64(x>>16&0xffff) / 0x10000, float64(x>>32&0xffff) / 0x10000
}

type rgb struct{ r, g, b int }

func (c rgb) String() string { return fmt.Sprintf("rgb(%d,%d,%d)", c.r, c.g, c.b) }

// color returns a frame's fill in palette.
func color(palette, name string) rgb {
	v1, v2, v3 := namehash(name)
	// Kernel frames in the hot palette are orange, as flamegraph.pl's
	// --colors=java shows them.
	if palette == "hot" && strings.HasSuffix(name, "_[k]") {
		palette = "orange"
	}
	switch palette {
	case "mem":
		return rgb{0, 190 + int(50*v2), int(210 * v1)}
	case "io":
		r := 80 + int(60*v1)
		return rgb{r, r, 190 + int(55*v2)}
	case "red":
		x := int(80 * v1)
		return rgb{200 + int(55*v1), 50 + x, 50 + x}
	case "green":
		x := int(60 * v1)
		return rgb{50 + x, 200 + int(55*v1), 50 + x}
	case "blue":
		x := int(60 * v1)
		return rgb{80 + x, 80 + x, 205 + int(50*v1)}
	case "aqua":
		x := int(55 * v1)
		return rgb{50 + int(60*v1), 165 + x, 165 + x}
	case "yellow":
		x := int(55 * v1)
		return rgb{175 + x, 175 + x, 50 + int(20*v1)}
	case "purple":
		x := int(65 * v1)
		return rgb{190 + x, 80 + int(60*v1), 190 + x}
	case "orange":
		return rgb{190 + int(65*v1), 90 + int(65*v1), 0}
	case "wakeup":
		return rgb{0, 156 + int(99*v1), 185 + int(60*v2)}
	}
	// hot
	return rgb{205 + int(50*v3), int(230 * v1), int(55 * v2)}
}

// ValidPalette reports whether WriteSVG knows palette.
func ValidPalette(p string) bool {
	i := sort.SearchStrings(sortedPalettes, p)
	return i < len(sortedPalettes) && sortedPalettes[i] == p
}

var sortedPalettes = func() []string {
	s := append([]string(nil), Palettes...)
	sort.Strings(s)
	return s
}()

// diffColor colours a frame by its change: red grew, blue shrank, white
// unchanged, the saturation proportional to |delta|/maxDelta.
func diffColor(delta, maxDelta float64) rgb {
	if maxDelta <= 0 || delta == 0 {
		return rgb{255, 255, 255}
	}
	if delta > 0 {
		x := int(210 * (maxDelta - delta) / maxDelta)
		return rgb{255, x, x}
	}
	x := int(210 * (maxDelta + delta) / maxDelta)
	return rgb{x, x, 255}
}
