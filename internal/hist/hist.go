// Package hist reads the log2 histograms that bpf/headers/common.h fills in
// the kernel (struct hist): slot i counts values in [2^i, 2^(i+1)), slot 0
// also takes 0.
package hist

import "math"

// Slots is HIST_SLOTS in bpf/headers/common.h.
const Slots = 27

// Log2 is one histogram, laid out as struct hist.
type Log2 struct {
	Slots [Slots]uint64
}

// Add adds o into h (to sum per-CPU copies or intervals).
func (h *Log2) Add(o *Log2) {
	for i := range h.Slots {
		h.Slots[i] += o.Slots[i]
	}
}

// Sub returns h - prev, slot by slot: the interval's histogram from two
// cumulative reads. A slot that went backwards (map entry recreated) counts as h.
func (h *Log2) Sub(prev *Log2) Log2 {
	var d Log2
	for i := range h.Slots {
		if h.Slots[i] >= prev.Slots[i] {
			d.Slots[i] = h.Slots[i] - prev.Slots[i]
		} else {
			d.Slots[i] = h.Slots[i]
		}
	}
	return d
}

// Sum merges per-CPU copies.
func Sum(perCPU []Log2) Log2 {
	var s Log2
	for i := range perCPU {
		s.Add(&perCPU[i])
	}
	return s
}

// Count is the number of values recorded.
func (h *Log2) Count() uint64 {
	var n uint64
	for _, c := range h.Slots {
		n += c
	}
	return n
}

// Lower and Upper bound slot i: [Lower, Upper).
func Lower(i int) float64 {
	if i == 0 {
		return 0
	}
	return math.Ldexp(1, i)
}

// Upper is the exclusive upper bound of slot i.
func Upper(i int) float64 { return math.Ldexp(1, i+1) }

// Quantile estimates the q-quantile (0..1) by linear interpolation inside
// the slot that holds it; 0 when empty. The error is at most the slot's
// width (a factor of two), as with any log2 histogram.
func (h *Log2) Quantile(q float64) float64 {
	n := h.Count()
	if n == 0 {
		return 0
	}
	rank := q * float64(n)
	var seen float64
	for i, c := range h.Slots {
		if c == 0 {
			continue
		}
		if seen+float64(c) >= rank {
			frac := (rank - seen) / float64(c)
			return Lower(i) + frac*(Upper(i)-Lower(i))
		}
		seen += float64(c)
	}
	return Upper(Slots - 1)
}

// MaxBound is the upper bound of the highest non-empty slot (0 when empty).
// Tracers that need the exact maximum keep it in a map of their own.
func (h *Log2) MaxBound() float64 {
	for i := Slots - 1; i >= 0; i-- {
		if h.Slots[i] != 0 {
			return Upper(i)
		}
	}
	return 0
}
