// Package timewait shows TIME_WAIT and the other closing TCP states of one
// or more network namespaces: how many, how fast they are created and
// expire, how old they are, how much of the ephemeral port range they hold
// toward each destination, and who closed first.
//
// Counts come from the shared iter/tcp socket table (internal/socktable),
// read once per interval. Creation, expiry and early kills of TIME_WAIT
// sockets come from fentry or kprobes on the kernel's timewait functions
// when the kernel has them, and otherwise from diffing successive snapshots
// (exact while the interval is shorter than the 60 s TIME_WAIT lifetime and
// no 4-tuple is reused within one interval). Who closed first comes from
// the socket state transitions (sock:inet_sock_set_state, or tcp_set_state).
package timewait

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/netns"
	"github.com/nettrace/nettrace/internal/socktable"
)

// Hooks declares the timewait hook, best alternative first. The fentry and
// kprobe alternatives count TIME_WAIT creation, expiry and early kills in the
// kernel; the tracepoint ones only see who closed first, and the TIME_WAIT
// events are then derived from socket table snapshots.
var Hooks = []attach.Hook{{
	Name: "timewait",
	Alternatives: []attach.Alternative{
		{Tier: attach.Fentry, Programs: []string{"close_fentry", "tw_alloc_fexit", "tw_process_fentry",
			"tw_process_fexit", "tw_timer_fentry", "tw_kill_fentry"}},
		{Tier: attach.Kprobe, Programs: []string{"close_kprobe", "tw_time_wait_kprobe", "tw_process_kprobe",
			"tw_process_kretprobe", "tw_timer_kprobe", "tw_kill_kprobe"},
			GivesUp: "counts a socket refused by tcp_max_tw_buckets as a created TIME_WAIT in its row (the header's overflow count stays exact); about twice the cost per event"},
		{Tier: attach.Tracepoint, Programs: []string{"close_tp_btf"}, GivesUp: snapshotGivesUp},
		{Tier: attach.Tracepoint, Programs: []string{"close_raw_tp"}, GivesUp: snapshotGivesUp + "; reads the socket with probe_read"},
	},
}}

const snapshotGivesUp = "TIME_WAIT created/expired come from iter/tcp snapshots diffed per interval: " +
	"a TIME_WAIT socket that comes and goes (or is reused) within one interval is missed, " +
	"and expired versus killed early is judged from the timer left at the previous snapshot"

func init() {
	attach.Register(attach.TracerInfo{
		Name: "timewait", Summary: "TIME_WAIT and other closing states by rate, age and destination",
		Spec: loadTimewait, Hooks: Hooks, Caps: Caps,
	})
}

// Caps are the capabilities the tracer needs (CAP_SYS_ADMIN to enter other
// network namespaces).
var Caps = []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon, kernel.CapSysAdmin}

// Options select what to watch.
type Options struct {
	// Netns lists network namespace files to watch; empty means the
	// caller's own namespace.
	Netns []string
	// AllNetns watches every namespace that a process or /var/run/netns
	// holds, found again every interval. It excludes Netns.
	AllNetns bool
	Tier     attach.Tier // force an attach tier
}

// Tracer watches closing TCP states.
type Tracer struct {
	opts   Options
	objs   *attach.Objects
	tab    *socktable.Table
	exact  bool // TIME_WAIT events come from the kernel, not from diffs
	ns     map[uint64]*nsState
	last   time.Time
	procs  map[rowID]string   // last known local closer per row
	snap   socktable.Snapshot // the socket table buffer, reused by every read
	tw     twDiff             // the TIME_WAIT diff\'s buffers
	keys   []rawKey           // readRows' batch buffers
	vals   []timewaitRowVal
	closed bool
}

