package testutil

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// DialTimeout bounds each connect of ConnectN. A SYN dropped by a full
// listen queue is retransmitted after 1s, so this lets one retry through.
var DialTimeout = 2 * time.Second

// Listen opens a TCP listening socket on addr ("127.0.0.1:0", "[::1]:0") in
// the calling thread's namespace, passing backlog to listen(2) unchanged
// (net.Listen always asks for somaxconn). network is "tcp", "tcp4" or
// "tcp6". It returns the socket and its port; the socket is closed when the
// test ends. Nothing accepts until Accept is called.
func Listen(t testing.TB, network, addr string, backlog int) (fd, port int) {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatalf("parse listen address %q: %v", addr, err)
	}
	var sa unix.Sockaddr
	family := unix.AF_INET
	switch {
	case ap.Addr().Is4() && network != "tcp6":
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	case ap.Addr().Is6() && network != "tcp4":
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	default:
		t.Fatalf("listen on %s %s: address does not match the network", network, addr)
	}
	fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		t.Fatalf("set SO_REUSEADDR: %v", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatalf("bind %s: %v", addr, err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		t.Fatalf("listen on %s with backlog %d: %v", addr, backlog, err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatalf("get listening address: %v", err)
	}
	switch a := got.(type) {
	case *unix.SockaddrInet4:
		port = a.Port
	case *unix.SockaddrInet6:
		port = a.Port
	}
	return fd, port
}

// Accept serves the listening socket fd until the test ends: it accepts every
// connection and closes it at once, or with echo copies what the peer sends
// back to it until the peer closes. It makes fd non-blocking.
func Accept(t testing.TB, fd int, echo bool) {
	t.Helper()
	dup, err := unix.Dup(fd)
	if err != nil {
		t.Fatalf("duplicate listening socket: %v", err)
	}
	f := os.NewFile(uintptr(dup), "listener")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatalf("wrap listening socket: %v", err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("accept: %v", err)
				}
				return
			}
			if !echo {
				c.Close()
				continue
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// ConnectN makes n sequential TCP connects to addr from the calling thread's
// namespace, closing each connection once established, and returns how many
// the client saw succeed and fail (refused, timed out after DialTimeout, ...).
func ConnectN(t testing.TB, addr string, n int) (ok, failed int) {
	t.Helper()
	d := net.Dialer{Timeout: DialTimeout}
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			failed++
			continue
		}
		ok++
		c.Close()
	}
	return ok, failed
}

// Addr joins a loopback host and port for ConnectN ("127.0.0.1", 8080).
func Addr(host string, port int) string {
	return net.JoinHostPort(host, fmt.Sprint(port))
}
