// Package listen shows, per listening TCP socket, how full its accept and
// SYN queues run, what limits its backlog, and which connections it drops:
// accept queue overflows, SYN queue drops, SYN cookies, SYN-ACK
// retransmits, and the time from handshake done to accept().
package listen

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/hist"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/netns"
	"github.com/nettrace/nettrace/internal/settings"
	"github.com/nettrace/nettrace/internal/socktable"
)

// Hooks declares what the tracer observes, best alternative first.
var Hooks = []attach.Hook{
	{Name: "syn", Alternatives: []attach.Alternative{
		{Tier: attach.Fentry, Programs: []string{"syn_enter_fentry", "syn_admit_fentry", "syn_exit_fentry"}},
		{Tier: attach.Kprobe, Programs: []string{"syn_enter_kprobe", "syn_admit_kprobe", "syn_exit_kprobe"},
			GivesUp: "about twice the cost per SYN; " + kprobeMisses},
		{Tier: attach.Tracepoint, Programs: []string{"syn_consume_tp", "syn_admit_tp"},
			GivesUp: "listeners found by port from the socket table; SYN drops classified by the queues as they are just after the decision; runs on every consumed skb and timer start"},
	}},
	// A SYN answered with a cookie, seen where the kernel makes it: with
	// it, a SYN refused without a cookie (cookies on) is an overflow, not
	// a guess from the queues read around the kernel's lock-free check.
	{Name: "cookie", Alternatives: []attach.Alternative{
		{Tier: attach.Fentry, Programs: []string{"cookie4_fentry", "cookie6_fentry"}},
		{Tier: attach.Kprobe, Programs: []string{"cookie4_kprobe", "cookie6_kprobe"}, GivesUp: kprobeMisses},
		{Tier: attach.Tracepoint,
			GivesUp: "cookies told from overflows by the queues around the kernel's check (the tracepoint tier's syn hook does so anyway)"},
	}},
	{Name: "ack", Alternatives: []attach.Alternative{
		{Tier: attach.Fentry, Programs: []string{"ack4_fentry", "ack4_fexit", "ack6_fentry", "ack6_fexit"}},
		{Tier: attach.Kprobe, Programs: []string{"ack4_kprobe", "ack4_kretprobe", "ack6_kprobe", "ack6_kretprobe"},
			GivesUp: "about twice the cost per final ACK; " + kprobeMisses},
		{Tier: attach.Tracepoint, Programs: []string{"ack_kfree_tp"},
			GivesUp: "skb:kfree_skb with the TCP_LISTEN_OVERFLOW drop reason (6.15+) and the receiving socket (6.11+); other final-ACK drops seen only from cookie checks. Before 6.15 the hook is given up: final-ACK overflows are counted as overflows_unattributed"},
	}},
	{Name: "queue", Alternatives: []attach.Alternative{
		{Tier: attach.Tracepoint, Programs: []string{"state_tp"}},
		{Tier: attach.Tracepoint, Programs: []string{"state_raw_tp"}, GivesUp: "nothing measured; reads the sockets with probe_read"},
	}},
	{Name: "synack", Alternatives: []attach.Alternative{
		{Tier: attach.Tracepoint, Programs: []string{"synack_tp"}},
		{Tier: attach.Tracepoint, Programs: []string{"synack_raw_tp"}, GivesUp: "nothing measured; reads the listener with probe_read"},
	}},
	{Name: "accept", Alternatives: []attach.Alternative{
		{Tier: attach.Fentry, Programs: []string{"accept_fexit"}},
		{Tier: attach.Kprobe, Programs: []string{"accept_graft_kprobe"}},
		{Tier: attach.Kprobe, Programs: []string{"accept_kprobe", "accept_kretprobe"},
			GivesUp: "kprobes on inet_csk_accept (no security_sock_graft: a kernel without LSM hooks): a softirq inside their handlers makes the kernel skip the SYN and final-ACK probes it runs"},
		{Tier: attach.Tracepoint, Programs: []string{"accept4_exit_tp", "accept_exit_tp"},
			GivesUp: "accept latency from the return of accept4()/accept() (syscalls tracepoints, the new fd's socket through the file table): io_uring accepts not seen"},
	}},
}

