// Package dist turns log2 histograms into output rows, for the --dist view
// of the softirq and sched commands: one row per non-empty slot, with a bar.
package dist

import (
	"strings"

	"github.com/nettrace/nettrace/internal/hist"
)

// Row is one slot of a histogram.
type Row struct {
	Hist   string  `json:"hist" col:"HIST"`           // which histogram: "NET_RX", "runq"
	FromUS float64 `json:"from_us" col:"FROM(us),%g"` // slot's lower bound
	ToUS   float64 `json:"to_us" col:"TO(us),%g"`     // slot's upper bound (exclusive)
	Count  uint64  `json:"count" col:"COUNT"`         // values in the slot this interval
	Bar    string  `json:"bar" col:"DISTRIBUTION,%s"` // count as stars
}

// barWidth is the length of the longest bar.
const barWidth = 40

// Rows returns the rows of h from its first to its last non-empty slot;
// scale converts a slot bound to microseconds (1e-3 for a histogram of
// nanoseconds, 1 for one of microseconds).
func Rows(name string, h *hist.Log2, scale float64) []Row {
	first, last := -1, -1
	var peak uint64
	for i, c := range h.Slots {
		if c == 0 {
			continue
		}
		if first < 0 {
			first = i
		}
		last = i
		peak = max(peak, c)
	}
	if first < 0 {
		return nil
	}
	rows := make([]Row, 0, last-first+1)
	for i := first; i <= last; i++ {
		c := h.Slots[i]
		n := int(c * barWidth / peak)
		if c > 0 && n == 0 {
			n = 1
		}
		rows = append(rows, Row{
			Hist: name, FromUS: hist.Lower(i) * scale, ToUS: hist.Upper(i) * scale,
			Count: c, Bar: strings.Repeat("*", n),
		})
	}
	return rows
}
