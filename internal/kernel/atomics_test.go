package kernel

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf/asm"
)

// TestAtomicOpEncoding checks that the probe's atomics reach the kernel as
// what they say: the operation is in the immediate (imm 0 is the plain
// atomic add every kernel has, which is what asm.AtomicOp.Mem alone emits).
func TestAtomicOpEncoding(t *testing.T) {
	for op, imm := range map[asm.AtomicOp]byte{asm.CmpXchg: 0xf1, asm.FetchAdd: 0x01, asm.Xchg: 0xe1, asm.FetchOr: 0x41} {
		var b bytes.Buffer
		if _, err := atomicOp(op, asm.R6, asm.R1, asm.DWord, 0).Marshal(&b, binary.LittleEndian); err != nil {
			t.Fatal(err)
		}
		if got := b.Bytes(); got[0] != 0xdb || got[4] != imm {
			t.Errorf("%v: encoded % x, want opcode db imm %#x", op, got, imm)
		}
	}
}
