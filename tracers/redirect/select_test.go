package redirect

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nettrace/nettrace/internal/kernel"
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
	if err := Enable(Options{Comm: "a-comm-longer-than-15"}); err == nil || !strings.Contains(err.Error(), "is not a comm") {
		t.Errorf("enable with a 21-byte comm: %v", err)
	}
	if !enabled(t) {
		return
	}
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
}

// perThread runs f once for each way of keeping the per-thread records of
// redirects in flight this kernel offers: task storage (sk_msg programs
// may use it from 6.16 on) and the thread-id hash older kernels use.
// Inside f, the test's Enable uses that one; store checks it did.
func perThread(t *testing.T, f func(t *testing.T, store string)) {
	for _, store := range []string{"task_storage", "tid_hash"} {
		t.Run(store, func(t *testing.T) {
			if store == "task_storage" && !kernel.SkMsgTaskStorage.Has() {
				t.Logf("sk_msg cannot use task storage here: %v", kernel.SkMsgTaskStorage.Err())
				return
			}
			orig := useTaskStorage
			useTaskStorage = func() bool { return store == "task_storage" }
			t.Cleanup(func() { useTaskStorage = orig })
			f(t, store)
		})
	}
}

// checkStore fails unless the redirect pinned under pins keeps its
// per-thread records in store: the thread-id hash is sized only when used.
func checkStore(t *testing.T, pins, store string) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pins, "sending_tid"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got := map[bool]string{true: "tid_hash", false: "task_storage"}[m.MaxEntries() > 1]; got != store {
		t.Fatalf("per-thread records in %s (sending_tid holds %d), want %s", got, m.MaxEntries(), store)
	}
}

// A one-way stream leaves redirect once it sent more than BulkBytes with
// nothing sent back, stays on TCP, and its socket leaves the map (so its
// sends skip sk_msg); a ping-pong exchanging more than that in all never
// trips it, since each answer resets the count.
func TestBulkStaysOnTCP(t *testing.T) {
	if !enabled(t) {
		return
	}
	perThread(t, testBulkStaysOnTCP)
}

func testBulkStaysOnTCP(t *testing.T, store string) {
	const bulk = 64 << 10
	ns, _, pins := setupOpts(t, Options{BulkBytes: bulk})
	checkStore(t, pins, store)
	client, server := pair(t, ns, "127.0.0.1:0")
	sent := pingPong(t, client, server, 300, 1000)
	st := status(t, pins)
	c := st.Counters
	if c.Misses["bulk"] != 0 || c.RedirectedBytes < sent/2 || c.SocketsLeftBulk != 0 {
		t.Errorf("ping-pong of %d bytes: %d bulk misses, %d redirected, %d sockets left", sent, c.Misses["bulk"], c.RedirectedBytes, c.SocketsLeftBulk)
	}
	if st.SendWatcherLink == 0 {
		t.Fatal("no send watcher link: bulk senders cannot leave the map on this kernel")
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
	st2 := status(t, pins)
	c = st2.Counters
	redirected := c.RedirectedBytes - before.RedirectedBytes
	passed := c.PassedBytes - before.PassedBytes
	t.Logf("stream: %d of %d bytes redirected, %d through TCP by sk_msg; misses %v; sockets %d -> %d, left %d and %d peers, leaves put off %d",
		redirected, n, passed, c.Misses, st.Sockets, st2.Sockets, c.SocketsLeftBulk, c.PeersLeft, c.LeaveDeferred)
	// The first byte went through TCP (peer_unproven), then at most bulk
	// bytes were redirected; then the writer left the map: its later
	// writes never reach sk_msg, so far fewer bytes than the stream were
	// counted passing through it.
	if redirected > bulk || c.Misses["bulk"] == 0 {
		t.Errorf("stream: %d bytes redirected (at most %d), %d bulk misses", redirected, bulk, c.Misses["bulk"])
	}
	// Then the reader: the writer's later ACKs take it out once it has
	// read its redirected queue.
	if c.SocketsLeftBulk != 1 || c.PeersLeft != 1 || st2.Sockets != st.Sockets || passed > n/2 {
		t.Errorf("stream: %d sockets left the map (want the writer) and %d peers (want the reader), map %d -> %d sockets (want the same: the new pair less both), %d of %d bytes still through sk_msg",
			c.SocketsLeftBulk, c.PeersLeft, st.Sockets, st2.Sockets, passed, n)
	}
}

// paced sleeps after each write.
type paced struct {
	w     io.Writer
	pause time.Duration
}

func (p paced) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	time.Sleep(p.pause)
	return n, err
}

// A bulk writer leaves the map while its peer keeps sending small messages
// to it (redirected until the leave): both directions arrive byte for
// byte, whichever side sees the other's mark first.
func TestBulkLeavesWhilePeerSends(t *testing.T) {
	if !enabled(t) {
		return
	}
	perThread(t, testBulkLeavesWhilePeerSends)
}

func testBulkLeavesWhilePeerSends(t *testing.T, store string) {
	const bulk = 64 << 10
	ns, _, pins := setupOpts(t, Options{BulkBytes: bulk})
	checkStore(t, pins, store)
	for round := range 3 {
		client, server := pair(t, ns, "127.0.0.1:0")
		// Both ends proven readers first, so the peer's messages are
		// redirected when the writer turns bulk (else they may all go
		// through TCP and nothing races with the leave).
		for _, c := range [][2]*net.TCPConn{{client, server}, {server, client}} {
			if _, err := c[0].Write([]byte{1}); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c[1], make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
		}
		const up, down = 16 << 20, 512 << 10
		errc := make(chan error, 4)
		go func() { // the bulk flow
			err := writeStream(client, byte(10+round), up, 16<<10, nil)
			if err == nil {
				err = client.CloseWrite()
			}
			errc <- err
		}()
		go func() { // the peer's small messages, every 300 µs
			err := writeStream(paced{server, 300 * time.Microsecond}, byte(20+round), down, 256, nil)
			if err == nil {
				err = server.CloseWrite()
			}
			errc <- err
		}()
		go func() {
			got, err := readStream(server, byte(10+round), 64<<10)
			if err == nil && got != up {
				err = fmt.Errorf("server read %d of %d bytes", got, up)
			}
			errc <- err
		}()
		go func() {
			got, err := readStream(client, byte(20+round), 4<<10)
			if err == nil && got != down {
				err = fmt.Errorf("client read %d of %d bytes", got, down)
			}
			errc <- err
		}()
		for range 4 {
			if err := <-errc; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
	c := status(t, pins).Counters
	t.Logf("redirected %d bytes, through sk_msg to TCP %d; misses %v; left %d and %d peers, leaves put off %d",
		c.RedirectedBytes, c.PassedBytes, c.Misses, c.SocketsLeftBulk, c.PeersLeft, c.LeaveDeferred)
	// Each round's writer leaves; its peer is taken out after it, or
	// leaves on its own once its small messages go unanswered through
	// sk_msg (the writer's later sends skip it) for more than the
	// threshold.
	if c.SocketsLeftBulk < 3 || c.RedirectedBytes == 0 {
		t.Errorf("%d sockets left the map (want each round's writer at least), %d bytes redirected", c.SocketsLeftBulk, c.RedirectedBytes)
	}
}
