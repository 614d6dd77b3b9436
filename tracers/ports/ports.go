// Package ports traces TCP connect() and ephemeral port allocation per
// destination: connects, errors by errno, the time the kernel spends finding
// a local port, and the local ports each destination holds (from the socket
// table) against ip_local_port_range.
package ports

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/hist"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/netns"
	"github.com/nettrace/nettrace/internal/socktable"
)

// Hooks are the connect hook (where a connect starts and returns, and the
// port search) and the state hook (the outcome of a connect that returned
// EINPROGRESS or slept), each best first.
var Hooks = []attach.Hook{
	{
		Name: "connect",
		Alternatives: []attach.Alternative{
			{Tier: attach.Fentry, Programs: []string{"connect4_fentry", "connect4_fexit", "connect6_fentry", "connect6_fexit", "hash_fentry", "hash_fexit"}},
			{Tier: attach.Kprobe, Programs: []string{"connect4_kprobe", "connect4_kretprobe", "connect6_kprobe", "connect6_kretprobe", "hash_kprobe", "hash_kretprobe"},
				GivesUp: "nothing measured differently; about twice the cost per call"},
			{Tier: attach.Tracepoint, Programs: []string{"sys_enter_connect", "sys_exit_connect"},
				GivesUp: "the port search is not timed alone: latency is SYN_SENT until connect() returns (port search plus sending the SYN)"},
			{Tier: attach.Tracepoint, Programs: []string{"sys_enter_raw", "sys_exit_raw"},
				GivesUp: "as the syscall tracepoints, and runs on every system call (no CONFIG_FTRACE_SYSCALLS)"},
		},
	},
	{
		Name: "state",
		Alternatives: []attach.Alternative{
			{Tier: attach.Fentry, Programs: []string{"state_fentry"}},
			{Tier: attach.Kprobe, Programs: []string{"state_kprobe"}, GivesUp: "about twice the cost per call"},
			{Tier: attach.Tracepoint, Programs: []string{"state_tp_btf"}},
			{Tier: attach.Tracepoint, Programs: []string{"state_raw_tp"}, GivesUp: "reads the socket with probe_read"},
		},
	},
}

func init() {
	attach.Register(attach.TracerInfo{
		Name: "ports", Summary: "connect() and ephemeral port allocation per destination",
		Spec: kernelSpec, Hooks: hooks(Options{}), Caps: []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon, kernel.CapSysAdmin},
	})
}

// Latency names what the latency figures measure in each tier.
const (
	LatencyHashConnect = "inet_hash_connect"  // fentry, kprobe: time inside the port search
	LatencySynSent     = "syn_sent_to_return" // tracepoint with --syscalls: SYN_SENT until connect() returns or the socket leaves SYN_SENT
	LatencySynAnswer   = "syn_sent_to_answer" // tracepoint: SYN_SENT until the socket leaves it (established, refused, or the port search failed)
)

// stateOnly is the tracepoint tier's first alternative for the connect
// hook unless Options.Syscalls: no connect program at all; the state
// program opens each attempt at CLOSE -> SYN_SENT and counts it when the
// socket leaves SYN_SENT. Enabling a syscall tracepoint puts every system
// call of every task on the slow path (measured: 1.4-1.9 µs more CPU per
// loopback connection, more than the programs cost).
var stateOnly = attach.Alternative{
	GivesUp: "connect() calls that fail before a SYN for another reason than the port search (no route, EACCES) are not seen, and latency runs from SYN_SENT to the answer; --syscalls adds them with the syscall tracepoints, at about 1.5 µs more CPU per connection"}

// hooks returns Hooks for opts: with the state-only alternative first in
// the tracepoint tier unless opts.Syscalls.
func hooks(opts Options) []attach.Hook {
	if opts.Syscalls {
		return Hooks
	}
	return attach.GiveUpBefore(Hooks, "connect", attach.Tracepoint, stateOnly)
}

// noAtomics ends the name of a program's variant for kernels without BPF
// atomics (bpf/ports.bpf.c).
const noAtomics = "_noatomics"

// syscThreads is the size of the sysc hash that stands in for task storage:
// threads inside connect() at once, with the tracepoint tier's --syscalls.
const syscThreads = 16384

// The probes kernelSpec asks; tests replace them to run the programs for
// older kernels on this one.
var (
	hasTaskStorage = func() bool { return kernel.TaskStorage.Has() && kernel.CurrentTaskBTF.Has() }
	hasAtomics     = kernel.Atomics.Has
)