// kprobeMisses is what every kprobe alternative loses: the kernel skips a
// probe hit while another probe's handler runs on that CPU, as when a
// softirq processes SYNs inside the handler of accept()'s probes.
const kprobeMisses = "a SYN or final ACK processed in a softirq that interrupts another probe's handler on that CPU is skipped by the kernel: counted as lost kprobe_missed on 6.7+, not seen before"

// noAccept is the tracepoint tier's first alternative for the accept hook
// unless Options.Syscalls: accept() is not hooked and accept latency is not
// measured. Enabling a syscall tracepoint puts every system call of every
// task on the slow path (measured: about 1.5 µs more CPU per loopback
// connection, more than the programs cost).
var noAccept = attach.Alternative{
	GivesUp: "accept latency not measured: --syscalls measures it with the syscall tracepoints, at about 1.5 µs more CPU per connection"}

// hooks returns Hooks for opts: without accept() in the tracepoint tier
// unless opts.Syscalls.
func hooks(opts Options) []attach.Hook {
	if opts.Syscalls {
		return Hooks
	}
	return attach.GiveUpBefore(Hooks, "accept", attach.Tracepoint, noAccept)
}

// forKernel returns hs as the running kernel lets them work: the ack hook
// given up in the tracepoint tier where skb:kfree_skb cannot name the
// listener.
func forKernel(hs []attach.Hook) []attach.Hook {
	if alt := ackBlind(); alt != nil {
		return attach.GiveUpBefore(hs, "ack", attach.Tracepoint, *alt)
	}
	return hs
}

// ackBlind returns, for a kernel whose skb:kfree_skb cannot name the
// listener of a final ACK dropped for a full accept queue, the tracepoint
// tier's "none" alternative for the ack hook (what it loses, and the
// missing feature); nil where the kernel has both.
func ackBlind() *attach.Alternative {
	for _, f := range []*kernel.Feature{kernel.DropReasonListenOverflow, kernel.KfreeSkbRxSk} {
		if err := f.Err(); err != nil {
			return &attach.Alternative{GivesUp: "final-ACK overflows not attributed to a socket (counted as overflows_unattributed; the namespace's ListenOverflows has them): " + err.Error()}
		}
	}
	return nil
}

func init() {
	attach.Register(attach.TracerInfo{
		Name: "listen", Summary: "accept-queue depth and listen drops per listening socket",
		Spec: loadListen, Hooks: hooks(Options{}), ForKernel: forKernel, Caps: []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon, kernel.CapSysAdmin},
	})
}

// Options select what to watch.
type Options struct {
	NetnsPath string      // network namespace to watch ("" = ours)
	Port      int         // only listeners on this local port (0: all)
	PID       int         // only listeners this process holds (0: all)
	Tier      attach.Tier // force an attach tier
	Events    bool        // record each drop for Events
	// Syscalls: in the tracepoint tier, time accept() with the syscall
	// tracepoints (sys_exit_accept4, sys_exit_accept), at the cost of the
	// system-call slow path for every task. Without it that tier does
	// not measure accept latency.
	Syscalls bool
}

// Tracer watches the listening sockets of one network namespace.
type Tracer struct {
	opts  Options
	objs  *attach.Objects
	tab   *socktable.Table
	facts kernelFacts
	nsID  uint64

	gen      uint32
	prev     map[uint64]listenCounters
	prevNet  map[string]uint64
	prevTime time.Time
	events   *eventReader
}

