package timewait

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/netns"
	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/internal/settings"
	"github.com/nettrace/nettrace/internal/socktable"
)

// Lifetime is how long a socket stays in TIME_WAIT (TCP_TIMEWAIT_LEN, fixed
// in the kernel); ages are Lifetime minus the timer left.
const Lifetime = 60 * time.Second

// Side is our end of a connection.
type Side uint8

// The sides. A row's side decides which port it aggregates: the local port
// of a client row (one row per destination), the remote port of a server
// row (one row per listening port and client address).
const (
	Client Side = 1 // we connected
	Server Side = 2 // we accepted
)

func (s Side) String() string {
	switch s {
	case Client:
		return "client"
	case Server:
		return "server"
	}
	return "unknown"
}

// sideOf tells which end of a connection we are, the same way as row_key_of
// in bpf/timewait.bpf.c: a listening local port makes us the server, a
// listening remote port (loopback) the client; otherwise the lower port is
// taken for the server's.
func sideOf(listen *portSet, lport, rport uint16) Side {
	switch {
	case listen.has(lport):
		return Server
	case listen.has(rport):
		return Client
	case lport < rport:
		return Server
	}
	return Client
}

// rowID is a row: a namespace, a side, and the endpoints (16-byte form,
// IPv4 mapped) with the many-valued port left out (zero). Flat, so that
// hashing 100,000 sockets a walk stays cheap.
type rowID struct {
	netns         uint64
	local, remote [16]byte
	lport, rport  uint16
	side          Side
}

func newRowID(ns uint64, listen *portSet, t tuple) rowID {
	id := rowID{netns: ns, side: sideOf(listen, t.lp, t.rp), local: t.l, remote: t.r}
	if id.side == Server {
		id.lport = t.lp
	} else {
		id.rport = t.rp
	}
	return id
}

func (k rawKey) id() rowID {
	addr := func(b [16]byte) [16]byte {
		if k.Family == unix.AF_INET {
			return netip.AddrFrom4([4]byte(b[:4])).As16()
		}
		return b
	}
	return rowID{netns: uint64(k.Netns), side: Side(k.Side), local: addr(k.Laddr), lport: k.Lport,
		remote: addr(k.Raddr), rport: k.Rport}
}

func addr16(b [16]byte) netip.Addr { return netip.AddrFrom16(b).Unmap() }

func endpoint(a netip.Addr, port uint16) string {
	if port == 0 {
		if a.Is6() {
			return "[" + a.String() + "]:*"
		}
		return a.String() + ":*"
	}
	return netip.AddrPortFrom(a, port).String()
}

// tuple is a connection's 4-tuple, flat (addresses in 16-byte form).
type tuple struct {
	l, r   [16]byte
	lp, rp uint16
}

func tupleOf(s *socktable.Socket) tuple {
	return tuple{s.Local.Addr().As16(), s.Remote.Addr().As16(), s.Local.Port(), s.Remote.Port()}
}

// nsState is what the previous interval left for one namespace.
type nsState struct {
	id     uint64
	path   string
	time   time.Time
	tw     []twSock       // TIME_WAIT sockets sorted by address (snapshot tier only)
	cw     map[tuple]bool // CLOSE_WAIT sockets
	cwRow  map[rowID]int
	listen *portSet
	stats  map[string]uint64  // TcpExt counters
	owned  []socktable.Socket // LISTEN and CLOSE_WAIT sockets, to find their processes
}

// observation is one read of a namespace.
type observation struct {
	snap  *socktable.Snapshot
	stats map[string]uint64
	sys   Sysctls
}

// Sysctls are the settings of one namespace that decide TIME_WAIT's cost.
type Sysctls struct {
	TWReuse      int    // net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only
	MaxTWBuckets int64  // net.ipv4.tcp_max_tw_buckets
	FinTimeout   int    // net.ipv4.tcp_fin_timeout, seconds
	PortLo       uint16 // net.ipv4.ip_local_port_range
	PortHi       uint16
}

// Ports is the size of the ephemeral port range.
func (s Sysctls) Ports() int { return int(s.PortHi) - int(s.PortLo) + 1 }

// closingStates are the sockets the tracer reads: the closing states, and
// the listeners that tell the server side and its process.
var closingStates = socktable.States(socktable.TimeWait, socktable.FinWait1, socktable.FinWait2,
	socktable.CloseWait, socktable.LastAck, socktable.Closing, socktable.Listen)

