package timewait

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/netns"
	"github.com/nettrace/nettrace/internal/settings"
	"github.com/nettrace/nettrace/internal/socktable"
	"github.com/nettrace/nettrace/internal/testutil"
)

const port = 8080

// serve listens on 127.0.0.1:8080 inside ns and hands every accepted
// connection to handle, until the test ends.
func serve(t *testing.T, ns *testutil.Netns, handle func(net.Conn)) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp4", "127.0.0.1:8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); handle(c) }()
		}
	}()
}

// closeAtOnce is a server that closes first.
func closeAtOnce(c net.Conn) { c.Close() }

// closeAfterPeer is a server that reads until the client closes, then closes.
func closeAfterPeer(c net.Conn) { io.Copy(io.Discard, c); c.Close() }

// clientAfterServer makes n connections from inside ns that each wait for
// the server's FIN (EOF) before closing, and returns how many saw EOF. Each
// comes from its own port: a kernel that picked a port again would send its
// SYN into the server's TIME_WAIT of the same 4-tuple, ending it early.
func clientAfterServer(t *testing.T, ns *testutil.Netns, n int) int {
	t.Helper()
	eofs := 0
	if err := ns.Do(func() error {
		for i := range n {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 20000 + i}}
			c, err := d.Dial("tcp4", "127.0.0.1:8080")
			if err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == io.EOF {
				eofs++
			}
			c.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return eofs
}

// countProc counts the sockets of ns in state st as /proc/net/tcp shows them.
func countProc(t *testing.T, ns *testutil.Netns, st socktable.State, localPort uint16) int {
	t.Helper()
	socks, err := socktable.ReadProc(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range socks {
		if s.State == st && (localPort == 0 || s.Local.Port() == localPort) {
			n++
		}
	}
	return n
}

// waitProc waits until /proc/net/tcp shows want sockets in state st.
func waitProc(t *testing.T, ns *testutil.Netns, st socktable.State, localPort uint16, want int) {
	t.Helper()
	if why := waitProcErr(t, ns, st, localPort, want); why != "" {
		t.Fatal(why)
	}
}

// waitProcErr is waitProc, returning what /proc/net/tcp shows instead of
// failing.
func waitProcErr(t *testing.T, ns *testutil.Netns, st socktable.State, localPort uint16, want int) string {
	t.Helper()
	var got int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got = countProc(t, ns, st, localPort); got == want {
			return ""
		}
	}
	socks, _ := socktable.ReadProc(ns.Path())
	states := map[string]int{}
	for _, s := range socks {
		if localPort == 0 || s.Local.Port() == localPort || s.Remote.Port() == localPort {
			states[s.State.String()]++
		}
	}
	ns2 := netstat(t, ns)
	return fmt.Sprintf("/proc/net/tcp shows %d sockets in %s, want %d (states %v; TWOverflow %d TWKilled %d TWRecycled %d)",
		got, st, want, states, ns2["TCPTimeWaitOverflow"], ns2["TWKilled"], ns2["TWRecycled"])
}

func netstat(t *testing.T, ns *testutil.Netns) map[string]uint64 {
	t.Helper()
	var m map[string]map[string]uint64
	if err := ns.Do(func() (err error) {
		m, err = settings.ReadNetstat(netns.ProcNet("netstat"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return m["TcpExt"]
}

func rowString(r *Row) string {
	if r == nil {
		return "<none>"
	}
	return fmt.Sprintf("%s -> %s %s: time_wait %d created %d expired %d killed %d age p50/max %.0f/%.0fs ports %.1f%% closed first local/remote %d/%d (%s) process %q close_wait %d fin_wait2 %d",
		r.Local, r.Remote, r.Side, r.TimeWait, r.Created, r.Expired, r.Killed, r.AgeP50, r.AgeMax, r.RangePct,
		r.ClosedLocal, r.ClosedRemote, r.ClosedFirst, r.Process, r.CloseWait, r.FinWait2)
}

func findRow(s *Snapshot, local, remote string) *Row {
	for i := range s.Rows {
		if s.Rows[i].Local == local && s.Rows[i].Remote == remote {
			return &s.Rows[i]
		}
	}
	return nil
}

func newTracer(t *testing.T, ns *testutil.Netns, tier attach.Tier) *Tracer {
	t.Helper()
	tr, err := New(Options{Netns: []string{ns.Path()}, Tier: tier})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() { tr.Close() })
	t.Logf("attached: %s", tr.Choice())
	return tr
}

// serverFirst checks n connections closed server-first: exactly n TIME_WAIT
// created on the server's row, closed locally there and remotely on the
// client's row.
func serverFirst(t *testing.T, tr *Tracer, ns *testutil.Netns, n int) *Snapshot {
	t.Helper()
	s, why := tryServerFirst(t, tr, ns, n)
	if s == nil {
		t.Fatal(why)
	}
	return s
}

// tryServerFirst is serverFirst, returning nil and why when the kernel
// itself did not end up with n TIME_WAIT sockets (the scenario did not
// happen, so there is nothing to check nettrace against).
func tryServerFirst(t *testing.T, tr *Tracer, ns *testutil.Netns, n int) (*Snapshot, string) {
	t.Helper()
	if got := clientAfterServer(t, ns, n); got != n {
		t.Fatalf("client saw %d EOFs, want %d", got, n)
	}
	if why := waitProcErr(t, ns, socktable.TimeWait, port, n); why != "" {
		return nil, why
	}
	s, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	srv := findRow(s, "127.0.0.1:8080", "127.0.0.1:*")
	cli := findRow(s, "127.0.0.1:*", "127.0.0.1:8080")
	if srv == nil || cli == nil {
		t.Fatalf("no server or client row: %+v", s.Rows)
	}
	t.Logf("server row %s", rowString(srv))
	t.Logf("client row %s", rowString(cli))
	if srv.Side != "server" || cli.Side != "client" {
		t.Errorf("sides: server row %q, client row %q", srv.Side, cli.Side)
	}
	if srv.TimeWait != n || srv.Created != uint64(n) || srv.ClosedLocal != uint64(n) || srv.ClosedRemote != 0 {
		t.Errorf("server row: time_wait %d, created %d, closed local/remote first %d/%d; want %d, %d, %d/0",
			srv.TimeWait, srv.Created, srv.ClosedLocal, srv.ClosedRemote, n, n, n)
	}
	if srv.ClosedFirst != "local" {
		t.Errorf("server row closed first %q, want local", srv.ClosedFirst)
	}
	if cli.TimeWait != 0 || cli.Created != 0 || cli.ClosedRemote != uint64(n) || cli.ClosedLocal != 0 {
		t.Errorf("client row: time_wait %d, created %d, closed local/remote first %d/%d; want 0, 0, 0/%d",
			cli.TimeWait, cli.Created, cli.ClosedLocal, cli.ClosedRemote, n)
	}
	if s.Header.Created != uint64(n) || s.Header.TimeWait != n {
		t.Errorf("header: created %d, TIME_WAIT %d; want %d, %d", s.Header.Created, s.Header.TimeWait, n, n)
	}
	if srv.AgeMax > 15 || srv.AgeMax < srv.AgeP50 {
		t.Errorf("ages of fresh TIME_WAIT: p50 %.1fs, max %.1fs", srv.AgeP50, srv.AgeMax)
	}
	return s, ""
}

// 500 connections closed by the server first: exactly 500 TIME_WAIT on the
// server side, and the warning for a server collecting TIME_WAIT.
func TestServerFirst500(t *testing.T) {
	testutil.RequireBPF(t)
	var (
		ns *testutil.Netns
		tr *Tracer
		s  *Snapshot
	)
	// Seen twice under the whole test suite's load: the kernel ends with
	// 499 TIME_WAIT for 500 server-first closes. Then the scenario did not
	// happen; run it once more in a fresh namespace. (The ports and record
	// tests saw the like: TIME_WAIT sockets killed by a reset; the
	// namespace now keeps them, see KeepTimeWait.)
	for attempt := 1; s == nil; attempt++ {
		ns = testutil.NewNetns(t)
		ns.KeepTimeWait(t)
		serve(t, ns, closeAtOnce)
		tr = newTracer(t, ns, attach.Auto)
		var why string
		if s, why = tryServerFirst(t, tr, ns, 500); s == nil {
			if attempt == 2 {
				t.Fatal(why)
			}
			t.Logf("attempt %d: %s", attempt, why)
		}
	}
	if got := countProc(t, ns, socktable.TimeWait, 0); got != 500 {
		t.Errorf("/proc/net/tcp has %d TIME_WAIT, want 500", got)
	}
	var warned bool
	for _, w := range s.Warnings {
		t.Logf("warning %s: %s; fix: %s", w.Code, w.Message, w.Fix)
		warned = warned || (w.Code == "server_closes_first" && strings.Contains(w.Message, "127.0.0.1:8080") &&
			strings.Contains(w.Message, "500 TIME_WAIT"))
	}
	if !warned {
		t.Errorf("no server_closes_first warning for 500 TIME_WAIT")
	}
	// Nothing more happens: the next interval creates nothing.
	s, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if s.Header.Created != 0 || s.Header.TimeWait != 500 {
		t.Errorf("quiet interval: created %d, TIME_WAIT %d; want 0, 500", s.Header.Created, s.Header.TimeWait)
	}
}

// TIME_WAIT lasts 60 s (fixed in the kernel): watch 50 sockets expire.
func TestExpiry(t *testing.T) {
	testutil.RequireBPF(t)
	if testing.Short() {
		t.Skip("waits for the 60 s TIME_WAIT lifetime")
	}
	t.Parallel()
	ns := testutil.NewNetns(t)
	ns.KeepTimeWait(t)
	serve(t, ns, closeAtOnce)
	tr := newTracer(t, ns, attach.Auto)
	before := netstat(t, ns)
	serverFirst(t, tr, ns, 50)
	var expired, killed uint64
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); {
		time.Sleep(5 * time.Second)
		s, err := tr.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		expired += s.Header.Expired
		killed += s.Header.Killed
		if s.Header.TimeWait == 0 {
			break
		}
	}
	after := netstat(t, ns)
	tw := after["TW"] - before["TW"]
	t.Logf("expired %d, killed %d; TcpExt.TW +%d", expired, killed, tw)
	if expired != 50 || killed != 0 {
		t.Errorf("expired %d, killed early %d; want 50, 0", expired, killed)
	}
	if tw != 50 {
		t.Errorf("TcpExt.TW grew by %d, want 50 (ground truth for the timer)", tw)
	}
}

// tcp_tw_reuse=1, ten ephemeral ports, clients close first: every connect
// beyond the tenth takes over a TIME_WAIT slot.
func TestReuse(t *testing.T) {
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	ns.KeepTimeWait(t)
	ns.SetSysctl(t, "net.ipv4.tcp_tw_reuse", "1")
	ns.SetSysctl(t, "net.ipv4.ip_local_port_range", "40000 40009")
	serve(t, ns, closeAfterPeer)
	tr := newTracer(t, ns, attach.Auto)
	before := netstat(t, ns)

	cli := func(s *Snapshot) *Row { return findRow(s, "127.0.0.1:*", "127.0.0.1:8080") }
	const want = 25
	used := map[int]bool{}
	implied := 0
	if err := ns.Do(func() error {
		for ok := 0; ok < want; {
			c, err := net.Dial("tcp4", "127.0.0.1:8080")
			if errors.Is(err, unix.EADDRNOTAVAIL) {
				time.Sleep(100 * time.Millisecond) // reuse waits until the TIME_WAIT is 1 s old
				continue
			}
			if err != nil {
				return err
			}
			p := c.LocalAddr().(*net.TCPAddr).Port
			if used[p] {
				implied++ // this port's earlier connection is still in TIME_WAIT (60 s)
			}
			used[p] = true
			c.Close()
			ok++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the last closes complete
	s, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	recycled := netstat(t, ns)["TWRecycled"] - before["TWRecycled"]
	t.Logf("client: %d connects over %d ports, %d took a used port; reused %d (%.1f/s), TcpExt.TWRecycled +%d, killed %d",
		want, len(used), implied, s.Header.Reused, float64(s.Header.Reused)/s.Header.Interval.Seconds(), recycled, s.Header.Killed)
	if s.Header.Reused != recycled || s.Header.Reused == 0 {
		t.Errorf("reused %d, want TcpExt.TWRecycled's +%d, above zero", s.Header.Reused, recycled)
	}
	// A port can also come free when its TIME_WAIT ends some other way (an
	// RST; seen once on 6.1 under qemu): the kernel tiers see every early
	// end, so there the client's figure must match reuses plus those.
	switch {
	case tr.exact && cli(s) != nil && cli(s).Killed != uint64(implied):
		t.Errorf("TIME_WAIT ended early %d times (%d reused), but %d connects took a used port", cli(s).Killed, s.Header.Reused, implied)
	case !tr.exact && s.Header.Reused != uint64(implied):
		t.Errorf("reused %d, want %d as the client's connects imply", s.Header.Reused, implied)
	}
	if c := cli(s); c == nil || c.TimeWait != len(used) || c.ClosedLocal != want || c.RangePct != 100 {
		t.Fatalf("client row %s: want %d TIME_WAIT (100%% of the range), %d closed locally first", rowString(c), len(used), want)
	}
	for _, w := range s.Warnings {
		if w.Code == "time_wait_holds_port_range" {
			t.Errorf("range warning with tcp_tw_reuse=1: %s", w.Message)
		}
	}
	// The same with tcp_tw_reuse=0 warns.
	ns.SetSysctl(t, "net.ipv4.tcp_tw_reuse", "0")
	s, err = tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var warned bool
	for _, w := range s.Warnings {
		warned = warned || (w.Code == "time_wait_holds_port_range" && strings.Contains(w.Message, "127.0.0.1:8080") &&
			strings.Contains(w.Fix, "tcp_tw_reuse=1"))
	}
	if !warned {
		t.Errorf("no time_wait_holds_port_range warning with tcp_tw_reuse=0: %+v", s.Warnings)
	}
}

// A server that never closes after its clients do: CLOSE_WAIT equals N.
func TestCloseWait(t *testing.T) {
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	ns.KeepTimeWait(t)
	var (
		mu   sync.Mutex
		held []net.Conn
	)
	serve(t, ns, func(c net.Conn) { mu.Lock(); held = append(held, c); mu.Unlock() })
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	tr := newTracer(t, ns, attach.Auto)
	const n = 20
	var ok int
	if err := ns.Do(func() (err error) {
		ok, _ = testutil.ConnectN(t, "127.0.0.1:8080", n)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if ok != n {
		t.Fatalf("client connected %d times, want %d", ok, n)
	}
	waitProc(t, ns, socktable.CloseWait, port, n)
	s, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	srv := findRow(s, "127.0.0.1:8080", "127.0.0.1:*")
	if srv == nil {
		t.Fatalf("no server row: %+v", s.Rows)
	}
	t.Logf("server row %s", rowString(srv))
	if srv.CloseWait != n || s.Header.CloseWait != n || srv.ClosedRemote != n || srv.ClosedFirst != "remote" {
		t.Errorf("CLOSE_WAIT row %d, header %d, closed remote first %d (%q); want %d", srv.CloseWait, s.Header.CloseWait,
			srv.ClosedRemote, srv.ClosedFirst, n)
	}
	if !strings.Contains(srv.Process, "(") || !strings.HasSuffix(srv.Process, "("+strconv.Itoa(os.Getpid())+")") {
		t.Errorf("process %q, want this test (pid %d)", srv.Process, os.Getpid())
	}
	var warned bool
	for _, w := range s.Warnings {
		t.Logf("warning %s: %s", w.Code, w.Message)
		warned = warned || (w.Code == "close_wait_growing" && strings.Contains(w.Message, "20"))
	}
	if !warned {
		t.Errorf("no close_wait_growing warning")
	}
}

func TestAutoPicksBestTier(t *testing.T) {
	testutil.RequireBPF(t)
	want := attach.Tracepoint
	if kernel.ProbeFentry(kernel.ProbeFunc) == nil {
		want = attach.Fentry
	} else if kernel.ProbeKprobe(kernel.ProbeFunc) == nil {
		want = attach.Kprobe
	}
	if env := os.Getenv("NETTRACE_EXPECT_TIER"); env != "" && attach.Tier(env) != want {
		t.Fatalf("kernel probes say the best tier is %s, the test environment expects %s", want, env)
	}
	tr, err := New(Options{})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer tr.Close()
	c := tr.Choice()
	t.Logf("chose %s; refused: %+v", c, c.Refused)
	if c.Tier != want {
		t.Fatalf("auto chose %s, want %s", c.Tier, want)
	}
	if tr.exact != (want != attach.Tracepoint) {
		t.Errorf("exact = %v on tier %s", tr.exact, want)
	}
}

// Every tier the kernel has counts the same exact figures; the others fail
// with a clear error.
func TestEveryTier(t *testing.T) {
	testutil.RequireBPF(t)
	avail := map[attach.Tier]bool{
		attach.Fentry:     kernel.ProbeFentry(kernel.ProbeFunc) == nil,
		attach.Kprobe:     kernel.ProbeKprobe(kernel.ProbeFunc) == nil,
		attach.Tracepoint: true,
	}
	for _, tier := range attach.Tiers {
		t.Run(string(tier), func(t *testing.T) {
			ns := testutil.NewNetns(t)
			ns.KeepTimeWait(t)
			if !avail[tier] {
				tr, err := New(Options{Netns: []string{ns.Path()}, Tier: tier})
				if err == nil {
					tr.Close()
					t.Fatalf("forcing unavailable tier %s succeeded", tier)
				}
				var nae *attach.NoAlternativeError
				if !errors.As(err, &nae) || !strings.Contains(err.Error(), "tier "+string(tier)+" is not available") {
					t.Fatalf("forcing %s: unclear error: %v", tier, err)
				}
				return
			}
			serve(t, ns, closeAtOnce)
			tr := newTracer(t, ns, tier)
			if got := tr.Choice().Tier; got != tier {
				t.Fatalf("forced %s, got %s", tier, got)
			}
			serverFirst(t, tr, ns, 100)
		})
	}
	testutil.RequireNoOrphans(t, programs()...)
}

// Traffic in another namespace does not leak into the watched one.
func TestNetnsFilter(t *testing.T) {
	testutil.RequireBPF(t)
	watched, other := testutil.NewNetns(t), testutil.NewNetns(t)
	watched.KeepTimeWait(t)
	other.KeepTimeWait(t)
	serve(t, other, closeAtOnce)
	tr := newTracer(t, watched, attach.Auto)
	clientAfterServer(t, other, 30)
	waitProc(t, other, socktable.TimeWait, port, 30)
	s, err := tr.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Rows) != 0 || s.Header.Created != 0 || s.Header.TimeWait != 0 {
		t.Errorf("watched namespace shows another's traffic: %+v %+v", s.Header, s.Rows)
	}
}

func programs() []string {
	var names []string
	for _, h := range Hooks {
		for _, a := range h.Alternatives {
			names = append(names, a.Programs...)
		}
	}
	return names
}

// readRows takes every row out of the rows map with the counts stored,
// whatever the batch size (a bucket that holds more than a batch grows it),
// and leaves the map empty.
func TestReadRowsDrains(t *testing.T) {
	testutil.RequireBPF(t)
	ns := testutil.NewNetns(t)
	tr := newTracer(t, ns, attach.Auto)
	m := tr.objs.Maps["rows"]
	const n = 3000 // more than a batch, and some buckets hold two or more
	want := map[rowID]rowDelta{}
	for i := range n {
		k := rawKey{Netns: 7, Family: unix.AF_INET, Side: uint8(Client), Rport: uint16(i + 1)}
		k.Laddr[0], k.Raddr[0] = 127, 10
		v := timewaitRowVal{ClosedLocal: uint64(i), ClosedRemote: 1, Created: uint64(2 * i), Expired: 3, Killed: uint64(i % 5)}
		if err := m.Put(k, v); err != nil {
			t.Fatal(err)
		}
		want[k.id()] = rowDelta{closedLocal: v.ClosedLocal, closedRemote: 1, created: v.Created, expired: 3, killed: v.Killed}
	}
	tr.keys, tr.vals = make([]rawKey, 1), make([]timewaitRowVal, 1) // a batch of one: ENOSPC on the first bucket of two
	got, err := tr.readRows()
	if err != nil {
		t.Fatalf("%+v", err)
	}
	if len(tr.keys) < 2 {
		t.Errorf("batch buffers still %d long after %d rows in %d buckets", len(tr.keys), n, m.MaxEntries())
	}
	if len(got) != n {
		t.Errorf("took %d rows, want %d", len(got), n)
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("row %+v: took %+v, want %+v", id, got[id], w)
			break
		}
	}
	var (
		k rawKey
		v timewaitRowVal
	)
	if it := m.Iterate(); it.Next(&k, &v) {
		t.Errorf("rows left in the map after readRows, one is %+v", k)
	}
	if again, err := tr.readRows(); err != nil || len(again) != 0 {
		t.Errorf("second read: %d rows, %v; want none", len(again), err)
	}
}
