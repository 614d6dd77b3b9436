package listen

import (
	"strings"
	"testing"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/testutil"
)

// TestNoKernelBTF checks the documented degradation on a kernel without
// BTF of its own (the VM's second pass): the tracepoint tier's SYN hook is
// tp_btf only, so forcing it is refused in one line naming
// CONFIG_DEBUG_INFO_BTF, and auto takes kprobes, with raw_tp for the
// queue and SYN-ACK hooks and the socket table from sock_diag. With the
// kernel's BTF, the tp_btf programs are the ones chosen.
func TestNoKernelBTF(t *testing.T) {
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	if kernel.KernelHasBTF() {
		tr, err := New(Options{NetnsPath: ns.Path(), Tier: attach.Tracepoint})
		if err != nil {
			t.Fatalf("%+v", err)
		}
		defer tr.Close()
		for _, h := range []string{"queue", "synack"} {
			if c, _ := tr.objs.Choice(h); c.Method != "tp_btf" {
				t.Errorf("hook %s: %s with the kernel's BTF, want tp_btf", h, c.Method)
			}
		}
		return
	}
	_, err := New(Options{NetnsPath: ns.Path(), Tier: attach.Tracepoint})
	if err == nil || !strings.Contains(err.Error(), "CONFIG_DEBUG_INFO_BTF") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("tracepoint tier without kernel BTF: %v; want one line naming CONFIG_DEBUG_INFO_BTF", err)
	}
	t.Logf("tracepoint tier refused: %v", err)
	if kernel.ProbeKprobe(kernel.ProbeFunc) != nil {
		t.Skip("no kprobes: no tier of listen works without the kernel's BTF")
	}
	tr, err := New(Options{NetnsPath: ns.Path()})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer tr.Close()
	want := map[string]string{"syn": "kprobe", "cookie": "kprobe", "ack": "kprobe", "accept": "kprobe",
		"queue": "raw_tp", "synack": "raw_tp"}
	for _, c := range tr.Choices() {
		t.Logf("%s", c)
		if want[c.Hook] != c.Method {
			t.Errorf("hook %s: %s, want %s", c.Hook, c.Method, want[c.Hook])
		}
	}
	if c := tr.tab.Choices(); len(c) != 1 || c[0].Method != "sock_diag+kprobe" {
		t.Errorf("socket table: %v, want sock_diag+kprobe (listeners need their kernel addresses)", c)
	}
}
