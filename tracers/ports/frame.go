package ports

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nettrace/nettrace/internal/hist"
	"github.com/nettrace/nettrace/internal/netns"
	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/internal/settings"
	"github.com/nettrace/nettrace/internal/socktable"
)

// Row is one destination in one interval.
type Row struct {
	Dest         string  `json:"dest" col:"DESTINATION"`
	ConnectsPerS float64 `json:"connects_per_s" col:"CONN/s,%.1f"`
	Connects     uint64  `json:"connects" col:"-"`
	AddrNAPerS   float64 `json:"eaddrnotavail_per_s" col:"EADDRNOTAVAIL/s,%.1f"`
	AddrNA       uint64  `json:"eaddrnotavail" col:"-"`
	ErrorsPerS   float64 `json:"errors_per_s" col:"OTHER ERR/s,%.1f"`
	Errors       uint64  `json:"errors" col:"-"`
	LatP50       float64 `json:"latency_p50_us" col:"LAT p50 us,%.1f"`
	LatP99       float64 `json:"latency_p99_us" col:"p99,%.1f"`
	LatMax       float64 `json:"latency_max_us" col:"max,%.1f"`
	Established  int     `json:"established" col:"ESTAB"`
	TimeWait     int     `json:"time_wait" col:"TIME_WAIT"`
	OtherStates  int     `json:"other_states" col:"OTHER"`
	PortsInUse   int     `json:"ports_in_use" col:"PORTS"`
	RangePct     float64 `json:"range_used_pct" col:"RANGE%,%.0f"`
	BoundFirst   uint64  `json:"bound_before_connect" col:"-"`
	Process      string  `json:"top_process" col:"TOP PROCESS"`
	TopComm      string  `json:"top_comm" col:"-"`
	TopPID       int     `json:"top_pid" col:"-"`
}

// Settings are the namespace's port allocation sysctls.
type Settings struct {
	RangeLow, RangeHigh int // net.ipv4.ip_local_port_range
	TWReuse             int // net.ipv4.tcp_tw_reuse
}

// Size is the number of ports in the range.
func (s Settings) Size() int { return s.RangeHigh - s.RangeLow + 1 }

// InRange reports whether port is an ephemeral port.
func (s Settings) InRange(port uint16) bool {
	return int(port) >= s.RangeLow && int(port) <= s.RangeHigh
}

// ReadSettings reads the port sysctls of the network namespace at path
// ("" = the calling thread's).
func ReadSettings(path string) (Settings, error) {
	var s Settings
	err := netns.Do(path, func() error {
		r, err := settings.ReadSysctl("net.ipv4.ip_local_port_range")
		if err != nil {
			return err
		}
		if _, err := fmt.Sscan(r, &s.RangeLow, &s.RangeHigh); err != nil {
			return fmt.Errorf("parse ip_local_port_range %q: %w", r, err)
		}
		v, err := settings.ReadSysctl("net.ipv4.tcp_tw_reuse")
		if err != nil {
			return err
		}
		s.TWReuse, err = strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("parse tcp_tw_reuse %q: %w", v, err)
		}
		return nil
	})
	return s, err
}

// Held counts the sockets toward one destination that hold a local port.
type Held struct {
	Established, TimeWait, Other int
	Ports                        int // distinct local ports inside the ephemeral range
}

// Ports is the socket table seen from the port range.
type Ports struct {
	ByDest   map[netip.AddrPort]Held
	InUse    int // distinct local ports inside the range, any socket
	TimeWait int // TIME_WAIT sockets in the namespace
}