// kernelSpec returns the ports programs as this kernel can load them.
// Without task storage (Linux 5.11) the sysc map, which cilium/ebpf would
// fail to create, becomes a hash keyed by thread id, and task_storage = 0
// makes the programs use it (the verifier drops the other branch). Without
// BPF atomics (5.12) each program that uses them is replaced by its
// _noatomics variant under the same name, so the hooks and choices read the
// same on every kernel; on newer kernels the variants are dropped before
// loading and cost nothing.
func kernelSpec() (*ebpf.CollectionSpec, error) {
	spec, err := loadPorts()
	if err != nil {
		return nil, err
	}
	if !hasTaskStorage() {
		m := spec.Maps["sysc"]
		m.Type, m.Flags, m.MaxEntries = ebpf.Hash, 0, syscThreads
		if err := spec.Variables["task_storage"].Set(uint32(0)); err != nil {
			return nil, fmt.Errorf("set task_storage: %w", err)
		}
	}
	atomics := hasAtomics()
	var variants []string
	for name := range spec.Programs {
		if strings.HasSuffix(name, noAtomics) {
			variants = append(variants, name)
		}
	}
	for _, name := range variants {
		p := spec.Programs[name]
		delete(spec.Programs, name)
		if atomics {
			continue
		}
		base := strings.TrimSuffix(name, noAtomics)
		if _, ok := spec.Programs[base]; !ok {
			return nil, fmt.Errorf("program %s has no %s to stand in for", name, base)
		}
		p.Name = base
		spec.Programs[base] = p
	}
	return spec, nil
}

// Options select what New traces.
type Options struct {
	PID    int         // only this process (0: every process)
	Comm   string      // only tasks with this command name (15 characters at most)
	Netns  string      // network namespace file; "" = nettrace's own
	Dst    Filter      // destinations to show (applied to rows and events)
	Tier   attach.Tier // force an attach tier
	Events bool        // send one event per connect (see Events)
	// Syscalls: in the tracepoint tier, hook connect() with the syscall
	// tracepoints, which also see connects that fail before a SYN (no
	// route, EACCES) and time the call's return, at the cost of the
	// system-call slow path for every task.
	Syscalls bool
}

// Tracer traces connects in one network namespace.
type Tracer struct {
	opts    Options
	objs    *attach.Objects
	tab     *socktable.Table
	netnsID uint64
	events  *eventReader
	prev    *Snapshot
	start   time.Time
	lastAge time.Time // last ageInflight pass
	aged    uint64    // attempts aged out of the inflight map
}

// New loads and attaches the tracer and the socket table.
func New(opts Options) (_ *Tracer, err error) {
	if len(opts.Comm) > 15 {
		return nil, fmt.Errorf("filter command %q: the kernel keeps 15 characters", opts.Comm)
	}
	id, err := netns.ID(opts.Netns)
	if err != nil {
		return nil, err
	}
	spec, err := kernelSpec()
	if err != nil {
		return nil, fmt.Errorf("load ports spec: %w", err)
	}
	var comm [16]byte
	copy(comm[:], opts.Comm)
	events := uint32(0)
	if opts.Events {
		events = 1
	}
	t := &Tracer{opts: opts, netnsID: id, start: time.Now()}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	t.objs, err = attach.Load(spec, hooks(opts), attach.Options{
		Tier: opts.Tier,
		Constants: map[string]any{
			"targ_tgid":  uint32(opts.PID),
			"targ_netns": uint32(id),
			"targ_comm":  comm,
			"events_on":  events,
		},
	})
	if err != nil {
		return nil, err
	}
	if c, ok := t.objs.Choice("connect"); ok && c.Method == "none" {
		if err := t.objs.Maps["state_only"].Update(uint32(0), uint32(1), ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("set state-only mode: %w", err)
		}
	}
	t.tab, err = socktable.New()
	if err != nil {
		return nil, err
	}
	if opts.Events {
		t.events, err = newEventReader(t.objs.Maps["events"], opts.Dst)
		if err != nil {
			return nil, err
		}
	}
	t.prev, err = t.Snapshot()
	if err != nil {
		return nil, err
	}
	return t, nil
}

// Close detaches everything.
func (t *Tracer) Close() error {
	var errs []error
	if t.events != nil {
		errs = append(errs, t.events.Close())
	}
	if t.tab != nil {
		errs = append(errs, t.tab.Close())
	}
	if t.objs != nil {
		errs = append(errs, t.objs.Close())
	}
	return errors.Join(errs...)
}

// Choices reports how each hook was attached.
func (t *Tracer) Choices() []attach.Choice { return t.objs.Choices }

