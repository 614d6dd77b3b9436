package netns_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nettrace/nettrace/internal/netns"
	"github.com/nettrace/nettrace/internal/testutil"
)

func TestDoEntersAndRestores(t *testing.T) {
	ns := testutil.NewNetns(t)
	hostID, err := netns.ID("")
	if err != nil {
		t.Fatal(err)
	}
	nsID, err := netns.ID(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	if nsID == hostID {
		t.Fatalf("new namespace has the host's id %d", hostID)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- netns.Do(ns.Path(), func() error {
				got, err := netns.ID("")
				if err == nil && got != nsID {
					err = fmt.Errorf("inside Do the thread is in %s, want %s", netns.Name(got), netns.Name(nsID))
				}
				return err
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Every thread of the process is back in the host namespace.
	tasks, err := filepath.Glob("/proc/self/task/*/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if id, err := netns.ID(task); err == nil && id != hostID {
			t.Errorf("%s is %s after Do, want the host's %s", task, netns.Name(id), netns.Name(hostID))
		}
	}
}

// TestProcNet shows why ProcNet uses thread-self: inside Do a listener shows
// in ProcNet("tcp") but not in /proc/self/net/tcp, which follows the main
// thread.
func TestProcNet(t *testing.T) {
	ns := testutil.NewNetns(t)
	err := ns.Do(func() error {
		_, port := testutil.Listen(t, "tcp4", "127.0.0.1:0", 4)
		local := fmt.Sprintf("0100007F:%04X", port)
		b, err := os.ReadFile(netns.ProcNet("tcp"))
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), local) {
			t.Errorf("%s lacks the namespace's listener %s:\n%s", netns.ProcNet("tcp"), local, b)
		}
		if b, _ := os.ReadFile("/proc/self/net/tcp"); strings.Contains(string(b), local) {
			t.Logf("/proc/self/net/tcp shows %s too: the host has a listener on the same port", local)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDoErrors(t *testing.T) {
	testutil.RequireRoot(t)
	errFn := errors.New("fn failed")
	if err := netns.Do("", func() error { return errFn }); !errors.Is(err, errFn) {
		t.Errorf("Do(\"\") returned %v, want fn's error", err)
	}
	ns := testutil.NewNetns(t)
	if err := ns.Do(func() error { return errFn }); !errors.Is(err, errFn) {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	if err := netns.Do(missing, func() error { return nil }); err == nil || !strings.Contains(err.Error(), "open network namespace "+missing) {
		t.Errorf("Do on a missing file: %v", err)
	}
	if err := netns.Do("/proc/self/ns/uts", func() error { t.Error("fn ran"); return nil }); err == nil ||
		!strings.Contains(err.Error(), "enter network namespace /proc/self/ns/uts") {
		t.Errorf("Do on a UTS namespace: %v", err)
	}
}

func TestPathForPID(t *testing.T) {
	pid := os.Getpid()
	p, err := netns.PathForPID(pid)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("/proc/%d/ns/net", pid); p != want {
		t.Errorf("PathForPID(%d) = %q, want %q", pid, p, want)
	}
	own, err := netns.ID("")
	if err != nil {
		t.Fatal(err)
	}
	if id, err := netns.ID(p); err != nil || id != own {
		t.Errorf("ID(%s) = %d, %v; want our %d", p, id, err, own)
	}
	if _, err := netns.PathForPID(-1); err == nil {
		t.Error("PathForPID(-1) succeeded")
	}
	if got := netns.Name(4026531840); got != "net:[4026531840]" {
		t.Errorf("Name = %q", got)
	}
}
