package timewait

import (
	"math/bits"
	"time"
)

// portSet is a set of ports, one bit each: a membership test per socket
// costs a shift and a mask.
type portSet [1024]uint64

func (s *portSet) has(p uint16) bool { return s[p>>6]&(1<<(p&63)) != 0 }
func (s *portSet) add(p uint16)      { s[p>>6] |= 1 << (p & 63) }

// each calls fn for every port in the set, in order.
func (s *portSet) each(fn func(uint16)) {
	for w, word := range s {
		for ; word != 0; word &= word - 1 {
			fn(uint16(w<<6 | bits.TrailingZeros64(word)))
		}
	}
}

// twSock is a TIME_WAIT socket of a walk, named by its kernel address (its
// cookie where the socket table reads sock_diag without addresses); the
// 4-tuple tells a new socket at a reused address from the one seen before.
type twSock struct {
	sk   uint64
	tp   tuple
	left time.Duration // timer left
}

// twDiff compares the TIME_WAIT sockets of one walk with those of the
// previous walk of the same namespace, both sorted by address: a sort and a
// merge, with no map of 100,000 entries to build or probe. Its buffers are
// reused by every walk.
type twDiff struct {
	cur   []twSock // this walk, in walk order
	rows  []*Row   // rows[i] is the row of cur[i]
	order []sockIdx
	tmp   []sockIdx
	spare []twSock // a sorted slice no namespace holds any more
}

// add records a TIME_WAIT socket of this walk and its row.
func (d *twDiff) add(s twSock, r *Row) {
	d.cur = append(d.cur, s)
	d.rows = append(d.rows, r)
}

// merge counts this walk's sockets against prev (the previous walk, sorted
// by address) and returns this walk sorted by address. A socket not seen at
// the previous walk, or the same 4-tuple with a fresher timer, is created in
// its row; a previous one no longer there (or whose address now holds
// another 4-tuple) is passed to gone.
func (d *twDiff) merge(prev []twSock, gone func(twSock)) []twSock {
	d.order = d.order[:0]
	for i, s := range d.cur {
		d.order = append(d.order, sockIdx{s.sk, uint32(i)})
	}
	d.sort()
	out := d.spare[:0]
	j := 0
	for _, o := range d.order {
		c := &d.cur[o.i]
		for j < len(prev) && prev[j].sk < c.sk {
			gone(prev[j])
			j++
		}
		created := true
		if j < len(prev) && prev[j].sk == c.sk {
			if prev[j].tp == c.tp {
				created = c.left > prev[j].left+time.Second
			} else {
				gone(prev[j])
			}
			j++
		}
		if created {
			d.rows[o.i].Created++
		}
		out = append(out, *c)
	}
	for ; j < len(prev); j++ {
		gone(prev[j])
	}
	d.spare = prev
	d.cur, d.rows = d.cur[:0], d.rows[:0]
	return out
}

// sortSockets sorts a walk's sockets by address, for a namespace's first
// walk.
func (d *twDiff) sortSockets(socks []twSock) []twSock {
	d.order = d.order[:0]
	for i, s := range socks {
		d.order = append(d.order, sockIdx{s.sk, uint32(i)})
	}
	d.sort()
	out := make([]twSock, 0, len(socks))
	for _, o := range d.order {
		out = append(out, socks[o.i])
	}
	return out
}

type sockIdx struct {
	sk uint64
	i  uint32
}

// sort sorts d.order by address: a least-significant-byte radix sort that
// skips the bytes all addresses share (kernel addresses differ in few).
func (d *twDiff) sort() {
	a := d.order
	if len(a) < 2 {
		return
	}
	var counts [8][256]uint32
	for _, e := range a {
		for b := range 8 {
			counts[b][byte(e.sk>>(8*b))]++
		}
	}
	if cap(d.tmp) < len(a) {
		d.tmp = make([]sockIdx, len(a))
	}
	t := d.tmp[:len(a)]
	n := uint32(len(a))
	for b := range 8 {
		c := &counts[b]
		shift := 8 * b
		if c[byte(a[0].sk>>shift)] == n {
			continue // every address has this byte
		}
		var sum uint32
		for v := range c {
			c[v], sum = sum, sum+c[v]
		}
		for _, e := range a {
			v := byte(e.sk >> shift)
			t[c[v]] = e
			c[v]++
		}
		a, t = t, a
	}
	if &a[0] != &d.order[0] {
		copy(d.order, a)
	}
}
