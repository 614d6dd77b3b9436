package kernel

import (
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// What skb:kfree_skb tells about a final ACK dropped with the listener's
// accept queue full: the listen tracer's tracepoint tier attributes such a
// drop to its listener only with both.
var (
	// KfreeSkbRxSk: skb:kfree_skb passes the socket that received the
	// packet (for a final ACK, the listener).
	KfreeSkbRxSk = NewFeature("kfree_skb_rx_sk", "receiving socket in skb:kfree_skb", "6.11", probeKfreeSkbRxSk)
	// DropReasonListenOverflow: tcp_check_req gives a final ACK it drops
	// for a full accept queue its own drop reason.
	DropReasonListenOverflow = NewFeature("drop_reason_listen_overflow", "TCP_LISTEN_OVERFLOW drop reason", "6.15", func() error {
		_, err := DropReason("SKB_DROP_REASON_TCP_LISTEN_OVERFLOW")
		return err
	})
)

// KprobeMissed: the kernel counts the hits of a kprobe it skipped (a probe
// hit inside another probe's handler on that CPU) in the kprobe link's info,
// and the runs of a kprobe program it skipped in the program's stats.
var KprobeMissed = NewFeature("kprobe_missed", "counts of skipped kprobe hits (kprobe link info, program stats)", "6.7", func() error {
	return btfMember("bpf_link_info", "perf_event", "kprobe", "missed")
})

// btfMember reports whether struct name has the member path in the
// kernel's BTF, looking through anonymous structs and unions.
func btfMember(name string, path ...string) error {
	spec, err := Types()
	if err != nil {
		return err
	}
	var s *btf.Struct
	if err := spec.TypeByName(name, &s); err != nil {
		return fmt.Errorf("no struct %s in the kernel's BTF", name)
	}
	if !hasMember(s, path) {
		return fmt.Errorf("struct %s has no %s", name, strings.Join(path, "."))
	}
	return nil
}

func hasMember(t btf.Type, path []string) bool {
	var ms []btf.Member
	switch c := btf.UnderlyingType(t).(type) {
	case *btf.Struct:
		ms = c.Members
	case *btf.Union:
		ms = c.Members
	default:
		return false
	}
	for _, m := range ms {
		switch {
		case m.Name == "" && hasMember(m.Type, path):
			return true
		case m.Name == path[0] && (len(path) == 1 || hasMember(m.Type, path[1:])):
			return true
		}
	}
	return false
}

// probeKfreeSkbRxSk loads a tp_btf program on kfree_skb that reads its
// fourth argument (skb, location, reason, rx_sk): the verifier refuses the
// read where the tracepoint has fewer.
func probeKfreeSkbRxSk() error {
	if err := RequireKernelBTF("tp_btf"); err != nil {
		return err
	}
	insns := asm.Instructions{
		asm.LoadMem(asm.R0, asm.R1, 3*8, asm.DWord),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	}
	p, err := loadTiny(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: "kfree_skb", Instructions: insns})
	if err != nil {
		return err
	}
	return p.Close()
}

// DropReason returns the value of enum skb_drop_reason's name in the
// running kernel's BTF (the values are renumbered from release to release).
func DropReason(name string) (uint32, error) {
	spec, err := Types()
	if err != nil {
		return 0, err
	}
	var reasons *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &reasons); err != nil {
		return 0, fmt.Errorf("no enum skb_drop_reason in the kernel's BTF")
	}
	for _, v := range reasons.Values {
		if v.Name == name {
			return uint32(v.Value), nil
		}
	}
	return 0, fmt.Errorf("no %s in the kernel's enum skb_drop_reason", name)
}