// New loads and attaches the hooks and takes the first reading.
func New(opts Options) (_ *Tracer, err error) {
	nsID, err := netns.ID(opts.NetnsPath)
	if err != nil {
		return nil, err
	}
	facts, err := readKernelFacts()
	if err != nil {
		return nil, err
	}
	spec, err := loadListen()
	if err != nil {
		return nil, fmt.Errorf("load listen spec: %w", err)
	}
	consts := facts.constants()
	consts["targ_netns"] = uint32(nsID)
	consts["emit_events"] = opts.Events
	t := &Tracer{opts: opts, facts: facts, nsID: nsID, prev: map[uint64]listenCounters{}}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if t.tab, err = socktable.New(); err != nil {
		return nil, err
	}
	aopts := attach.Options{Tier: opts.Tier, Constants: consts}
	hs := forKernel(hooks(opts))
	// An fexit program finds the return value after the parameters; a
	// count fexit_ret does not know leaves that hook to kprobes.
	if !slices.Contains(fexitArgs, facts.SynRecv4Args) || !slices.Contains(fexitArgs, facts.SynRecv6Args) {
		spec, hs = withoutAlternative(spec, hs, "ack", attach.Fentry)
	}
	if !slices.Contains(fexitArgs, facts.AcceptArgs) {
		spec, hs = withoutAlternative(spec, hs, "accept", attach.Fentry)
	}
	t.objs, err = attach.Load(spec, hs, aopts)
	var na *attach.NoAlternativeError
	if errors.As(err, &na) && na.Hook == "ack" && opts.Tier == attach.Fentry {
		// x86-64 trampolines take at most 6 arguments before 6.6, and
		// tcp_v4/v6_syn_recv_sock have 7 from 6.1 (6.1: "not
		// supported"): the ack hook then has no fentry alternative here
		// and, like a hook without one, keeps its own order.
		spec, hs = withoutAlternative(spec, hs, "ack", attach.Fentry)
		t.objs, err = attach.Load(spec, hs, aopts)
	}
	if err != nil {
		return nil, err
	}
	if c, ok := t.objs.Choice("cookie"); ok && c.Method != "none" {
		if err := t.objs.Maps["cookie_on"].Update(uint32(0), uint32(1), ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("turn the cookie hook on: %w", err)
		}
	}
	if !t.AcceptTimed() {
		if err := t.objs.Maps["accept_off"].Update(uint32(0), uint32(1), ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("turn accept timing off: %w", err)
		}
	}
	if opts.Events {
		if t.events, err = newEventReader(t.objs.Maps["events"]); err != nil {
			return nil, err
		}
	}
	// Listeners must be known before the first SYN arrives.
	if _, err = t.readSockets(); err != nil {
		return nil, err
	}
	if t.prevNet, err = t.readNetstat(); err != nil {
		return nil, err
	}
	t.prevTime = time.Now()
	return t, nil
}

// withoutAlternative returns hooks with hook's alternatives of tier removed,
// and spec without their programs (attach.Load would load a program no hook
// names as a plain program, which the kernel may refuse).
func withoutAlternative(spec *ebpf.CollectionSpec, hooks []attach.Hook, hook string, tier attach.Tier) (*ebpf.CollectionSpec, []attach.Hook) {
	spec = spec.Copy()
	out := slices.Clone(hooks)
	for i, h := range out {
		if h.Name != hook {
			continue
		}
		out[i].Alternatives = slices.DeleteFunc(slices.Clone(h.Alternatives), func(a attach.Alternative) bool {
			if a.Tier != tier {
				return false
			}
			for _, p := range a.Programs {
				delete(spec.Programs, p)
			}
			return true
		})
	}
	return spec, out
}

// AcceptTimed says whether the attached tier measures accept latency (it
// does not in the tracepoint tier without Options.Syscalls).
func (t *Tracer) AcceptTimed() bool {
	c, ok := t.objs.Choice("accept")
	return ok && c.Method != "none"
}

// Choices reports how each hook was attached.
func (t *Tracer) Choices() []attach.Choice { return t.objs.Choices }

