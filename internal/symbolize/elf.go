package symbolize

import (
	"bytes"
	"debug/elf"
	"debug/gosym"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Binary is the symbol table of one ELF file.
type Binary struct {
	BuildID string // hex GNU build ID, "" when absent
	IsGo    bool   // has .gopclntab
	loads   []elf.ProgHeader
	addrs   []uint64
	sizes   []uint64
	names   []string
	gotab   *gosym.Table

	// A binary opened at capture is parsed at its first lookup: a
	// capture only reads the mappings and opens the files, so a process
	// announced behind others is read before it can exec or exit.
	pending *elf.File
	closer  io.Closer
}

// lazyBinary returns a Binary of f to parse at its first use.
func lazyBinary(f *elf.File, c io.Closer) *Binary {
	return &Binary{BuildID: buildID(f), pending: f, closer: c}
}

// load parses a binary opened lazily (the symbolizer holds its lock).
func (b *Binary) load() {
	if b.pending == nil {
		return
	}
	f, c, id := b.pending, b.closer, b.BuildID
	b.pending, b.closer = nil, nil
	if nb, err := newBinary(f); err == nil {
		*b = *nb
		b.BuildID = id
	}
	c.Close()
}

// OpenBinary parses path's program headers and symbols.
func OpenBinary(path string) (*Binary, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open ELF %s: %w", path, err)
	}
	defer f.Close()
	b, err := newBinary(f)
	if err != nil {
		return nil, fmt.Errorf("read symbols of %s: %w", path, err)
	}
	return b, nil
}

func newBinary(f *elf.File) (*Binary, error) {
	b := &Binary{BuildID: buildID(f)}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			b.loads = append(b.loads, p.ProgHeader)
		}
	}
	if sec := f.Section(".gopclntab"); sec != nil {
		data, err := sec.Data()
		if err == nil {
			var text uint64
			if t := f.Section(".text"); t != nil {
				text = t.Addr
			}
			if tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, text)); err == nil {
				b.gotab, b.IsGo = tab, true
			}
		}
	}
	type sym struct {
		addr, size uint64
		name       string
	}
	var syms []sym
	add := func(list []elf.Symbol, err error) error {
		if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
			return err
		}
		for _, s := range list {
			t := elf.ST_TYPE(s.Info)
			if (t != elf.STT_FUNC && t != elf.STT_NOTYPE) || s.Value == 0 || s.Section == elf.SHN_UNDEF || s.Name == "" {
				continue
			}
			if t == elf.STT_NOTYPE && s.Section >= elf.SHN_LORESERVE {
				continue
			}
			syms = append(syms, sym{s.Value, s.Size, s.Name})
		}
		return nil
	}
	if err := add(f.Symbols()); err != nil {
		return nil, err
	}
	if err := add(f.DynamicSymbols()); err != nil {
		return nil, err
	}
	// Sort by address, functions with a size first, and drop duplicates
	// (.symtab and .dynsym name the same exported functions).
	sort.Slice(syms, func(i, j int) bool {
		if syms[i].addr != syms[j].addr {
			return syms[i].addr < syms[j].addr
		}
		return syms[i].size > syms[j].size
	})
	for i, s := range syms {
		if i > 0 && s.addr == syms[i-1].addr {
			continue
		}
		b.addrs = append(b.addrs, s.addr)
		b.sizes = append(b.sizes, s.size)
		b.names = append(b.names, s.name)
	}
	return b, nil
}

func buildID(f *elf.File) string {
	sec := f.Section(".note.gnu.build-id")
	if sec == nil {
		return ""
	}
	data, err := sec.Data()
	if err != nil || len(data) < 16 {
		return ""
	}
	bo := f.ByteOrder
	namesz, descsz := bo.Uint32(data[0:4]), bo.Uint32(data[4:8])
	if bo.Uint32(data[8:12]) != 3 { // NT_GNU_BUILD_ID
		return ""
	}
	start := 12 + (namesz+3)&^3
	if uint64(start)+uint64(descsz) > uint64(len(data)) || !bytes.HasPrefix(data[12:], []byte("GNU")) {
		return ""
	}
	return hex.EncodeToString(data[start : start+descsz])
}

// VirtualAddr converts a file offset to the ELF virtual address through the
// PT_LOAD segment that maps it; without one it returns off.
func (b *Binary) VirtualAddr(off uint64) uint64 {
	b.load()
	for _, p := range b.loads {
		if off >= p.Off && off < p.Off+p.Filesz {
			return off - p.Off + p.Vaddr
		}
	}
	return off
}

// Lookup names the function that holds ELF virtual address addr: from
// .gopclntab for Go binaries, else from .symtab/.dynsym. ok is false when
// no symbol covers addr.
func (b *Binary) Lookup(addr uint64) (name string, off uint64, file string, line int, ok bool) {
	b.load()
	if b.gotab != nil {
		if fn := b.gotab.PCToFunc(addr); fn != nil {
			file, line, _ = b.gotab.PCToLine(addr)
			return fn.Name, addr - fn.Entry, file, line, true
		}
	}
	i := sort.Search(len(b.addrs), func(i int) bool { return b.addrs[i] > addr }) - 1
	if i < 0 {
		return "", 0, "", 0, false
	}
	if b.sizes[i] > 0 && addr >= b.addrs[i]+b.sizes[i] {
		return "", 0, "", 0, false
	}
	return b.names[i], addr - b.addrs[i], "", 0, true
}
