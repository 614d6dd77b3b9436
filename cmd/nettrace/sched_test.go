package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

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
// our threads sleeps 1 ms at a time, and checks that thread's row of each
// interval against /proc: the test reads the thread's
// voluntary_ctxt_switches as each interval comes out. The command's
// snapshot falls between the interval's time (its wake-up) and that read,
// so only the sleeps that began in between can be counted in one interval
// by the command and in the next by /proc; the thread notes when each
// sleep begins, and the two counts must agree but for those.
func TestSchedJSON(t *testing.T) {
	testutil.RequireBPF(t)
	var (
		mu     sync.Mutex
		starts []time.Time // when each sleep began
	)
	tidc := make(chan int)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tidc <- unix.Gettid()
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			starts = append(starts, time.Now())
			mu.Unlock()
			unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
		}
	}()
	tid := <-tidc
	defer func() { close(stop); <-done }()
	cmd := exec.Command(binary, "sched", "-p", strconv.Itoa(os.Getpid()), "-T", "-o", "json", "-i", "500ms", "-c", "3")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	type interval struct {
		woke, read time.Time // the command's wake-up; our read of /proc
		proc       uint64    // /proc's count at read
		vol        float64   // the command's count for the thread
	}
	var ivs []interval
	for sc := bufio.NewScanner(out); sc.Scan(); {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("parse %q: %v", sc.Text(), err)
		}
		switch m["type"] {
		case "interval":
			iv := interval{proc: threadVol(t, tid), read: time.Now()}
			if iv.woke, err = time.Parse(time.RFC3339Nano, m["time"].(string)); err != nil {
				t.Fatal(err)
			}
			ivs = append(ivs, iv)
			if tiers := m["tiers"].(map[string]any); tiers["switch"] == nil || tiers["wakeup"] == nil {
				t.Errorf("tiers %v", tiers)
			}
		case "row":
			if m["pid"].(float64) != float64(os.Getpid()) {
				t.Errorf("row of pid %v with -p %d", m["pid"], os.Getpid())
			}
			if m["tid"].(float64) == float64(tid) && len(ivs) > 0 {
				ivs[len(ivs)-1].vol += m["voluntary"].(float64)
				if m["voluntary_per_s"].(float64) <= 0 {
					t.Errorf("row %v has no rate", m)
				}
			}
		default:
			t.Fatalf("object of type %v", m["type"])
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sched failed (%v): %s", err, stderr.String())
	}
	if len(ivs) != 3 {
		t.Fatalf("%d intervals, want 3", len(ivs))
	}
	mu.Lock()
	defer mu.Unlock()
	// between counts the sleeps begun around the snapshot of interval i.
	between := func(i int) int {
		var n int
		for _, at := range starts {
			if !at.Before(ivs[i].woke.Add(-time.Millisecond)) && !at.After(ivs[i].read.Add(time.Millisecond)) {
				n++
			}
		}
		return n
	}
	// The first interval began when the command attached, which /proc
	// cannot bracket; the others began at the previous interval.
	for i := 1; i < len(ivs); i++ {
		want := ivs[i].proc - ivs[i-1].proc
		slack := between(i-1) + between(i) + 2
		t.Logf("interval %d: thread %d, nettrace %v voluntary switches, /proc %d (%d sleeps begun around the snapshots)", i+1, tid, ivs[i].vol, want, slack-2)
		if want < 100 {
			t.Fatalf("interval %d: the thread switched only %d times in /proc", i+1, want)
		}
		if d := ivs[i].vol - float64(want); d > float64(slack) || d < -float64(slack) {
			t.Errorf("interval %d: nettrace counted %v voluntary switches, /proc %d, which %d sleeps around the snapshots can explain", i+1, ivs[i].vol, want, slack)
		}
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
