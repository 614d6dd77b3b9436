package symbolize

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
)

// Kernel is the kernel's symbol table from /proc/kallsyms, sorted by address.
type Kernel struct {
	addrs   []uint64
	names   []string
	modules []string // "" for vmlinux, else the module name
	// Restricted reports that every address read as zero (kernel.kptr_restrict
	// or no CAP_SYSLOG): kernel frames cannot be named.
	Restricted bool
}

// LoadKernel parses a kallsyms file ("/proc/kallsyms").
func LoadKernel(path string) (*Kernel, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open kallsyms: %w", err)
	}
	defer f.Close()
	k, err := ParseKallsyms(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return k, nil
}

// ParseKallsyms parses text in the format of /proc/kallsyms, keeping text
// (function) symbols.
func ParseKallsyms(r io.Reader) (*Kernel, error) {
	k := &Kernel{Restricted: true}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	type sym struct {
		addr      uint64
		name, mod string
	}
	var syms []sym
	seen := 0
	for sc.Scan() {
		// ffffffff81000000 T _stext\t[module]
		line := sc.Bytes()
		f := bytes.Fields(line)
		if len(f) < 3 {
			continue
		}
		seen++
		addr, err := strconv.ParseUint(string(f[0]), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("parse address %q: %w", f[0], err)
		}
		if addr == 0 {
			continue
		}
		k.Restricted = false
		switch f[1][0] {
		case 't', 'T', 'w', 'W':
		default:
			continue
		}
		s := sym{addr: addr, name: string(f[2])}
		if len(f) > 3 {
			s.mod = string(bytes.Trim(f[3], "[]"))
		}
		syms = append(syms, s)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if seen == 0 {
		k.Restricted = false
	}
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	k.addrs = make([]uint64, len(syms))
	k.names = make([]string, len(syms))
	k.modules = make([]string, len(syms))
	for i, s := range syms {
		k.addrs[i], k.names[i], k.modules[i] = s.addr, s.name, s.mod
	}
	return k, nil
}

// Lookup returns the frame for a kernel address: the nearest function at or
// below it, or kernel+0xaddr when there is none.
func (k *Kernel) Lookup(addr uint64) Frame {
	fr := Frame{Addr: addr, Offset: addr, Module: "kernel", Kernel: true}
	if k == nil {
		return fr
	}
	i := sort.Search(len(k.addrs), func(i int) bool { return k.addrs[i] > addr }) - 1
	if i < 0 {
		return fr
	}
	fr.Func = k.names[i]
	fr.Offset = addr - k.addrs[i]
	if k.modules[i] != "" {
		fr.Module = k.modules[i]
	}
	return fr
}