// New loads and attaches the hooks and takes the first snapshot of every
// namespace, which the first interval is measured against.
func New(opts Options) (_ *Tracer, err error) {
	if opts.AllNetns && len(opts.Netns) > 0 {
		return nil, errors.New("watch namespaces: --netns and --all-netns exclude each other")
	}
	t := &Tracer{opts: opts, ns: map[uint64]*nsState{}, procs: map[rowID]string{}}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	paths, err := t.namespaces()
	if err != nil {
		return nil, err
	}
	if err := kernel.HashBatch.Err(); err != nil {
		return nil, err // readRows could not take the rows out
	}
	spec, err := loadTimewait()
	if err != nil {
		return nil, fmt.Errorf("load timewait spec: %w", err)
	}
	t.objs, err = attach.Load(spec, Hooks, attach.Options{
		Tier:      opts.Tier,
		Constants: map[string]any{"filter_netns": boolByte(!opts.AllNetns)},
	})
	if err != nil {
		return nil, err
	}
	c, _ := t.objs.Choice("timewait")
	t.exact = c.Tier != attach.Tracepoint
	if !opts.AllNetns {
		for id := range paths {
			if err := t.objs.Maps["watch"].Put(uint32(id), uint8(1)); err != nil {
				return nil, fmt.Errorf("watch %s: %w", netns.Name(id), err)
			}
		}
	}
	t.tab, err = socktable.New()
	if err != nil {
		return nil, fmt.Errorf("load socket table: %w", err)
	}
	if err := t.refresh(paths, time.Now()); err != nil {
		return nil, err
	}
	t.last = time.Now()
	// Forget what the hooks counted before the first snapshot.
	if _, err := t.readRows(); err != nil {
		return nil, err
	}
	return t, nil
}

// Choice returns how the timewait hook was attached.
func (t *Tracer) Choice() attach.Choice {
	c, _ := t.objs.Choice("timewait")
	return c
}

// Close detaches everything.
func (t *Tracer) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	if t.tab != nil {
		errs = append(errs, t.tab.Close())
	}
	if t.objs != nil {
		errs = append(errs, t.objs.Close())
	}
	return errors.Join(errs...)
}

// namespaces returns the namespaces to watch now, by inode.
func (t *Tracer) namespaces() (map[uint64]string, error) {
	if t.opts.AllNetns {
		return AllNamespaces()
	}
	paths := t.opts.Netns
	if len(paths) == 0 {
		paths = []string{""}
	}
	out := map[uint64]string{}
	for _, p := range paths {
		id, err := netns.ID(p)
		if err != nil {
			return nil, err
		}
		out[id] = p
	}
	return out, nil
}

// rowDelta is what the hooks counted for one row since the last read.
type rowDelta struct {
	closedLocal, closedRemote uint64
	created, expired, killed  uint64
	proc                      string
}

// rawKey mirrors struct row_key in bpf/timewait.bpf.c.
type rawKey struct {
	Netns        uint32
	Family       uint16
	Side, Pad    uint8
	Laddr, Raddr [16]byte
	Lport, Rport uint16
}

// rowBatch is how many rows one batch lookup-and-delete takes at first; it
// grows when a hash bucket holds more (ENOSPC).
const rowBatch = 256

// readRows takes every row out of the rows map: a batch lookup-and-delete
// copies and deletes each hash bucket under its lock, so an increment is
// either in the copy or lands in a row the next read takes. (The lookup and
// delete of one element is 5.14+, and a syscall per row.)
func (t *Tracer) readRows() (map[rowID]rowDelta, error) {
	m := t.objs.Maps["rows"]
	if len(t.keys) == 0 {
		t.keys, t.vals = make([]rawKey, rowBatch), make([]timewaitRowVal, rowBatch)
	}
	out := map[rowID]rowDelta{}
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookupAndDelete(&cursor, t.keys, t.vals, nil)
		for i := range n {
			k, v := &t.keys[i], &t.vals[i]
			id := k.id()
			d := out[id]
			d.closedLocal += v.ClosedLocal
			d.closedRemote += v.ClosedRemote
			d.created += v.Created
			d.expired += v.Expired
			d.killed += v.Killed
			if v.Pid != 0 {
				d.proc = fmt.Sprintf("%s(%d)", comm(v.Comm), v.Pid)
			}
			out[id] = d
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist): // the end of the map
			return out, nil
		case errors.Is(err, unix.ENOSPC) && n == 0: // a bucket holds more than a batch
			t.keys, t.vals = make([]rawKey, 2*len(t.keys)), make([]timewaitRowVal, 2*len(t.vals))
		case err != nil:
			return nil, fmt.Errorf("take timewait rows: %w", err)
		}
	}
}

// dropped returns the row inserts the kernel side could not make.
func (t *Tracer) dropped() (uint64, error) {
	var perCPU []uint64
	if err := t.objs.Maps["dropped"].Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read dropped rows: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

func comm(b [16]int8) string {
	s := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
