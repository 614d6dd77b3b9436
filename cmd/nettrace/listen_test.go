package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/testutil"
)

func TestListenBadInput(t *testing.T) {
	oneLineError(t, run(t, nil, "listen", "--port", "70000"), 2, "invalid port 70000")
	oneLineError(t, run(t, nil, "listen", "--sort", "bogus"), 2, `unknown sort key "bogus"`)
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	pidMax := strings.TrimSpace(string(b))
	oneLineError(t, run(t, nil, "listen", "-p", pidMax), 2, "process "+pidMax+" does not exist")
}

// TestListenJSON runs `nettrace listen -o json` on a namespace with
// somaxconn=10 and a listener that never accepts, and checks the row
// against the namespace's ListenOverflows as the binary reports it.
func TestListenJSON(t *testing.T) {
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	ns.SetSysctl(t, "net.core.somaxconn", "10")
	var port int
	ns.Do(func() error {
		_, port = testutil.Listen(t, "tcp4", "127.0.0.1:0", 511)
		return nil
	})
	cmd := exec.Command(binary, "listen", "--netns", ns.Path(), "-c", "2", "-i", "2500ms", "-o", "json")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The first interval says the tracer is attached and has its baseline.
	sc := bufio.NewScanner(out)
	for sc.Scan() && !strings.Contains(sc.Text(), `"type":"interval"`) {
	}
	var fds []int
	err = ns.Do(func() error {
		for range 60 {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
			err = unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
			if err != nil && !errors.Is(err, unix.EINPROGRESS) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond)
	for _, fd := range fds { // RST: nothing more reaches the listener
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
	}
	var header map[string]any
	var warnings []any
	var row map[string]any
	for sc.Scan() {
		var obj map[string]any
		if err := json.Unmarshal(sc.Bytes(), &obj); err != nil {
			t.Fatalf("bad JSON line %q: %v", sc.Text(), err)
		}
		switch obj["type"] {
		case "interval":
			header, _ = obj["header"].(map[string]any)
			warnings, _ = obj["warnings"].([]any)
		case "row":
			if strings.HasSuffix(obj["local"].(string), ":"+strconv.Itoa(port)) {
				row = obj
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("listen: %v: %s", err, stderr.String())
	}
	testutil.RequireNoOrphans(t, "syn_consume_tp", "syn_admit_tp", "ack_kfree_tp", "state_tp", "synack_tp", "accept4_exit_tp", "accept_exit_tp")
	if row == nil || header == nil {
		t.Fatalf("no row for port %d or no header", port)
	}
	t.Logf("header %v\nrow %v", header, row)
	if row["backlog"] != 10.0 || row["backlog_set_by"] != "somaxconn" {
		t.Errorf("backlog %v set by %v, want 10 by somaxconn", row["backlog"], row["backlog_set_by"])
	}
	// max+1, or max+2 when two handshakes complete at once on two CPUs.
	if p := row["accept_queue_peak"]; p != 11.0 && p != 12.0 {
		t.Errorf("accept queue peak %v, want 11", p)
	}
	ovf := header["listen_overflows"].(float64)
	if ovf == 0 || row["overflows"] != ovf || header["overflows_unattributed"] != 0.0 {
		t.Errorf("row overflows %v, namespace ListenOverflows %v, unattributed %v", row["overflows"], ovf, header["overflows_unattributed"])
	}
	codes := map[string]bool{}
	for _, w := range warnings {
		codes[w.(map[string]any)["code"].(string)] = true
	}
	if !codes["somaxconn_caps_backlog"] || !codes["accept_queue_overflow"] {
		t.Errorf("warnings %v", warnings)
	}
}

// TestListenEventsJSON runs `nettrace listen --events -o json` on a
// namespace whose listener (backlog 1) never accepts: one drop row per
// overflow the namespace counts, each naming the listener and a port one of
// the clients used.
func TestListenEventsJSON(t *testing.T) {
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	var port int
	ns.Do(func() error {
		_, port = testutil.Listen(t, "tcp4", "127.0.0.1:0", 1)
		return nil
	})
	cmd := exec.Command(binary, "listen", "--netns", ns.Path(), "--events", "-c", "2", "-i", "2500ms", "-o", "json")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() && !strings.Contains(sc.Text(), `"type":"interval"`) {
	}
	clientPorts := map[string]bool{}
	var fds []int
	err = ns.Do(func() error {
		for range 10 {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
			err = unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
			if err != nil && !errors.Is(err, unix.EINPROGRESS) {
				return err
			}
			sa, err := unix.Getsockname(fd)
			if err != nil {
				return err
			}
			clientPorts[strconv.Itoa(sa.(*unix.SockaddrInet4).Port)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond)
	for _, fd := range fds {
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
	}
	var header map[string]any
	var drops []map[string]any
	for sc.Scan() {
		var obj map[string]any
		if err := json.Unmarshal(sc.Bytes(), &obj); err != nil {
			t.Fatalf("bad JSON line %q: %v", sc.Text(), err)
		}
		switch obj["type"] {
		case "interval":
			header, _ = obj["header"].(map[string]any)
		case "row":
			drops = append(drops, obj)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("listen --events: %v: %s", err, stderr.String())
	}
	if header == nil {
		t.Fatal("no interval header")
	}
	t.Logf("header %v; %d drops, first %v", header, len(drops), drops[:min(len(drops), 1)])
	ovf := header["listen_overflows"].(float64)
	if ovf == 0 || float64(len(drops)) != ovf-header["overflows_unattributed"].(float64) || header["events_lost"] != 0.0 {
		t.Errorf("%d drop rows, namespace ListenOverflows %v (unattributed %v), events lost %v", len(drops), ovf, header["overflows_unattributed"], header["events_lost"])
	}
	listener := "127.0.0.1:" + strconv.Itoa(port)
	for _, d := range drops {
		host, p, _ := strings.Cut(d["peer"].(string), ":")
		if d["local"] != listener || host != "127.0.0.1" || !clientPorts[p] || d["drop_time"] == "" {
			t.Errorf("drop %v: want listener %s and a client's port", d, listener)
		}
	}
}