// CountPorts groups a socket table by destination: every socket except
// listeners whose local port is inside the ephemeral range.
func CountPorts(socks []socktable.Socket, set Settings) Ports {
	p := Ports{ByDest: map[netip.AddrPort]Held{}}
	ports := map[netip.AddrPort]map[uint16]struct{}{}
	all := map[uint16]struct{}{}
	for _, s := range socks {
		if s.State == socktable.TimeWait {
			p.TimeWait++
		}
		lport := s.Local.Port()
		if !set.InRange(lport) {
			continue
		}
		all[lport] = struct{}{}
		if s.State == socktable.Listen {
			continue
		}
		d := netip.AddrPortFrom(s.Remote.Addr().Unmap(), s.Remote.Port())
		h := p.ByDest[d]
		switch s.State {
		case socktable.Established:
			h.Established++
		case socktable.TimeWait:
			h.TimeWait++
		default:
			h.Other++
		}
		if ports[d] == nil {
			ports[d] = map[uint16]struct{}{}
		}
		ports[d][lport] = struct{}{}
		h.Ports = len(ports[d])
		p.ByDest[d] = h
	}
	p.InUse = len(all)
	return p
}

// Frame is one interval: header, warnings and one row per destination.
func (t *Tracer) Frame(now time.Time) (output.Frame, error) {
	cur, err := t.Snapshot()
	if err != nil {
		return output.Frame{}, err
	}
	prev := t.prev
	t.prev = cur
	set, err := ReadSettings(t.opts.Netns)
	if err != nil {
		return output.Frame{}, err
	}
	tab, err := t.tab.Read(t.opts.Netns)
	if err != nil {
		return output.Frame{}, err
	}
	held := CountPorts(tab.Sockets, set)
	secs := cur.Time.Sub(prev.Time).Seconds()
	rate := func(n uint64) float64 {
		if secs <= 0 {
			return 0
		}
		return float64(n) / secs
	}
	f := output.Frame{
		Tracer:   "ports",
		Time:     now,
		Interval: cur.Time.Sub(prev.Time),
		Tiers:    t.objs.Tiers(),
		Sort:     "connects_per_s",
	}

	rows := map[netip.AddrPort]*Row{}
	var total, failed uint64
	for d, c := range cur.Dests {
		if !t.opts.Dst.Match(d) {
			continue
		}
		p := prev.Dests[d]
		if p == nil {
			p = &Counts{}
		}
		r := &Row{Dest: d.String()}
		r.Connects = c.Connects - p.Connects
		r.AddrNA = c.AddrNotAvail - p.AddrNotAvail
		r.Errors = c.Errors - p.Errors
		r.BoundFirst = c.BoundFirst - p.BoundFirst
		if r.Connects == 0 && r.AddrNA == 0 && r.Errors == 0 {
			continue
		}
		lat := c.Latency.Sub(&p.Latency)
		r.LatP50 = lat.Quantile(0.50) / 1e3
		r.LatP99 = lat.Quantile(0.99) / 1e3
		r.LatMax = intervalMax(&lat, c.MaxNS, p.MaxNS) / 1e3
		// Interpolation inside a log2 slot can overshoot the exact maximum.
		r.LatP50, r.LatP99 = min(r.LatP50, r.LatMax), min(r.LatP99, r.LatMax)
		r.ConnectsPerS, r.AddrNAPerS, r.ErrorsPerS = rate(r.Connects), rate(r.AddrNA), rate(r.Errors)
		r.TopPID, r.TopComm = topProc(cur.Procs[d], prev.Procs[d])
		if r.TopPID != 0 {
			r.Process = r.TopComm + "[" + strconv.Itoa(r.TopPID) + "]"
		}
		total += r.Connects
		failed += r.AddrNA + r.Errors
		rows[d] = r
	}
	// Destinations that hold ports but had no connects: only without a
	// process filter, since TIME_WAIT sockets have no owner.
	for d, h := range held.ByDest {
		r := rows[d]
		if r == nil {
			if t.opts.PID != 0 || t.opts.Comm != "" || !t.opts.Dst.Match(d) {
				continue
			}
			r = &Row{Dest: d.String()}
			rows[d] = r
		}
		r.Established, r.TimeWait, r.OtherStates, r.PortsInUse = h.Established, h.TimeWait, h.Other, h.Ports
		r.RangePct = 100 * float64(h.Ports) / float64(set.Size())
	}

	var errs []string
	errnos := map[string]uint64{}
	for e, n := range cur.Errnos {
		if d := n - prev.Errnos[e]; d > 0 {
			errnos[errnoName(e)] = d
			errs = append(errs, fmt.Sprintf("%s:%d", errnoName(e), d))
		}
	}
	sort.Strings(errs)
	drops := cur.Drops.Total()
	f.Header = []output.Field{
		{Key: "netns", Value: netns.Name(t.netnsID)},
		{Key: "port_range", Label: "ip_local_port_range", Value: fmt.Sprintf("%d-%d", set.RangeLow, set.RangeHigh)},
		{Key: "port_range_size", Label: "ports", Value: set.Size()},
		{Key: "tcp_tw_reuse", Value: set.TWReuse},
		{Key: "connects_per_s", Label: "connects/s", Value: rate(total)},
		{Key: "connects", Value: total},
		{Key: "failures_per_s", Label: "failures/s", Value: rate(failed)},
		{Key: "failures", Value: failed},
		{Key: "failures_by_errno", Label: "by errno", Value: errnoCounts{errnos, strings.Join(errs, " ")}},
		{Key: "ports_in_use", Label: "ports in use", Value: held.InUse},
		{Key: "time_wait", Label: "TIME_WAIT", Value: held.TimeWait},
		{Key: "latency", Label: "latency is", Value: t.Latency()},
		{Key: "dropped", Value: drops},
	}
	out := make([]*Row, 0, len(rows))
	for _, r := range rows {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dest < out[j].Dest })
	f.Rows = out
	f.Warnings = warnings(out, set, cur.Drops, t.Latency())
	return f, nil
}