// observe reads a namespace. The snapshot is the tracer's own, reused by the
// next observe.
func (t *Tracer) observe(path string) (*observation, error) {
	if err := t.tab.ReadInto(&t.snap, path, closingStates); err != nil {
		return nil, err
	}
	o := &observation{snap: &t.snap}
	err := netns.Do(path, func() error {
		st, err := settings.ReadNetstat(netns.ProcNet("netstat"))
		if err != nil {
			return err
		}
		o.stats = st["TcpExt"]
		o.sys, err = readSysctls()
		return err
	})
	if err != nil {
		return nil, err
	}
	return o, nil
}

func readSysctls() (Sysctls, error) {
	var s Sysctls
	ints := map[string]*int64{}
	var reuse, maxtw, fin int64
	ints["net.ipv4.tcp_tw_reuse"] = &reuse
	ints["net.ipv4.tcp_max_tw_buckets"] = &maxtw
	ints["net.ipv4.tcp_fin_timeout"] = &fin
	for name, p := range ints {
		v, err := settings.ReadSysctl(name)
		if err != nil {
			return s, err
		}
		if *p, err = strconv.ParseInt(v, 10, 64); err != nil {
			return s, fmt.Errorf("parse %s %q: %w", name, v, err)
		}
	}
	r, err := settings.ReadSysctl("net.ipv4.ip_local_port_range")
	if err != nil {
		return s, err
	}
	lo, hi, _ := strings.Cut(r, " ")
	l, err1 := strconv.ParseUint(lo, 10, 16)
	h, err2 := strconv.ParseUint(hi, 10, 16)
	if err := errors.Join(err1, err2); err != nil {
		return s, fmt.Errorf("parse net.ipv4.ip_local_port_range %q: %w", r, err)
	}
	return Sysctls{TWReuse: int(reuse), MaxTWBuckets: maxtw, FinTimeout: int(fin), PortLo: uint16(l), PortHi: uint16(h)}, nil
}

// refresh reads every namespace and makes that the previous state, telling
// the kernel side which ports listen.
func (t *Tracer) refresh(paths map[uint64]string, now time.Time) error {
	for id, p := range paths {
		o, err := t.observe(p)
		if err != nil {
			return err
		}
		st := t.state(id, p, o)
		t.ns[id] = st
		if err := t.syncListen(st); err != nil {
			return err
		}
	}
	return nil
}

// state turns an observation into the previous-state form. In the snapshot
// tier it keeps the TIME_WAIT sockets of the namespace's previous state,
// which Snapshot replaces with this walk's after the diff, or, for a
// namespace seen the first time, takes them from the observation.
func (t *Tracer) state(id uint64, path string, o *observation) *nsState {
	st := &nsState{id: id, path: path, time: o.snap.Time, cw: map[tuple]bool{}, cwRow: map[rowID]int{},
		listen: &portSet{}, stats: o.stats}
	var seed []twSock
	prev := t.ns[id]
	for i := range o.snap.Sockets {
		s := &o.snap.Sockets[i]
		switch s.State {
		case socktable.TimeWait:
			if !t.exact && prev == nil {
				seed = append(seed, twSock{sk: cmp.Or(s.Sock, s.Cookie), tp: tupleOf(s), left: s.Remaining})
			}
		case socktable.CloseWait:
			st.owned = append(st.owned, *s)
		case socktable.Listen:
			st.listen.add(s.Local.Port())
			st.owned = append(st.owned, *s)
		}
	}
	for i := range st.owned { // the sides need every listener first
		if s := &st.owned[i]; s.State == socktable.CloseWait {
			tp := tupleOf(s)
			st.cw[tp] = true
			st.cwRow[newRowID(id, st.listen, tp)]++
		}
	}
	switch {
	case t.exact:
	case prev == nil:
		st.tw = t.tw.sortSockets(seed)
	default:
		st.tw = prev.tw
	}
	return st
}

// portKey mirrors struct port_key in bpf/timewait.bpf.c.
type portKey struct {
	Netns uint32
	Port  uint16
	Pad   uint16
}

