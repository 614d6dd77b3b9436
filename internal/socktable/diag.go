package socktable

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/netns"
)

// The sock_diag fallback: on a kernel without BTF of its own (no iter/tcp)
// the table is read from sock_diag netlink (inet_diag), which reports
// every field of Socket but two:
//
//   - Sock, the kernel address: inet_diag gives a cookie instead (Cookie).
//     Only listeners get their address, which the listen tracer keys its
//     counters by: when a read finds a listener whose cookie is new, kprobes
//     on sock_diag_save_cookie (or the cookie maker it inlines, see
//     cookieFuncs), which the dump calls for every socket it reports, are
//     attached for one more dump of the listeners and record each cookie's
//     address for the reading thread (method "sock_diag+kprobe"); the
//     address is kept for as long as the listener is seen. They are not
//     left attached: while a kprobe handler runs, the kernel skips the
//     kprobes of softirqs that interrupt it (other tracers' SYN hooks, seen
//     on 6.12: 64 of 1208 overflows lost). Other sockets have Sock 0, and
//     without kprobes (method "sock_diag") listeners too.
//   - SynQueue, a listener's SYN queue (icsk_accept_queue.qlen): it is
//     counted from the request sockets of the same read, each given to the
//     listener the kernel would have looked up (its address, else the
//     wildcard, else an IPv6 wildcard for IPv4). SO_REUSEPORT listeners on
//     one address cannot be told apart: each shows the group's count.
//
// Timers come in milliseconds rather than jiffies, so HZ reads 0.

const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	inetDiagShutdown = 8  // INET_DIAG_SHUTDOWN: full sockets only
	diagReqSize      = 56 // struct inet_diag_req_v2
	diagMsgSize      = 72 // struct inet_diag_msg
	// diagStates are the TCP states inet_diag can select (bits 1-12):
	// bit 13, TCPF_BOUND_INACTIVE (6.7+), would add bound sockets that
	// iter/tcp and /proc/net/tcp do not show.
	diagStates = 0x1ffe
	// diagBuf is the receive buffer: netlink dumps at most 32 KiB per
	// message batch.
	diagBuf = 64 << 10
)

// diagGivesUp is what reading through sock_diag loses against iter/tcp.
const diagGivesUp = "sockets read through sock_diag netlink (inet_diag): kernel addresses for listeners only, from kprobes on sock_diag_save_cookie " +
	"attached for one more dump when a new listener appears; a listener's SYN queue is counted from its request sockets (SO_REUSEPORT listeners of one address each show the group's)"

// diagNoAddrGivesUp is diagGivesUp without the kprobes.
const diagNoAddrGivesUp = "sockets read through sock_diag netlink (inet_diag) without kernel addresses (no kprobes): " +
	"the listen tracer cannot match its counters to listeners; a listener's SYN queue is counted from its request sockets"

// diagReader reads sockets through sock_diag netlink.
type diagReader struct {
	// The address kprobes, attached while listeners are resolved; nil
	// without kprobes.
	probe, probeRet *ebpf.Program
	target          string    // the function they attach to
	addrs           *ebpf.Map // cookie -> kernel address, filled by the kprobes
	tid             *ebpf.Map // .data.diag: the reading thread's id

	resolving bool // the kprobes are attached: drain after each receive

	buf       []byte
	listeners map[uint64]uint64 // listener cookie -> kernel address
	keys      []uint64
	vals      []uint64
	pending   []pendingReq
}

// pendingReq is a request socket waiting for its listener.
type pendingReq struct {
	local netip.AddrPort
	v4    bool
}

func newDiagReader() *diagReader {
	return &diagReader{buf: make([]byte, diagBuf), listeners: map[uint64]uint64{},
		keys: make([]uint64, 4096), vals: make([]uint64, 4096)}
}

// read reads the sockets of the namespace at nsPath that states selects
// into snap.
func (d *diagReader) read(snap *Snapshot, nsPath string, states StateMask) error {
	socks := snap.Sockets[:0]
	err := netns.Do(nsPath, func() error {
		// The kprobes know the reader by its thread.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		ns, err := netns.ID("")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return fmt.Errorf("open sock_diag netlink socket: %w", err)
		}
		defer unix.Close(fd)
		mask := uint32(states) & diagStates
		if states == 0 {
			mask = diagStates
		}
		if states.Has(Listen) {
			// Request sockets give the listeners their SYN queues.
			mask |= 1<<NewSynRecv | 1<<SynRecv
		}
		d.pending = d.pending[:0]
		if socks, err = d.dumpAll(fd, mask, ns, states, socks); err != nil {
			return err
		}
		if !states.Has(Listen) {
			return nil
		}
		// Forget the listeners gone; resolve the new ones.
		seen := 0
		for i := range socks {
			if s := &socks[i]; s.State == Listen {
				if s.Sock != 0 {
					seen++
				} else if d.probe != nil {
					return d.resolve(fd, ns, socks)
				}
			}
		}
		if seen < len(d.listeners) {
			d.prune(socks)
		}
		return nil
	})
	if err != nil {
		return err
	}
	synQueues(socks, d.pending)
	snap.Time = time.Now()
	snap.Sockets = socks
	return nil
}

