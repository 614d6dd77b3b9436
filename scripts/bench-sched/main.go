// Command bench-sched measures what `nettrace sched` and `nettrace softirq`
// cost on a context-switch-heavy load, next to libbpf-tools' runqlat and
// softirqs on the same load: throughput of a pipe ping-pong (sched) or a
// loopback TCP ping-pong (softirq) without and with each tracer, and the
// nanoseconds per event of every BPF program (bpf_stats).
//
// Usage (root): go run ./scripts/bench-sched [-d 5s] [-runs 3]
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/tracers/sched"
	"github.com/nettrace/nettrace/tracers/softirq"
)

var (
	dur  = flag.Duration("d", 5*time.Second, "length of one measurement")
	runs = flag.Int("runs", 3, "measurements per configuration (the median is reported)")
	only = flag.String("only", "", "run only the configurations whose name contains this (e.g. sched)")
)

// pipePingPong bounces one byte between two locked threads for d and
// returns round trips per second: two context switches each.
func pipePingPong(d time.Duration) float64 {
	var p1, p2 [2]int
	unix.Pipe2(p1[:], unix.O_CLOEXEC)
	unix.Pipe2(p2[:], unix.O_CLOEXEC)
	defer func() {
		for _, fd := range []int{p1[0], p1[1], p2[0], p2[1]} {
			unix.Close(fd)
		}
	}()
	stop := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		b := []byte{0}
		for {
			if n, _ := unix.Read(p1[0], b); n != 1 || b[0] == 1 {
				return
			}
			unix.Write(p2[1], b)
		}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	time.AfterFunc(d, func() { close(stop) })
	b := []byte{0}
	n := 0
	start := time.Now()
	for ; ; n++ {
		select {
		case <-stop:
			unix.Write(p1[1], []byte{1})
			return float64(n) / time.Since(start).Seconds()
		default:
		}
		unix.Write(p1[1], b)
		unix.Read(p2[0], b)
	}
}

// tcpPingPong bounces 64 bytes over loopback TCP for d and returns round
// trips per second.
func tcpPingPong(d time.Duration) float64 {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	n := 0
	start := time.Now()
	for end := start.Add(d); time.Now().Before(end); n++ {
		c.Write(buf)
		io.ReadFull(c, buf)
	}
	return float64(n) / time.Since(start).Seconds()
}

type progStat struct {
	name    string
	cnt, ns uint64
}

// progStats reads the run count and time of every loaded BPF program.
func progStats() map[ebpf.ProgramID]progStat {
	out := map[ebpf.ProgramID]progStat{}
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return out
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err1 := p.Info()
		st, err2 := p.Stats()
		p.Close()
		if err1 == nil && err2 == nil {
			out[id] = progStat{info.Name, st.RunCount, uint64(st.Runtime)}
		}
	}
}

// Program names are the kernel's, which keeps 15 characters of them
// without BTF; ours and libbpf-tools' are told apart by ID (new since the
// tracer started).

// config is one way of running the load.
type config struct {
	name  string
	load  func(time.Duration) float64
	start func() (stop func(), err error)
	only  map[string]bool // program names to report
}

func main() {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench-sched: run as root")
		os.Exit(1)
	}
	closer, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-sched: enable bpf_stats:", err)
		os.Exit(1)
	}
	defer closer.Close()

	ext := func(path string, args ...string) func() (func(), error) {
		return func() (func(), error) {
			cmd := exec.Command(path, args...)
			cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
			if err := cmd.Start(); err != nil {
				return nil, err
			}
			time.Sleep(2 * time.Second) // let it load and attach
			return func() { cmd.Process.Kill(); cmd.Wait() }, nil
		}
	}
	none := func() (func(), error) { return func() {}, nil }
	schedNT := func() (func(), error) {
		t, err := sched.New(sched.Options{})
		if err != nil {
			return nil, err
		}
		return func() { t.Close() }, nil
	}
	softirqNT := func() (func(), error) {
		t, err := softirq.New(softirq.Options{})
		if err != nil {
			return nil, err
		}
		return func() { t.Close() }, nil
	}
	configs := []config{
		{name: "pipe ping-pong, no tracer", load: pipePingPong, start: none},
		{name: "pipe ping-pong, nettrace sched", load: pipePingPong, start: schedNT,
			only: map[string]bool{"sched_switch_btf": true, "sched_wakeup_btf": true, "sched_wakeup_new_btf": true}},
		{name: "pipe ping-pong, runqlat", load: pipePingPong, start: ext("/usr/sbin/runqlat", "100"),
			only: map[string]bool{"sched_switch": true, "sched_wakeup": true, "sched_wakeup_new": true, "handle_sched_switch": true, "handle_sched_wakeup": true, "handle_sched_wakeup_new": true}},
		{name: "TCP loopback ping-pong, no tracer", load: tcpPingPong, start: none},
		{name: "TCP loopback ping-pong, nettrace softirq", load: tcpPingPong, start: softirqNT,
			only: map[string]bool{"softirq_entry_btf": true, "softirq_exit_btf": true}},
		{name: "TCP loopback ping-pong, softirqs", load: tcpPingPong, start: ext("/usr/sbin/softirqs", "100"),
			only: map[string]bool{"softirq_entry": true, "softirq_exit": true, "softirq_entry_btf": true, "softirq_exit_btf": true}},
	}
	fmt.Printf("kernel %s, %d CPUs, %v per measurement, median of %d\n\n", uname(), runtime.NumCPU(), *dur, *runs)
	fmt.Println("| load and tracer | round trips/s | vs none | program | events/s | ns/event |")
	fmt.Println("|---|---:|---:|---|---:|---:|")
	var base float64
	for _, c := range configs {
		if *only != "" && c.only != nil && !strings.Contains(c.name, *only) {
			continue
		}
		pre := progStats()
		stop, err := c.start()
		if err != nil {
			fmt.Printf("| %s | failed: %v | | | | |\n", c.name, err)
			continue
		}
		var rates []float64
		before := progStats()
		t0 := time.Now()
		for range *runs {
			rates = append(rates, c.load(*dur))
		}
		elapsed := time.Since(t0).Seconds()
		after := progStats()
		stop()
		sort.Float64s(rates)
		rate := rates[len(rates)/2]
		if c.only == nil {
			base = rate
		}
		var lines []string
		for id, a := range after {
			b := before[id]
			if _, old := pre[id]; old || !c.only[a.name] || a.cnt <= b.cnt {
				continue
			}
			n := a.cnt - b.cnt
			lines = append(lines, fmt.Sprintf("%s | %.0f | %.0f", a.name, float64(n)/elapsed, float64(a.ns-b.ns)/float64(n)))
		}
		sort.Strings(lines)
		if len(lines) == 0 {
			lines = []string{"- | - | -"}
		}
		for i, l := range lines {
			if i == 0 {
				fmt.Printf("| %s | %.0f | %+.1f%% | %s |\n", c.name, rate, (rate/base-1)*100, l)
			} else {
				fmt.Printf("| | | | %s |\n", l)
			}
		}
	}
}

func uname() string {
	var u unix.Utsname
	unix.Uname(&u)
	return unix.ByteSliceToString(u.Release[:])
}
