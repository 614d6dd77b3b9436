package redirect

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/testutil"
)

var cgroupSeq atomic.Int32

// newCgroup creates a child cgroup under the cgroup v2 mount and moves this
// test process into it until the test ends: sockets the test creates
// afterwards belong to it, and nothing else does.
func newCgroup(t *testing.T) string {
	t.Helper()
	root, err := kernel.Cgroup2Path()
	if err != nil {
		t.Fatal(err)
	}
	orig := "/"
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			orig = p
		}
	}
	dir := filepath.Join(root, fmt.Sprintf("nettrace-redirect-test-%d-%d", os.Getpid(), cgroupSeq.Add(1)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pid := []byte(fmt.Sprint(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0o644); err != nil {
		os.Remove(dir)
		t.Fatalf("move test process into %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(root, orig, "cgroup.procs"), pid, 0o644); err != nil {
			t.Errorf("move test process back to %s: %v", orig, err)
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup %s: %v", dir, err)
		}
	})
	return dir
}

// enabled says whether redirect runs on this kernel. Where it does not, it
// checks the refusal instead (checkRefusal) and the test ends there, as a
// pass: the refusal is what this kernel is documented to do.
func enabled(t *testing.T) bool {
	t.Helper()
	testutil.RequireBPF(t)
	err := Supported()
	if err == nil {
		return true
	}
	checkRefusal(t, err)
	t.Logf("redirect refuses this kernel, as documented: %v", err)
	return false
}

// checkRefusal checks that Enable refuses this kernel with err (from
// Supported) as one line naming what is missing and the oldest kernels
// that have it, and leaves nothing pinned.
func checkRefusal(t *testing.T, err error) {
	t.Helper()
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "kernel lacks ") || !strings.Contains(msg, "(Linux ") {
		t.Errorf("refusal %q: want one line \"kernel lacks X (Linux N+...): why\"", msg)
	}
	if strings.Contains(msg, "msg_tot_len") && !strings.Contains(msg, "Linux "+MsgTotLenSince) {
		t.Errorf("refusal %q does not name the kernels with msg_tot_len (%s)", msg, MsgTotLenSince)
	}
	pins := filepath.Join(kernel.BPFFSPath, "nettrace", fmt.Sprintf("redirect-refused-%d", os.Getpid()))
	eerr := Enable(Options{PinDir: pins})
	if eerr == nil {
		Disable(pins, time.Second)
		t.Fatalf("Supported refuses (%v) but Enable succeeded", err)
	}
	if !strings.Contains(eerr.Error(), msg) || strings.Contains(eerr.Error(), "\n") {
		t.Errorf("Enable: %q, want one line with %q", eerr, msg)
	}
	if _, serr := os.Stat(pins); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("refused Enable left %s (%v)", pins, serr)
	}
}

// setup gives a fresh network namespace and cgroup with redirection enabled
// on the cgroup, pinned in a directory of the test's own. It disables at the
// end and checks nothing is left behind.
func setup(t *testing.T, ports ...uint16) (*testutil.Netns, string, string) {
	t.Helper()
	return setupOpts(t, Options{Ports: ports})
}

// setupOpts is setup with more options; Cgroup and PinDir are the test's.
func setupOpts(t *testing.T, opts Options) (*testutil.Netns, string, string) {
	t.Helper()
	testutil.RequireBPF(t)
	if err := Supported(); err != nil {
		t.Fatalf("setup on a kernel redirect refuses (the test must ask enabled first): %v", err)
	}
	ns := testutil.NewNetns(t)
	cg := newCgroup(t)
	pins := filepath.Join(kernel.BPFFSPath, "nettrace", fmt.Sprintf("redirect-test-%d", os.Getpid()))
	opts.Cgroup, opts.PinDir = cg, pins
	if err := Enable(opts); err != nil {
		t.Fatalf("enable: %+v", err)
	}
	t.Cleanup(func() {
		if _, err := Disable(pins, 10*time.Second); err != nil {
			t.Errorf("disable: %v", err)
			// So that the next test starts clean.
			if err := remove(pins); err != nil {
				t.Errorf("remove %s: %v", pins, err)
			}
		}
		if ids, err := CgroupSockops(cg); err != nil || len(ids) != 0 {
			t.Errorf("sockops programs left on %s after disable: %v %v", cg, ids, err)
		}
		testutil.RequireNoOrphansBeside(t, kernel.BPFFSPath, pins, "redirect_sockops", "redirect_msg", "redirect_splice", "redirect_send_done")
	})
	return ns, cg, pins
}