func (d *diagReader) dumpAll(fd int, mask uint32, ns uint64, states StateMask, socks []Socket) ([]Socket, error) {
	var err error
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if socks, err = d.dump(fd, family, mask, ns, states, socks); err != nil {
			return socks, err
		}
	}
	return socks, nil
}

// resolve dumps the listeners again with the address kprobes attached,
// and gives the listeners of socks their kernel addresses.
func (d *diagReader) resolve(fd int, ns uint64, socks []Socket) error {
	sym := d.target
	if ks, err := kernel.LoadKallsyms(); err == nil {
		if s, err := ks.Resolve(sym); err == nil {
			sym = s
		}
	}
	kp, err := link.Kprobe(sym, d.probe, nil)
	if err != nil {
		return fmt.Errorf("attach kprobe %s: %w", sym, err)
	}
	defer kp.Close()
	krp, err := link.Kretprobe(sym, d.probeRet, nil)
	if err != nil {
		return fmt.Errorf("attach kretprobe %s: %w", sym, err)
	}
	defer krp.Close()
	if err := d.tid.Update(uint32(0), uint32(unix.Gettid()), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set sock_diag reader: %w", err)
	}
	defer d.tid.Update(uint32(0), uint32(0), ebpf.UpdateAny)
	if err := d.drain(); err != nil { // what a failed resolve left
		return err
	}
	clear(d.listeners)
	d.resolving = true
	_, err = d.dumpAll(fd, 1<<Listen, ns, States(Listen), nil)
	d.resolving = false
	if err != nil {
		return err
	}
	if err := d.drain(); err != nil {
		return err
	}
	for i := range socks {
		if s := &socks[i]; s.State == Listen {
			s.Sock = d.listeners[s.Cookie]
		}
	}
	d.prune(socks)
	return nil
}

// prune keeps the addresses of the listeners in socks only.
func (d *diagReader) prune(socks []Socket) {
	keep := make(map[uint64]uint64, len(d.listeners))
	for i := range socks {
		if s := &socks[i]; s.State == Listen && s.Sock != 0 {
			keep[s.Cookie] = s.Sock
		}
	}
	d.listeners = keep
}

// dump reads one address family's sockets.
func (d *diagReader) dump(fd int, family uint8, mask uint32, ns uint64, states StateMask, socks []Socket) ([]Socket, error) {
	req := make([]byte, unix.SizeofNlMsghdr+diagReqSize)
	le := binary.LittleEndian // netlink is host order; both targets are little-endian
	le.PutUint32(req[0:], uint32(len(req)))
	le.PutUint16(req[4:], sockDiagByFamily)
	le.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	le.PutUint32(req[8:], uint32(family)) // sequence number
	r := req[unix.SizeofNlMsghdr:]
	r[0], r[1] = family, unix.IPPROTO_TCP
	le.PutUint32(r[4:], mask)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return socks, fmt.Errorf("sock_diag dump request: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(fd, d.buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return socks, fmt.Errorf("read sock_diag dump: %w", err)
		}
		if d.resolving {
			if err := d.drain(); err != nil {
				return socks, err
			}
		}
		done := false
		for b := d.buf[:n]; len(b) >= unix.SizeofNlMsghdr; {
			l := int(le.Uint32(b))
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return socks, fmt.Errorf("read sock_diag dump: bad message length %d", l)
			}
			m, typ := b[unix.SizeofNlMsghdr:l], le.Uint16(b[4:])
			b = b[min(nlmAlign(l), len(b)):]
			switch typ {
			case unix.NLMSG_DONE:
				done = true
			case unix.NLMSG_ERROR:
				if len(m) >= 4 {
					if errno := -int32(le.Uint32(m)); errno != 0 {
						return socks, diagError(unix.Errno(errno))
					}
				}
				done = true
			case sockDiagByFamily:
				if len(m) < diagMsgSize {
					return socks, fmt.Errorf("read sock_diag dump: %d-byte message", len(m))
				}
				socks = d.decode(m, ns, states, socks)
			}
		}
		if done {
			return socks, nil
		}
	}
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