// Close detaches everything.
func (t *Tracer) Close() error {
	var errs []error
	if t.events != nil {
		errs = append(errs, t.events.Close())
	}
	if t.objs != nil {
		errs = append(errs, t.objs.Close())
	}
	if t.tab != nil {
		errs = append(errs, t.tab.Close())
	}
	return errors.Join(errs...)
}

// Listener is one listening socket over one interval.
type Listener struct {
	Local      netip.AddrPort
	Inode      uint64
	Owners     []socktable.Process
	Backlog    uint32 // sk_max_ack_backlog
	CappedBy   bool   // Backlog equals net.core.somaxconn: listen() asked for at least that
	AcceptQ    uint32 // accept queue now
	AcceptPeak uint32 // highest accept queue in the interval
	SynQ       uint32
	SynPeak    uint32

	SynOverflows  uint64 // SYNs dropped with the accept queue full
	AckOverflows  uint64 // final ACKs dropped with the accept queue full
	SynDrops      uint64 // SYNs dropped otherwise
	AckDrops      uint64 // final ACKs without a child socket otherwise
	Cookies       uint64 // SYNs answered with a cookie
	Admitted      uint64 // SYNs that got a request socket
	SynackRetrans uint64
	Accepts       uint64
	AcceptUS      hist.Log2 // handshake done to accept(), microseconds
}

// Overflows is what the kernel counts as ListenOverflows for the socket.
func (l *Listener) Overflows() uint64 { return l.SynOverflows + l.AckOverflows }

// Snapshot is one interval.
type Snapshot struct {
	Time      time.Time
	Interval  time.Duration
	Listeners []Listener
	// Netstat holds the namespace's TcpExt deltas: ListenOverflows,
	// ListenDrops, SyncookiesSent, TCPReqQFullDrop, TCPReqQFullDoCookies.
	Netstat map[string]uint64
	// Unattributed is the namespace's ListenOverflows delta minus what the
	// programs attributed to sockets (of every listener, filters aside).
	Unattributed  int64
	Somaxconn     int64
	MaxSynBacklog int64
	Syncookies    int64
	Lost          map[string]uint64 // per reason, since start (kprobe_missed only where the kernel counts it)
}

var netstatFields = []string{"ListenOverflows", "ListenDrops", "SyncookiesSent", "TCPReqQFullDrop", "TCPReqQFullDoCookies"}

func (t *Tracer) readNetstat() (map[string]uint64, error) {
	var st map[string]map[string]uint64
	err := netns.Do(t.opts.NetnsPath, func() (err error) {
		st, err = settings.ReadNetstat(netns.ProcNet("netstat"))
		return err
	})
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, f := range netstatFields {
		out[f] = st["TcpExt"][f]
	}
	return out, nil
}

func (t *Tracer) readSysctls() (map[string]int64, error) {
	out := map[string]int64{}
	err := netns.Do(t.opts.NetnsPath, func() error {
		for _, n := range []string{"net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_syncookies"} {
			s, err := settings.ReadSysctl(n)
			if err != nil {
				return err
			}
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return fmt.Errorf("parse %s=%q: %w", n, s, err)
			}
			out[n] = v
		}
		return nil
	})
	return out, err
}

// readSockets reads the namespace's listeners and tells the programs where
// they are.
func (t *Tracer) readSockets() ([]socktable.Socket, error) {
	snap, err := t.tab.ReadStates(t.opts.NetnsPath, socktable.States(socktable.Listen))
	if err != nil {
		return nil, err
	}
	var ls []socktable.Socket
	m := t.objs.Maps["listeners"]
	for _, s := range snap.Sockets {
		if s.State != socktable.Listen || s.Sock == 0 {
			continue
		}
		ls = append(ls, s)
		if err := m.Update(lkeyOf(uint32(t.nsID), s.Local), s.Sock, ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("update listeners map: %w", err)
		}
	}
	return ls, nil
}

