// Package socktable reads every TCP socket of a network namespace through a
// BPF iterator (iter/tcp): listening sockets with their accept and SYN
// queues and backlog limit, connections with their queues, request sockets,
// and TIME_WAIT sockets with their remaining timer. It is the snapshot the
// ports, listen and timewait tracers share. On a kernel without BTF of its
// own, which has no iter/tcp, it reads the same fields from sock_diag
// netlink (see diag.go for what that cannot give).
package socktable

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/netns"
)

// State is a TCP state as the kernel numbers it (include/net/tcp_states.h).
type State uint8

// TCP states.
const (
	Established State = 1 + iota
	SynSent
	SynRecv
	FinWait1
	FinWait2
	TimeWait
	Close
	CloseWait
	LastAck
	Listen
	Closing
	NewSynRecv
)

var stateNames = [...]string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
	"TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"}

func (s State) String() string {
	if int(s) < len(stateNames) && s != 0 {
		return stateNames[s]
	}
	return fmt.Sprintf("STATE_%d", s)
}

// Socket is one TCP socket.
type Socket struct {
	State      State
	Local      netip.AddrPort
	Remote     netip.AddrPort
	RxQueue    uint32 // LISTEN: connections waiting for accept(); else unread bytes
	TxQueue    uint32 // unacknowledged bytes
	MaxBacklog uint32 // LISTEN: the accept queue limit (sk_max_ack_backlog)
	SynQueue   uint32 // LISTEN: half-open connections (request sockets)
	UID        uint32
	Inode      uint64 // socket inode (0 for TIME_WAIT and request sockets)
	Netns      uint64 // network namespace inode
	// Sock is the kernel address of the socket, for BPF programs that read
	// the socket through a map (the listen tracer); never display it. 0
	// where the table cannot tell (sock_diag without kprobes).
	Sock uint64
	// Cookie is the socket's cookie through sock_diag (0 through
	// iter/tcp): an identity for as long as the socket lives.
	Cookie uint64
	// Remaining is the time left on the TIME_WAIT (or request socket) timer.
	Remaining time.Duration
}

// Snapshot is one read of the table.
type Snapshot struct {
	Time    time.Time
	Sockets []Socket
}

// Hooks is the iterator, then sock_diag netlink with the kprobes that give
// it the sockets' kernel addresses, then sock_diag alone. The table is read
// the best way that works whatever --attach says (Untiered).
var Hooks = []attach.Hook{{
	Name: "tcp_sockets",
	Alternatives: []attach.Alternative{
		{Tier: attach.Tracepoint, Programs: []string{"dump_tcp"}},
		{Tier: attach.Kprobe, Programs: []string{"diag_cookie", "diag_cookie_ret"}, Method: "sock_diag+kprobe", GivesUp: diagGivesUp},
		{Tier: attach.Tracepoint, Method: "sock_diag", GivesUp: diagNoAddrGivesUp},
	},
}}

// StateMask selects TCP states: bit 1<<State for each state to read. The
// zero mask selects every socket.
type StateMask uint32

// States returns the mask that selects the given states.
func States(states ...State) StateMask {
	var m StateMask
	for _, s := range states {
		m |= 1 << (s & 31)
	}
	return m
}

// Has reports whether m selects state s.
func (m StateMask) Has(s State) bool { return m == 0 || m&(1<<(s&31)) != 0 }

// kernel is the mask the iterator tests against a socket's kernel state: a
// FIN_WAIT2 socket after close() lives as a timewait sock in TIME_WAIT state.
func (m StateMask) kernel() uint32 {
	if m != 0 && m.Has(FinWait2) {
		m |= 1 << TimeWait
	}
	return uint32(m)
}

// Table reads TCP sockets.
type Table struct {
	objs   *attach.Objects
	it     interface{ Open() (io.ReadCloser, error) }
	filter *ebpf.Map // .data.filter: the iterator's state_mask

	diag *diagReader // sock_diag netlink instead of the iterator

	mu   sync.Mutex // one read at a time: the filter and buffer are shared
	mask uint32     // the state_mask last written
	buf  []byte     // the iterator's output, kept between reads

	hzOnce sync.Once
	hz     float64
}

// New loads the iterator, or where the kernel refuses it (no BTF of its
// own) the sock_diag reader. The tier is ignored: the table is read the
// best way this kernel has.
func New() (*Table, error) { return newTable(Hooks) }

