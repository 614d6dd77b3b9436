package ports

import (
	"fmt"

	"github.com/nettrace/nettrace/internal/output"
)

// Warning codes.
const (
	WarnRangeUsed     = "port_range_nearly_used"
	WarnAddrNotAvail  = "eaddrnotavail"
	WarnSlowAlloc     = "slow_port_allocation"
	WarnTimeWaitRange = "time_wait_holds_range"
	WarnBindFirst     = "bind_before_connect"
	WarnDropped       = "records_dropped"
)

// Thresholds of the warnings.
const (
	RangeUsedPct   = 80   // ports held toward one destination, % of the range
	SlowAllocUS    = 1000 // p99 allocation latency, µs
	TimeWaitPct    = 50   // TIME_WAIT toward one destination, % of the range, with tcp_tw_reuse=0
	maxPerWarnCode = 5    // rows named per warning code; the rest are summed up
)

func rangeFix(set Settings) string {
	fix := `widen the range: sysctl -w net.ipv4.ip_local_port_range="10000 65535"`
	if set.TWReuse == 0 {
		fix += "; let connects reuse TIME_WAIT ports: sysctl -w net.ipv4.tcp_tw_reuse=1"
	}
	return fix + "; reuse connections (HTTP keep-alive, connection pooling); or connect from more source addresses"
}

// warnings finds the problems of one interval; rows are sorted by destination.
func warnings(rows []*Row, set Settings, drops Drops, latency string) []output.Warning {
	var ws []output.Warning
	count := map[string]int{}
	add := func(code, msg, fix string) {
		count[code]++
		if count[code] <= maxPerWarnCode {
			ws = append(ws, output.Warning{Code: code, Message: msg, Fix: fix})
		}
	}
	size := set.Size()
	what := "port allocation (time in inet_hash_connect)"
	switch latency {
	case LatencySynSent:
		what = "connect setup (SYN_SENT until connect() returns, which includes the port search)"
	case LatencySynAnswer:
		what = "connect setup (SYN_SENT until the answer, which includes the port search)"
	}
	for _, r := range rows {
		if 100*r.PortsInUse >= RangeUsedPct*size {
			add(WarnRangeUsed, fmt.Sprintf("%s holds %d of the %d local ports of ip_local_port_range %d-%d (%.0f%%): %d ESTABLISHED, %d TIME_WAIT, %d other",
				r.Dest, r.PortsInUse, size, set.RangeLow, set.RangeHigh, r.RangePct, r.Established, r.TimeWait, r.OtherStates), rangeFix(set))
		}
		if r.AddrNA > 0 {
			add(WarnAddrNotAvail, fmt.Sprintf("%d connect() calls to %s failed with EADDRNOTAVAIL: no free local port toward it", r.AddrNA, r.Dest), rangeFix(set))
		}
		if r.LatP99 > SlowAllocUS {
			add(WarnSlowAlloc, fmt.Sprintf("%s toward %s is slow: p99 %.2f ms, max %.2f ms; the ephemeral port search walks a range that is mostly in use",
				what, r.Dest, r.LatP99/1e3, r.LatMax/1e3), rangeFix(set))
		}
		if set.TWReuse == 0 && 100*r.TimeWait >= TimeWaitPct*size {
			add(WarnTimeWaitRange, fmt.Sprintf("TIME_WAIT holds %d of the %d local ports toward %s and tcp_tw_reuse=0, so new connects cannot reuse them",
				r.TimeWait, size, r.Dest),
				"sysctl -w net.ipv4.tcp_tw_reuse=1 (safe for outgoing connections with TCP timestamps); or keep connections open (keep-alive, pooling)")
		}
		if r.BoundFirst > 0 {
			add(WarnBindFirst, fmt.Sprintf("%d connects to %s used sockets bound to port 0 before connect(): bind() takes a port for every destination, so ports are no longer shared between destinations",
				r.BoundFirst, r.Dest),
				"do not bind() client sockets; to pick a source address, set IP_BIND_ADDRESS_NO_PORT before bind() so the port is chosen at connect() per destination")
		}
	}
	for code, n := range count {
		if n > maxPerWarnCode {
			ws = append(ws, output.Warning{Code: code, Message: fmt.Sprintf("and %d more destinations", n-maxPerWarnCode)})
		}
	}
	if d := drops.Total(); d > 0 {
		ws = append(ws, output.Warning{Code: WarnDropped,
			Message: fmt.Sprintf("%d records lost since the start: maps full (destinations by process %d, in flight %d, calls %d), ring buffer full (events %d)",
				d, drops.Dests, drops.Inflight, drops.Calls, drops.Events),
			Fix: "narrow the trace with -p, --comm or --dst"})
	}
	return ws
}
