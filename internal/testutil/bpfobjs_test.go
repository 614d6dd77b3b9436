package testutil

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/nettrace/nettrace/internal/kernel"
)

type errTB struct {
	fakeTB
	errors []string
}

func (f *errTB) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}

// A pinned program outlives its process: RequireNoOrphans must see it, and
// must not count a program this process still holds.
func TestRequireNoOrphans(t *testing.T) {
	RequireBPF(t)
	bpffs, err := kernel.EnsureBPFFS()
	if err != nil {
		t.Fatal(err)
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "nt_orphan_test", Type: ebpf.SocketFilter, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	var held errTB
	RequireNoOrphans(&held, "nt_orphan_test")
	if len(held.errors) != 0 {
		t.Fatalf("a program this process holds counted as orphan: %v", held.errors)
	}
	pin := filepath.Join(bpffs, fmt.Sprintf("nt_orphan_test_%d", p.FD()))
	if err := p.Pin(pin); err != nil {
		t.Fatal(err)
	}
	defer p.Unpin()
	p.Close()
	var orphan errTB
	RequireNoOrphans(&orphan, "nt_orphan_test")
	if len(orphan.errors) != 1 {
		t.Fatalf("pinned program with no holder not reported: %v", orphan.errors)
	}
	t.Log(orphan.errors[0])
}