func status(t *testing.T, pins string) *Status {
	t.Helper()
	st, err := ReadStatus(pins)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// listen opens a TCP listener inside the namespace.
func listen(t *testing.T, ns *testutil.Netns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dial connects from inside the namespace, from local when not empty.
func dial(t *testing.T, ns *testutil.Netns, addr, local string) *net.TCPConn {
	t.Helper()
	var c net.Conn
	if err := ns.Do(func() (err error) {
		d := net.Dialer{}
		if local != "" {
			d.LocalAddr, err = net.ResolveTCPAddr("tcp", local)
			if err != nil {
				return err
			}
		}
		c, err = d.Dial("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// pair returns a connected client and server over loopback in ns.
func pair(t *testing.T, ns *testutil.Netns, addr string) (client, server *net.TCPConn) {
	t.Helper()
	ln := listen(t, ns, addr)
	client = dial(t, ns, ln.Addr().String(), "")
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return client, s.(*net.TCPConn)
}

// pattern is a byte stream where every offset has a known value, so a lost,
// duplicated or reordered chunk shows at its offset.
type pattern struct {
	seed byte
	off  int64
}

func (p *pattern) fill(b []byte) {
	for i := range b {
		o := p.off + int64(i)
		b[i] = byte(o) ^ byte(o>>8) ^ byte(o>>16) ^ p.seed
	}
	p.off += int64(len(b))
}

// check compares b with the next bytes of the pattern and returns the offset
// of the first difference, or -1.
func (p *pattern) check(b []byte) int64 {
	want := make([]byte, len(b))
	start := p.off
	p.fill(want)
	if bytes.Equal(b, want) {
		return -1
	}
	for i := range b {
		if b[i] != want[i] {
			return start + int64(i)
		}
	}
	return -1
}

// writeStream writes n pattern bytes in chunks of size and returns how many
// were written and the first error.
func writeStream(w io.Writer, seed byte, n int64, size int, written *atomic.Int64) error {
	p := pattern{seed: seed}
	buf := make([]byte, size)
	for p.off < n {
		chunk := buf[:min(int64(size), n-p.off)]
		p.fill(chunk)
		k, err := w.Write(chunk)
		if written != nil {
			written.Add(int64(k))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// readStream reads to EOF and checks every byte against the pattern.
func readStream(r io.Reader, seed byte, size int) (int64, error) {
	p := pattern{seed: seed}
	buf := make([]byte, size)
	for {
		k, err := r.Read(buf)
		if k > 0 {
			if off := p.check(buf[:k]); off >= 0 {
				return p.off, fmt.Errorf("byte %d differs from what was sent (lost, duplicated or reordered data)", off)
			}
		}
		if err == io.EOF {
			return p.off, nil
		}
		if err != nil {
			return p.off, err
		}
	}
}

// samePending checks that the two ways of listing the map's sockets with
// their queues agree: the iter/sockmap program, and the walk of the tasks'
// files that kernels refusing map iterators use.
func samePending(t *testing.T, pins string) {
	t.Helper()
	maps, err := openMaps(pins)
	if err != nil {
		t.Fatal(err)
	}
	defer closeMaps(maps)
	files, err := pendingFromFiles(maps)
	if err != nil {
		t.Fatal(err)
	}
	if !kernel.MapIter.Has() {
		t.Logf("map iterators refused here (%v): only the files walk is checked", kernel.MapIter.Err())
		return
	}
	iter, err := readPending(maps, "redirect_pending", maps["sock_hash"])
	if err != nil {
		t.Fatal(err)
	}
	byCookie := func(recs []redirectPendingRec) map[uint64]redirectPendingRec {
		m := map[uint64]redirectPendingRec{}
		for _, r := range recs {
			m[r.Cookie] = r
		}
		return m
	}
	a, b := byCookie(iter), byCookie(files)
	if len(a) != len(iter) || len(a) != len(b) {
		t.Errorf("iter/sockmap lists %d sockets (%d records), the files walk %d", len(a), len(iter), len(b))
	}
	for c, r := range a {
		if f, ok := b[c]; !ok || f.Key != r.Key || f.Queued != r.Queued {
			t.Errorf("socket cookie %d: iter/sockmap %+v, files walk %+v (found %v)", c, r, f, ok)
		}
	}
}
