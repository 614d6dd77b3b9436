package listen

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/internal/socktable"
)

// Row is one listening socket in the output.
type Row struct {
	Local         string  `json:"local" col:"LOCAL"`
	PID           int     `json:"pid" col:"PID"`
	Comm          string  `json:"comm" col:"COMM"`
	Backlog       uint32  `json:"backlog" col:"BACKLOG"`
	BacklogSetBy  string  `json:"backlog_set_by" col:"SET BY"`
	AcceptQ       uint32  `json:"accept_queue" col:"ACCQ"`
	AcceptQPeak   uint32  `json:"accept_queue_peak" col:"PEAK"`
	SynQ          uint32  `json:"syn_queue" col:"SYNQ"`
	SynQPeak      uint32  `json:"syn_queue_peak" col:"PEAK"`
	Overflows     uint64  `json:"overflows"`
	OverflowsPerS float64 `json:"overflows_per_s" col:"OVFL/s"`
	SynOverflows  uint64  `json:"overflows_syn"`
	AckOverflows  uint64  `json:"overflows_ack"`
	SynDrops      uint64  `json:"syn_drops"`
	SynDropsPerS  float64 `json:"syn_drops_per_s" col:"SYNDROP/s"`
	AckDrops      uint64  `json:"ack_drops"`
	Cookies       uint64  `json:"syncookies" col:"COOKIES"`
	SynackRetrans uint64  `json:"synack_retransmits" col:"SYNACK RTX"`
	// Accept latency: nil where the tier does not measure it (Accepts)
	// or no accept() was measured in the interval (the quantiles).
	Accepts     *uint64  `json:"accepts"`
	AcceptP50US *float64 `json:"accept_p50_us" col:"ACC p50us,%.0f"`
	AcceptP99US *float64 `json:"accept_p99_us" col:"ACC p99us,%.0f"`
	Note        string   `json:"note,omitempty" col:"NOTE"`
}

// DropRow is one drop, with --events.
type DropRow struct {
	Time   string `json:"drop_time" col:"TIME"`
	Local  string `json:"local" col:"LISTENER"`
	Peer   string `json:"peer" col:"PEER"`
	Reason string `json:"reason" col:"REASON"`
}

// Frame reads one interval and renders it: one row per listener (or per
// drop with Events), the namespace's settings and counters, and warnings.
func (t *Tracer) Frame(now time.Time) (output.Frame, error) {
	s, err := t.Snapshot()
	if err != nil {
		return output.Frame{}, err
	}
	f := output.Frame{Tracer: "listen", Time: s.Time, Interval: s.Interval, Tiers: t.objs.Tiers(), Sort: "overflows"}
	f.Header = []output.Field{
		{Key: "somaxconn", Value: s.Somaxconn},
		{Key: "tcp_max_syn_backlog", Value: s.MaxSynBacklog},
		{Key: "tcp_syncookies", Value: s.Syncookies},
		{Key: "listen_overflows", Label: "ListenOverflows", Value: s.Netstat["ListenOverflows"]},
		{Key: "listen_drops", Label: "ListenDrops", Value: s.Netstat["ListenDrops"]},
		{Key: "syncookies_sent", Label: "SyncookiesSent", Value: s.Netstat["SyncookiesSent"]},
		{Key: "overflows_unattributed", Label: "unattributed", Value: s.Unattributed},
	}
	var lost uint64
	for _, n := range lostReasons {
		lost += s.Lost[n]
	}
	f.Header = append(f.Header, output.Field{Key: "lost", Value: lost})
	for _, n := range lostReasons { // the reasons, when there is something to explain
		if s.Lost[n] > 0 {
			f.Header = append(f.Header, output.Field{Key: "lost_" + n, Label: "lost " + n, Value: s.Lost[n]})
		}
	}
	secs := s.Interval.Seconds()
	if secs <= 0 {
		secs = 1
	}
	rows := make([]Row, 0, len(s.Listeners))
	for i := range s.Listeners {
		l := &s.Listeners[i]
		r := t.row(l, s, secs)
		rows = append(rows, r)
		f.Warnings = append(f.Warnings, warnings(l, s)...)
	}
	if s.Unattributed > 0 {
		f.Warnings = append(f.Warnings, output.Warning{
			Code:    "overflows_unattributed",
			Message: fmt.Sprintf("%d listen overflows in the namespace not attributed to a socket (%s)", s.Unattributed, t.unattributedWhy()),
			Fix:     "run with --attach=auto on a kernel with fentry or kprobes, or 6.15+ for the drop reason",
		})
	}
	if s.Netstat["SyncookiesSent"] > 0 {
		f.Warnings = append(f.Warnings, output.Warning{
			Code:    "syncookies_sent",
			Message: fmt.Sprintf("%d SYN cookies sent in the namespace: a SYN queue was full", s.Netstat["SyncookiesSent"]),
			Fix:     "raise the listen backlog and sysctl -w net.ipv4.tcp_max_syn_backlog=" + strconv.FormatInt(max(2*s.MaxSynBacklog, 4096), 10),
		})
	}
	f.Rows = rows
	if t.events != nil {
		drops, lost := t.events.take()
		f.Header = append(f.Header, output.Field{Key: "events_lost", Label: "events lost", Value: lost + s.Lost["events_lost"]})
		names := map[uint64]string{}
		if snap, err := t.tab.ReadStates(t.opts.NetnsPath, socktable.States(socktable.Listen)); err == nil {
			for _, so := range snap.Sockets {
				names[so.Sock] = so.Local.String()
			}
		}
		drs := make([]DropRow, 0, len(drops))
		for _, d := range drops {
			peer := "-"
			if d.Peer.IsValid() {
				peer = d.Peer.String()
			}
			drs = append(drs, DropRow{Time: d.Time.Format("15:04:05.000000"), Local: names[d.sk], Peer: peer, Reason: d.Kind.String()})
		}
		f.Rows, f.Sort = drs, ""
	}
	return f, nil
}