func diagError(errno unix.Errno) error {
	if errno == unix.ENOENT || errno == unix.EINVAL {
		return fmt.Errorf("sock_diag dump: %w (the kernel has no TCP sock_diag: CONFIG_INET_DIAG and CONFIG_INET_TCP_DIAG, modules inet_diag and tcp_diag)", errno)
	}
	return fmt.Errorf("sock_diag dump: %w", errno)
}

// decode appends the socket of one inet_diag_msg (and its attributes) if
// states selects it.
func (d *diagReader) decode(m []byte, ns uint64, states StateMask, socks []Socket) []Socket {
	le := binary.LittleEndian
	full := false // request and TIME_WAIT sockets carry no shutdown state
	for a := m[diagMsgSize:]; len(a) >= 4; {
		l := int(le.Uint16(a))
		if l < 4 || l > len(a) {
			break
		}
		if le.Uint16(a[2:]) == inetDiagShutdown {
			full = true
		}
		a = a[min(nlmAlign(l), len(a)):]
	}
	st := State(m[1])
	family := uint16(m[0])
	local := netip.AddrPortFrom(addr(family, m[8:24]), binary.BigEndian.Uint16(m[4:]))
	if !full && st == SynRecv {
		st = NewSynRecv // a request socket, as iter/tcp names it
		d.pending = append(d.pending, pendingReq{local: local, v4: family == unix.AF_INET})
	}
	if !states.Has(st) {
		return socks
	}
	s := Socket{
		State:   st,
		Local:   local,
		Remote:  netip.AddrPortFrom(addr(family, m[24:40]), binary.BigEndian.Uint16(m[6:])),
		UID:     le.Uint32(m[64:]),
		Inode:   uint64(le.Uint32(m[68:])),
		Netns:   ns,
		RxQueue: le.Uint32(m[56:]),
	}
	if st == Listen {
		s.MaxBacklog = le.Uint32(m[60:]) // idiag_wqueue: sk_max_ack_backlog
	} else {
		s.TxQueue = le.Uint32(m[60:])
	}
	if !full {
		// TIME_WAIT (FIN_WAIT2 after close) and request sockets: the time
		// left on their timer, in milliseconds.
		s.Remaining = time.Duration(le.Uint32(m[52:])) * time.Millisecond
		s.RxQueue, s.TxQueue = 0, 0
	}
	s.Cookie = uint64(le.Uint32(m[44:])) | uint64(le.Uint32(m[48:]))<<32
	if st == Listen {
		s.Sock = d.listeners[s.Cookie]
	}
	return append(socks, s)
}

// drain moves what the kprobes recorded into d.listeners.
func (d *diagReader) drain() error {
	var cursor ebpf.MapBatchCursor
	for {
		n, err := d.addrs.BatchLookupAndDelete(&cursor, d.keys, d.vals, nil)
		for i := range n {
			d.listeners[d.keys[i]] = d.vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read socket addresses: %w", err)
		}
	}
}

// synQueues gives each listener of socks the number of request sockets
// whose listener it is: one on its address, else one on the wildcard of
// its family, else, for IPv4, an IPv6 wildcard one.
func synQueues(socks []Socket, reqs []pendingReq) {
	if len(reqs) == 0 {
		return
	}
	type key struct {
		ap netip.AddrPort
		v4 bool
	}
	count := map[key]uint32{}
	for _, r := range reqs {
		count[key{r.local, r.v4}]++
	}
	for i := range socks {
		s := &socks[i]
		if s.State != Listen {
			continue
		}
		s.SynQueue = 0
		ip, port := s.Local.Addr(), s.Local.Port()
		v4 := ip.Is4()
		for k, n := range count {
			if k.ap.Port() != port {
				continue
			}
			switch {
			case k.v4 == v4 && k.ap.Addr() == ip:
				s.SynQueue += n
			case k.v4 == v4 && ip.IsUnspecified() && !listens(socks, k.ap, v4):
				s.SynQueue += n
			case k.v4 && !v4 && ip.IsUnspecified() && !listens(socks, k.ap, true) &&
				!listens(socks, netip.AddrPortFrom(netip.IPv4Unspecified(), port), true):
				s.SynQueue += n
			}
		}
	}
}

// listens reports whether socks holds a listener on ap of the family.
func listens(socks []Socket, ap netip.AddrPort, v4 bool) bool {
	for i := range socks {
		if s := &socks[i]; s.State == Listen && s.Local == ap && s.Local.Addr().Is4() == v4 {
			return true
		}
	}
	return false
}