// lkey mirrors struct lkey in bpf/listen.bpf.c.
type lkey struct {
	Netns  uint32
	Port   uint16
	Family uint16
	Addr   [16]byte // IPv4 in the first 4 bytes
}

func lkeyOf(ns uint32, ap netip.AddrPort) lkey {
	k := lkey{Netns: ns, Port: ap.Port()}
	if a := ap.Addr(); a.Is4() {
		k.Family = 2
		v4 := a.As4()
		copy(k.Addr[:4], v4[:])
	} else {
		k.Family = 10
		k.Addr = a.As16()
	}
	return k
}

// Snapshot reads one interval: counters since the previous call, peaks,
// queues now, and the namespace's counters.
func (t *Tracer) Snapshot() (*Snapshot, error) {
	now := time.Now()
	peaks, err := t.readPeaks()
	if err != nil {
		return nil, err
	}
	counts, err := t.readCounters()
	if err != nil {
		return nil, err
	}
	socks, err := t.readSockets()
	if err != nil {
		return nil, err
	}
	nst, err := t.readNetstat()
	if err != nil {
		return nil, err
	}
	sys, err := t.readSysctls()
	if err != nil {
		return nil, err
	}
	owners, err := socktable.Owners()
	if err != nil {
		return nil, err
	}
	s := &Snapshot{
		Time: now, Interval: now.Sub(t.prevTime), Netstat: map[string]uint64{},
		Somaxconn: sys["net.core.somaxconn"], MaxSynBacklog: sys["net.ipv4.tcp_max_syn_backlog"],
		Syncookies: sys["net.ipv4.tcp_syncookies"],
	}
	for k, v := range nst {
		s.Netstat[k] = v - t.prevNet[k]
	}
	t.prevNet, t.prevTime = nst, now

	var attributed uint64
	live := map[uint64]bool{}
	for _, so := range socks {
		live[so.Sock] = true
		c := counts[so.Sock]
		d := c.sub(t.prev[so.Sock])
		t.prev[so.Sock] = c
		l := Listener{
			Local: so.Local, Inode: so.Inode, Owners: owners[so.Inode],
			Backlog: so.MaxBacklog, CappedBy: int64(so.MaxBacklog) == s.Somaxconn,
			AcceptQ: so.RxQueue, SynQ: so.SynQueue,
			AcceptPeak: max(so.RxQueue, peaks[so.Sock].Acceptq), SynPeak: max(so.SynQueue, peaks[so.Sock].Synq),
			SynOverflows: d.SynOverflows, AckOverflows: d.AckOverflows, SynDrops: d.SynDrops, AckDrops: d.AckDrops,
			Cookies: d.Cookies, Admitted: d.Admitted, SynackRetrans: d.SynackRetrans, Accepts: d.Accepts,
			AcceptUS: hist.Log2{Slots: d.AcceptUs.Slots},
		}
		attributed += l.Overflows()
		if !t.keep(&l) {
			continue
		}
		s.Listeners = append(s.Listeners, l)
	}
	s.Unattributed = int64(s.Netstat["ListenOverflows"]) - int64(attributed)
	// Forget listeners that closed.
	for sk := range t.prev {
		if !live[sk] {
			delete(t.prev, sk)
			_ = t.objs.Maps["stats"].Delete(sk)
		}
	}
	if s.Lost, err = t.readLost(); err != nil {
		return nil, err
	}
	slices.SortStableFunc(s.Listeners, func(a, b Listener) int { return int(b.Overflows()) - int(a.Overflows()) })
	return s, nil
}

func (t *Tracer) keep(l *Listener) bool {
	if t.opts.Port != 0 && int(l.Local.Port()) != t.opts.Port {
		return false
	}
	if t.opts.PID != 0 {
		return slices.ContainsFunc(l.Owners, func(p socktable.Process) bool { return p.PID == t.opts.PID })
	}
	return true
}

