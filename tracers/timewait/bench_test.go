package timewait

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/socktable"
	"github.com/nettrace/nettrace/internal/testutil"
)

// benchSockets is how many TIME_WAIT sockets the walk benchmark holds;
// NETTRACE_BENCH_TW overrides it.
func benchSockets() int {
	if n, err := strconv.Atoi(os.Getenv("NETTRACE_BENCH_TW")); err == nil && n > 0 {
		return n
	}
	return 100_000
}

// fillTimeWait makes n client-first connections inside ns, spread over
// enough listening ports that the port range never runs out, so the client
// side holds n TIME_WAIT sockets.
func fillTimeWait(b *testing.B, ns *testutil.Netns, n int) {
	b.Helper()
	ns.SetSysctl(b, "net.ipv4.ip_local_port_range", "1024 65535")
	ns.SetSysctl(b, "net.ipv4.tcp_max_tw_buckets", strconv.Itoa(2*n))
	ns.SetSysctl(b, "net.ipv4.tcp_tw_reuse", "0") // the default 2 reuses them on loopback
	const perPort = 25_000
	ports := (n + perPort - 1) / perPort
	for i := range ports {
		var ln net.Listener
		if err := ns.Do(func() (err error) {
			ln, err = net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", 8080+i))
			return err
		}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { c.Read(make([]byte, 1)); c.Close() }()
			}
		}()
	}
	n += n / 100 // a few end early (ports the kernel hands out again)
	const workers = 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- ns.Do(func() error {
				for i := w; i < n; i += workers {
					fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
					if err != nil {
						return err
					}
					sa := &unix.SockaddrInet4{Port: 8080 + i%ports, Addr: [4]byte{127, 0, 0, 1}}
					if err := unix.Connect(fd, sa); err != nil {
						unix.Close(fd)
						return fmt.Errorf("connect %d: %w", i, err)
					}
					unix.Close(fd) // client first: the client keeps TIME_WAIT
				}
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := 0
		socks, err := socktable.ReadProc(ns.Path())
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range socks {
			if s.State == socktable.TimeWait {
				got++
			}
		}
		if got >= n*100/101 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d TIME_WAIT sockets, want %d", got, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// BenchmarkWalk measures one interval (socket table walk, diff, rows) over
// 100,000 TIME_WAIT sockets, with the CPU time it takes (user and system:
// the kernel's side of the iterator included) and its allocations.
func BenchmarkWalk(b *testing.B) {
	testutil.RequireBPF(b)
	n := benchSockets()
	ns := testutil.NewNetns(b)
	fillTimeWait(b, ns, n)
	tr, err := New(Options{Netns: []string{ns.Path()}, Tier: attach.Auto})
	if err != nil {
		b.Fatalf("%+v", err)
	}
	defer tr.Close()
	// One interval first: the buffers every walk reuses grow to size once.
	if _, err := tr.Snapshot(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	b.ResetTimer()
	for b.Loop() {
		s, err := tr.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		if s.Header.TimeWait < n {
			b.Fatalf("walk saw %d TIME_WAIT, want %d", s.Header.TimeWait, n)
		}
	}
	b.StopTimer()
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano()-before.Utime.Nano()) + time.Duration(after.Stime.Nano()-before.Stime.Nano())
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/walk")
	b.ReportMetric(float64(n), "sockets")
}
