package timewait

import (
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestPortSet(t *testing.T) {
	var s portSet
	want := []uint16{0, 1, 63, 64, 8080, 65535}
	for _, p := range want {
		s.add(p)
	}
	var got []uint16
	s.each(func(p uint16) { got = append(got, p) })
	if !slices.Equal(got, want) {
		t.Errorf("each = %v, want %v", got, want)
	}
	if s.has(2) || s.has(65534) || !s.has(8080) {
		t.Error("has disagrees with add")
	}
}

func TestSortBySock(t *testing.T) {
	var d twDiff
	for _, n := range []int{0, 1, 2, 1000, 100_000} {
		d.order = d.order[:0]
		want := make([]uint64, 0, n)
		for i := range n {
			// Slab addresses: a shared top, varying low bytes, some equal high bytes.
			sk := 0xffff888000000000 | rand.Uint64N(1<<34)&^63
			d.order = append(d.order, sockIdx{sk, uint32(i)})
			want = append(want, sk)
		}
		d.sort()
		slices.Sort(want)
		for i, o := range d.order {
			if o.sk != want[i] {
				t.Fatalf("n=%d: order[%d] = %#x, want %#x", n, i, o.sk, want[i])
			}
		}
	}
}

// TestMerge diffs two walks: a socket still there, one with a fresh timer
// (its 4-tuple reused), one whose address now holds another 4-tuple, one
// gone, one new.
func TestMerge(t *testing.T) {
	tp := func(port uint16) tuple { return tuple{lp: port, rp: 80} }
	var d twDiff
	prev := d.sortSockets([]twSock{
		{sk: 0x300, tp: tp(1), left: 30 * time.Second}, // stays
		{sk: 0x100, tp: tp(2), left: 10 * time.Second}, // reused: fresh timer
		{sk: 0x200, tp: tp(3), left: 20 * time.Second}, // address now holds port 5
		{sk: 0x400, tp: tp(4), left: 50 * time.Second}, // gone
	})
	rows := map[uint16]*Row{}
	for p := range uint16(7) {
		rows[p] = &Row{}
	}
	d.add(twSock{sk: 0x500, tp: tp(6), left: 59 * time.Second}, rows[6]) // new
	d.add(twSock{sk: 0x200, tp: tp(5), left: 59 * time.Second}, rows[5])
	d.add(twSock{sk: 0x300, tp: tp(1), left: 29 * time.Second}, rows[1])
	d.add(twSock{sk: 0x100, tp: tp(2), left: 59 * time.Second}, rows[2])
	var gone []uint16
	cur := d.merge(prev, func(e twSock) { gone = append(gone, e.tp.lp) })
	created := map[uint16]uint64{}
	for p, r := range rows {
		if r.Created > 0 {
			created[p] = r.Created
		}
	}
	if want := map[uint16]uint64{2: 1, 5: 1, 6: 1}; !maps.Equal(created, want) {
		t.Errorf("created %v, want %v", created, want)
	}
	slices.Sort(gone)
	if want := []uint16{3, 4}; !slices.Equal(gone, want) {
		t.Errorf("gone %v, want %v", gone, want)
	}
	var sks []uint64
	for _, s := range cur {
		sks = append(sks, s.sk)
	}
	if want := []uint64{0x100, 0x200, 0x300, 0x500}; !slices.Equal(sks, want) {
		t.Errorf("next walk's sockets %#x, want %#x", sks, want)
	}
	// The next diff against it: nothing changed, nothing counted.
	for _, s := range cur {
		d.add(s, rows[0])
	}
	gone = gone[:0]
	d.merge(cur, func(e twSock) { gone = append(gone, e.tp.lp) })
	if rows[0].Created != 0 || len(gone) != 0 {
		t.Errorf("unchanged walk: %d created, %v gone", rows[0].Created, gone)
	}
}