// errnoCounts prints as "EADDRNOTAVAIL:3 ECONNREFUSED:1" in tables and as an
// object in JSON.
type errnoCounts struct {
	m map[string]uint64
	s string
}

func (e errnoCounts) String() string {
	if e.s == "" {
		return "-"
	}
	return e.s
}

// MarshalJSON writes the counts as an object.
func (e errnoCounts) MarshalJSON() ([]byte, error) {
	keys := make([]string, 0, len(e.m))
	for k := range e.m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%d", k, e.m[k])
	}
	b.WriteByte('}')
	return []byte(b.String()), nil
}

var errnoNames = map[syscall.Errno]string{
	syscall.EADDRNOTAVAIL: "EADDRNOTAVAIL", syscall.ECONNREFUSED: "ECONNREFUSED", syscall.ETIMEDOUT: "ETIMEDOUT",
	syscall.ENETUNREACH: "ENETUNREACH", syscall.EHOSTUNREACH: "EHOSTUNREACH", syscall.ECONNRESET: "ECONNRESET",
	syscall.EADDRINUSE: "EADDRINUSE", syscall.EACCES: "EACCES", syscall.EPERM: "EPERM", syscall.EINVAL: "EINVAL",
	syscall.ENOBUFS: "ENOBUFS", syscall.ENOMEM: "ENOMEM", syscall.EAFNOSUPPORT: "EAFNOSUPPORT", syscall.EINTR: "EINTR",
	syscall.ENETDOWN: "ENETDOWN", syscall.EHOSTDOWN: "EHOSTDOWN", syscall.EPROTO: "EPROTO",
}

func errnoName(e syscall.Errno) string {
	if n, ok := errnoNames[e]; ok {
		return n
	}
	return "errno_" + strconv.Itoa(int(e))
}

// intervalMax is the interval's largest latency: exact when the cumulative
// maximum grew in the interval, else the upper bound of the interval's
// highest histogram slot (capped by the maximum so far).
func intervalMax(lat *hist.Log2, cur, prev uint64) float64 {
	if lat.Count() == 0 {
		return 0
	}
	if cur > prev {
		return float64(cur)
	}
	return min(lat.MaxBound(), float64(cur))
}

// topProc returns the process with the most connects in the interval.
func topProc(cur, prev []Proc) (int, string) {
	before := map[int]uint64{}
	for _, p := range prev {
		before[p.PID] = p.Connects
	}
	var best Proc
	var bestN uint64
	for _, p := range cur {
		if n := p.Connects - before[p.PID]; n > bestN || n == bestN && best.PID == 0 && n > 0 {
			best, bestN = p, n
		}
	}
	return best.PID, best.Comm
}
