package hist

import "testing"

func TestQuantile(t *testing.T) {
	var h Log2
	// 100 values: 90 in [8,16), 10 in [1024,2048).
	h.Slots[3] = 90
	h.Slots[10] = 10
	if got := h.Count(); got != 100 {
		t.Fatalf("Count = %d", got)
	}
	if p50 := h.Quantile(0.5); p50 < 8 || p50 >= 16 {
		t.Errorf("p50 = %v, want in [8,16)", p50)
	}
	if p99 := h.Quantile(0.99); p99 < 1024 || p99 >= 2048 {
		t.Errorf("p99 = %v, want in [1024,2048)", p99)
	}
	if m := h.MaxBound(); m != 2048 {
		t.Errorf("MaxBound = %v", m)
	}
	var empty Log2
	if empty.Quantile(0.99) != 0 || empty.MaxBound() != 0 {
		t.Error("empty histogram not zero")
	}
}

func TestSubSum(t *testing.T) {
	a := Log2{}
	a.Slots[1], a.Slots[2] = 5, 7
	b := Log2{}
	b.Slots[1], b.Slots[2] = 2, 9 // slot 2 went backwards: counts as b
	d := a.Sub(&b)
	if d.Slots[1] != 3 || d.Slots[2] != 7 {
		t.Errorf("Sub = %v", d.Slots[:3])
	}
	s := Sum([]Log2{a, b})
	if s.Slots[1] != 7 || s.Slots[2] != 16 {
		t.Errorf("Sum = %v", s.Slots[:3])
	}
}
