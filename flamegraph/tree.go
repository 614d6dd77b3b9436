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
	names []string         // interned frame names
	ids   map[string]int32 // name -> index in names
	nodes []node
	wide  map[int32]map[int32]int32 // child index of nodes with many children
	last  []int32                   // node path of the previous stack
}

// A node's children are a linked list (first, next), with an index in wide
// once there are more than wideAt: most nodes have one or two children, and
// a node just created has none, so deep new stacks cost no lookups.
type node struct {
	name        int32
	parent      int32
	first, next int32 // first child, next sibling; -1 for none
	nchild      int32
	value       int64 // inclusive count
	before      int64 // inclusive count of the "before" profile (diffs)
}

const wideAt = 16

func (t *Tree) child(parent, name int32) int32 {
	p := &t.nodes[parent]
	if p.nchild > wideAt {
		if c, ok := t.wide[parent][name]; ok {
			return c
		}
		return -1
	}
	for c := p.first; c >= 0; c = t.nodes[c].next {
		if t.nodes[c].name == name {
			return c
		}
	}
	return -1
}

func (t *Tree) newChild(parent, name int32) int32 {
	c := int32(len(t.nodes))
	p := &t.nodes[parent]
	t.nodes = append(t.nodes, node{name: name, parent: parent, first: -1, next: p.first})
	p = &t.nodes[parent]
	p.first = c
	p.nchild++
	switch {
	case p.nchild == wideAt+1:
		m := make(map[int32]int32, 2*wideAt)
		for x := p.first; x >= 0; x = t.nodes[x].next {
			m[t.nodes[x].name] = x
		}
		t.wide[parent] = m
	case p.nchild > wideAt+1:
		t.wide[parent][name] = c
	}
	return c
}

// NewTree returns an empty tree.
func NewTree() *Tree {
	return &Tree{names: []string{"all"}, ids: map[string]int32{}, nodes: []node{{parent: -1, first: -1, next: -1}},
		wide: map[int32]map[int32]int32{}}
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
		if same && i < len(t.last) && t.names[t.nodes[t.last[i]].name] == f {
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
	if before {
		t.nodes[n].before += count
	} else {
		t.nodes[n].value += count
	}
}

// Total returns the count of all stacks (the "after" side of a diff).
func (t *Tree) Total() int64 { return t.nodes[0].value }

// TotalBefore returns the count of the "before" side of a diff.
func (t *Tree) TotalBefore() int64 { return t.nodes[0].before }

// children returns each node's children sorted by name, as slices of one
// shared array.
func (t *Tree) children() [][]int32 {
	start := make([]int32, len(t.nodes)+1)
	for i := 1; i < len(t.nodes); i++ {
		start[t.nodes[i].parent+1]++
	}
	for i := 1; i < len(start); i++ {
		start[i] += start[i-1]
	}
	all := make([]int32, len(t.nodes))
	fill := append([]int32(nil), start[:len(t.nodes)]...)
	for i := 1; i < len(t.nodes); i++ {
		p := t.nodes[i].parent
		all[fill[p]] = int32(i)
		fill[p]++
	}
	ch := make([][]int32, len(t.nodes))
	for n := range t.nodes {
		c := all[start[n]:start[n+1]:start[n+1]]
		if len(c) > 1 {
			sort.Slice(c, func(i, j int) bool { return t.names[t.nodes[c[i]].name] < t.names[t.nodes[c[j]].name] })
		}
		ch[n] = c
	}
	return ch
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
			fr[i] = t.names[t.nodes[n].name]
		}
		out = append(out, Stack{fr, self})
	})
	return out
}

// walkSelf visits every node with a self count, with its path from the
// root's first child, in sorted order.
func (t *Tree) walkSelf(fn func(path []int32, self int64)) {
	ch := t.children()
	var path []int32
	var walk func(n int32)
	walk = func(n int32) {
		self := t.nodes[n].value
		for _, c := range ch[n] {
			self -= t.nodes[c].value
		}
		if n != 0 {
			path = append(path, n)
			if self > 0 {
				fn(path, self)
			}
		}
		for _, c := range ch[n] {
			walk(c)
		}
		if n != 0 {
			path = path[:len(path)-1]
		}
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
			buf = append(buf, t.names[t.nodes[n].name]...)
		}
		buf = append(buf, ' ')
		buf = strconv.AppendInt(buf, self, 10)
		buf = append(buf, '\n')
		bw.Write(buf)
	})
	return bw.Flush()
}
