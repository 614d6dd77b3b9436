package settings

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/netns"
	"github.com/nettrace/nettrace/internal/testutil"
)

func settingsByName(r *Report) map[string]Setting {
	m := map[string]Setting{}
	for _, s := range r.Settings {
		m[s.Name] = s
	}
	return m
}

func counter(t *testing.T, r *Report, name string) Counter {
	t.Helper()
	for _, c := range r.Counters {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("report of %s has no counter %s: %+v", r.Netns, name, r.Counters)
	return Counter{}
}

// TestAuditNamespaceSettings sets the seed cases' values in a fresh
// namespace: nginx capped by somaxconn=10, a 51-port range and
// tcp_tw_reuse=0.
func TestAuditNamespaceSettings(t *testing.T) {
	testutil.RequireRoot(t)
	names := []string{"net.core.somaxconn", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse"}
	host := map[string]string{}
	for _, n := range names {
		host[n] = testutil.HostSysctl(t, n)
	}
	ns := testutil.NewNetns(t)
	ns.SetSysctl(t, "net.core.somaxconn", "10")
	ns.SetSysctl(t, "net.ipv4.ip_local_port_range", "20000 20050")
	ns.SetSysctl(t, "net.ipv4.tcp_tw_reuse", "0")

	r, err := Audit(Options{NetnsPath: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	id, err := netns.ID(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	if r.Netns != netns.Name(id) {
		t.Errorf("report names namespace %s, want %s", r.Netns, netns.Name(id))
	}
	got := settingsByName(r)
	for _, want := range []struct {
		name, value string
		status      Status
		reason, fix string
	}{
		{"net.core.somaxconn", "10", Bad, "somaxconn=10 silently caps every listen() backlog at 10", "sysctl -w net.core.somaxconn=65535"},
		{"net.ipv4.ip_local_port_range", "20000 20050 (51 ports)", Bad, "only 51 ephemeral ports", `sysctl -w net.ipv4.ip_local_port_range="10000 65535"`},
		{"net.ipv4.tcp_tw_reuse", "0", Warn, "TIME_WAIT (0 now)", "sysctl -w net.ipv4.tcp_tw_reuse=1"},
	} {
		s := got[want.name]
		if s.Value != want.value || s.Status != want.status || !strings.Contains(s.Reason, want.reason) || !strings.Contains(s.Fix, want.fix) {
			t.Errorf("%s: got %+v\nwant value %q, status %s, reason with %q, fix with %q", want.name, s, want.value, want.status, want.reason, want.fix)
		}
	}
	if _, err := os.Stat("/proc/sys/net/netfilter/nf_conntrack_max"); err == nil {
		if s := got["net.netfilter.nf_conntrack_max"]; s.Status != OK || !strings.Contains(s.Value, "(count 0, 0%)") {
			t.Errorf("conntrack in an empty namespace: %+v", s)
		}
	} else if s := got["net.netfilter.nf_conntrack_max"]; s.Status != NA || s.Reason != "nf_conntrack not loaded" {
		t.Errorf("conntrack without the module: %+v", s)
	}
	for _, s := range r.Settings {
		if s.Status == NA && s.Reason != "nf_conntrack not loaded" { // checked above
			t.Errorf("%s could not be judged: %s", s.Name, s.Reason)
		}
		t.Logf("%-32s %-24s %-4s %s | %s", s.Name, s.Value, s.Status, s.Reason, s.Fix)
	}
	for _, c := range r.Counters {
		if c.Status == NA {
			t.Errorf("counter %s could not be read: %s", c.Name, c.Reason)
		}
	}
	// Global settings come from the initial namespace.
	if want := strings.Join(strings.Fields(testutil.HostSysctl(t, "net.core.netdev_budget")), " "); got["net.core.netdev_budget"].Value != want {
		t.Errorf("netdev_budget reported %+v, the host has %s", got["net.core.netdev_budget"], want)
	}

	// The host is untouched, and auditing it reports its own values.
	hr, err := Audit(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if hr.Netns == r.Netns {
		t.Errorf("host and namespace are both %s", r.Netns)
	}
	hs := settingsByName(hr)
	for _, n := range names {
		now := testutil.HostSysctl(t, n)
		if now != host[n] {
			t.Errorf("host %s changed from %q to %q", n, host[n], now)
		}
		if v := strings.Join(strings.Fields(now), " "); !strings.HasPrefix(hs[n].Value, v) {
			t.Errorf("host audit reports %s=%q, the host has %q", n, hs[n].Value, v)
		}
	}
}

// listenOverflows reads TcpExt ListenOverflows from the calling thread's
// namespace without ReadNetstat.
func listenOverflows(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/net/netstat")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "TcpExt:") {
			continue
		}
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j, n := range names {
			if n == "ListenOverflows" {
				v, err := strconv.ParseUint(values[j], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
	}
	t.Fatal("no TcpExt ListenOverflows in /proc/thread-self/net/netstat")
	return 0
}

// TestAuditListenOverflows overflows a backlog-1 listener that never accepts
// in a fresh namespace and checks Audit reports exactly what the
// namespace's netstat shows.
func TestAuditListenOverflows(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t)
	r, err := Audit(Options{NetnsPath: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	if c := counter(t, r, "TcpExt.ListenOverflows"); c.Value != 0 || c.Status != OK {
		t.Fatalf("fresh namespace reports %+v", c)
	}

	const clients = 20
	var want uint64
	err = ns.Do(func() error {
		lfd, port := testutil.Listen(t, "tcp4", "127.0.0.1:0", 1)
		var fds []int
		for range clients {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open client socket: %w", err)
			}
			fds = append(fds, fd)
			err = unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
			if err != nil && !errors.Is(err, unix.EINPROGRESS) {
				return fmt.Errorf("connect: %w", err)
			}
		}
		for deadline := time.Now().Add(3 * time.Second); listenOverflows(t) == 0 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		// Stop the listener first so retransmissions cannot add overflows.
		if err := unix.Shutdown(lfd, unix.SHUT_RDWR); err != nil {
			return fmt.Errorf("shut down listener: %w", err)
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
		want = listenOverflows(t)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The accept queue takes the first connects (backlog+1 of them), so
	// some but not all of the others overflow.
	if want == 0 || want >= clients {
		t.Fatalf("%d connects to a backlog-1 listener caused %d ListenOverflows", clients, want)
	}
	r, err = Audit(Options{NetnsPath: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	c := counter(t, r, "TcpExt.ListenOverflows")
	t.Logf("%d connects: namespace netstat ListenOverflows=%d, audit %+v", clients, want, c)
	if c.Value != want {
		t.Errorf("audit reports ListenOverflows=%d, the namespace's netstat %d", c.Value, want)
	}
	if c.Status != Warn || !strings.Contains(c.Reason, strconv.FormatUint(want, 10)+" times a listen queue overflowed") ||
		!strings.Contains(c.Fix, "sysctl -w net.core.somaxconn=") {
		t.Errorf("ListenOverflows not flagged: %+v", c)
	}
	if d := counter(t, r, "TcpExt.ListenDrops"); d.Value < want || d.Status != Warn {
		t.Errorf("ListenDrops %+v, want at least the %d overflows", d, want)
	}

	// The host's audit reports the host's counter, not the namespace's.
	hr, err := Audit(Options{})
	if err != nil {
		t.Fatal(err)
	}
	before := listenOverflows(t)
	hc := counter(t, hr, "TcpExt.ListenOverflows")
	if after := listenOverflows(t); hc.Value < before || hc.Value > after {
		t.Errorf("host audit reports ListenOverflows=%d, the host's netstat %d..%d", hc.Value, before, after)
	}
}

func TestAuditNofile(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	r, err := Audit(Options{PID: os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("RLIMIT_NOFILE (pid %d)", os.Getpid())
	s, ok := settingsByName(r)[name]
	if !ok {
		t.Fatalf("no %s in %+v", name, r.Settings)
	}
	t.Logf("%+v", s)
	if want := fmt.Sprintf("%d (hard %d)", lim.Cur, lim.Max); s.Value != want {
		t.Errorf("%s = %q, getrlimit says %q", name, s.Value, want)
	}
	if want := lim.Cur < 65535; (s.Status == Warn) != want || (want && !strings.Contains(s.Reason, commas(lim.Cur)+" files")) {
		t.Errorf("soft limit %d judged %+v", lim.Cur, s)
	}
}

func TestAuditMissingPID(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b))) // PIDs are below pid_max
	if err != nil {
		t.Fatal(err)
	}
	_, err = Audit(Options{PID: pid})
	if want := fmt.Sprintf("process %d does not exist", pid); err == nil || err.Error() != want {
		t.Errorf("Audit of PID %d: error %v, want %q", pid, err, want)
	}
	if _, err := netns.PathForPID(pid); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("PathForPID(%d): error %v", pid, err)
	}
}
