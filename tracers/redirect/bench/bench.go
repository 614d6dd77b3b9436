// Package bench measures loopback TCP with and without redirect: ping-pong
// round trips (rate, p50/p99 latency) and one-way throughput per message
// size, checking every byte received against the pattern that was sent.
package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nettrace/nettrace/internal/netns"
)

// Options say what to measure.
type Options struct {
	Sizes    []int         // message sizes in bytes
	Duration time.Duration // per size, per test (ping-pong, then stream), per mode
	Conns    int           // concurrent connections per test; 0 = 1
	Redirect bool          // also measure each size with redirect enabled
	Cgroup   string        // with Redirect: cgroup v2 to move into and enable on; "" = a private one
	PinDir   string        // with Redirect: where to pin; "" = a private directory
	Netns    string        // network namespace to open the sockets in; "" = ours
}

// Figures are one mode's results for one size.
type Figures struct {
	RoundTrips     int64   `json:"round_trips"`
	RoundTripsPerS float64 `json:"round_trips_per_s"`
	P50Us          float64 `json:"p50_us"`
	P99Us          float64 `json:"p99_us"`
	StreamBytes    int64   `json:"stream_bytes"` // received in the one-way test
	MBPerS         float64 `json:"mb_per_s"`     // one-way, 10^6 bytes per second
	// CheckedBytes is every byte compared with what was sent, both tests,
	// both directions.
	CheckedBytes int64 `json:"checked_bytes"`
	// With redirect: bytes the sk_msg program redirected and passed to
	// TCP, in the ping-pong and in the stream test.
	PingPongRedirectedBytes uint64 `json:"ping_pong_redirected_bytes,omitempty"`
	PingPongPassedBytes     uint64 `json:"ping_pong_passed_bytes,omitempty"`
	StreamRedirectedBytes   uint64 `json:"stream_redirected_bytes,omitempty"`
	StreamPassedBytes       uint64 `json:"stream_passed_bytes,omitempty"`
	// With redirect: the sk_msg program's cost, from a third, shorter
	// ping-pong run with the kernel's BPF statistics on (the two tests
	// above run with them off: they add two clock reads to every program
	// run, which users do not pay): its round trips, the program's runs
	// (one per send) and its mean run time.
	MsgRoundTrips int64   `json:"msg_round_trips,omitempty"`
	MsgRuns       uint64  `json:"msg_runs,omitempty"`
	MsgNsPerRun   float64 `json:"msg_ns_per_run,omitempty"`
}

// Result is one message size.
type Result struct {
	Size     int      `json:"size_bytes"`
	Plain    Figures  `json:"plain"`
	Redirect *Figures `json:"redirect,omitempty"`
}

// Report is a whole run.
type Report struct {
	Kernel     string    `json:"kernel"`
	CPUs       int       `json:"cpus"`
	Conns      int       `json:"conns"`
	DurationNs int64     `json:"duration_ns"` // per size, test and mode
	Cgroup     string    `json:"cgroup,omitempty"`
	Results    []Result  `json:"results"`
	Time       time.Time `json:"time"`
}

// MismatchError says a received byte differs from what was sent: data was
// lost, duplicated, reordered or corrupted.
type MismatchError struct {
	Test   string // "ping-pong" or "stream"
	Dir    string // "client->server" or "server->client"
	Size   int
	Offset int64 // stream offset of the first differing byte
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("check bytes: %s %s at size %d: byte %d differs from what was sent (lost, duplicated, reordered or corrupted data)", e.Test, e.Dir, e.Size, e.Offset)
}

// corrupt, when set (tests only), may change a message of a test
// ("ping-pong", "stream") and direction after it was taken from the pattern
// and before it is written; off is its stream offset.
var corrupt func(test, dir string, off int64, b []byte)

const (
	toServer = "client->server"
	toClient = "server->client"
)

// Run measures each size, plain and, with opts.Redirect, redirected. It stops
// at the first byte mismatch, and cleans up (disables redirect, leaves and
// removes its cgroup) on return, including when ctx is cancelled.
func Run(ctx context.Context, opts Options) (rep *Report, err error) {
	if len(opts.Sizes) == 0 {
		return nil, errors.New("measure: no message sizes")
	}
	for _, s := range opts.Sizes {
		if s <= 0 || s > patternLen {
			return nil, fmt.Errorf("measure: size %d out of range 1..%d", s, patternLen)
		}
	}
	if opts.Conns <= 0 {
		opts.Conns = 1
	}
	if opts.Duration <= 0 {
		opts.Duration = time.Second
	}
	rep = &Report{Kernel: kernelRelease(), CPUs: runtime.NumCPU(), Conns: opts.Conns, DurationNs: int64(opts.Duration), Time: time.Now()}
	var rd *redirector
	if opts.Redirect {
		if rd, err = newRedirector(opts.Cgroup, opts.PinDir); err != nil {
			return nil, err
		}
		defer func() { err = errors.Join(err, rd.close()) }()
		rep.Cgroup = rd.cgroup
	}
	for _, size := range opts.Sizes {
		res := Result{Size: size}
		if res.Plain, err = measure(ctx, opts, size, nil); err != nil {
			return rep, err
		}
		if rd != nil {
			f, err := rd.measure(ctx, opts, size)
			if err != nil {
				return rep, err
			}
			res.Redirect = &f
		}
		rep.Results = append(rep.Results, res)
	}
	return rep, nil
}

