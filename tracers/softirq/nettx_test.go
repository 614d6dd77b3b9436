package softirq

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nettrace/nettrace/internal/testutil"
)

// TestNetTXUnderQdisc shows NET_TX rising where the kernel raises it. On
// loopback it never does: lo has no qdisc, and a loopback send hands the
// packet straight to NET_RX. A qdisc that holds packets back (tbf, rate
// limited) on a veth pair between two fresh namespaces is rescheduled from
// its watchdog timer through NET_TX, once per throttled dequeue; the test
// floods UDP through it and checks the tracer's NET_TX count against the
// referee's and /proc/softirqs' around the same snapshots (window.check).
func TestNetTXUnderQdisc(t *testing.T) {
	testutil.RequireBPF(t)
	if os.Getenv("NETTRACE_VMTEST") == "1" {
		t.Skip("the VM's initramfs has neither the veth and sch_tbf modules nor iproute2")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found: .ci/run installs iproute2", tool)
			}
			t.Skipf("%s not found (iproute2): it sets up the veth pair and its qdisc", tool)
		}
	}
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	run := func(ns *testutil.Netns, args ...string) {
		t.Helper()
		if err := ns.Do(func() error {
			out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Commands run from a thread inside the namespace inherit it.
	run(a, "ip", "link", "add", "ntxa", "type", "veth", "peer", "name", "ntxb", "netns", b.Path())
	run(a, "ip", "addr", "add", "10.99.0.1/24", "dev", "ntxa")
	run(a, "ip", "link", "set", "ntxa", "up")
	run(a, "tc", "qdisc", "add", "dev", "ntxa", "root", "tbf", "rate", "20mbit", "burst", "4kb", "latency", "50ms")
	run(b, "ip", "addr", "add", "10.99.0.2/24", "dev", "ntxb")
	run(b, "ip", "link", "set", "ntxb", "up")
	var conns []net.Conn
	if err := a.Do(func() error {
		for range 4 {
			c, err := net.Dial("udp4", "10.99.0.2:9")
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	tr, err := New(Options{})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer tr.Close()
	txv := -1
	for v := range 10 {
		if tr.VectorName(v) == "NET_TX" {
			txv = v
		}
	}
	if txv < 0 {
		t.Fatal("no NET_TX vector")
	}
	ref := newReferee(t)
	w := measureWindow(t, tr, ref, func() {
		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 64)
				for end := time.Now().Add(time.Second); time.Now().Before(end); {
					c.Write(buf) // ENOBUFS when the qdisc is full is expected
				}
			}()
		}
		wg.Wait()
	})
	for name, p := range tr.objs.Programs {
		if st, err := p.Stats(); err == nil {
			t.Logf("%s: recursion misses %d", name, st.RecursionMisses)
		}
	}
	bpf, inner, outer, unseen := w.check(t, txv)
	t.Logf("NET_TX over %v through tbf on a veth: /proc/softirqs %d (%d with the reads around the snapshots), BPF %d, handed to no program %d",
		w.window, inner, outer, bpf, unseen)
	// 20 Mbit/s of 64-byte datagrams (106 bytes on the wire) is about
	// 23,000 packets a second, a throttled dequeue for nearly each.
	if inner < 1000 {
		t.Fatalf("NET_TX rose by only %d in /proc/softirqs: the qdisc did not throttle", inner)
	}
}
