package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nettrace/nettrace/internal/doctor"
	"github.com/nettrace/nettrace/internal/socktable"
	"github.com/nettrace/nettrace/internal/testutil"
)

// serverFirstTimeWait makes n connections to a server in ns that closes
// each one first, so the server side holds n TIME_WAIT sockets.
func serverFirstTimeWait(t *testing.T, ns *testutil.Netns, n int) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp4", "127.0.0.1:8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if err := ns.Do(func() error {
		for i := range n {
			// One port each: a port picked again would end a TIME_WAIT early.
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 20000 + i}}
			c, err := d.Dial("tcp4", "127.0.0.1:8080")
			if err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("client read %v, want EOF: the server closes first", err)
			}
			c.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		socks, err := socktable.ReadProc(ns.Path())
		if err != nil {
			t.Fatal(err)
		}
		tw := 0
		for _, s := range socks {
			if s.State == socktable.TimeWait && s.Local.Port() == 8080 {
				tw++
			}
		}
		if tw == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/proc/net/tcp shows %d TIME_WAIT on :8080, want %d", tw, n)
		}
	}
}

func TestTimewaitJSON(t *testing.T) {
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	const n = 120
	serverFirstTimeWait(t, ns, n)

	r := run(t, nil, "timewait", "--netns", ns.Path(), "-o", "json", "-c", "1", "-i", "300ms")
	if r.code != 0 {
		t.Fatalf("timewait failed (%d): %s", r.code, r.stderr)
	}
	var (
		interval struct {
			Type     string            `json:"type"`
			Tiers    map[string]string `json:"tiers"`
			Header   map[string]any    `json:"header"`
			Warnings []struct{ Code, Message, Fix string }
		}
		rows []map[string]any
	)
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("decode %q: %v", sc.Text(), err)
		}
		switch m["type"] {
		case "interval":
			json.Unmarshal(sc.Bytes(), &interval)
		case "row":
			rows = append(rows, m)
		}
	}
	if interval.Type != "interval" || interval.Tiers["timewait"] == "" || interval.Tiers["tcp_sockets"] != "iter" {
		t.Fatalf("no interval object with tiers: %s", r.stdout)
	}
	if got := interval.Header["time_wait"]; got != float64(n) {
		t.Errorf("header time_wait %v, want %d", got, n)
	}
	for _, k := range []string{"created_per_s", "expired_per_s", "reused_per_s", "tw_overflows", "max_tw_buckets",
		"tw_reuse", "fin_timeout_s", "port_range", "fin_wait1", "fin_wait2", "close_wait", "last_ack", "closing", "dropped"} {
		if _, ok := interval.Header[k]; !ok {
			t.Errorf("header lacks %s", k)
		}
	}
	var srv map[string]any
	for _, row := range rows {
		if row["local"] == "127.0.0.1:8080" && row["remote"] == "127.0.0.1:*" {
			srv = row
		}
	}
	if srv == nil {
		t.Fatalf("no row for the server: %s", r.stdout)
	}
	if srv["side"] != "server" || srv["time_wait"] != float64(n) || srv["closed_first"] != "local" {
		t.Errorf("server row %v: want side server, time_wait %d, closed_first local", srv, n)
	}
	if p, _ := srv["process"].(string); !strings.Contains(p, "(") {
		t.Errorf("server row names no process: %v", srv)
	}
	var warned bool
	for _, w := range interval.Warnings {
		warned = warned || (w.Code == "server_closes_first" && strings.Contains(w.Message, "127.0.0.1:8080") && w.Fix != "")
	}
	if !warned {
		t.Errorf("no server_closes_first warning: %+v", interval.Warnings)
	}

	// The table shows the same row.
	r = run(t, nil, "timewait", "--netns", ns.Path(), "-c", "1", "-i", "200ms")
	if r.code != 0 {
		t.Fatalf("timewait failed (%d): %s", r.code, r.stderr)
	}
	for _, want := range []string{"TIME_WAIT", "127.0.0.1:8080", "127.0.0.1:*", "server", "CLOSED FIRST"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("table lacks %q:\n%s", want, r.stdout)
		}
	}
}

func TestTimewaitBadInput(t *testing.T) {
	oneLineError(t, run(t, nil, "timewait", "--netns", "/nonexistent/netns"), 2, "open network namespace /nonexistent/netns")
	oneLineError(t, run(t, nil, "timewait", "--all-netns", "--netns", "/proc/self/ns/net"), 2, "--all-netns excludes")
	oneLineError(t, run(t, nil, "timewait", "--sort", "bogus"), 2, `unknown sort key "bogus"`)
	oneLineError(t, run(t, nil, "timewait", "--sort", "netns"), 2, "--sort netns needs")
}

func TestTimewaitDoctorRow(t *testing.T) {
	testutil.RequireBPF(t)
	r := run(t, nil, "doctor", "-o", "json")
	if r.code != 0 {
		t.Fatalf("doctor failed (%d): %s", r.code, r.stderr)
	}
	var rep doctor.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	for _, tr := range rep.Tracers {
		if tr.Tracer == "timewait" {
			if tr.Method == "" || tr.Error != "" {
				t.Fatalf("doctor row for timewait: %+v", tr)
			}
			if want := os.Getenv("NETTRACE_EXPECT_TIER"); want != "" && string(tr.Tier) != want {
				t.Errorf("timewait would use tier %s, want %s", tr.Tier, want)
			}
			return
		}
	}
	t.Fatalf("doctor has no timewait row: %+v", rep.Tracers)
}