// Latency names what the latency figures measure with the tier in use:
// LatencyHashConnect or LatencySynSent.
func (t *Tracer) Latency() string {
	if c, ok := t.objs.Choice("connect"); ok && c.Tier == attach.Tracepoint {
		if c.Method == "none" {
			return LatencySynAnswer
		}
		return LatencySynSent
	}
	return LatencyHashConnect
}

// Counts are one destination's cumulative figures.
type Counts struct {
	Connects     uint64    // connect attempts that reached TCP
	AddrNotAvail uint64    // of which failed with EADDRNOTAVAIL (no free local port)
	Errors       uint64    // of which failed with any other error
	BoundFirst   uint64    // attempts on sockets bound to port 0 before connect()
	Latency      hist.Log2 // port allocation latency in ns (see Tracer.Latency)
	MaxNS        uint64    // largest latency seen since the start
}

// Proc is one process's connects to a destination.
type Proc struct {
	PID      int
	Comm     string
	Connects uint64
}

// Drops count what the kernel side could not record, by map.
type Drops struct {
	Dests, Inflight, Calls, Events uint64
}

// Slots of the drops map: enum drop_index in bpf/ports.bpf.c.
const (
	dropDests = iota
	dropInflight
	dropCalls
	dropEvents
)

// Total is the sum of all drops.
func (d Drops) Total() uint64 { return d.Dests + d.Inflight + d.Calls + d.Events }

// Snapshot is one read of the cumulative counters.
type Snapshot struct {
	Time   time.Time
	Dests  map[netip.AddrPort]*Counts
	Procs  map[netip.AddrPort][]Proc
	Errnos map[syscall.Errno]uint64
	Drops  Drops
}

// destKey mirrors struct dest_key in bpf/headers/common.h.
type destKey struct {
	Addr   [16]byte
	Port   uint16
	Family uint16
}

func (k destKey) addrPort() netip.AddrPort {
	var a netip.Addr
	if k.Family == syscall.AF_INET {
		a = netip.AddrFrom4([4]byte(k.Addr[:4]))
	} else {
		a = netip.AddrFrom16(k.Addr).Unmap()
	}
	return netip.AddrPortFrom(a, k.Port)
}

// procKey mirrors struct proc_key.
type procKey struct {
	Dest destKey
	TGID uint32
}

// Snapshot reads the cumulative counters.
func (t *Tracer) Snapshot() (*Snapshot, error) {
	s := &Snapshot{
		Time:   time.Now(),
		Dests:  map[netip.AddrPort]*Counts{},
		Procs:  map[netip.AddrPort][]Proc{},
		Errnos: map[syscall.Errno]uint64{},
	}
	var (
		k     procKey
		stats []portsDestStats
	)
	it := t.objs.Maps["dests"].Iterate()
	for it.Next(&k, &stats) {
		c := &Counts{}
		p := Proc{PID: int(k.TGID)}
		for _, v := range stats {
			c.Connects += v.Connects
			c.AddrNotAvail += v.Eaddrnotavail
			c.Errors += v.Errors
			c.BoundFirst += v.BoundFirst
			c.MaxNS = max(c.MaxNS, v.LatMaxNs)
			for i, n := range v.Lat.Slots {
				c.Latency.Slots[i] += n
			}
			if p.Comm == "" && v.Comm[0] != 0 {
				p.Comm = cString(v.Comm[:])
			}
		}
		// An IPv4 destination reached from IPv4 and IPv6 sockets, or by
		// several processes: one row.
		ap := k.Dest.addrPort()
		if p.Connects = c.Connects; p.Connects > 0 {
			s.Procs[ap] = append(s.Procs[ap], p)
		}
		if o := s.Dests[ap]; o != nil {
			o.Connects += c.Connects
			o.AddrNotAvail += c.AddrNotAvail
			o.Errors += c.Errors
			o.BoundFirst += c.BoundFirst
			o.MaxNS = max(o.MaxNS, c.MaxNS)
			o.Latency.Add(&c.Latency)
			continue
		}
		s.Dests[ap] = c
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read dests map: %w", err)
	}

	perCPU, err := readArray(t.objs.Maps["errnos"])
	if err != nil {
		return nil, fmt.Errorf("read errnos map: %w", err)
	}
	for e, n := range perCPU {
		if n > 0 {
			s.Errnos[syscall.Errno(e)] = n
		}
	}
	d, err := readArray(t.objs.Maps["drops"])
	if err != nil {
		return nil, fmt.Errorf("read drops map: %w", err)
	}
	s.Drops = Drops{Dests: d[dropDests], Inflight: d[dropInflight], Calls: d[dropCalls], Events: d[dropEvents]}
	n, err := t.ageInflight()
	t.aged += n
	s.Drops.Inflight += t.aged
	return s, err
}