// syncListen makes the kernel's listen_ports of a namespace match st.
func (t *Tracer) syncListen(st *nsState) error {
	m := t.objs.Maps["listen_ports"]
	var (
		k     portKey
		v     uint8
		stale []portKey
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if uint64(k.Netns) == st.id && !st.listen.has(k.Port) {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read listening ports: %w", err)
	}
	for _, k := range stale {
		_ = m.Delete(k)
	}
	var err error
	st.listen.each(func(p uint16) {
		if err == nil {
			if perr := m.Put(portKey{Netns: uint32(st.id), Port: p}, uint8(1)); perr != nil {
				err = fmt.Errorf("store listening port %d: %w", p, perr)
			}
		}
	})
	return err
}

// AllNamespaces finds every network namespace that a process or a file
// under /var/run/netns holds, by inode, with one path to enter it.
func AllNamespaces() (map[uint64]string, error) {
	pids, err := filepath.Glob("/proc/[0-9]*/ns/net")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	named, _ := filepath.Glob("/var/run/netns/*")
	out := map[uint64]string{}
	for _, p := range append(named, pids...) {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			continue // gone, or not a namespace
		}
		if _, ok := out[st.Ino]; !ok {
			out[st.Ino] = p
		}
	}
	if len(out) == 0 {
		return nil, errors.New("list network namespaces: none readable in /proc")
	}
	return out, nil
}

// Header is the interval's summary over the watched namespaces.
type Header struct {
	Namespaces int
	TimeWait   int // TIME_WAIT sockets now
	FinWait1   int
	FinWait2   int // full sockets and FIN_WAIT2 timewait sockets
	CloseWait  int
	LastAck    int
	Closing    int
	Created    uint64 // TIME_WAIT sockets created in the interval
	Expired    uint64 // TIME_WAIT timers that ran out
	Killed     uint64 // TIME_WAIT sockets ended early: reused, RST, SYN
	Reused     uint64 // TcpExt.TWRecycled: connect() took over a TIME_WAIT 4-tuple
	Overflows  uint64 // TcpExt.TCPTimeWaitOverflow: TIME_WAIT skipped, tcp_max_tw_buckets reached
	Dropped    uint64 // row updates the kernel side could not store (rows map full), since start
	Sysctls    Sysctls
	NetnsName  string // the namespace, when one
	Interval   time.Duration
}

// Row is one (local, remote) pair with its closing sockets.
type Row struct {
	Local        string  `json:"local" col:"LOCAL"`
	Remote       string  `json:"remote" col:"REMOTE"`
	Side         string  `json:"side" col:"SIDE"`
	TimeWait     int     `json:"time_wait" col:"TIME_WAIT"`
	Created      uint64  `json:"created" col:"-"`
	CreatedPerS  float64 `json:"created_per_s" col:"NEW/s,%.1f"`
	Expired      uint64  `json:"expired" col:"-"`
	ExpiredPerS  float64 `json:"expired_per_s" col:"EXPIRED/s,%.1f"`
	Killed       uint64  `json:"killed" col:"-"`
	AgeP50       float64 `json:"age_p50_s" col:"AGE p50,%.0fs"`
	AgeMax       float64 `json:"age_max_s" col:"AGE max,%.0fs"`
	RangePct     float64 `json:"port_range_pct" col:"PORTS%,%.1f"`
	ClosedLocal  uint64  `json:"closed_local_first" col:"-"`
	ClosedRemote uint64  `json:"closed_remote_first" col:"-"`
	ClosedFirst  string  `json:"closed_first" col:"CLOSED FIRST"`
	Process      string  `json:"process" col:"PROCESS"`
	CloseWait    int     `json:"close_wait" col:"CLOSE_WAIT"`
	FinWait2     int     `json:"fin_wait2" col:"FIN_WAIT2"`

	netns  uint64
	id     rowID
	cwGrew bool            // more CLOSE_WAIT than at the previous snapshot
	cwHeld int             // CLOSE_WAIT sockets already there at the previous snapshot
	ages   [ageSlots]int32 // TIME_WAIT sockets by whole seconds of age
}

const ageSlots = int(Lifetime/time.Second) + 1

// NetnsRow is a row with its namespace, when several are watched.
type NetnsRow struct {
	Netns string `json:"netns" col:"NETNS"`
	Row
}

// Snapshot is one interval.
type Snapshot struct {
	Time     time.Time
	Header   Header
	Rows     []Row
	Netns    []uint64 // the namespaces read
	Warnings []output.Warning
}