func (c listenCounters) sub(p listenCounters) listenCounters {
	d := listenCounters{}
	d.SynOverflows = c.SynOverflows - p.SynOverflows
	d.AckOverflows = c.AckOverflows - p.AckOverflows
	d.SynDrops = c.SynDrops - p.SynDrops
	d.AckDrops = c.AckDrops - p.AckDrops
	d.Cookies = c.Cookies - p.Cookies
	d.Admitted = c.Admitted - p.Admitted
	d.SynackRetrans = c.SynackRetrans - p.SynackRetrans
	d.Accepts = c.Accepts - p.Accepts
	for i := range d.AcceptUs.Slots {
		d.AcceptUs.Slots[i] = c.AcceptUs.Slots[i] - p.AcceptUs.Slots[i]
	}
	return d
}

func (t *Tracer) readCounters() (map[uint64]listenCounters, error) {
	out := map[uint64]listenCounters{}
	var (
		k      uint64
		perCPU []listenCounters
	)
	it := t.objs.Maps["stats"].Iterate()
	for it.Next(&k, &perCPU) {
		var c listenCounters
		for _, v := range perCPU {
			c.SynOverflows += v.SynOverflows
			c.AckOverflows += v.AckOverflows
			c.SynDrops += v.SynDrops
			c.AckDrops += v.AckDrops
			c.Cookies += v.Cookies
			c.Admitted += v.Admitted
			c.SynackRetrans += v.SynackRetrans
			c.Accepts += v.Accepts
			for i := range c.AcceptUs.Slots {
				c.AcceptUs.Slots[i] += v.AcceptUs.Slots[i]
			}
		}
		out[k] = c
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read stats map: %w", err)
	}
	return out, nil
}

// readPeaks flips the peak generation and returns (and deletes) the
// previous generation's highest queues per listener.
func (t *Tracer) readPeaks() (map[uint64]listenPeak, error) {
	old := t.gen
	t.gen++
	if err := t.objs.Maps["gen"].Update(uint32(0), t.gen, ebpf.UpdateAny); err != nil {
		return nil, fmt.Errorf("flip peak generation: %w", err)
	}
	out := map[uint64]listenPeak{}
	var (
		k      listenPeakKey
		perCPU []listenPeak
		keys   []listenPeakKey
	)
	m := t.objs.Maps["peak_map"]
	it := m.Iterate()
	for it.Next(&k, &perCPU) {
		if k.Gen != old&1 {
			continue
		}
		p := out[k.Sk]
		for _, v := range perCPU {
			p.Acceptq = max(p.Acceptq, v.Acceptq)
			p.Synq = max(p.Synq, v.Synq)
		}
		out[k.Sk] = p
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read peak map: %w", err)
	}
	for _, k := range keys {
		_ = m.Delete(k)
	}
	return out, nil
}

var lostNames = []string{"counters_map_full", "peaks_map_full", "born_map_full", "syn_unknown_listener", "listeners_map_full", "events_lost"}

// lostKprobe counts the probe hits the kernel skipped in the kprobe tier
// (a SYN or final ACK whose softirq ran inside the handler of accept()'s
// probes on that CPU), where it counts them (6.7+).
const lostKprobe = "kprobe_missed"

// lostReasons are the keys of Snapshot.Lost, in header order.
var lostReasons = append(slices.Clone(lostNames), lostKprobe)

func (t *Tracer) readLost() (map[string]uint64, error) {
	out := map[string]uint64{}
	for i, n := range lostNames {
		var perCPU []uint64
		if err := t.objs.Maps["lost"].Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read lost counters: %w", err)
		}
		for _, v := range perCPU {
			out[n] += v
		}
	}
	missed, ok, err := t.objs.KprobeMissed()
	if err != nil {
		return nil, err
	}
	if ok {
		out[lostKprobe] = 0
		for _, v := range missed {
			out[lostKprobe] += v
		}
	}
	return out, nil
}
