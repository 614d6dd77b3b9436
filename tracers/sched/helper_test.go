package sched

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The workloads run in a child process (this test binary re-executed with
// SCHED_TEST_HELPER set and async preemption off), so the Go runtime of the
// test does not add its own switches to the threads under test, and the
// tracer can filter on the child's PID.
//
// Protocol: the child prints its workload threads' TIDs on one line, waits
// for a line on stdin, runs the workload, prints "done", and then blocks
// until stdin closes. Every workload thread is locked to its OS thread and
// sleeps in the kernel before and after the workload.

func TestMain(m *testing.M) {
	if mode := os.Getenv("SCHED_TEST_HELPER"); mode != "" {
		if err := helper(mode); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helper runs one workload: "pingpong N", "hogs-shared D" or "hogs-split D".
func helper(mode string) error {
	runtime.GOMAXPROCS(8) // two hogs must not starve the runtime of Ps
	kind, arg, _ := strings.Cut(mode, " ")
	in := bufio.NewReader(os.Stdin)
	var (
		tids  = make(chan int, 2)
		start = make(chan struct{})
		wg    sync.WaitGroup
	)
	wg.Add(2)
	switch kind {
	case "pingpong":
		n, err := strconv.Atoi(arg)
		if err != nil {
			return err
		}
		var p1, p2 [2]int
		if err := unix.Pipe2(p1[:], unix.O_CLOEXEC); err != nil {
			return err
		}
		if err := unix.Pipe2(p2[:], unix.O_CLOEXEC); err != nil {
			return err
		}
		side := func(rd, wr int, first bool) {
			defer park(&wg)
			runtime.LockOSThread()
			tids <- unix.Gettid()
			<-start
			for i := 0; i < n; i++ {
				if first {
					xfer(unix.Write, wr)
					xfer(unix.Read, rd)
				} else {
					xfer(unix.Read, rd)
					xfer(unix.Write, wr)
				}
			}
		}
		go side(p2[0], p1[1], true)
		go side(p1[0], p2[1], false)
	case "hogs-shared", "hogs-split":
		d, err := time.ParseDuration(arg)
		if err != nil {
			return err
		}
		var stop atomic.Int32
		hog := func(cpu int) {
			defer park(&wg)
			runtime.LockOSThread()
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				panic(err)
			}
			tids <- unix.Gettid()
			<-start
			for stop.Load() == 0 { // no calls: nothing for the Go scheduler to preempt
			}
		}
		go hog(0)
		if kind == "hogs-shared" {
			go hog(0)
		} else {
			go hog(1)
		}
		go func() {
			<-start
			time.Sleep(d)
			stop.Store(1)
		}()
	default:
		return fmt.Errorf("unknown helper mode %q", mode)
	}
	fmt.Printf("%d %d\n", <-tids, <-tids)
	if _, err := in.ReadString('\n'); err != nil {
		return err
	}
	close(start)
	wg.Wait()
	fmt.Println("done")
	in.ReadString('\n') // until stdin closes
	return nil
}

// xfer reads or writes one byte, retrying when a signal interrupts it (a
// lost byte would leave both sides blocked).
func xfer(op func(int, []byte) (int, error), fd int) {
	b := []byte{0}
	for {
		n, err := op(fd, b)
		if n == 1 {
			return
		}
		if err != unix.EINTR {
			panic(fmt.Sprintf("pipe: %d, %v", n, err))
		}
	}
}

// park reports a workload thread done and keeps it (it is locked: a
// goroutine that exits locked takes its thread with it) asleep for good.
func park(wg *sync.WaitGroup) {
	wg.Done()
	select {}
}

// child is a running helper.
type child struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin *os.File
	out   *bufio.Reader
	pid   int
	tids  [2]int
}

func startHelper(t *testing.T, mode string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SCHED_TEST_HELPER="+mode, "GODEBUG=asyncpreemptoff=1")
	cmd.Stderr = os.Stderr
	w, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	r, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{t: t, cmd: cmd, stdin: w.(*os.File), out: bufio.NewReader(r), pid: cmd.Process.Pid}
	t.Cleanup(func() {
		w.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := c.out.ReadString('\n')
	if err != nil {
		t.Fatalf("read helper TIDs: %v", err)
	}
	if _, err := fmt.Sscan(line, &c.tids[0], &c.tids[1]); err != nil {
		t.Fatalf("parse helper TIDs %q: %v", line, err)
	}
	c.waitAsleep()
	return c
}

// run starts the workload and waits until it is done and its threads sleep.
func (c *child) run() time.Duration {
	start := time.Now()
	if _, err := c.stdin.Write([]byte("go\n")); err != nil {
		c.t.Fatal(err)
	}
	type result struct {
		line string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		line, err := c.out.ReadString('\n')
		res <- result{line, err}
	}()
	select {
	case r := <-res:
		if r.err != nil || r.line != "done\n" {
			c.t.Fatalf("helper: %q, %v", r.line, r.err)
		}
	case <-time.After(2 * time.Minute):
		c.t.Fatal("helper workload did not finish in 2 minutes")
	}
	d := time.Since(start)
	c.waitAsleep()
	return d
}

// waitAsleep waits until both workload threads sleep, and a little more so
// that their last switch is done.
func (c *child) waitAsleep() {
	for _, tid := range c.tids {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", c.pid, tid))
			if err != nil {
				c.t.Fatal(err)
			}
			_, rest, _ := strings.Cut(string(b), ") ")
			if strings.HasPrefix(rest, "S") {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("thread %d does not go to sleep: %s", tid, b)
			}
		}
	}
	time.Sleep(20 * time.Millisecond)
}

// procTask is what /proc says about a thread.
type procTask struct {
	vol, invol          uint64
	oncpuNS, runDelayNS uint64
}

func (c *child) proc(tid int) procTask {
	c.t.Helper()
	dir := fmt.Sprintf("/proc/%d/task/%d/", c.pid, tid)
	b, err := os.ReadFile(dir + "status")
	if err != nil {
		c.t.Fatal(err)
	}
	var p procTask
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		switch k {
		case "voluntary_ctxt_switches":
			p.vol = n
		case "nonvoluntary_ctxt_switches":
			p.invol = n
		}
	}
	b, err = os.ReadFile(dir + "schedstat")
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := fmt.Sscan(string(b), &p.oncpuNS, &p.runDelayNS); err != nil {
		c.t.Fatalf("parse %sschedstat %q: %v", dir, b, err)
	}
	return p
}
