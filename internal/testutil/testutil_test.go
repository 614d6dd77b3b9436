package testutil

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/netns"
)

// fakeTB records how requireRoot ended the test.
type fakeTB struct {
	testing.TB
	skipped, failed string
}

func (f *fakeTB) Helper()           {}
func (f *fakeTB) Skip(args ...any)  { f.skipped = args[0].(string) }
func (f *fakeTB) Fatal(args ...any) { f.failed = args[0].(string) }

func TestRequireRoot(t *testing.T) {
	for _, tc := range []struct {
		ci           string
		euid         int
		skip, failed bool
	}{
		{"", 1000, true, false},
		{"true", 1000, false, true},
		{"true", 0, false, false},
		{"", 0, false, false},
	} {
		t.Setenv("CI", tc.ci)
		f := &fakeTB{}
		requireRoot(f, tc.euid)
		if (f.skipped != "") != tc.skip || (f.failed != "") != tc.failed {
			t.Errorf("CI=%q euid=%d: skipped %q, failed %q", tc.ci, tc.euid, f.skipped, f.failed)
		}
		if msg := f.skipped + f.failed; msg != "" && msg != rootReason {
			t.Errorf("CI=%q euid=%d: reason %q, want %q", tc.ci, tc.euid, msg, rootReason)
		}
	}
}

func TestNetnsSysctlIsolated(t *testing.T) {
	ns := NewNetns(t)
	host := HostSysctl(t, "net.core.somaxconn")
	if host == "10" {
		t.Fatal("host somaxconn is already 10; the test cannot tell namespaces apart")
	}
	ns.SetSysctl(t, "net.core.somaxconn", "10")
	if got := ns.Sysctl(t, "net.core.somaxconn"); got != "10" {
		t.Errorf("somaxconn in the namespace is %q after setting 10", got)
	}
	if got := HostSysctl(t, "net.core.somaxconn"); got != host {
		t.Errorf("host somaxconn changed from %s to %s", host, got)
	}
	hostID, err := netns.ID("")
	if err != nil {
		t.Fatal(err)
	}
	nsID, err := netns.ID(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	if hostID == nsID {
		t.Errorf("namespace %s has the host's id %d", ns.Path(), nsID)
	}
}

// TestNetnsLoopback proves lo is up in the namespace and that sockets made
// inside Do belong to the namespace.
func TestNetnsLoopback(t *testing.T) {
	ns := NewNetns(t)
	nsID, err := netns.ID(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	var ok, failed int
	err = ns.Do(func() error {
		fd, port := Listen(t, "tcp4", "127.0.0.1:0", 16)
		if got := socketNetns(t, fd); got != nsID {
			t.Errorf("listener is in netns %d, want %d", got, nsID)
		}
		Accept(t, fd, false)
		ok, failed = ConnectN(t, Addr("127.0.0.1", port), 5)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok != 5 || failed != 0 {
		t.Errorf("5 connects over lo in the namespace: %d ok, %d failed", ok, failed)
	}
}

// socketNetns is the id of the namespace socket fd lives in.
func socketNetns(t *testing.T, fd int) uint64 {
	t.Helper()
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		t.Fatalf("get socket namespace: %v", err)
	}
	defer unix.Close(nsfd)
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestListenBacklog shows the backlog reaches listen(2) and that the
// namespace's somaxconn caps it: with an effective backlog of 1 the accept
// queue holds 2 connections and a third connect times out.
func TestListenBacklog(t *testing.T) {
	ns := NewNetns(t)
	ns.SetSysctl(t, "net.core.somaxconn", "1")
	for _, backlog := range []int{1, 100} {
		var ok, failed int
		if err := ns.Do(func() error {
			_, port := Listen(t, "tcp4", "127.0.0.1:0", backlog)
			ok, failed = ConnectN(t, Addr("127.0.0.1", port), 3)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if ok != 2 || failed != 1 {
			t.Errorf("backlog %d (somaxconn 1), never accepted: %d connects ok, %d failed; want 2 and 1", backlog, ok, failed)
		}
	}
	// The same listen(2) backlog on the host, whose somaxconn is larger.
	_, port := Listen(t, "tcp4", "127.0.0.1:0", 100)
	if ok, failed := ConnectN(t, Addr("127.0.0.1", port), 3); ok != 3 || failed != 0 {
		t.Errorf("backlog 100 on the host: %d connects ok, %d failed; want 3 and 0", ok, failed)
	}
}

func TestAcceptEcho(t *testing.T) {
	fd, port := Listen(t, "tcp6", "[::1]:0", 8)
	Accept(t, fd, true)
	c, err := net.DialTimeout("tcp", Addr("::1", port), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	want := []byte("ping")
	if _, err := c.Write(want); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("echo returned %q, want %q", got, want)
	}
}
