package redirect

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// Streaming at several write sizes, then a half-close: the reader gets every
// byte in order and then EOF, and can still answer on the other half.
func TestStreamHalfClose(t *testing.T) {
	if !enabled(t) {
		return
	}
	ns, _, pins := setup(t)
	const n = 16 << 20
	for _, size := range []int{100, 4 << 10, 64 << 10, 1 << 20} {
		client, server := pair(t, ns, "127.0.0.1:0")
		// One TCP byte each way first, so both ends are proven readers.
		if _, err := client.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() {
			err := writeStream(client, byte(size), n, size, nil)
			if err == nil {
				err = client.CloseWrite()
			}
			errc <- err
		}()
		got, err := readStream(server, byte(size), 64<<10)
		if err != nil || got != n {
			t.Fatalf("write size %d: read %d of %d bytes: %v", size, got, n, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("write size %d: %v", size, err)
		}
		if _, err := server.Write([]byte("bye")); err != nil {
			t.Fatalf("answer after half-close: %v", err)
		}
		server.Close()
		b, err := io.ReadAll(client)
		if string(b) != "bye" || err != nil {
			t.Fatalf("client read %q, %v after half-close, want \"bye\"", b, err)
		}
	}
	c := status(t, pins).Counters
	t.Logf("redirected %d bytes in %d msgs, passed %d bytes, misses %v", c.RedirectedBytes, c.RedirectedMsgs, c.PassedBytes, c.Misses)
	// Bulk streams fall back to TCP whenever the reader's queue is full
	// (peer_full) and then until TCP's bytes are read (tcp_unread).
	if c.RedirectedBytes == 0 {
		t.Errorf("nothing was redirected")
	}
}

// A reader that stops reading: the sender must block as with TCP, not queue
// without bound, and every byte still arrives in order afterwards.
func TestSlowReaderBounded(t *testing.T) {
	if !enabled(t) {
		return
	}
	ns, _, pins := setup(t)
	client, server := pair(t, ns, "127.0.0.1:0")
	if _, err := client.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	const n = 256 << 20
	var written atomic.Int64
	errc := make(chan error, 1)
	go func() {
		err := writeStream(client, 7, n, 64<<10, &written)
		if err == nil {
			err = client.CloseWrite()
		}
		errc <- err
	}()
	// Let the writer run against a reader that does not read.
	var last int64
	for i := 0; i < 20; i++ {
		time.Sleep(100 * time.Millisecond)
		if w := written.Load(); w == last && w > 0 {
			break
		} else {
			last = w
		}
	}
	stalled := written.Load()
	st := status(t, pins)
	t.Logf("sender stalled after %d bytes; queued redirected %d bytes; misses %v", stalled, st.QueuedBytes, st.Counters.Misses)
	// Plain TCP on loopback stalls at a few MiB; the prototype queued 1 GiB.
	const bound = 32 << 20
	if stalled >= bound {
		t.Errorf("sender queued %d bytes into a reader that does not read (bound %d)", stalled, bound)
	}
	if st.Counters.Misses["peer_full"] == 0 {
		t.Errorf("no send fell back to TCP because the reader's queue was full")
	}
	if st.QueuedBytes == 0 {
		t.Errorf("status shows no redirected bytes queued at a reader that does not read")
	}
	samePending(t, pins)
	got, err := readStream(server, 7, 64<<10)
	if err != nil || got != n {
		t.Fatalf("read %d of %d bytes: %v", got, n, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// A proxy that forwards with io.Copy between two TCP connections (splice on
// Linux): everything sent through it arrives, in order, both ways.
func TestSpliceProxy(t *testing.T) {
	if !enabled(t) {
		return
	}
	ns, _, pins := setup(t)
	upstream := listen(t, ns, "127.0.0.1:0")
	front := listen(t, ns, "127.0.0.1:0")
	go func() {
		for {
			in, err := front.Accept()
			if err != nil {
				return
			}
			var out net.Conn
			if err := ns.Do(func() (err error) {
				out, err = net.Dial("tcp", upstream.Addr().String())
				return err
			}); err != nil {
				in.Close()
				return
			}
			go func() { io.Copy(out, in); out.(*net.TCPConn).CloseWrite() }()
			go func() { io.Copy(in, out); in.(*net.TCPConn).CloseWrite() }()
		}
	}()
	const n = 32 << 20
	errc := make(chan error, 1)
	go func() {
		s, err := upstream.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer s.Close()
		got, err := readStream(s, 3, 64<<10)
		if err == nil && got != n {
			err = fmt.Errorf("upstream read %d of %d bytes", got, n)
		}
		if err == nil {
			err = writeStream(s, 4, n, 64<<10, nil)
		}
		if err == nil {
			err = s.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	client := dial(t, ns, front.Addr().String(), "")
	go func() {
		if err := writeStream(client, 3, n, 16<<10, nil); err == nil {
			client.CloseWrite()
		}
	}()
	got, err := readStream(client, 4, 64<<10)
	if err != nil || got != n {
		t.Fatalf("client read %d of %d bytes back through the proxy: %v", got, n, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	c := status(t, pins).Counters
	t.Logf("splice marked %d sockets, stranded %d; redirected %d bytes, misses %v", c.SpliceMarked, c.SpliceStranded, c.RedirectedBytes, c.Misses)
	if c.SpliceMarked == 0 {
		t.Errorf("the proxy's splice was not seen")
	}
	if c.SpliceStranded != 0 {
		t.Errorf("%d sockets were spliced with redirected data queued", c.SpliceStranded)
	}
}

// Disable while a stream runs: every byte arrives in order, and nothing is
// left attached or pinned afterwards.
func TestDisableDuringTraffic(t *testing.T) {
	if !enabled(t) {
		return
	}
	ns, cg, pins := setup(t)
	client, server := pair(t, ns, "127.0.0.1:0")
	if _, err := client.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	const n = 256 << 20
	var written atomic.Int64
	errc := make(chan error, 1)
	go func() {
		err := writeStream(client, 9, n, 32<<10, &written)
		if err == nil {
			err = client.CloseWrite()
		}
		errc <- err
	}()
	readc := make(chan error, 1)
	var got int64
	go func() {
		var err error
		// A slowish reader, so redirected data is queued when disable runs.
		got, err = readStream(&slowReader{r: server, every: 64, pause: time.Millisecond}, 9, 16<<10)
		readc <- err
	}()
	for written.Load() < n/8 {
		time.Sleep(10 * time.Millisecond)
	}
	before := status(t, pins)
	res, err := Disable(pins, 30*time.Second)
	if err != nil {
		t.Fatalf("disable: %v", err)
	}
	t.Logf("disable at %d bytes written, %d queued in %d sockets: drained %d sockets in %v", written.Load(), before.QueuedBytes, before.Sockets, res.Drained, res.Waited)
	if before.Counters.RedirectedBytes == 0 {
		t.Errorf("nothing was redirected before disable")
	}
	if err := <-readc; err != nil || got != n {
		t.Fatalf("read %d of %d bytes across disable: %v", got, n, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	st := status(t, pins)
	if len(st.Pins) != 0 || st.Enabled {
		t.Errorf("still pinned after disable: %+v", st)
	}
	if ids, err := CgroupSockops(cg); err != nil || len(ids) != 0 {
		t.Errorf("kernel still lists sockops programs %v on %s (%v)", ids, cg, err)
	}
}

type slowReader struct {
	r     io.Reader
	n     int
	every int
	pause time.Duration
}

func (s *slowReader) Read(b []byte) (int, error) {
	s.n++
	if s.n%s.every == 0 {
		time.Sleep(s.pause)
	}
	return s.r.Read(b)
}

// A peer that closes with unread data: the sender gets an error on its next
// writes, as with TCP.
func TestPeerCloseUnread(t *testing.T) {
	if !enabled(t) {
		return
	}
	ns, _, _ := setup(t)
	client, server := pair(t, ns, "127.0.0.1:0")
	if _, err := client.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	server.Close()
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for err == nil && time.Now().Before(deadline) {
		_, err = client.Write(make([]byte, 1024))
		time.Sleep(10 * time.Millisecond)
	}
	if err == nil {
		t.Fatal("sender wrote for 5s into a closed peer without an error")
	}
	t.Logf("sender got %v", err)
	if !errors.Is(err, errEPIPE) && !errors.Is(err, errECONNRESET) {
		t.Errorf("sender got %v, want EPIPE or ECONNRESET", err)
	}
}
