// Package symbolize names stack addresses: kernel frames from /proc/kallsyms,
// user frames from ELF .symtab/.dynsym (with the load bias of PIE binaries and
// shared libraries from /proc/PID/maps), Go binaries through .gopclntab (which
// survives stripping), and JIT code from /tmp/perf-PID.map. Files are opened
// through /proc/PID/root so processes in containers work, and parsed symbol
// tables are cached by build ID and by inode.
package symbolize

import (
	"path/filepath"
	"strconv"
)

// Frame is one symbolized stack frame.
type Frame struct {
	Func   string // function name; "" when it could not be named
	Module string // binary path, kernel module name, or "kernel"
	Addr   uint64 // address in the process or kernel
	Offset uint64 // Func's offset when named, else the address within Module
	File   string // source file, when known (Go binaries)
	Line   int
	Kernel bool
}

// Name is the function name, or module+0xoffset for a frame that could not
// be named.
func (f Frame) Name() string {
	if f.Func != "" {
		return f.Func
	}
	mod := filepath.Base(f.Module)
	if f.Module == "" {
		mod = "[unknown]"
	}
	return mod + "+0x" + strconv.FormatUint(f.Offset, 16)
}
