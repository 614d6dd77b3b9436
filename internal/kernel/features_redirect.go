package kernel

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// SkMsgTaskStorage: sk_msg programs may call bpf_task_storage_get (the
// task storage helpers joined the base helper set, open to every program
// type, in Linux 6.16; tracing programs had them since 5.11).
var SkMsgTaskStorage = NewFeature("sk_msg_task_storage", "task local storage in sk_msg programs", "6.16", probeSkMsgTaskStorage)

// probeSkMsgTaskStorage loads an sk_msg program that looks the current
// task up in a task storage map.
func probeSkMsgTaskStorage() error {
	if err := RequireKernelBTF("bpf_get_current_task_btf"); err != nil {
		return err
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Type:      ebpf.TaskStorage,
		KeySize:   4,
		ValueSize: 8,
		Flags:     unix.BPF_F_NO_PREALLOC,
		Key:       &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed},
		Value:     &btf.Int{Name: "long long unsigned int", Size: 8},
	})
	if err != nil {
		return fmt.Errorf("create task storage map: %w", err)
	}
	defer m.Close()
	insns := asm.Instructions{
		asm.FnGetCurrentTaskBtf.Call(),
		asm.Mov.Reg(asm.R2, asm.R0),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnTaskStorageGet.Call(),
		asm.Mov.Imm(asm.R0, 1), // SK_PASS
		asm.Return(),
	}
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.SkMsg, Instructions: insns})
	if err != nil {
		return err
	}
	return p.Close()
}
