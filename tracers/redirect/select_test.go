package redirect

import (
	"bytes"
	"io"
	"net"
	"os"
	"strings"
	"testing"
)

// pingPong runs rounds of size-byte request/response on a fresh pair and
// returns how many bytes were sent in all, checking every echo.
func pingPong(t *testing.T, client, server *net.TCPConn, rounds, size int) uint64 {
	t.Helper()
	go func() {
		buf := make([]byte, size)
		for {
			if _, err := io.ReadFull(server, buf); err != nil {
				return
			}
			if _, err := server.Write(buf); err != nil {
				return
			}
		}
	}()
	p := pattern{seed: 3}
	msg, got := make([]byte, size), make([]byte, size)
	for i := range rounds {
		p.fill(msg)
		if _, err := client.Write(msg); err != nil {
			t.Fatalf("round %d: write: %v", i, err)
		}
		if _, err := io.ReadFull(client, got); err != nil {
			t.Fatalf("round %d: read: %v", i, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("round %d: echo differs", i)
		}
	}
	return uint64(2 * rounds * size)
}

// --comm: another comm redirects nothing (every send a "comm" miss), this
// test binary's comm redirects the ping-pong.
func TestComm(t *testing.T) {
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	self := strings.TrimSpace(string(b))
	for _, tc := range []struct {
		comm     string
		redirect bool
	}{{"no-such-comm", false}, {self, true}} {
		t.Run(tc.comm, func(t *testing.T) {
			ns, _, pins := setupOpts(t, Options{Comm: tc.comm})
			client, server := pair(t, ns, "127.0.0.1:0")
			sent := pingPong(t, client, server, 200, 1000)
			c := status(t, pins).Counters
			t.Logf("comm %q: %d bytes redirected, %d passed, misses %v", tc.comm, c.RedirectedBytes, c.PassedBytes, c.Misses)
			if c.RedirectedBytes+c.PassedBytes != sent {
				t.Errorf("redirected %d + passed %d bytes, want %d", c.RedirectedBytes, c.PassedBytes, sent)
			}
			if tc.redirect && c.RedirectedBytes < sent/2 {
				t.Errorf("own comm: only %d of %d bytes redirected", c.RedirectedBytes, sent)
			}
			// The comm check comes before the peer checks: every send.
			if !tc.redirect && (c.RedirectedBytes != 0 || c.Misses["comm"] != 2*200) {
				t.Errorf("other comm: %d bytes redirected, %d comm misses of %d sends", c.RedirectedBytes, c.Misses["comm"], 2*200)
			}
		})
	}
	if err := Enable(Options{Comm: "a-comm-longer-than-15"}); err == nil || !strings.Contains(err.Error(), "is not a comm") {
		t.Errorf("enable with a 21-byte comm: %v", err)
	}
}

// A one-way stream leaves redirect once it sent more than BulkBytes with
// nothing sent back, and stays on TCP; a ping-pong exchanging more than
// that in all never trips it, since each answer resets the count.
func TestBulkStaysOnTCP(t *testing.T) {
	const bulk = 64 << 10
	ns, _, pins := setupOpts(t, Options{BulkBytes: bulk})
	client, server := pair(t, ns, "127.0.0.1:0")
	sent := pingPong(t, client, server, 300, 1000)
	c := status(t, pins).Counters
	if c.Misses["bulk"] != 0 || c.RedirectedBytes < sent/2 {
		t.Errorf("ping-pong of %d bytes: %d bulk misses, %d redirected", sent, c.Misses["bulk"], c.RedirectedBytes)
	}
	before := c

	client, server = pair(t, ns, "127.0.0.1:0")
	if _, err := client.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	const n = 8 << 20
	errc := make(chan error, 1)
	go func() {
		err := writeStream(client, 9, n, 16<<10, nil)
		if err == nil {
			err = client.CloseWrite()
		}
		errc <- err
	}()
	got, err := readStream(server, 9, 64<<10)
	if err != nil || got != n {
		t.Fatalf("read %d of %d bytes: %v", got, n, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	c = status(t, pins).Counters
	redirected := c.RedirectedBytes - before.RedirectedBytes
	t.Logf("stream: %d of %d bytes redirected, misses %v", redirected, n, c.Misses)
	// The first byte went through TCP (peer_unproven), then at most bulk
	// bytes were redirected.
	if redirected > bulk || c.Misses["bulk"] < (n-bulk)/(16<<10) {
		t.Errorf("stream: %d bytes redirected (at most %d), %d bulk misses", redirected, bulk, c.Misses["bulk"])
	}
}