func newTable(hooks []attach.Hook) (*Table, error) {
	spec, err := Spec()
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, a := range hooks[0].Alternatives {
		for _, p := range a.Programs {
			used[p] = true
		}
	}
	for name := range spec.Programs {
		if !used[name] {
			delete(spec.Programs, name)
		}
	}
	objs, err := attach.Load(spec, hooks, attach.Options{})
	if err != nil {
		return nil, err
	}
	t := &Table{objs: objs}
	if c, _ := objs.Choice("tcp_sockets"); c.Method != "iter" {
		t.diag = newDiagReader()
		if c.Method == "sock_diag+kprobe" {
			// They attached: the reader attaches them again only to
			// resolve new listeners.
			if err := objs.Detach("tcp_sockets"); err != nil {
				objs.Close()
				return nil, fmt.Errorf("detach sock_diag kprobes: %w", err)
			}
			d := t.diag
			d.probe, d.probeRet = objs.Programs["diag_cookie"], objs.Programs["diag_cookie_ret"]
			d.target = spec.Programs["diag_cookie"].AttachTo
			d.addrs, d.tid = objs.Maps["diag_addrs"], objs.Maps[".data.diag"]
		}
		// A kernel without TCP sock_diag fails here, with one line.
		if err := t.diag.read(&Snapshot{}, "", States(Listen)); err != nil {
			objs.Close()
			return nil, fmt.Errorf("read TCP sockets: %w", err)
		}
		return t, nil
	}
	t.it, t.filter = objs.Iters["dump_tcp"], objs.Maps[".data.filter"]
	if t.filter == nil {
		objs.Close()
		return nil, fmt.Errorf("load socktable: no .data.filter map")
	}
	return t, nil
}

// cookieFuncs are the functions, first found first, that the sock_diag
// dump calls with each socket it reports: sock_diag_save_cookie where it is
// a function of its own, else the cookie maker it inlines. Which one the
// compiler kept differs between builds (6.1: __sock_gen_cookie is called;
// 6.12: it is inlined into sock_diag_save_cookie).
var cookieFuncs = []string{"sock_diag_save_cookie", "__sock_gen_cookie", "sock_gen_cookie"}

// Spec returns the table's BPF objects, the sock_diag kprobes aimed at the
// first of cookieFuncs this kernel has.
func Spec() (*ebpf.CollectionSpec, error) {
	spec, err := loadSocktable()
	if err != nil {
		return nil, fmt.Errorf("load socktable spec: %w", err)
	}
	if ks, err := kernel.LoadKallsyms(); err == nil {
		for _, fn := range cookieFuncs {
			if _, err := ks.Resolve(fn); err == nil {
				spec.Programs["diag_cookie"].AttachTo = fn
				spec.Programs["diag_cookie_ret"].AttachTo = fn
				break
			}
		}
	}
	return spec, nil
}

// Close detaches the iterator.
func (t *Table) Close() error { return t.objs.Close() }

// Choices reports how the iterator was attached.
func (t *Table) Choices() []attach.Choice { return t.objs.Choices }

type header struct {
	magic, recSize   uint32
	jiffies, ktimeNS uint64
}

// rawRec mirrors struct sock_rec in bpf/socktable.bpf.c.
type rawRec struct {
	Saddr, Daddr                                   [16]byte
	Sport, Dport, Family                           uint16
	State, Substate                                uint8
	RxQueue, TxQueue, MaxBacklog, SynQueue, UID, _ uint32
	Ino, Expires, Netns, Sock                      uint64
}

const (
	magic   = 0x6e74736b
	hdrSize = 24
	recSize = int(unsafe.Sizeof(rawRec{}))
	// readSize is the least room offered to each read(2) of the iterator.
	readSize = 1 << 20
)

// Read returns the sockets of the network namespace at path ("" = ours).
func (t *Table) Read(nsPath string) (*Snapshot, error) {
	snap := &Snapshot{}
	if err := t.ReadInto(snap, nsPath, 0); err != nil {
		return nil, err
	}
	return snap, nil
}

// ReadStates returns the sockets of the network namespace at path ("" =
// ours) whose state states selects; the others are skipped in the kernel.
func (t *Table) ReadStates(nsPath string, states StateMask) (*Snapshot, error) {
	snap := &Snapshot{}
	if err := t.ReadInto(snap, nsPath, states); err != nil {
		return nil, err
	}
	return snap, nil
}