// measure runs the ping-pong and then the stream test at one size; after
// each test it calls done when not nil.
func measure(ctx context.Context, opts Options, size int, done func(f *Figures, test string)) (Figures, error) {
	var f Figures
	lat, rounds, checked, elapsed, err := pingPong(ctx, opts, size)
	if err != nil {
		return f, err
	}
	f.RoundTrips = rounds
	f.RoundTripsPerS = float64(rounds) / elapsed.Seconds()
	if len(lat) > 0 {
		slices.Sort(lat)
		f.P50Us = us(lat[len(lat)/2])
		f.P99Us = us(lat[min(len(lat)-1, len(lat)*99/100)])
	}
	if done != nil {
		done(&f, "ping-pong")
	}
	n, elapsed, err := stream(ctx, opts, size)
	if err != nil {
		return f, err
	}
	f.StreamBytes = n
	f.MBPerS = float64(n) / elapsed.Seconds() / 1e6
	f.CheckedBytes = checked + n
	if done != nil {
		done(&f, "stream")
	}
	return f, nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// pairs opens n connected client/server pairs over 127.0.0.1 in opts.Netns.
// The sockets are closed when ctx ends, which unblocks reads and writes.
func pairs(ctx context.Context, netnsPath string, n int) (clients, servers []*net.TCPConn, err error) {
	err = netns.Do(netnsPath, func() error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("listen on loopback: %w", err)
		}
		defer ln.Close()
		for range n {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				return fmt.Errorf("connect over loopback: %w", err)
			}
			clients = append(clients, c.(*net.TCPConn))
			s, err := ln.Accept()
			if err != nil {
				return fmt.Errorf("accept over loopback: %w", err)
			}
			servers = append(servers, s.(*net.TCPConn))
		}
		return nil
	})
	if err != nil {
		closeAll(clients, servers)
		return nil, nil, err
	}
	context.AfterFunc(ctx, func() { closeAll(clients, servers) })
	return clients, servers, nil
}

func closeAll(conns ...[]*net.TCPConn) {
	for _, cs := range conns {
		for _, c := range cs {
			c.Close()
		}
	}
}

// pingPong sends size bytes from each client, the server checks them and
// answers with size bytes of its own stream, which the client checks; it
// returns every round's latency, the rounds, the bytes checked and the time
// they took. Each client makes at least one round, however late it starts.
func pingPong(ctx context.Context, opts Options, size int) ([]time.Duration, int64, int64, time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	clients, servers, err := pairs(ctx, opts.Netns, opts.Conns)
	if err != nil {
		return nil, 0, 0, 0, err
	}
	defer closeAll(clients, servers)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		lat     []time.Duration
		checked int64
		errs    []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		cancel()
	}
	begin := time.Now()
	deadline := begin.Add(opts.Duration)
	for i := range clients {
		c, s := clients[i], servers[i]
		wg.Add(2)
		go func() { // server: check the request, answer from its own stream
			defer wg.Done()
			in, out := newStream(seedRequest, "ping-pong", toServer), newStream(seedReply, "ping-pong", toClient)
			buf := make([]byte, size)
			var n int64
			defer func() { mu.Lock(); checked += n; mu.Unlock() }()
			for {
				if _, err := io.ReadFull(s, buf); err != nil {
					if err != io.EOF && ctx.Err() == nil {
						fail(fmt.Errorf("ping-pong server read: %w", err))
					}
					return
				}
				if off := in.check(buf); off >= 0 {
					fail(&MismatchError{Test: "ping-pong", Dir: toServer, Size: size, Offset: off})
					return
				}
				n += int64(size)
				if _, err := s.Write(out.send(size)); err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("ping-pong server write: %w", err))
					}
					return
				}
			}
		}()
		go func() { // client: send, wait for the answer, check it, time it
			defer wg.Done()
			out, in := newStream(seedRequest, "ping-pong", toServer), newStream(seedReply, "ping-pong", toClient)
			buf := make([]byte, size)
			var (
				mine []time.Duration
				n    int64
			)
			defer func() {
				mu.Lock()
				lat = append(lat, mine...)
				checked += n
				mu.Unlock()
			}()
			for ctx.Err() == nil {
				start := time.Now()
				if !start.Before(deadline) && len(mine) > 0 {
					break
				}
				if _, err := c.Write(out.send(size)); err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("ping-pong client write: %w", err))
					}
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("ping-pong client read: %w", err))
					}
					return
				}
				mine = append(mine, time.Since(start))
				if off := in.check(buf); off >= 0 {
					fail(&MismatchError{Test: "ping-pong", Dir: toClient, Size: size, Offset: off})
					return
				}
				n += int64(size)
			}
			if err := c.CloseWrite(); err != nil && ctx.Err() == nil {
				fail(fmt.Errorf("ping-pong client shutdown: %w", err))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(begin)
	if err := ctxErr(ctx, errs); err != nil {
		return nil, 0, 0, 0, err
	}
	return lat, int64(len(lat)), checked, elapsed, nil
}

