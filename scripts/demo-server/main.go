// Command demo-server is a deliberately small HTTP server for trying
// nettrace record/compare/report with wrk: a fixed pool of workers, each
// accepting one connection at a time, like php-fpm's max_children. When
// every worker is busy, connections wait in the accept queue, whose size is
// the listen() backlog capped by net.core.somaxconn; past it the kernel
// drops them (ListenOverflows).
//
//	go run ./scripts/demo-server -addr 127.0.0.1:8080 -workers 4 -work 2ms
//	wrk -t2 -c400 -d20s http://127.0.0.1:8080/
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on (IPv4)")
	workers := flag.Int("workers", 4, "connections served at once")
	work := flag.Duration("work", 2*time.Millisecond, "time each request takes (sleeping, as when waiting on a database)")
	backlog := flag.Int("backlog", 511, "listen() backlog (the kernel caps it at net.core.somaxconn)")
	keepAlive := flag.Bool("keepalive", false, "keep connections open between requests")
	flag.Parse()

	ap, err := netip.ParseAddrPort(*addr)
	if err != nil || !ap.Addr().Is4() {
		log.Fatalf("demo-server: -addr %q: want an IPv4 address and port", *addr)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		log.Fatal(err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		log.Fatalf("demo-server: bind %s: %v", *addr, err)
	}
	if err := unix.Listen(fd, *backlog); err != nil {
		log.Fatal(err)
	}
	ln, err := net.FileListener(os.NewFile(uintptr(fd), "listener"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("demo-server: %d workers on %s, backlog %d, %s per request\n", *workers, *addr, *backlog, *work)
	done := make(chan struct{})
	for range *workers {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					log.Print(err)
					close(done)
					return
				}
				serve(c, *work, *keepAlive)
			}
		}()
	}
	<-done
}

// serve answers requests on c, one at a time, then closes it.
func serve(c net.Conn, work time.Duration, keepAlive bool) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		req, err := http.ReadRequest(r)
		if err != nil {
			return
		}
		req.Body.Close()
		time.Sleep(work)
		conn := "close"
		if keepAlive {
			conn = "keep-alive"
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: %s\r\n\r\nok\n", conn)
		if !keepAlive {
			return
		}
	}
}
