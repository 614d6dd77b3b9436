package timewait

import (
	"fmt"
	"time"

	"github.com/nettrace/nettrace/internal/netns"
	"github.com/nettrace/nettrace/internal/output"
)

// Warning thresholds.
const (
	// RangeWarnPct is the share of the ephemeral port range that TIME_WAIT
	// may hold toward one destination before it is flagged.
	RangeWarnPct = 50
	// ServerTimeWaitWarn is how many TIME_WAIT sockets a server row may
	// collect before closing first is flagged.
	ServerTimeWaitWarn = 100
	// CloseWaitWarn is how many CLOSE_WAIT sockets a row may gather before
	// growth is flagged.
	CloseWaitWarn = 5
)

// warnings finds the problems of an interval.
func warnings(s *Snapshot, sys map[uint64]Sysctls) []output.Warning {
	var out []output.Warning
	multi := len(s.Netns) > 1
	where := func(ns uint64) string {
		if multi {
			return " in " + netns.Name(ns)
		}
		return ""
	}
	for _, r := range s.Rows {
		sc := sys[r.netns]
		process := ""
		if r.Process != "" {
			process = " (" + r.Process + ")"
		}
		if r.id.side == Client && r.RangePct > RangeWarnPct &&
			(sc.TWReuse == 0 || (sc.TWReuse == 2 && !addr16(r.id.remote).IsLoopback())) {
			out = append(out, output.Warning{
				Code: "time_wait_holds_port_range",
				Message: fmt.Sprintf("TIME_WAIT holds %.0f%% of the ephemeral port range (%d of %d ports) toward %s%s and net.ipv4.tcp_tw_reuse=%d: new connects there fail with EADDRNOTAVAIL or spin in port search",
					r.RangePct, int(r.RangePct*float64(sc.Ports())/100+0.5), sc.Ports(), r.Remote, where(r.netns), sc.TWReuse),
				Fix: "sysctl -w net.ipv4.tcp_tw_reuse=1 (persist it in /etc/sysctl.d/); widen net.ipv4.ip_local_port_range; reuse connections (keep-alive, pooling)",
			})
		}
		if r.id.side == Server && r.TimeWait >= ServerTimeWaitWarn {
			out = append(out, output.Warning{
				Code: "server_closes_first",
				Message: fmt.Sprintf("server %s%s%s closes first and holds %d TIME_WAIT sockets toward clients %s (%.1f new/s)",
					r.Local, where(r.netns), process, r.TimeWait, addr16(r.id.remote), r.CreatedPerS),
				Fix: "let clients close: keep connections alive (HTTP/1.1 keep-alive, e.g. nginx keepalive_timeout/keepalive_requests) instead of closing after each response",
			})
		}
		if r.CloseWait >= CloseWaitWarn && (r.cwGrew || r.cwHeld >= CloseWaitWarn) {
			how := "grew to"
			if !r.cwGrew {
				how = "stays at"
			}
			out = append(out, output.Warning{
				Code: "close_wait_growing",
				Message: fmt.Sprintf("CLOSE_WAIT %s %d between %s and %s%s%s: the peer closed and the application has not called close()",
					how, r.CloseWait, r.Local, r.Remote, where(r.netns), process),
				Fix: "close the socket when read() returns 0 (EOF) and on every error path; add idle timeouts to connection pools",
			})
		}
	}
	if s.Header.Overflows > 0 {
		maxTW := s.Header.Sysctls.MaxTWBuckets
		fix := "raise net.ipv4.tcp_max_tw_buckets (sysctl -w, persist it in /etc/sysctl.d/), or create fewer TIME_WAIT sockets (keep-alive, tcp_tw_reuse=1)"
		if !multi && maxTW > 0 {
			fix = fmt.Sprintf("sysctl -w net.ipv4.tcp_max_tw_buckets=%d (persist it in /etc/sysctl.d/), or create fewer TIME_WAIT sockets (keep-alive, tcp_tw_reuse=1)", 2*maxTW)
		}
		out = append(out, output.Warning{
			Code:    "tw_bucket_overflow",
			Message: fmt.Sprintf("%d closing sockets skipped TIME_WAIT because net.ipv4.tcp_max_tw_buckets was reached (TcpExt.TCPTimeWaitOverflow): late segments of those connections can hit new ones", s.Header.Overflows),
			Fix:     fix,
		})
	}
	return out
}

// Frame returns the interval as an output frame.
func (t *Tracer) Frame(now time.Time) (output.Frame, error) {
	s, err := t.Snapshot()
	if err != nil {
		return output.Frame{}, err
	}
	h := s.Header
	secs := h.Interval.Seconds()
	rate := func(n uint64) float64 {
		if secs <= 0 {
			return 0
		}
		return float64(n) / secs
	}
	var fields []output.Field
	if h.NetnsName != "" {
		fields = append(fields, output.Field{Key: "netns", Value: h.NetnsName})
	} else {
		fields = append(fields, output.Field{Key: "namespaces", Value: h.Namespaces})
	}
	fields = append(fields,
		output.Field{Key: "time_wait", Label: "TIME_WAIT", Value: h.TimeWait},
		output.Field{Key: "created", Value: h.Created},
		output.Field{Key: "created_per_s", Label: "created/s", Value: rate(h.Created)},
		output.Field{Key: "expired", Value: h.Expired},
		output.Field{Key: "expired_per_s", Label: "expired/s", Value: rate(h.Expired)},
		output.Field{Key: "killed", Value: h.Killed},
		output.Field{Key: "reused", Value: h.Reused},
		output.Field{Key: "reused_per_s", Label: "reused/s", Value: rate(h.Reused)},
		output.Field{Key: "tw_overflows", Label: "tw overflows", Value: h.Overflows},
	)
	if h.NetnsName != "" {
		sc := h.Sysctls
		fields = append(fields,
			output.Field{Key: "max_tw_buckets", Label: "tcp_max_tw_buckets", Value: sc.MaxTWBuckets},
			output.Field{Key: "tw_reuse", Label: "tcp_tw_reuse", Value: sc.TWReuse},
			output.Field{Key: "fin_timeout_s", Label: "tcp_fin_timeout", Value: sc.FinTimeout, Format: "%ds"},
			output.Field{Key: "port_range", Label: "ports", Value: fmt.Sprintf("%d-%d", sc.PortLo, sc.PortHi)},
		)
	}
	fields = append(fields,
		output.Field{Key: "fin_wait1", Label: "FIN_WAIT1", Value: h.FinWait1},
		output.Field{Key: "fin_wait2", Label: "FIN_WAIT2", Value: h.FinWait2},
		output.Field{Key: "close_wait", Label: "CLOSE_WAIT", Value: h.CloseWait},
		output.Field{Key: "last_ack", Label: "LAST_ACK", Value: h.LastAck},
		output.Field{Key: "closing", Label: "CLOSING", Value: h.Closing},
		output.Field{Key: "dropped", Value: h.Dropped},
	)
	tiers := t.objs.Tiers()
	for _, c := range t.tab.Choices() {
		tiers[c.Hook] = c.Method
	}
	f := output.Frame{Tracer: "timewait", Time: s.Time, Interval: h.Interval, Tiers: tiers,
		Header: fields, Warnings: s.Warnings, Sort: "time_wait"}
	if t.opts.AllNetns || len(t.opts.Netns) > 1 {
		rows := make([]NetnsRow, len(s.Rows))
		for i, r := range s.Rows {
			rows[i] = NetnsRow{Netns: netns.Name(r.netns), Row: r}
		}
		f.Rows = rows
	} else {
		f.Rows = s.Rows
	}
	return f, nil
}