func (t *Tracer) row(l *Listener, s *Snapshot, secs float64) Row {
	r := Row{
		Local: l.Local.String(), Backlog: l.Backlog,
		AcceptQ: l.AcceptQ, AcceptQPeak: l.AcceptPeak, SynQ: l.SynQ, SynQPeak: l.SynPeak,
		Overflows: l.Overflows(), OverflowsPerS: float64(l.Overflows()) / secs,
		SynOverflows: l.SynOverflows, AckOverflows: l.AckOverflows,
		SynDrops: l.SynDrops, SynDropsPerS: float64(l.SynDrops) / secs, AckDrops: l.AckDrops,
		Cookies: l.Cookies, SynackRetrans: l.SynackRetrans,
		BacklogSetBy: "listen()",
	}
	if l.CappedBy {
		r.BacklogSetBy = "somaxconn"
	} else if int64(l.Backlog) > s.Somaxconn {
		r.BacklogSetBy = "listen() (somaxconn lowered since)"
	}
	if len(l.Owners) > 0 {
		r.PID, r.Comm = l.Owners[0].PID, l.Owners[0].Comm
	}
	var notes []string
	if t.AcceptTimed() {
		r.Accepts = &l.Accepts
		if l.AcceptUS.Count() > 0 {
			p50, p99 := l.AcceptUS.Quantile(0.5), l.AcceptUS.Quantile(0.99)
			r.AcceptP50US, r.AcceptP99US = &p50, &p99
		}
	} else {
		notes = append(notes, "accept latency not measured in this tier (--syscalls measures it)")
	}
	if t.ackBlind() {
		notes = append(notes, "final-ACK overflows not attributable in this tier on this kernel (skb:kfree_skb needs the TCP_LISTEN_OVERFLOW drop reason, 6.15+)")
	}
	r.Note = strings.Join(notes, "; ")
	return r
}

// ackBlind says whether the ack hook was given up (the tracepoint tier on a
// kernel before 6.15): final-ACK overflows are then not attributed.
func (t *Tracer) ackBlind() bool {
	c, ok := t.objs.Choice("ack")
	return ok && c.Method == "none"
}

func (t *Tracer) unattributedWhy() string {
	if t.ackBlind() {
		c, _ := t.objs.Choice("ack")
		return c.GivesUp
	}
	return "listeners closed during the interval, or SYNs to listeners not yet in the socket table"
}

// warnings returns what is wrong with one listener, with fixes.
func warnings(l *Listener, s *Snapshot) []output.Warning {
	var ws []output.Warning
	addr := l.Local.String()
	if l.CappedBy && s.Somaxconn < 4096 {
		ws = append(ws, output.Warning{
			Code: "somaxconn_caps_backlog",
			Message: fmt.Sprintf("backlog of %s capped at %d by net.core.somaxconn (listen() asked for %d or more)",
				addr, l.Backlog, l.Backlog),
			Fix: "sysctl -w net.core.somaxconn=4096 and raise the server's backlog (nginx: listen " +
				strconv.Itoa(int(l.Local.Port())) + " backlog=4096; php-fpm: listen.backlog; WebSphere: MaxConnectBacklog)",
		})
	}
	if l.Overflows() > 0 {
		ws = append(ws, output.Warning{
			Code: "accept_queue_overflow",
			Message: fmt.Sprintf("%s dropped %d connections with its accept queue full (%d of %d): the application does not accept fast enough",
				addr, l.Overflows(), l.AcceptPeak, l.Backlog),
			Fix: "add accept workers or make them faster (php-fpm: raise pm.max_children; Java servers: more acceptor/worker threads), then raise the backlog",
		})
	}
	if l.SynDrops > 0 {
		ws = append(ws, output.Warning{
			Code:    "syn_queue_drops",
			Message: fmt.Sprintf("%s dropped %d SYNs with its SYN queue full (%d)", addr, l.SynDrops, l.SynPeak),
			Fix:     "sysctl -w net.ipv4.tcp_syncookies=1 and net.ipv4.tcp_max_syn_backlog=" + strconv.FormatInt(max(2*s.MaxSynBacklog, 4096), 10),
		})
	}
	if l.Cookies > 0 {
		ws = append(ws, output.Warning{
			Code:    "syncookies",
			Message: fmt.Sprintf("%s answered %d SYNs with cookies: its SYN queue was full", addr, l.Cookies),
			Fix:     "raise the listen backlog (the SYN queue follows it) and net.ipv4.tcp_max_syn_backlog",
		})
	}
	return ws
}
