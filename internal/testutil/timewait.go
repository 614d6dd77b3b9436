package testutil

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FillTimeWait makes n+1% loopback connections inside ns that the client
// closes first, spread over enough listening ports (8080 and up) that the
// port range never runs out, and waits until /proc/net/tcp shows at least
// n client TIME_WAIT sockets (a few end early: ports the kernel hands out
// again). For the benchmarks that walk 100,000 TIME_WAIT sockets.
func FillTimeWait(t testing.TB, ns *Netns, n int) {
	t.Helper()
	ns.SetSysctl(t, "net.ipv4.ip_local_port_range", "1024 65535")
	ns.SetSysctl(t, "net.ipv4.tcp_max_tw_buckets", strconv.Itoa(2*n))
	ns.SetSysctl(t, "net.ipv4.tcp_tw_reuse", "0") // the default 2 reuses them on loopback
	const perPort = 25_000
	ports := (n + perPort - 1) / perPort
	for i := range ports {
		var ln net.Listener
		if err := ns.Do(func() (err error) {
			ln, err = net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", 8080+i))
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
				go func() { c.Read(make([]byte, 1)); c.Close() }()
			}
		}()
	}
	total := n + n/100 // a few end early (ports the kernel hands out again)
	const workers = 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			errs <- ns.Do(func() error {
				for i := w; i < total; i += workers {
					fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
					if err != nil {
						return err
					}
					err = unix.Connect(fd, &unix.SockaddrInet4{Port: 8080 + i%ports, Addr: [4]byte{127, 0, 0, 1}})
					unix.Close(fd) // client first: the client keeps TIME_WAIT
					if err != nil {
						return fmt.Errorf("connect %d: %w", i, err)
					}
				}
				return nil
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var tw int
		if err := ns.Do(func() (err error) { tw, err = countTimeWait(); return err }); err != nil {
			t.Fatal(err)
		}
		if tw >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d TIME_WAIT sockets, want %d", tw, n)
		}
	}
}

// countTimeWait counts the TIME_WAIT lines (state 06) of the calling
// thread's /proc/net/tcp.
func countTimeWait() (int, error) {
	f, err := os.Open("/proc/thread-self/net/tcp")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 3 && fields[3] == "06" {
			n++
		}
	}
	return n, sc.Err()
}
