package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/testutil"
)

func TestPortsBadInput(t *testing.T) {
	oneLineError(t, run(t, nil, "ports", "--dst", "not-an-address"), 2, `parse destination "not-an-address"`)
	oneLineError(t, run(t, nil, "ports", "-4", "-6"), 2, "-4 and -6 exclude each other")
	oneLineError(t, run(t, nil, "ports", "--sort", "bogus"), 2, `unknown sort key "bogus"`)
	oneLineError(t, run(t, nil, "ports", "--comm", "a-very-long-command-name"), 2, "15 characters")
}

// TestPortsJSON runs `nettrace ports -o json` on a namespace with a 51-port
// range and tcp_tw_reuse=0 while 100 connects go to a local server: the
// intervals add up to the client's counts, and the EADDRNOTAVAIL and
// exhaustion warnings come with their fixes.
func TestPortsJSON(t *testing.T) {
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	ns.SetSysctl(t, "net.ipv4.ip_local_port_range", "20000 20050")
	ns.SetSysctl(t, "net.ipv4.tcp_tw_reuse", "0")
	var lfd int
	ns.Do(func() error { lfd, _ = testutil.Listen(t, "tcp4", "127.0.0.1:9090", 1024); return nil })
	testutil.Accept(t, lfd, true) // echo: waits for the client's FIN

	cmd := exec.Command(binary, "ports", "-o", "json", "-i", "200ms", "-d", "60s", "--netns", ns.Path(), "--dst", "127.0.0.1:9090")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// The first interval object means the programs are attached.
	select {
	case l := <-lines:
		if !strings.Contains(l, `"type":"interval"`) {
			t.Fatalf("first line %q is not an interval object", l)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nettrace ports printed nothing")
	}

	var ok, notAvail int
	ns.Do(func() error {
		for range 100 {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			err = unix.Connect(fd, &unix.SockaddrInet4{Port: 9090, Addr: [4]byte{127, 0, 0, 1}})
			switch {
			case err == nil:
				ok++
			case errors.Is(err, unix.EADDRNOTAVAIL):
				notAvail++
			default:
				t.Errorf("connect: %v", err)
			}
			unix.Close(fd)
		}
		return nil
	})
	time.Sleep(time.Second) // a few more intervals
	cmd.Process.Signal(syscall.SIGTERM)
	go io.Copy(io.Discard, out)

	var connects, eaddr uint64
	warned := map[string]string{}
	var size float64
	for l := range lines {
		var obj map[string]any
		if err := json.Unmarshal([]byte(l), &obj); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		switch obj["type"] {
		case "interval":
			size = obj["header"].(map[string]any)["port_range_size"].(float64)
			for _, w := range obj["warnings"].([]any) {
				w := w.(map[string]any)
				warned[w["code"].(string)] = w["fix"].(string)
			}
		case "row":
			if obj["dest"] != "127.0.0.1:9090" {
				t.Errorf("row for %v passed --dst 127.0.0.1:9090", obj["dest"])
			}
			connects += uint64(obj["connects"].(float64))
			eaddr += uint64(obj["eaddrnotavail"].(float64))
		}
	}
	cmd.Wait()
	t.Logf("client: %d ok, %d EADDRNOTAVAIL; nettrace: %d connects, %d EADDRNOTAVAIL; warnings %v", ok, notAvail, connects, eaddr, warned)
	// The client's own count is 49 when it closes every connection first;
	// under slow emulation some servers close first and free a port.
	if connects != 100 || eaddr != uint64(notAvail) || notAvail == 0 {
		t.Errorf("nettrace counted %d connects and %d EADDRNOTAVAIL; client made 100 and saw %d", connects, eaddr, notAvail)
	}
	if size != 51 {
		t.Errorf("port_range_size %v, want 51", size)
	}
	for code, want := range map[string]string{"eaddrnotavail": "ip_local_port_range", "port_range_nearly_used": "ip_local_port_range", "time_wait_holds_range": "tcp_tw_reuse=1"} {
		if fix, ok := warned[code]; !ok || !strings.Contains(fix, want) {
			t.Errorf("warning %s: fix %q, want one naming %s", code, fix, want)
		}
	}
}
