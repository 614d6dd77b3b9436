package ports

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/testutil"
)

// TestDispatchCost (NETTRACE_BENCH=1, scripts/bench-ports.sh) splits the
// tracer's cost per connect on the benchmark's load: the CPU a connect
// costs with nothing attached, with an empty program on each of the
// tracepoint tier's hooks (what attaching costs before any work: the
// tracepoint dispatch, and for the syscall tracepoints the slow path they
// turn on for every system call of every task), and with the tracer.
// The same empty tp_btf program with the kernel's BPF statistics on shows
// what they add (the other phases run without them, as users do).
// Configurations alternate for o.Rounds rounds; medians are reported.
func TestDispatchCost(t *testing.T) {
	o := testutil.NewOverhead(t, "127.0.0.1:8087")
	empty := func(typ ebpf.ProgramType, at ebpf.AttachType, to string) *ebpf.Program {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: typ, AttachType: at, AttachTo: to, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
		if err != nil {
			t.Fatalf("load empty program: %v", err)
		}
		return p
	}
	emptyTPBTF := func() func() {
		p := empty(ebpf.Tracing, ebpf.AttachTraceRawTp, "inet_sock_set_state")
		l, err := link.AttachTracing(link.TracingOptions{Program: p})
		if err != nil {
			t.Fatal(err)
		}
		return func() { l.Close(); p.Close() }
	}
	attach := map[string]func() func(){
		"nothing":                          func() func() { return func() {} },
		"empty tp_btf inet_sock_set_state": emptyTPBTF,
		"empty tp_btf, bpf_stats on": func() func() {
			detach := emptyTPBTF()
			st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
			if err != nil {
				t.Fatal(err)
			}
			return func() { st.Close(); detach() }
		},
		"empty syscalls sys_enter/exit_connect": func() func() {
			var closers []func()
			for _, ev := range []string{"sys_enter_connect", "sys_exit_connect"} {
				p := empty(ebpf.TracePoint, ebpf.AttachNone, "")
				l, err := link.Tracepoint("syscalls", ev, p, nil)
				if err != nil {
					t.Fatal(err)
				}
				closers = append(closers, func() { l.Close(); p.Close() })
			}
			return func() {
				for _, c := range closers {
					c()
				}
			}
		},
		"nettrace ports": func() func() {
			tr, err := New(Options{Netns: o.NS.Path()})
			if err != nil {
				t.Fatalf("%+v", err)
			}
			return func() { tr.Close() }
		},
		"nettrace ports --syscalls": func() func() {
			tr, err := New(Options{Netns: o.NS.Path(), Syscalls: true})
			if err != nil {
				t.Fatalf("%+v", err)
			}
			return func() { tr.Close() }
		},
	}
	order := []string{"nothing", "empty tp_btf inet_sock_set_state", "empty tp_btf, bpf_stats on", "empty syscalls sys_enter/exit_connect", "nettrace ports", "nettrace ports --syscalls"}
	cpu := map[string][]float64{}
	for range o.Rounds {
		for _, name := range order {
			detach := attach[name]()
			o.Measure(false)
			detach()
			cpu[name] = append(cpu[name], o.CPUOff[len(o.CPUOff)-1])
		}
	}
	// The machine drifts: each configuration is compared with "nothing"
	// of the same round, and the median of those differences reported.
	base := cpu["nothing"]
	for _, name := range order {
		var diffs []float64
		for i := range cpu[name] {
			diffs = append(diffs, cpu[name][i]-base[i])
		}
		m, d := testutil.Median(cpu[name]), testutil.Median(diffs)
		l := fmt.Sprintf("dispatch: %-38s %5.1f µs CPU per connect, %+.2f µs (%+.1f%%) %.1f", name, m, d, 100*d/testutil.Median(base), cpu[name])
		t.Log(l)
		fmt.Println(l)
	}
}