// ReadInto reads the sockets of the network namespace at nsPath ("" = ours)
// whose state states selects into snap, reusing snap.Sockets: a caller that
// reads every interval keeps one Snapshot and allocates nothing per socket.
func (t *Table) ReadInto(snap *Snapshot, nsPath string, states StateMask) error {
	if t.diag != nil {
		t.mu.Lock()
		defer t.mu.Unlock()
		return t.diag.read(snap, nsPath, states)
	}
	hz := t.HZ()
	t.mu.Lock()
	defer t.mu.Unlock()
	if k := states.kernel(); k != t.mask {
		if err := t.filter.Update(uint32(0), k, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("set socket state filter: %w", err)
		}
		t.mask = k
	}
	err := netns.Do(nsPath, func() error {
		// The iterator walks the namespace of the thread that opens it.
		rd, err := t.it.Open()
		if err != nil {
			return fmt.Errorf("open tcp iterator: %w", err)
		}
		defer rd.Close()
		t.buf, err = readAll(rd, t.buf[:0])
		if err != nil {
			return fmt.Errorf("read tcp iterator: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	snap.Time = time.Now()
	snap.Sockets, err = decode(t.buf, snap.Sockets[:0], states, hz)
	return err
}

// readAll reads rd to its end into buf, growing it in large steps.
func readAll(rd io.Reader, buf []byte) ([]byte, error) {
	for {
		if cap(buf)-len(buf) < readSize {
			buf = slices.Grow(buf, max(readSize, cap(buf)))
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF || (n == 0 && err == nil) {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// decodeHeader checks and returns the header that starts buf, and the
// records after it.
func decodeHeader(buf []byte) (header, []byte, error) {
	var h header
	if len(buf) == 0 {
		return h, nil, nil // no socket: the iterator never ran the program
	}
	if len(buf) < hdrSize {
		return h, nil, fmt.Errorf("decode tcp iterator: %d bytes, want a header", len(buf))
	}
	le := binary.LittleEndian // both targets (amd64, arm64) are little-endian
	h = header{le.Uint32(buf), le.Uint32(buf[4:]), le.Uint64(buf[8:]), le.Uint64(buf[16:])}
	if h.magic != magic || int(h.recSize) != recSize {
		return h, nil, fmt.Errorf("decode tcp iterator: bad header (magic %#x, record size %d, want %d)", h.magic, h.recSize, recSize)
	}
	buf = buf[hdrSize:]
	if len(buf)%recSize == hdrSize {
		// One socket: the final call (no socket) sees seq_num 0 again and
		// writes a second header.
		buf = buf[:len(buf)-hdrSize]
	}
	if len(buf)%recSize != 0 {
		return h, nil, fmt.Errorf("decode tcp iterator: %d bytes is not a whole number of records", len(buf))
	}
	return h, buf, nil
}

// decode appends the sockets of the iterator's output that states selects
// to socks, turning timer expiries into time left at hz.
func decode(buf []byte, socks []Socket, states StateMask, hz float64) ([]Socket, error) {
	h, recs, err := decodeHeader(buf)
	if err != nil {
		return socks, err
	}
	le := binary.LittleEndian
	perJiffy := float64(time.Second) / hz
	for ; len(recs) >= recSize; recs = recs[recSize:] {
		r := recs[:recSize:recSize]
		// Offsets of struct sock_rec: saddr 0, daddr 16, sport 32, dport 34,
		// family 36, state 38, substate 39, rx_queue 40, tx_queue 44,
		// max_backlog 48, syn_queue 52, uid 56, ino 64, expires 72,
		// netns 80, sk 88.
		st := State(r[38])
		if st == TimeWait && r[39] == uint8(FinWait2) {
			st = FinWait2 // a FIN_WAIT2 socket after close() lives as a timewait sock
		}
		if !states.Has(st) {
			continue
		}
		family := le.Uint16(r[36:])
		socks = append(socks, Socket{
			State:      st,
			Local:      netip.AddrPortFrom(addr(family, r[0:16]), le.Uint16(r[32:])),
			Remote:     netip.AddrPortFrom(addr(family, r[16:32]), le.Uint16(r[34:])),
			RxQueue:    le.Uint32(r[40:]),
			TxQueue:    le.Uint32(r[44:]),
			MaxBacklog: le.Uint32(r[48:]),
			SynQueue:   le.Uint32(r[52:]),
			UID:        le.Uint32(r[56:]),
			Inode:      le.Uint64(r[64:]),
			Netns:      le.Uint64(r[80:]),
			Sock:       le.Uint64(r[88:]),
		})
		if exp := le.Uint64(r[72:]); exp != 0 {
			left := max(int64(exp-h.jiffies), 0)
			socks[len(socks)-1].Remaining = time.Duration(float64(left) * perJiffy)
		}
	}
	return socks, nil
}

func addr(family uint16, b []byte) netip.Addr {
	if family == 2 { // AF_INET
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16([16]byte(b)).Unmap()
}

// HZ is the kernel's timer frequency, measured once from two iterator
// headers 100 ms apart and rounded to a configurable CONFIG_HZ value; 0
// when the table is read through sock_diag, which gives milliseconds.
func (t *Table) HZ() float64 {
	if t.diag != nil {
		return 0
	}
	t.hzOnce.Do(func() {
		t.hz = 250 // the most common value, if measuring fails
		read := func() (header, error) {
			rd, err := t.it.Open()
			if err != nil {
				return header{}, err
			}
			defer rd.Close()
			b, err := io.ReadAll(rd)
			if err != nil {
				return header{}, err
			}
			h, _, err := decodeHeader(b)
			return h, err
		}
		a, err := read()
		if err != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
		b, err := read()
		if err != nil || b.ktimeNS <= a.ktimeNS {
			return
		}
		measured := float64(b.jiffies-a.jiffies) / (float64(b.ktimeNS-a.ktimeNS) / 1e9)
		best := 0.0
		for _, hz := range []float64{100, 250, 300, 1000} {
			if best == 0 || abs(hz-measured) < abs(best-measured) {
				best = hz
			}
		}
		t.hz = best
	})
	return t.hz
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

func init() {
	attach.Register(attach.TracerInfo{
		Name: "socktable", Summary: "TCP socket table (iter/tcp), shared by ports, listen and timewait",
		Spec: Spec, Hooks: Hooks, Caps: []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon}, Untiered: true,
	})
}