// maxAttempt is how long an attempt may wait for its outcome before it is
// counted as lost: a connect() interrupted for good or killed, whose end the
// kernel side never sees, would otherwise hold its inflight entry forever.
var maxAttempt = 10 * time.Minute

// ageInflight deletes attempts older than maxAttempt from the inflight map,
// at most once a minute, and returns how many it deleted.
func (t *Tracer) ageInflight() (uint64, error) {
	if time.Since(t.lastAge) < time.Minute {
		return 0, nil
	}
	t.lastAge = time.Now()
	var ts syscall.Timespec
	if err := clockMonotonic(&ts); err != nil {
		return 0, err
	}
	now := uint64(ts.Nano())
	m := t.objs.Maps["inflight"]
	var (
		k   uint64
		v   portsConn
		old []uint64
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if v.Born != 0 && v.Born < now && now-v.Born > uint64(maxAttempt) {
			old = append(old, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read inflight map: %w", err)
	}
	var n uint64
	for _, k := range old {
		err := m.Delete(k)
		if err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("delete stale attempt: %w", err)
		}
	}
	s, err := ageSlots(t.objs.Maps["slots"], now)
	n += s
	if err != nil {
		return n, err
	}
	s, err = ageSysc(t.objs.Maps["sysc"], now)
	return n + s, err
}

// ageSysc deletes the connect() calls older than maxAttempt from the sysc
// hash that stands in for task storage (where task storage is, a thread's
// storage goes with it): calls of threads killed inside connect(), or
// interrupted for good. It returns how many held an attempt (a socket in
// SYN_SENT), which count as dropped like the attempts aged out of inflight.
func ageSysc(m *ebpf.Map, now uint64) (uint64, error) {
	if m.Type() != ebpf.Hash {
		return 0, nil
	}
	var (
		tid uint32
		v   portsSysc
		old []uint32
		n   uint64
	)
	held := map[uint32]bool{}
	it := m.Iterate()
	for it.Next(&tid, &v) {
		if v.Born != 0 && v.Born < now && now-v.Born > uint64(maxAttempt) {
			old = append(old, tid)
			held[tid] = v.Sk != 0
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read sysc map: %w", err)
	}
	for _, tid := range old {
		err := m.Delete(tid)
		if err == nil && held[tid] {
			n++
		} else if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("delete stale connect call: %w", err)
		}
	}
	return n, nil
}

// ageSlots frees the slots (the state-only tier's attempts) holding
// attempts older than maxAttempt. It maps the array and frees each with a
// compare-and-swap of its cookie: a slot freed and claimed again by the
// kernel meanwhile keeps its new attempt.
func ageSlots(m *ebpf.Map, now uint64) (uint64, error) {
	const size = int(unsafe.Sizeof(portsAttSlot{}))
	if int(m.ValueSize()) != size {
		return 0, fmt.Errorf("read slots map: value size %d, want %d", m.ValueSize(), size)
	}
	length := int(m.MaxEntries()) * size
	page := os.Getpagesize()
	mem, err := unix.Mmap(m.FD(), 0, (length+page-1)/page*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("map slots: %w", err)
	}
	defer unix.Munmap(mem)
	slots := unsafe.Slice((*portsAttSlot)(unsafe.Pointer(&mem[0])), m.MaxEntries())
	var n uint64
	for i := range slots {
		s := &slots[i]
		cookie := atomic.LoadUint64(&s.Cookie)
		born := atomic.LoadUint64(&s.Conn.Born)
		if cookie == 0 || born == 0 || born >= now || now-born <= uint64(maxAttempt) {
			continue
		}
		// A slot the kernel freed and claimed again between these
		// loads, and whose new attempt had not yet written its birth,
		// would be freed too: counted here, like every aged attempt.
		if atomic.CompareAndSwapUint64(&s.Cookie, cookie, 0) {
			n++
		}
	}
	return n, nil
}

// readArray sums a per-CPU array of u64 counters.
func readArray(m *ebpf.Map) ([]uint64, error) {
	out := make([]uint64, m.MaxEntries())
	var vals []uint64
	for i := range out {
		if err := m.Lookup(uint32(i), &vals); err != nil {
			return nil, err
		}
		for _, v := range vals {
			out[i] += v
		}
	}
	return out, nil
}

func cString(b []int8) string {
	buf := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		buf = append(buf, byte(c))
	}
	return string(buf)
}
