package listen

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf/btf"

	"github.com/nettrace/nettrace/internal/kernel"
)

// noReason marks an skb_drop_reason value the running kernel lacks
// (NO_REASON in bpf/listen.bpf.c).
const noReason = ^uint32(0)

// kernelFacts are what the BPF programs need to know about the running
// kernel, resolved from its BTF and kallsyms, never hard-coded.
type kernelFacts struct {
	ReasonListenOverflow uint32 // SKB_DROP_REASON_TCP_LISTEN_OVERFLOW (6.15+), or noReason
	HasRxSk              bool   // skb:kfree_skb passes the receiving socket (6.11+)
	HasConsumeLoc        bool   // skb:consume_skb passes the caller (6.3+)
	RcvStateStart        uint64 // tcp_rcv_state_process
	RcvStateEnd          uint64
	ReqskTimerFn         uint64    // reqsk_timer_handler
	ReasonNoSocket       uint32    // SKB_DROP_REASON_NO_SOCKET, or noReason
	Cookie4, Cookie6     [2]uint64 // cookie_v4_check, cookie_v6_check
	// Parameters of the functions whose return value an fexit program
	// reads (it sits in the context slot after them): for
	// tcp_v4/v6_syn_recv_sock 6 on 5.10, 7 on 6.1 and later
	// (opt_child_init); for inet_csk_accept 4, or 2 from 6.10 (struct
	// proto_accept_arg); 0 when the kernel's BTF lacks the function.
	SynRecv4Args, SynRecv6Args, AcceptArgs int
	// HasTaskBTF: bpf_get_current_task_btf (5.11+).
	HasTaskBTF bool
}

// fexitArgs are the parameter counts fexit_ret in bpf/listen.bpf.c knows.
var fexitArgs = []int{2, 4, 6, 7}

// constants are the const volatile globals of listen.bpf.c.
func (k kernelFacts) constants() map[string]any {
	return map[string]any{
		"reason_listen_overflow": k.ReasonListenOverflow,
		"has_rx_sk":              k.HasRxSk,
		"has_consume_loc":        k.HasConsumeLoc && k.RcvStateStart != 0,
		"rcv_state_start":        k.RcvStateStart,
		"rcv_state_end":          k.RcvStateEnd,
		"reqsk_timer_fn":         k.ReqskTimerFn,
		"reason_no_socket":       k.ReasonNoSocket,
		"cookie4_start":          k.Cookie4[0],
		"cookie4_end":            k.Cookie4[1],
		"cookie6_start":          k.Cookie6[0],
		"cookie6_end":            k.Cookie6[1],
		"syn_recv4_nargs":        uint32(k.SynRecv4Args),
		"syn_recv6_nargs":        uint32(k.SynRecv6Args),
		"accept_nargs":           uint32(k.AcceptArgs),
		"has_task_btf":           k.HasTaskBTF,
	}
}

func readKernelFacts() (kernelFacts, error) {
	k := kernelFacts{ReasonListenOverflow: noReason, ReasonNoSocket: noReason}
	spec, err := kernel.Types()
	if err != nil {
		return k, err
	}
	if v, err := kernel.DropReason("SKB_DROP_REASON_TCP_LISTEN_OVERFLOW"); err == nil {
		k.ReasonListenOverflow = v
	}
	if v, err := kernel.DropReason("SKB_DROP_REASON_NO_SOCKET"); err == nil {
		k.ReasonNoSocket = v
	}
	k.HasRxSk = kernel.KfreeSkbRxSk.Has()
	k.SynRecv4Args = funcArgs(spec, "tcp_v4_syn_recv_sock")
	k.SynRecv6Args = funcArgs(spec, "tcp_v6_syn_recv_sock")
	k.AcceptArgs = funcArgs(spec, "inet_csk_accept")
	k.HasTaskBTF = kernel.CurrentTaskBTF.Has()
	k.HasConsumeLoc = traceArgs(spec, "btf_trace_consume_skb") >= 3
	syms, err := kallsyms("reqsk_timer_handler", "tcp_rcv_state_process", "cookie_v4_check", "cookie_v6_check")
	if err != nil {
		return k, err
	}
	k.ReqskTimerFn = syms["reqsk_timer_handler"][0]
	k.RcvStateStart, k.RcvStateEnd = syms["tcp_rcv_state_process"][0], syms["tcp_rcv_state_process"][1]
	k.Cookie4, k.Cookie6 = syms["cookie_v4_check"], syms["cookie_v6_check"]
	return k, nil
}

// traceArgs counts the parameters of a tracepoint's btf_trace_* typedef
// (the first is the context), or 0 when the kernel lacks it.
func traceArgs(spec *btf.Spec, name string) int {
	var td *btf.Typedef
	if err := spec.TypeByName(name, &td); err != nil {
		return 0
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return 0
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	if !ok {
		return 0
	}
	return len(proto.Params)
}

// funcArgs counts the parameters of kernel function name, or 0 when the
// kernel's BTF lacks it.
func funcArgs(spec *btf.Spec, name string) int {
	var fn *btf.Func
	if err := spec.TypeByName(name, &fn); err != nil {
		return 0
	}
	proto, ok := fn.Type.(*btf.FuncProto)
	if !ok {
		return 0
	}
	return len(proto.Params)
}

// kallsyms returns the start and end (the next symbol's start) of each
// named text symbol; zeros when kallsyms hides addresses.
func kallsyms(names ...string) (map[string][2]uint64, error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return nil, fmt.Errorf("open kallsyms: %w", err)
	}
	defer f.Close()
	out := map[string][2]uint64{}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
		out[n] = [2]uint64{}
	}
	var addrs []uint64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || len(fields) > 3 { // module symbols carry a 4th field
			continue
		}
		switch fields[1] {
		case "t", "T", "w", "W":
		default:
			continue
		}
		a, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil || a == 0 {
			continue
		}
		addrs = append(addrs, a)
		if want[fields[2]] {
			out[fields[2]] = [2]uint64{a, 0}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read kallsyms: %w", err)
	}
	for n, r := range out {
		if r[0] == 0 {
			continue
		}
		end := ^uint64(0)
		for _, a := range addrs {
			if a > r[0] && a < end {
				end = a
			}
		}
		out[n] = [2]uint64{r[0], end}
	}
	return out, nil // all zeros when kptr_restrict hides addresses
}
