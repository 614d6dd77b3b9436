package symbolize

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Symbolizer names kernel and user addresses. Call Capture for a process
// image as early as possible (at its first sample): it reads the process's
// mappings and symbol tables then, so a process that exits later is still
// named. It is safe for concurrent use.
type Symbolizer struct {
	// Proc is the proc file system root ("/proc").
	Proc string

	mu        sync.Mutex
	kernel    *Kernel
	kernelErr error
	kernelOK  bool
	procs     map[Image]*process
	byInode   map[fileKey]*Binary
	byBuildID map[string]*Binary
}

type fileKey struct{ dev, ino uint64 }

// Image is one program a process ran: its PID and how many times it had
// exec'd since the profiler began watching. Each image has its own
// mappings, so addresses sampled before an exec are named from the
// mappings of the program that ran then.
type Image struct {
	PID int
	Gen uint32
}

type mapping struct {
	start, end, off uint64
	path            string
	bin             *Binary // nil: not a readable ELF file
}

type process struct {
	maps    []mapping
	perfMap *perfMap
	cache   map[uint64]Frame
	err     error
}

// New returns a Symbolizer reading /proc.
func New() *Symbolizer {
	return &Symbolizer{Proc: "/proc", procs: map[Image]*process{},
		byInode: map[fileKey]*Binary{}, byBuildID: map[string]*Binary{}}
}

// KernelSymbols loads /proc/kallsyms once. A restricted table (all zeros)
// is returned with Restricted set.
func (s *Symbolizer) KernelSymbols() (*Kernel, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kernelLocked()
}

func (s *Symbolizer) kernelLocked() (*Kernel, error) {
	if !s.kernelOK {
		s.kernel, s.kernelErr = LoadKernel(s.Proc + "/kallsyms")
		s.kernelOK = true
	}
	return s.kernel, s.kernelErr
}

// Kernel names kernel stack addresses, leaf first. Every address but the
// first is a return address and is looked up one byte back, in its call.
func (s *Symbolizer) Kernel(addrs []uint64) []Frame {
	s.mu.Lock()
	k, _ := s.kernelLocked()
	s.mu.Unlock()
	out := make([]Frame, len(addrs))
	for i, a := range addrs {
		la := a
		if i > 0 {
			la--
		}
		out[i] = k.Lookup(la)
		out[i].Addr = a
	}
	return out
}

// Capture reads an image's mappings (the process's, now) and the symbol
// tables of its mapped files. Capturing again is a no-op; a failed capture
// is remembered.
func (s *Symbolizer) Capture(img Image) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.captureLocked(img).err
}

func (s *Symbolizer) captureLocked(img Image) *process {
	if p, ok := s.procs[img]; ok {
		return p
	}
	pid := img.PID
	p := &process{cache: map[uint64]Frame{}}
	s.procs[img] = p
	dir := s.Proc + "/" + strconv.Itoa(pid)
	data, err := os.ReadFile(dir + "/maps")
	if err != nil {
		p.err = fmt.Errorf("read maps of process %d: %w", pid, err)
		return p
	}
	p.maps = parseMaps(data)
	for i := range p.maps {
		m := &p.maps[i]
		if strings.HasPrefix(m.path, "/") {
			m.bin = s.openLocked(dir, m)
		}
	}
	nspid := pid
	if st, err := os.ReadFile(dir + "/status"); err == nil {
		for _, line := range strings.Split(string(st), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "NSpid:" {
				nspid, _ = strconv.Atoi(f[len(f)-1])
			}
		}
	}
	for _, path := range []string{fmt.Sprintf("%s/root/tmp/perf-%d.map", dir, nspid), fmt.Sprintf("/tmp/perf-%d.map", pid)} {
		if pm, err := readPerfMap(path); err == nil {
			p.perfMap = pm
			break
		}
	}
	return p
}

// openLocked opens a mapped file through the process's root (its mount
// namespace), falling back to map_files for deleted files, and parses it
// unless a file with the same inode or build ID was parsed before.
func (s *Symbolizer) openLocked(dir string, m *mapping) *Binary {
	candidates := []string{dir + "/root" + m.path, fmt.Sprintf("%s/map_files/%x-%x", dir, m.start, m.end), m.path}
	for _, path := range candidates {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			f.Close()
			continue
		}
		key := fileKey{uint64(st.Dev), st.Ino}
		if b, ok := s.byInode[key]; ok {
			f.Close()
			return b
		}
		ef, err := elf.NewFile(f)
		if err != nil {
			f.Close()
			s.byInode[key] = nil
			return nil
		}
		if id := buildID(ef); id != "" {
			if b, ok := s.byBuildID[id]; ok {
				f.Close()
				s.byInode[key] = b
				return b
			}
		}
		b := lazyBinary(ef, f)
		s.byInode[key] = b
		if b.BuildID != "" {
			s.byBuildID[b.BuildID] = b
		}
		return b
	}
	return nil
}

// User names an image's user stack addresses, leaf first. An image that
// was not captured is captured now.
func (s *Symbolizer) User(img Image, addrs []uint64) []Frame {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.captureLocked(img)
	out := make([]Frame, len(addrs))
	for i, a := range addrs {
		la := a
		if i > 0 && a > 0 {
			la--
		}
		fr, ok := p.cache[la]
		if !ok {
			fr = p.lookup(la)
			p.cache[la] = fr
		}
		fr.Addr = a
		out[i] = fr
	}
	return out
}

