package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/testutil"
	"github.com/nettrace/nettrace/tracers/redirect"
)

func TestRedirectBadPorts(t *testing.T) {
	oneLineError(t, run(t, nil, "redirect", "enable", "--ports", "80,x"), 2, `"x" is not a port`)
}

func TestRedirectBadComm(t *testing.T) {
	oneLineError(t, run(t, nil, "redirect", "enable", "--comm", "a-comm-longer-than-15"), 2, "at most 15 bytes")
}

// redirectRuns says whether redirect runs on this kernel. Where it does
// not, it checks that the command args (which would enable it) exit 1
// with one line: the kernel's refusal, naming what is missing and the
// oldest kernels that have it.
func redirectRuns(t *testing.T, args ...string) bool {
	t.Helper()
	testutil.RequireBPF(t)
	err := redirect.Supported()
	if err == nil {
		return true
	}
	if !strings.HasPrefix(err.Error(), "kernel lacks ") || !strings.Contains(err.Error(), "(Linux ") {
		t.Errorf("refusal %q does not name what is missing and since when", err)
	}
	oneLineError(t, run(t, nil, args...), 1, err.Error())
	t.Logf("redirect refuses this kernel, as documented: %v", err)
	return false
}

// enable, real loopback traffic from a child cgroup, status -o json against
// what the client sent, then disable and the kernel's own view.
func TestRedirectCLI(t *testing.T) {
	if !redirectRuns(t, "redirect", "enable", "--pin-dir", filepath.Join(kernel.BPFFSPath, "nettrace", fmt.Sprintf("redirect-cli-%d", os.Getpid()))) {
		return
	}
	root, err := kernel.Cgroup2Path()
	if err != nil {
		t.Fatal(err)
	}
	orig := "/"
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
				orig = p
			}
		}
	}
	cg := filepath.Join(root, fmt.Sprintf("nettrace-redirect-cli-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(cg)
	pins := filepath.Join(kernel.BPFFSPath, "nettrace", fmt.Sprintf("redirect-cli-%d", os.Getpid()))
	if r := run(t, nil, "redirect", "enable", "--pin-dir", pins, "--cgroup", cg); r.code != 0 {
		t.Fatalf("enable: %d %s", r.code, r.stderr)
	}
	defer run(t, nil, "redirect", "disable", "--pin-dir", pins)

	pid := []byte(fmt.Sprint(os.Getpid()))
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), pid, 0o644); err != nil {
		t.Fatal(err)
	}
	ns := testutil.NewNetns(t)
	const rounds, size = 100, 1000
	err = ns.Do(func() error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		go func() {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			defer s.Close()
			// A read/write echo: io.Copy would splice, which redirect
			// (rightly) never redirects to.
			buf := make([]byte, 64<<10)
			for {
				n, err := s.Read(buf)
				if err != nil {
					return
				}
				if _, err := s.Write(buf[:n]); err != nil {
					return
				}
			}
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		msg, got := bytes.Repeat([]byte("x"), size), make([]byte, size)
		for range rounds {
			if _, err := c.Write(msg); err != nil {
				return err
			}
			if _, err := io.ReadFull(c, got); err != nil {
				return err
			}
		}
		return nil
	})
	os.WriteFile(filepath.Join(root, orig, "cgroup.procs"), pid, 0o644)
	if err != nil {
		t.Fatal(err)
	}

	r := run(t, nil, "redirect", "status", "--pin-dir", pins, "-o", "json")
	var st redirect.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status -o json: %v (%q %q)", err, r.stdout, r.stderr)
	}
	c := st.Counters
	t.Logf("status: %d sockets added, %d bytes redirected, %d through TCP, misses %v", c.SocketsAdded, c.RedirectedBytes, c.PassedBytes, c.Misses)
	if !st.Enabled || !st.SockopsAttached || st.Cgroup != cg {
		t.Errorf("status says enabled %v, attached %v on %q; want %s", st.Enabled, st.SockopsAttached, st.Cgroup, cg)
	}
	if c.SocketsAdded != 2 {
		t.Errorf("sockets added %d, want 2", c.SocketsAdded)
	}
	// Every byte the client and the echo server sent is either redirected or
	// passed through TCP, and most are redirected.
	if sent := uint64(2 * rounds * size); c.RedirectedBytes+c.PassedBytes != sent || c.RedirectedBytes < sent/2 {
		t.Errorf("redirected %d + passed %d bytes, want %d in all, mostly redirected", c.RedirectedBytes, c.PassedBytes, sent)
	}
	if r := run(t, nil, "redirect", "status", "--pin-dir", pins); !strings.Contains(r.stdout, "redirect: enabled") {
		t.Errorf("status table: %q", r.stdout)
	}
	if r := run(t, nil, "redirect", "disable", "--pin-dir", pins); r.code != 0 || !strings.Contains(r.stdout, "disabled") {
		t.Fatalf("disable: %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := run(t, nil, "redirect", "status", "--pin-dir", pins); !strings.Contains(r.stdout, "redirect: disabled") {
		t.Errorf("status after disable: %q", r.stdout)
	}
	if ids, err := redirect.CgroupSockops(cg); err != nil || len(ids) != 0 {
		t.Errorf("kernel lists sockops %v on %s after disable (%v)", ids, cg, err)
	}
	testutil.RequireNoOrphansBeside(t, kernel.BPFFSPath, pins, "redirect_sockops", "redirect_msg", "redirect_splice", "redirect_send_done")
}
