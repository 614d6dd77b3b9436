package redirect

import (
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/testutil"
)

// Two network namespaces with identical loopback 4-tuples under one cgroup:
// each side gets only its own namespace's bytes, and all four sockets are
// in the map (a key without the namespace would collide).
func TestNetnsIsolation(t *testing.T) {
	if !enabled(t) {
		return
	}
	ns1, _, pins := setup(t)
	ns2 := testutil.NewNetns(t)
	const srv, cli = "127.0.0.1:41731", "127.0.0.1:41732"
	type side struct {
		client, server *net.TCPConn
		seed           byte
	}
	var sides []side
	for i, ns := range []*testutil.Netns{ns1, ns2} {
		ln := listen(t, ns, srv)
		c := dial(t, ns, srv, cli)
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		sides = append(sides, side{c, s.(*net.TCPConn), byte(0x10 * (i + 1))})
	}
	for round := 0; round < 100; round++ {
		for _, sd := range sides {
			msg := bytes.Repeat([]byte{sd.seed + byte(round)}, 512)
			if _, err := sd.client.Write(msg); err != nil {
				t.Fatal(err)
			}
		}
		for i, sd := range sides {
			got := make([]byte, 512)
			if _, err := io.ReadFull(sd.server, got); err != nil {
				t.Fatal(err)
			}
			if want := bytes.Repeat([]byte{sd.seed + byte(round)}, 512); !bytes.Equal(got, want) {
				t.Fatalf("namespace %d round %d: server got bytes of %#x, want %#x", i+1, round, got[0], want[0])
			}
			if _, err := sd.server.Write(got); err != nil {
				t.Fatal(err)
			}
		}
		for i, sd := range sides {
			got := make([]byte, 512)
			if _, err := io.ReadFull(sd.client, got); err != nil {
				t.Fatal(err)
			}
			if got[0] != sd.seed+byte(round) {
				t.Fatalf("namespace %d round %d: client got bytes of %#x", i+1, round, got[0])
			}
		}
	}
	c := status(t, pins).Counters
	t.Logf("added %d sockets, %d failed; redirected %d bytes; misses %v", c.SocketsAdded, c.SocketAddFailed, c.RedirectedBytes, c.Misses)
	if c.SocketsAdded != 4 || c.SocketAddFailed != 0 {
		t.Errorf("added %d sockets (%d failed), want 4", c.SocketsAdded, c.SocketAddFailed)
	}
	if c.RedirectedBytes < 2*2*100*512/2 {
		t.Errorf("only %d bytes redirected", c.RedirectedBytes)
	}
}

// The enabling process killed with SIGKILL: status still shows what is
// pinned, the kernel lists the same sockops program on the cgroup, and
// disable leaves nothing.
func TestKilledEnabler(t *testing.T) {
	if os.Getenv("NETTRACE_REDIRECT_CHILD") != "" {
		return
	}
	if !enabled(t) {
		return
	}
	cg := newCgroup(t)
	pins := filepath.Join(kernel.BPFFSPath, "nettrace", "redirect-killtest")
	cmd := exec.Command(os.Args[0], "-test.run=TestEnablerChild")
	cmd.Env = append(os.Environ(), "NETTRACE_REDIRECT_CHILD=1", "NETTRACE_REDIRECT_CGROUP="+cg, "NETTRACE_REDIRECT_PINS="+pins)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Disable(pins, time.Second) })
	buf := make([]byte, 64)
	k, _ := out.Read(buf)
	if !bytes.Contains(buf[:k], []byte("enabled")) {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child did not enable: %q", buf[:k])
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	st := status(t, pins)
	kern, err := CgroupSockops(cg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after SIGKILL: status %+v; kernel lists sockops %v on %s", st, kern, cg)
	if !st.Enabled || !st.SockopsAttached || st.Cgroup != cg || !slices.Equal(kern, []uint32{st.SockopsProgID}) {
		t.Errorf("status (enabled %v, prog %d on %q) disagrees with the kernel (%v on %s)", st.Enabled, st.SockopsProgID, st.Cgroup, kern, cg)
	}
	if len(st.SkMsgProgIDs) != 1 {
		t.Errorf("sk_msg programs on the socket map: %v, want one", st.SkMsgProgIDs)
	}
	if _, err := Disable(pins, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	st = status(t, pins)
	if kern, err := CgroupSockops(cg); err != nil || len(kern) != 0 || len(st.Pins) != 0 || st.Enabled {
		t.Errorf("after disable: kernel lists %v (%v), status %+v", kern, err, st)
	}
	testutil.RequireNoOrphansBeside(t, kernel.BPFFSPath, pins, "redirect_sockops", "redirect_msg", "redirect_splice", "redirect_send_done")
}

// TestEnablerChild is the process TestKilledEnabler kills.
func TestEnablerChild(t *testing.T) {
	if os.Getenv("NETTRACE_REDIRECT_CHILD") == "" {
		t.Skip("helper for TestKilledEnabler")
	}
	if err := Enable(Options{Cgroup: os.Getenv("NETTRACE_REDIRECT_CGROUP"), PinDir: os.Getenv("NETTRACE_REDIRECT_PINS")}); err != nil {
		os.Stdout.WriteString("error: " + err.Error() + "\n")
		os.Exit(1)
	}
	os.Stdout.WriteString("enabled\n")
	time.Sleep(time.Minute)
}
