package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/doctor"
	"github.com/nettrace/nettrace/internal/testutil"
)

// ndjson splits NDJSON output into interval and row objects.
func ndjson(t *testing.T, out string) (intervals, rows []map[string]any) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("parse %q: %v", line, err)
		}
		switch m["type"] {
		case "interval":
			intervals = append(intervals, m)
		case "row":
			rows = append(rows, m)
		default:
			t.Fatalf("object of type %v", m["type"])
		}
	}
	return intervals, rows
}

// threadVol reads voluntary_ctxt_switches of one of our threads.
func threadVol(t *testing.T, tid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", tid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	t.Fatal("no voluntary_ctxt_switches")
	return 0
}

// TestSchedJSON runs `nettrace sched -p <this test> -T -o json` while one of
// our threads sleeps 1 ms at a time, and checks that thread's row against
// /proc.
func TestSchedJSON(t *testing.T) {
	testutil.RequireBPF(t)
	tidc := make(chan int)
	stop := make(chan struct{})
	done := make(chan [2]uint64)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid := unix.Gettid()
		tidc <- tid
		before := threadVol(t, tid)
		var n uint64
		for {
			select {
			case <-stop:
				done <- [2]uint64{n, threadVol(t, tid) - before}
				return
			default:
			}
			unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
			n++
		}
	}()
	tid := <-tidc
	r := run(t, nil, "sched", "-p", strconv.Itoa(os.Getpid()), "-T", "-o", "json", "-i", "500ms", "-c", "2")
	close(stop)
	got := <-done
	if r.code != 0 {
		t.Fatalf("sched failed (%d): %s", r.code, r.stderr)
	}
	intervals, rows := ndjson(t, r.stdout)
	if len(intervals) != 2 {
		t.Fatalf("%d intervals, want 2", len(intervals))
	}
	if tiers := intervals[0]["tiers"].(map[string]any); tiers["switch"] == nil || tiers["wakeup"] == nil {
		t.Errorf("tiers %v", tiers)
	}
	var vol float64
	for _, row := range rows {
		if row["pid"].(float64) != float64(os.Getpid()) {
			t.Errorf("row of pid %v with -p %d", row["pid"], os.Getpid())
		}
		if row["tid"].(float64) == float64(tid) {
			vol += row["voluntary"].(float64)
			if row["voluntary_per_s"].(float64) <= 0 {
				t.Errorf("row %v has no rate", row)
			}
		}
	}
	t.Logf("thread %d: %d sleeps, /proc %d voluntary switches while the command ran longer, nettrace %v", tid, got[0], got[1], vol)
	// The sleeps went on through both intervals; /proc brackets the command.
	if vol < 500 || uint64(vol) > got[1] {
		t.Errorf("nettrace counted %v voluntary switches; /proc %d over a longer span", vol, got[1])
	}
}

func TestSoftirqJSON(t *testing.T) {
	testutil.RequireBPF(t)
	r := run(t, nil, "softirq", "-o", "json", "-i", "300ms", "-c", "2")
	if r.code != 0 {
		t.Fatalf("softirq failed (%d): %s", r.code, r.stderr)
	}
	intervals, rows := ndjson(t, r.stdout)
	if len(intervals) != 2 {
		t.Fatalf("%d intervals, want 2", len(intervals))
	}
	h := intervals[0]["header"].(map[string]any)
	for _, k := range []string{"softirqs_per_s", "netdev_budget", "netdev_budget_usecs", "time_squeeze", "softnet_dropped", "events_dropped"} {
		if _, ok := h[k]; !ok {
			t.Errorf("header has no %s: %v", k, h)
		}
	}
	if h["netdev_budget"].(float64) <= 0 {
		t.Errorf("netdev_budget %v", h["netdev_budget"])
	}
	netrx := 0
	for _, row := range rows {
		if row["vector"] == "NET_RX" {
			netrx++
		}
	}
	if netrx != 2*runtime.NumCPU() {
		t.Errorf("%d NET_RX rows in 2 intervals, want one per CPU (%d CPUs)", netrx, runtime.NumCPU())
	}
	r = run(t, nil, "softirq", "-D", "-c", "1", "-i", "300ms")
	if r.code != 0 || !strings.Contains(r.stdout, "DISTRIBUTION") {
		t.Errorf("softirq -D: %d %s %s", r.code, r.stdout, r.stderr)
	}
}

func TestSchedSoftirqUsage(t *testing.T) {
	oneLineError(t, run(t, nil, "sched", "--min-block=-1s"), 2, "min-block")
	oneLineError(t, run(t, nil, "sched", "--sort", "bogus"), 2, `unknown sort key "bogus"`)
	oneLineError(t, run(t, nil, "softirq", "--sort", "bogus"), 2, `unknown sort key "bogus"`)
}

func TestDoctorSchedSoftirq(t *testing.T) {
	testutil.RequireBPF(t)
	r := run(t, nil, "doctor", "-o", "json")
	if r.code != 0 {
		t.Fatalf("doctor failed (%d): %s", r.code, r.stderr)
	}
	var rep doctor.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"softirq/softirq": false, "sched/switch": false, "sched/wakeup": false}
	for _, tr := range rep.Tracers {
		k := tr.Tracer + "/" + tr.Hook
		if _, ok := want[k]; ok {
			want[k] = true
			if tr.Method != "tp_btf" || tr.Error != "" {
				t.Errorf("doctor row %+v: want tp_btf", tr)
			}
		}
	}
	for k, ok := range want {
		if !ok {
			t.Errorf("doctor has no row for %s", k)
		}
	}
}
