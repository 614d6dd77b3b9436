// Package socktable reads every TCP socket of a network namespace through a
// BPF iterator (iter/tcp): listening sockets with their accept and SYN
// queues and backlog limit, connections with their queues, request sockets,
// and TIME_WAIT sockets with their remaining timer. It is the snapshot the
// ports, listen and timewait tracers share.
package socktable

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"
	"unsafe"

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
	// the socket through a map (the listen tracer); never display it.
	Sock uint64
	// Remaining is the time left on the TIME_WAIT (or request socket) timer.
	Remaining time.Duration
}

// Snapshot is one read of the table.
type Snapshot struct {
	Time    time.Time
	Sockets []Socket
}

// Hooks is the iterator; it has no other alternative (kernels without
// iter/tcp, before 5.9, are not supported by the tracers that use it).
var Hooks = []attach.Hook{{
	Name: "tcp_sockets",
	Alternatives: []attach.Alternative{
		{Tier: attach.Tracepoint, Programs: []string{"dump_tcp"}},
	},
}}

// Table reads TCP sockets.
type Table struct {
	objs *attach.Objects
	it   interface{ Open() (io.ReadCloser, error) }

	hzOnce sync.Once
	hz     float64
}

// New loads the iterator. The tier is ignored: there is one way to do this.
func New() (*Table, error) {
	spec, err := loadSocktable()
	if err != nil {
		return nil, fmt.Errorf("load socktable spec: %w", err)
	}
	objs, err := attach.Load(spec, Hooks, attach.Options{})
	if err != nil {
		return nil, err
	}
	return &Table{objs: objs, it: objs.Iters["dump_tcp"]}, nil
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
)

// Read returns the sockets of the network namespace at path ("" = ours).
func (t *Table) Read(nsPath string) (*Snapshot, error) {
	var buf []byte
	err := netns.Do(nsPath, func() error {
		// The iterator walks the namespace of the thread that opens it.
		rd, err := t.it.Open()
		if err != nil {
			return fmt.Errorf("open tcp iterator: %w", err)
		}
		defer rd.Close()
		buf, err = io.ReadAll(rd)
		if err != nil {
			return fmt.Errorf("read tcp iterator: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	h, socks, err := decode(buf)
	if err != nil {
		return nil, err
	}
	hz := t.HZ()
	for i := range socks {
		if exp := socks[i].Remaining; exp != 0 {
			left := int64(uint64(exp) - h.jiffies)
			if left < 0 {
				left = 0
			}
			socks[i].Remaining = time.Duration(float64(left) / hz * float64(time.Second))
		}
	}
	return &Snapshot{Time: time.Now(), Sockets: socks}, nil
}

// decode parses the iterator's output. Remaining holds raw expiry jiffies.
func decode(buf []byte) (header, []Socket, error) {
	var h header
	if len(buf) == 0 {
		return h, nil, nil // no socket: the iterator never ran the program
	}
	if len(buf) < hdrSize {
		return h, nil, fmt.Errorf("decode tcp iterator: %d bytes, want a header", len(buf))
	}
	ne := binary.NativeEndian
	h = header{ne.Uint32(buf), ne.Uint32(buf[4:]), ne.Uint64(buf[8:]), ne.Uint64(buf[16:])}
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
	socks := make([]Socket, 0, len(buf)/recSize)
	for off := 0; off < len(buf); off += recSize {
		r := (*rawRec)(unsafe.Pointer(&buf[off]))
		s := Socket{
			State:      State(r.State),
			RxQueue:    r.RxQueue,
			TxQueue:    r.TxQueue,
			MaxBacklog: r.MaxBacklog,
			SynQueue:   r.SynQueue,
			UID:        r.UID,
			Inode:      r.Ino,
			Netns:      r.Netns,
			Sock:       r.Sock,
			Remaining:  time.Duration(r.Expires),
		}
		s.Local = netip.AddrPortFrom(addr(r.Family, r.Saddr), r.Sport)
		s.Remote = netip.AddrPortFrom(addr(r.Family, r.Daddr), r.Dport)
		if s.State == TimeWait && r.Substate == uint8(FinWait2) {
			s.State = FinWait2 // a FIN_WAIT2 socket after close() lives as a timewait sock
		}
		socks = append(socks, s)
	}
	return h, socks, nil
}

func addr(family uint16, b [16]byte) netip.Addr {
	if family == 2 { // AF_INET
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b).Unmap()
}

// HZ is the kernel's timer frequency, measured once from two iterator
// headers 100 ms apart and rounded to a configurable CONFIG_HZ value.
func (t *Table) HZ() float64 {
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
			h, _, err := decode(b)
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
		Spec: loadSocktable, Hooks: Hooks, Caps: []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon},
	})
}
