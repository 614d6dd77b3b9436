package testutil

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/netns"
)

// Netns is a fresh network namespace with lo up, removed when the test ends.
type Netns struct {
	path string
}

// NewNetns creates a network namespace, pins it with a bind mount in the
// test's temporary directory and brings its lo up. It needs root.
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	RequireRoot(t)
	path := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatalf("create netns mount point: %v", err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		err = unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, "")
		if err != nil {
			err = fmt.Errorf("bind-mount network namespace on %s: %w", path, err)
		} else {
			err = linkUp("lo")
		}
		// Go back rather than let the thread die locked: the main thread
		// cannot die, and /proc/self/net follows it.
		if rerr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("restore network namespace: %w", rerr))
			return // stay locked: the runtime ends or parks the thread
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	err := <-errc
	// Cleanups run last-in first-out: this unmount precedes TempDir's removal.
	t.Cleanup(func() {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL {
			t.Errorf("unmount network namespace %s: %v", path, err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return &Netns{path: path}
}

// linkUp sets IFF_UP on the named interface of the calling thread's namespace.
func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open control socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("name interface %s: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get flags of %s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}

// Path is the namespace file, usable with setns(2), netns.Do and --netns.
func (n *Netns) Path() string { return n.path }

// Do runs fn inside the namespace (see netns.Do).
func (n *Netns) Do(fn func() error) error { return netns.Do(n.path, fn) }

// SetSysctl writes a dotted sysctl ("net.core.somaxconn") inside the
// namespace and fails the test on error.
func (n *Netns) SetSysctl(t testing.TB, name, value string) {
	t.Helper()
	if err := n.Do(func() error {
		return os.WriteFile(sysctlPath(name), []byte(value), 0o644)
	}); err != nil {
		t.Fatalf("set %s=%q in %s: %v", name, value, n.path, err)
	}
}

// KeepTimeWait sets tcp_rfc1337=1 in the namespace: TIME_WAIT sockets then
// ignore resets. With the default 0, a reset kills one; on loopback the
// kernel now and then answers a client's late ACK with a reset from the
// listener (the server's socket already gone), which killed TIME_WAIT
// sockets in one run of 4 to 30 of a test that counts them (seen with
// tcp_send_reset from a LISTEN socket and Tcp OutRsts equal to the
// TIME_WAIT sockets missing). Tests whose ground truth is "one TIME_WAIT
// per connection closed first" call it.
func (n *Netns) KeepTimeWait(t testing.TB) {
	t.Helper()
	n.SetSysctl(t, "net.ipv4.tcp_rfc1337", "1")
}

// Sysctl reads a dotted sysctl inside the namespace, as the kernel prints it
// without the trailing newline.
func (n *Netns) Sysctl(t testing.TB, name string) string {
	t.Helper()
	var b []byte
	if err := n.Do(func() (err error) {
		b, err = os.ReadFile(sysctlPath(name))
		return err
	}); err != nil {
		t.Fatalf("read %s in %s: %v", name, n.path, err)
	}
	return strings.TrimRight(string(b), "\n")
}

// HostSysctl reads a dotted sysctl in the test process's own namespace.
func HostSysctl(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(sysctlPath(name))
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return strings.TrimRight(string(b), "\n")
}

func sysctlPath(name string) string {
	if !strings.Contains(name, "/") {
		name = strings.ReplaceAll(name, ".", "/")
	}
	return "/proc/sys/" + name
}