// Snapshot reads every namespace, compares it with the previous interval,
// and returns the interval's figures.
func (t *Tracer) Snapshot() (*Snapshot, error) {
	paths, err := t.namespaces()
	if err != nil {
		return nil, err
	}
	deltas, err := t.readRows()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	snap := &Snapshot{Time: now, Header: Header{Namespaces: len(paths), Interval: now.Sub(t.last)}}
	t.last = now
	if d, err := t.dropped(); err == nil {
		snap.Header.Dropped = d
	} else {
		return nil, err
	}
	rows := map[rowID]*Row{}
	var recent [8]*Row // rows by a hash of their ports: most sockets hit one
	row := func(id rowID) *Row {
		slot := &recent[(id.lport^id.rport^uint16(id.local[15])^uint16(id.remote[15]))&7]
		if r := *slot; r != nil && r.id == id {
			return r
		}
		r := rows[id]
		if r == nil {
			r = &Row{id: id, netns: id.netns, Local: endpoint(addr16(id.local), id.lport),
				Remote: endpoint(addr16(id.remote), id.rport), Side: id.side.String()}
			rows[id] = r
		}
		*slot = r
		return r
	}
	ids := make([]uint64, 0, len(paths))
	for id := range paths {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	sys := map[uint64]Sysctls{}
	for _, id := range ids {
		path := paths[id]
		o, err := t.observe(path)
		if err != nil {
			if t.opts.AllNetns {
				continue // the namespace went away
			}
			return nil, err
		}
		prev := t.ns[id]
		cur := t.state(id, path, o)
		diff := !t.exact && prev != nil
		if prev == nil { // new namespace (--all-netns): measured from now on
			prev = cur
		}
		t.ns[id] = cur
		if err := t.syncListen(cur); err != nil {
			return nil, err
		}
		sys[id] = o.sys
		snap.Netns = append(snap.Netns, id)
		h := &snap.Header
		if len(ids) == 1 {
			h.Sysctls = o.sys
			h.NetnsName = netns.Name(id)
		}
		h.Reused += sub(cur.stats["TWRecycled"], prev.stats["TWRecycled"])
		h.Overflows += sub(cur.stats["TCPTimeWaitOverflow"], prev.stats["TCPTimeWaitOverflow"])
		elapsed := cur.time.Sub(prev.time)
		for i := range o.snap.Sockets {
			s := &o.snap.Sockets[i]
			switch s.State {
			case socktable.TimeWait:
				h.TimeWait++
				tp := tupleOf(s)
				r := row(newRowID(id, cur.listen, tp))
				r.TimeWait++
				r.ages[min(int((Lifetime-s.Remaining)/time.Second), ageSlots-1)]++
				if r.id.side == Client && tp.lp >= o.sys.PortLo && tp.lp <= o.sys.PortHi {
					r.RangePct++ // a count for now
				}
				if !diff {
					continue
				}
				t.tw.add(twSock{sk: cmp.Or(s.Sock, s.Cookie), tp: tp, left: s.Remaining}, r)
			case socktable.FinWait1:
				h.FinWait1++
			case socktable.FinWait2:
				h.FinWait2++
				row(newRowID(id, cur.listen, tupleOf(s))).FinWait2++
			case socktable.CloseWait:
				h.CloseWait++
				tp := tupleOf(s)
				r := row(newRowID(id, cur.listen, tp))
				r.CloseWait++
				if prev.cw[tp] {
					r.cwHeld++
				}
			case socktable.LastAck:
				h.LastAck++
			case socktable.Closing:
				h.Closing++
			}
		}
		if diff {
			// Gone since the previous walk: expired when its timer would
			// have run out by now, else ended early.
			cur.tw = t.tw.merge(prev.tw, func(e twSock) {
				r := row(newRowID(id, prev.listen, e.tp))
				if e.left <= elapsed+time.Second {
					r.Expired++
				} else {
					r.Killed++
				}
			})
		}
		for rid, n := range cur.cwRow {
			if n > prev.cwRow[rid] {
				row(rid).cwGrew = true
			}
		}
	}
	for id, d := range deltas {
		if _, ok := sys[id.netns]; !ok && !t.opts.AllNetns {
			continue
		}
		r := row(id)
		r.ClosedLocal += d.closedLocal
		r.ClosedRemote += d.closedRemote
		if t.exact {
			r.Created += d.created
			r.Expired += d.expired
			r.Killed += d.killed
		}
		if d.proc != "" {
			t.procs[id] = d.proc
		}
	}
	secs := snap.Header.Interval.Seconds()
	var owners map[uint64][]socktable.Process
	for _, r := range rows {
		h := &snap.Header
		h.Created += r.Created
		h.Expired += r.Expired
		h.Killed += r.Killed
		if secs > 0 {
			r.CreatedPerS = float64(r.Created) / secs
			r.ExpiredPerS = float64(r.Expired) / secs
		}
		if s, ok := sys[r.netns]; ok && r.id.side == Client && s.Ports() > 0 {
			r.RangePct = 100 * r.RangePct / float64(s.Ports())
		} else {
			r.RangePct = 0
		}
		if r.TimeWait > 0 {
			r.AgeP50, r.AgeMax = ageStats(&r.ages, r.TimeWait)
		}
		r.ClosedFirst = closedFirst(r)
		r.Process = t.procs[r.id]
		if r.Process == "" && (r.CloseWait > 0 || r.id.side == Server) && owners == nil {
			owners, _ = socktable.Owners()
		}
	}
	if owners != nil {
		t.fillOwners(rows, owners)
	}
	for _, r := range rows {
		snap.Rows = append(snap.Rows, *r)
	}
	sort.Slice(snap.Rows, func(i, j int) bool {
		a, b := snap.Rows[i], snap.Rows[j]
		if a.TimeWait != b.TimeWait {
			return a.TimeWait > b.TimeWait
		}
		if a.netns != b.netns {
			return a.netns < b.netns
		}
		if a.Local != b.Local {
			return a.Local < b.Local
		}
		return a.Remote < b.Remote
	})
	snap.Warnings = warnings(snap, sys)
	// Forget namespaces that are gone.
	for id := range t.ns {
		if _, ok := paths[id]; !ok {
			delete(t.ns, id)
		}
	}
	for id := range t.procs {
		if _, ok := t.ns[id.netns]; !ok {
			delete(t.procs, id)
		}
	}
	return snap, nil
}

// ageStats returns the median and the oldest age, in whole seconds, of n
// sockets counted by age.
func ageStats(ages *[ageSlots]int32, n int) (p50, oldest float64) {
	cum, half := 0, (n+1)/2
	p50 = -1
	for i, c := range ages {
		cum += int(c)
		if p50 < 0 && cum >= half {
			p50 = float64(i)
		}
		if c > 0 {
			oldest = float64(i)
		}
	}
	return p50, oldest
}

// closedFirst says which end closed first in the interval, or, without
// closes in the interval, what the states imply: TIME_WAIT stays with the
// end that closed first, CLOSE_WAIT with the other one.
func closedFirst(r *Row) string {
	l, rm := r.ClosedLocal, r.ClosedRemote
	switch {
	case l > 0 && rm == 0:
		return "local"
	case rm > 0 && l == 0:
		return "remote"
	case l > 0:
		return fmt.Sprintf("local %.0f%%", 100*float64(l)/float64(l+rm))
	case r.TimeWait > 0 && r.CloseWait == 0:
		return "local"
	case r.CloseWait > 0 && r.TimeWait == 0:
		return "remote"
	}
	return ""
}

// fillOwners names the process of rows without a known closer: the holder
// of a CLOSE_WAIT socket, or of the listening socket of a server row.
func (t *Tracer) fillOwners(rows map[rowID]*Row, owners map[uint64][]socktable.Process) {
	byTuple := map[rowID]uint64{}
	listeners := map[[2]uint64]uint64{} // netns, port -> inode
	for id, st := range t.ns {
		for _, s := range st.owned {
			switch {
			case s.State == socktable.CloseWait && s.Inode != 0:
				byTuple[newRowID(id, st.listen, tupleOf(&s))] = s.Inode
			case s.State == socktable.Listen && s.Inode != 0:
				listeners[[2]uint64{id, uint64(s.Local.Port())}] = s.Inode
			}
		}
	}
	for _, r := range rows {
		if r.Process != "" {
			continue
		}
		ino := byTuple[r.id]
		if ino == 0 && r.id.side == Server {
			ino = listeners[[2]uint64{r.netns, uint64(r.id.lport)}]
		}
		if ps := owners[ino]; len(ps) > 0 {
			r.Process = fmt.Sprintf("%s(%d)", ps[0].Comm, ps[0].PID)
		}
	}
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}
