// Package flamegraph reads stack profiles (folded stacks, `perf script`
// output, pprof files), merges them into a tree, and writes folded stacks and
// interactive SVG flame graphs in the manner of flamegraph.pl, including
// differential ones. It is plain Go: no BPF, no root.
package flamegraph

import (
	"bufio"
	"io"
	"sort"
	"strconv"
)

// Tree is a set of stacks merged by common prefix. Node 0 is the root
// ("all"); every other node is a frame under its parent.
type Tree struct {
	names  []string                  // interned frame names
	ids    map[string]int32          // name -> index in names
	chunks [][]node                  // nodes, chunkSize a chunk: growing never copies them
	n      int32                     // number of nodes
	before []int64                   // inclusive counts of the "before" profile (diffs), by node
	wide   map[int32]map[int32]int32 // child index of nodes with many children
	last   []int32                   // node path of the previous stack
}

// A node's children are a linked list (first, next), newest first, with an
// index in wide once there are more than wideAt: most nodes have one or two
// children, and a node just created has none, so deep new stacks cost no
// lookups.
type node struct {
	name        int32
	first, next int32 // first child, next sibling; -1 for none
	nchild      int32
	value       int64 // inclusive count
}

const (
	wideAt    = 16
	chunkBits = 16
	chunkSize = 1 << chunkBits
)

// node returns node i.
func (t *Tree) node(i int32) *node { return &t.chunks[i>>chunkBits][i&(chunkSize-1)] }

func (t *Tree) child(parent, name int32) int32 {
	p := t.node(parent)
	if p.nchild > wideAt {
		if c, ok := t.wide[parent][name]; ok {
			return c
		}
		return -1
	}
	for c := p.first; c >= 0; {
		n := t.node(c)
		if n.name == name {
			return c
		}
		c = n.next
	}
	return -1
}

func (t *Tree) newChild(parent, name int32) int32 {
	c := t.n
	if int(c>>chunkBits) == len(t.chunks) {
		t.chunks = append(t.chunks, make([]node, chunkSize))
	}
	t.n++
	p := t.node(parent)
	*t.node(c) = node{name: name, first: -1, next: p.first}
	p.first = c
	p.nchild++
	switch {
	case p.nchild == wideAt+1:
		m := make(map[int32]int32, 2*wideAt)
		for x := p.first; x >= 0; x = t.node(x).next {
			m[t.node(x).name] = x
		}
		t.wide[parent] = m
	case p.nchild > wideAt+1:
		t.wide[parent][name] = c
	}
	return c
}

// NewTree returns an empty tree.
func NewTree() *Tree {
	t := &Tree{names: []string{"all"}, ids: map[string]int32{}, wide: map[int32]map[int32]int32{}}
	t.chunks = [][]node{make([]node, chunkSize)}
	t.chunks[0][0] = node{first: -1, next: -1}
	t.n = 1
	return t
}

// Add adds count to a stack given root first.
func (t *Tree) Add(frames []string, count int64) { t.add(frames, count, false) }

// AddBefore adds count to the "before" side of a differential tree.
func (t *Tree) AddBefore(frames []string, count int64) { t.add(frames, count, true) }

func (t *Tree) intern(s string) int32 {
	if id, ok := t.ids[s]; ok {
		return id
	}
	id := int32(len(t.names))
	t.names = append(t.names, s)
	t.ids[s] = id
	return id
}

func (t *Tree) add(frames []string, count int64, before bool) {
	cur := int32(0)
	t.bump(cur, count, before)
	// Consecutive stacks usually share a prefix (folded files are sorted):
	// follow the previous stack's path while the frames are the same.
	same := true
	for i, f := range frames {
		if same && i < len(t.last) && t.names[t.node(t.last[i]).name] == f {
			cur = t.last[i]
			t.bump(cur, count, before)
			continue
		}
		if same {
			same = false
			t.last = t.last[:i]
		}
		name := t.intern(f)
		c := t.child(cur, name)
		if c < 0 {
			c = t.newChild(cur, name)
		}
		cur = c
		t.last = append(t.last, c)
		t.bump(cur, count, before)
	}
	if same && len(frames) < len(t.last) {
		t.last = t.last[:len(frames)]
	}
}

func (t *Tree) bump(n int32, count int64, before bool) {
	if !before {
		t.node(n).value += count
		return
	}
	if int(n) >= len(t.before) {
		t.before = append(t.before, make([]int64, int(t.n)-len(t.before))...)
	}
	t.before[n] += count
}

// value returns node n's inclusive count, of the "before" side if before.
func (t *Tree) value(n int32, before bool) int64 {
	if !before {
		return t.node(n).value
	}
	if int(n) >= len(t.before) {
		return 0
	}
	return t.before[n]
}

// Total returns the count of all stacks (the "after" side of a diff).
func (t *Tree) Total() int64 { return t.node(0).value }

// TotalBefore returns the count of the "before" side of a diff.
func (t *Tree) TotalBefore() int64 { return t.value(0, true) }

// sortedChildren appends node n's children, sorted by name, to buf.
func (t *Tree) sortedChildren(buf []int32, n int32) []int32 {
	start := len(buf)
	for c := t.node(n).first; c >= 0; c = t.node(c).next {
		buf = append(buf, c)
	}
	c := buf[start:]
	if len(c) > 1 {
		sort.Slice(c, func(i, j int) bool { return t.names[t.node(c[i]).name] < t.names[t.node(c[j]).name] })
	}
	return buf
}

// Stack is one folded stack: frames root first, and its count.
type Stack struct {
	Frames []string
	Count  int64
}

// Stacks returns the distinct stacks with their own (self) counts, sorted.
func (t *Tree) Stacks() []Stack {
	var out []Stack
	t.walkSelf(func(path []int32, self int64) {
		fr := make([]string, len(path))
		for i, n := range path {
			fr[i] = t.names[t.node(n).name]
		}
		out = append(out, Stack{fr, self})
	})
	return out
}

// walkSelf visits every node with a self count, with its path from the
// root's first child, in sorted order.
func (t *Tree) walkSelf(fn func(path []int32, self int64)) {
	var path, buf []int32
	var walk func(n int32)
	walk = func(n int32) {
		start := len(buf)
		buf = t.sortedChildren(buf, n)
		end := len(buf)
		self := t.node(n).value
		for _, c := range buf[start:end] {
			self -= t.node(c).value
		}
		if n != 0 {
			path = append(path, n)
			if self > 0 {
				fn(path, self)
			}
		}
		for i := start; i < end; i++ {
			walk(buf[i])
		}
		if n != 0 {
			path = path[:len(path)-1]
		}
		buf = buf[:start]
	}
	walk(0)
}

// WriteFolded writes the tree as folded stacks: "root;...;leaf count" per
// line, sorted.
func (t *Tree) WriteFolded(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	var buf []byte
	t.walkSelf(func(path []int32, self int64) {
		buf = buf[:0]
		for i, n := range path {
			if i > 0 {
				buf = append(buf, ';')
			}
			buf = append(buf, t.names[t.node(n).name]...)
		}
		buf = append(buf, ' ')
		buf = strconv.AppendInt(buf, self, 10)
		buf = append(buf, '\n')
		bw.Write(buf)
	})
	return bw.Flush()
}
