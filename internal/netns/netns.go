// Package netns runs code inside another network namespace and names
// namespaces for display.
package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread that has entered the network namespace at path
// (e.g. /var/run/netns/NAME or /proc/PID/ns/net) and then restores the
// thread's original namespace. With path "" fn runs directly, in the current
// namespace.
//
// fn must do its namespace-dependent work on its own goroutine: sockets it
// opens and /proc/sys/net files it reads belong to path's namespace, while
// goroutines it starts run elsewhere. For per-namespace /proc/net files use
// ProcNet, not /proc/self/net or /proc/net, which follow the main thread.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()

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
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Stay locked: the runtime ends a thread whose goroutine exits
			// while locked, so no other goroutine runs in the wrong namespace.
			errc <- errors.Join(ferr, fmt.Errorf("restore network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// PathForPID returns the network namespace file of process pid,
// /proc/PID/ns/net.
func PathForPID(pid int) (string, error) {
	if pid <= 0 {
		return "", fmt.Errorf("invalid process id %d", pid)
	}
	dir := "/proc/" + strconv.Itoa(pid)
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("process %d does not exist", pid)
		}
		return "", fmt.Errorf("look up process %d: %w", pid, err)
	}
	path := dir + "/ns/net"
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("read network namespace of process %d: %w", pid, err)
	}
	return path, nil
}

// ID returns the inode number that identifies the network namespace at path
// ("" = the calling thread's). Display it as Name(id).
func ID(path string) (uint64, error) {
	if path == "" {
		path = "/proc/thread-self/ns/net"
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat network namespace %s: %w", path, err)
	}
	return st.Ino, nil
}

// Name formats a namespace ID the way the kernel's ns links read,
// "net:[4026531840]".
func Name(id uint64) string {
	return "net:[" + strconv.FormatUint(id, 10) + "]"
}

// ProcNet returns the path of a per-namespace /proc/net file ("netstat",
// "snmp", "sockstat", "stat/nf_conntrack") as the calling thread sees it,
// which inside Do is the entered namespace's.
func ProcNet(file string) string {
	return "/proc/thread-self/net/" + file
}