// stream writes size-byte messages from each client for the duration (at
// least one, however late it starts), then shuts down writing; each server
// reads to EOF and checks every byte. It returns the bytes checked and the
// time from start to the last EOF.
func stream(ctx context.Context, opts Options, size int) (int64, time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	clients, servers, err := pairs(ctx, opts.Netns, opts.Conns)
	if err != nil {
		return 0, 0, err
	}
	defer closeAll(clients, servers)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int64
		errs  []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		cancel()
	}
	start := time.Now()
	deadline := start.Add(opts.Duration)
	for i := range clients {
		c, s := clients[i], servers[i]
		wg.Add(2)
		go func() {
			defer wg.Done()
			in := newStream(seedRequest, "stream", toServer)
			buf := make([]byte, max(size, 64<<10))
			var n int64
			defer func() { mu.Lock(); total += n; mu.Unlock() }()
			for {
				k, err := s.Read(buf)
				if k > 0 {
					if off := in.check(buf[:k]); off >= 0 {
						fail(&MismatchError{Test: "stream", Dir: toServer, Size: size, Offset: off})
						return
					}
					n += int64(k)
				}
				if err == io.EOF {
					return
				}
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("stream read: %w", err))
					}
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			out := newStream(seedRequest, "stream", toServer)
			for first := true; ctx.Err() == nil && (first || time.Now().Before(deadline)); first = false {
				if _, err := c.Write(out.send(size)); err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("stream write: %w", err))
					}
					return
				}
			}
			if err := c.CloseWrite(); err != nil && ctx.Err() == nil {
				fail(fmt.Errorf("stream shutdown: %w", err))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctxErr(ctx, errs); err != nil {
		return 0, 0, err
	}
	return total, elapsed, nil
}

// ctxErr prefers a mismatch, then any other failure, then cancellation of
// the caller's context.
func ctxErr(ctx context.Context, errs []error) error {
	for _, err := range errs {
		var m *MismatchError
		if errors.As(err, &m) {
			return err
		}
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return context.Cause(ctx)
}

// patternLen is the period of the byte pattern: larger than any message,
// and odd, so that a chunk lost, duplicated or moved by any amount other
// than a multiple of it lands on different bytes.
const patternLen = 1<<20 + 4099

const (
	seedRequest = 0x9e3779b97f4a7c15
	seedReply   = 0xc2b2ae3d27d4eb4f
)

var (
	patternsMu sync.Mutex
	patterns   = map[uint64][]byte{}
)

// pattern returns two periods of the pseudo-random pattern for seed, so any
// chunk up to patternLen is one contiguous slice.
func pattern(seed uint64) []byte {
	patternsMu.Lock()
	defer patternsMu.Unlock()
	if p, ok := patterns[seed]; ok {
		return p
	}
	p := make([]byte, 2*patternLen)
	x := seed
	for i := range patternLen {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		p[i] = byte(x >> 32)
	}
	copy(p[patternLen:], p[:patternLen])
	patterns[seed] = p
	return p
}

// byteStream is one direction's bytes: the pattern from offset 0 on.
type byteStream struct {
	pat       []byte
	off       int64
	buf       []byte
	test, dir string
}

func newStream(seed uint64, test, dir string) *byteStream {
	return &byteStream{pat: pattern(seed), test: test, dir: dir}
}

func (s *byteStream) next(n int) []byte {
	i := s.off % patternLen
	s.off += int64(n)
	return s.pat[i : i+int64(n)]
}

// send returns the next n bytes to write.
func (s *byteStream) send(n int) []byte {
	off := s.off
	b := s.next(n)
	if corrupt == nil {
		return b
	}
	s.buf = append(s.buf[:0], b...)
	corrupt(s.test, s.dir, off, s.buf)
	return s.buf
}

// check compares b with the next len(b) bytes and returns the stream offset
// of the first difference, or -1.
func (s *byteStream) check(b []byte) int64 {
	start := s.off
	want := s.next(len(b))
	if bytes.Equal(b, want) {
		return -1
	}
	for i := range b {
		if b[i] != want[i] {
			return start + int64(i)
		}
	}
	return -1
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// ParseSizes parses a comma-separated list of sizes in bytes with an
// optional k or m suffix (KiB, MiB): "64,1k,64k,1m".
func ParseSizes(s string) ([]int, error) {
	var sizes []int
	for _, f := range strings.Split(s, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		mult := 1
		if v, ok := strings.CutSuffix(f, "k"); ok {
			f, mult = v, 1<<10
		} else if v, ok := strings.CutSuffix(f, "m"); ok {
			f, mult = v, 1<<20
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 || n*mult > patternLen {
			return nil, fmt.Errorf("parse sizes: %q is not a size from 1 to 1m", f)
		}
		sizes = append(sizes, n*mult)
	}
	return sizes, nil
}