func (p *process) lookup(addr uint64) Frame {
	fr := Frame{Addr: addr, Offset: addr}
	i := sort.Search(len(p.maps), func(i int) bool { return p.maps[i].end > addr })
	if i == len(p.maps) || addr < p.maps[i].start {
		if p.perfMap != nil {
			if name, off, ok := p.perfMap.lookup(addr); ok {
				fr.Func, fr.Offset, fr.Module = name, off, "[jit]"
			}
		}
		return fr
	}
	m := p.maps[i]
	fr.Module = m.path
	fileOff := addr - m.start + m.off
	fr.Offset = fileOff
	if m.bin != nil {
		va := m.bin.VirtualAddr(fileOff)
		fr.Offset = va
		if name, off, file, line, ok := m.bin.Lookup(va); ok {
			fr.Func, fr.Offset, fr.File, fr.Line = name, off, file, line
		}
		return fr
	}
	if p.perfMap != nil && !strings.HasPrefix(m.path, "/") {
		if name, off, ok := p.perfMap.lookup(addr); ok {
			fr.Func, fr.Offset, fr.Module = name, off, "[jit]"
			return fr
		}
	}
	if m.path == "" {
		fr.Module = "[anon]"
	}
	return fr
}

// Recapture reads the process's mappings again and adds to the image those
// that do not overlap one it has: what the dynamic loader mapped after the
// image was captured (an image is often captured at its first sample, while
// ld.so is still loading the libraries). Call it only while the process
// still runs that image. An image not captured yet is captured.
func (s *Symbolizer) Recapture(img Image) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.procs[img]
	if !ok || p.err != nil {
		delete(s.procs, img)
		return s.captureLocked(img).err
	}
	dir := s.Proc + "/" + strconv.Itoa(img.PID)
	data, err := os.ReadFile(dir + "/maps")
	if err != nil {
		return fmt.Errorf("read maps of process %d: %w", img.PID, err)
	}
	added := false
	for _, m := range parseMaps(data) {
		overlaps := false
		for _, old := range p.maps {
			if m.start < old.end && old.start < m.end {
				overlaps = true
				break
			}
		}
		if overlaps {
			continue
		}
		if strings.HasPrefix(m.path, "/") {
			m.bin = s.openLocked(dir, &m)
		}
		p.maps = append(p.maps, m)
		added = true
	}
	if added {
		sort.Slice(p.maps, func(i, j int) bool { return p.maps[i].start < p.maps[j].start })
		clear(p.cache)
	}
	return nil
}

// Forget drops an image's mappings (its files stay cached).
func (s *Symbolizer) Forget(img Image) {
	s.mu.Lock()
	delete(s.procs, img)
	s.mu.Unlock()
}

// parseMaps keeps the executable mappings of a /proc/PID/maps file, sorted.
func parseMaps(data []byte) []mapping {
	var out []mapping
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		// 55d0c4a00000-55d0c4a02000 r-xp 00001000 fd:01 1234   /usr/bin/prog
		f := bytes.Fields(line)
		if len(f) < 5 || len(f[1]) < 3 || f[1][2] != 'x' {
			continue
		}
		lo, hi, ok := bytes.Cut(f[0], []byte("-"))
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(string(lo), 16, 64)
		end, err2 := strconv.ParseUint(string(hi), 16, 64)
		off, err3 := strconv.ParseUint(string(f[2]), 16, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		m := mapping{start: start, end: end, off: off}
		if len(f) > 5 {
			// The path may contain spaces: take the rest of the line.
			idx := bytes.Index(line, f[5])
			m.path = strings.TrimSuffix(string(line[idx:]), " (deleted)")
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].start < out[j].start })
	return out
}

type perfMap struct {
	starts, sizes []uint64
	names         []string
}

// readPerfMap reads a JIT symbol map: "START SIZE name" per line, in hex.
func readPerfMap(path string) (*perfMap, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open perf map: %w", err)
	}
	defer f.Close()
	type ent struct {
		start, size uint64
		name        string
	}
	var ents []ent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		fs := strings.SplitN(sc.Text(), " ", 3)
		if len(fs) != 3 {
			continue
		}
		start, err1 := strconv.ParseUint(strings.TrimPrefix(fs[0], "0x"), 16, 64)
		size, err2 := strconv.ParseUint(strings.TrimPrefix(fs[1], "0x"), 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		ents = append(ents, ent{start, size, fs[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	// Later entries replace earlier ones for the same address (code reused).
	sort.SliceStable(ents, func(i, j int) bool { return ents[i].start < ents[j].start })
	pm := &perfMap{}
	for _, e := range ents {
		if n := len(pm.starts); n > 0 && pm.starts[n-1] == e.start {
			pm.sizes[n-1], pm.names[n-1] = e.size, e.name
			continue
		}
		pm.starts = append(pm.starts, e.start)
		pm.sizes = append(pm.sizes, e.size)
		pm.names = append(pm.names, e.name)
	}
	return pm, nil
}

func (pm *perfMap) lookup(addr uint64) (string, uint64, bool) {
	i := sort.Search(len(pm.starts), func(i int) bool { return pm.starts[i] > addr }) - 1
	if i < 0 || addr >= pm.starts[i]+pm.sizes[i] {
		return "", 0, false
	}
	return pm.names[i], addr - pm.starts[i], true
}
