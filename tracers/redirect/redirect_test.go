package redirect

import (
	"bytes"
	"io"
	"testing"
)

// Ping-pong at several sizes: every echo comes back byte for byte, and the
// messages really were redirected (not a test of plain TCP).
func TestPingPong(t *testing.T) {
	ns, _, pins := setup(t)
	for _, size := range []int{64, 1 << 10, 64 << 10, 1 << 20} {
		client, server := pair(t, ns, "127.0.0.1:0")
		before := status(t, pins).Counters
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
		rounds := 200
		if size >= 64<<10 {
			rounds = 50
		}
		p := pattern{seed: byte(size)}
		msg, got := make([]byte, size), make([]byte, size)
		for i := 0; i < rounds; i++ {
			p.fill(msg)
			if _, err := client.Write(msg); err != nil {
				t.Fatalf("size %d round %d: write: %v", size, i, err)
			}
			if _, err := io.ReadFull(client, got); err != nil {
				t.Fatalf("size %d round %d: read: %v", size, i, err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("size %d round %d: echo differs", size, i)
			}
		}
		client.Close()
		after := status(t, pins).Counters
		redirected := after.RedirectedBytes - before.RedirectedBytes
		total := int64(2 * rounds * size)
		t.Logf("size %d: %d of %d bytes redirected, misses %v", size, redirected, total, after.Misses)
		if size <= 64<<10 && redirected < uint64(total)/2 {
			t.Errorf("size %d: only %d of %d bytes redirected", size, redirected, total)
		}
	}
}
