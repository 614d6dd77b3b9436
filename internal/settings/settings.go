// Package settings audits the sysctls, limits and kernel counters that
// explain lost connections and slow network paths, for `nettrace doctor`.
package settings

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"

	"github.com/nettrace/nettrace/internal/netns"
)

// Status is the verdict on a setting or counter.
type Status string

// The verdicts, from fine to broken; NA when the value could not be read or
// does not apply.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Bad  Status = "bad"
	NA   Status = "n/a"
)

// Setting is one audited sysctl or limit.
type Setting struct {
	Name   string `json:"name"`  // "net.core.somaxconn"
	Value  string `json:"value"` // as the kernel prints it, whitespace normalised
	Status Status `json:"status"`
	Reason string `json:"reason,omitempty"` // why it is warn/bad, with the figures
	Fix    string `json:"fix,omitempty"`    // the command that changes it
}

// Counter is one kernel counter that shows trouble happening.
type Counter struct {
	Name   string `json:"name"` // "TcpExt.ListenOverflows"
	Value  uint64 `json:"value"`
	Status Status `json:"status"`
	Reason string `json:"reason,omitempty"`
	Fix    string `json:"fix,omitempty"`
}

// Options select what Audit looks at.
type Options struct {
	NetnsPath string // network namespace file to audit ("" = ours)
	PID       int    // also report this process's RLIMIT_NOFILE (0 = none)
}

// Report is the audit of one network namespace.
type Report struct {
	Netns    string    `json:"netns"` // "net:[4026531840]"
	Settings []Setting `json:"settings"`
	Counters []Counter `json:"counters"`
}

// Audit reads the settings and counters of the network namespace at
// opts.NetnsPath and judges each. Unreadable values are reported as NA;
// errors are for a namespace that cannot be entered or a PID that does not
// exist.
func Audit(opts Options) (*Report, error) {
	var nofile *Setting
	if opts.PID != 0 {
		s, err := nofileSetting(opts.PID)
		if err != nil {
			return nil, err
		}
		nofile = &s
	}
	id, err := netns.ID(opts.NetnsPath)
	if err != nil {
		return nil, err
	}
	r := &Report{Netns: netns.Name(id)}
	a := &auditor{global: map[string]sysctlValue{}}
	for _, name := range globalSysctls {
		v, err := ReadSysctl(name)
		a.global[name] = sysctlValue{v, err}
	}
	err = netns.Do(opts.NetnsPath, func() error {
		// Inside: check the thread really is in the namespace asked for.
		got, err := netns.ID("")
		if err != nil {
			return err
		}
		if got != id {
			return fmt.Errorf("audit %s: running in %s", netns.Name(id), netns.Name(got))
		}
		r.Settings = a.settings()
		r.Counters = a.counters()
		return nil
	})
	if err != nil {
		return nil, err
	}
	if nofile != nil {
		r.Settings = append(r.Settings, *nofile)
	}
	return r, nil
}

// persist is appended to sysctl fixes.
const persist = " (persist it in /etc/sysctl.d/)"

func sysctlFix(name, value string) string {
	if strings.Contains(value, " ") {
		value = strconv.Quote(value)
	}
	return "sysctl -w " + name + "=" + value + persist
}

// globalSysctls exist only in the initial network namespace (the kernel's
// net_core_table): Audit reads them before entering the audited one.
var globalSysctls = []string{"net.core.netdev_budget", "net.core.netdev_budget_usecs", "net.core.netdev_max_backlog"}

type sysctlValue struct {
	v   string
	err error
}

// auditor reads the values of one namespace; it runs inside netns.Do.
type auditor struct {
	global map[string]sysctlValue // globalSysctls as read outside the namespace
	raw    map[string]string      // sysctls read so far, for the counters' reasons
}

func (a *auditor) read(name string) (string, error) {
	v, err := ReadSysctl(name)
	if g, ok := a.global[name]; ok {
		v, err = g.v, g.err
		if errors.Is(err, fs.ErrNotExist) {
			err = fmt.Errorf("global setting, visible only from the initial network namespace: %w", err)
		}
	}
	if err == nil {
		if a.raw == nil {
			a.raw = map[string]string{}
		}
		a.raw[name] = v
	}
	return v, err
}

// sysctl reads a sysctl and judges it as one integer.
func (a *auditor) sysctl(name string, judge func(v int64) (Status, string, string)) Setting {
	s := Setting{Name: name, Status: NA}
	v, err := a.read(name)
	if err != nil {
		s.Reason = "cannot be read: " + err.Error()
		return s
	}
	s.Value = v
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		s.Reason = fmt.Sprintf("unexpected value %q", v)
		return s
	}
	s.Status, s.Reason, s.Fix = judge(n)
	return s
}

func (a *auditor) settings() []Setting {
	tw, twErr := timeWaitSockets()
	return []Setting{
		a.sysctl("net.core.somaxconn", func(v int64) (Status, string, string) {
			if v >= 1024 {
				return OK, "", ""
			}
			st := Warn
			if v < 128 {
				st = Bad
			}
			reason := fmt.Sprintf("somaxconn=%d silently caps every listen() backlog at %d, so a burst overflows the accept queue ", v, v) +
				"(nginx with backlog=10 under somaxconn=10 overflowed its listen queue 290,566 times); the default since Linux 5.4 is 4096"
			return st, reason, "sysctl -w net.core.somaxconn=65535" + persist +
				", then raise the application's backlog (nginx listen ... backlog=, php-fpm listen.backlog)"
		}),
		a.sysctl("net.ipv4.tcp_max_syn_backlog", func(v int64) (Status, string, string) {
			if v >= 256 {
				return OK, "", ""
			}
			return Warn, fmt.Sprintf("only %d half-open connections are queued per listener; SYNs beyond that are dropped or answered with cookies", v),
				sysctlFix("net.ipv4.tcp_max_syn_backlog", "4096")
		}),
		a.portRange(),
		a.sysctl("net.ipv4.tcp_tw_reuse", func(v int64) (Status, string, string) {
			now := ""
			if twErr == nil {
				now = fmt.Sprintf(" (%s now)", commas(tw))
			}
			fix := "sysctl -w net.ipv4.tcp_tw_reuse=1" + persist + "; better, reuse connections (keep-alive, connection pooling)"
			switch {
			case v == 0:
				return Warn, "tcp_tw_reuse=0: outgoing connections cannot reuse ports held by sockets in TIME_WAIT" + now +
					", so TIME_WAIT piles up (32,768 sockets in one case) and clients run out of ports (connect: EADDRNOTAVAIL)", fix
			case v == 2 && twErr == nil && tw >= 10000:
				return Warn, fmt.Sprintf("tcp_tw_reuse=2 reuses TIME_WAIT ports for loopback only, and %s sockets are in TIME_WAIT: "+
					"clients to other hosts may run out of ports", commas(tw)), fix
			}
			return OK, "", ""
		}),
		a.sysctl("net.ipv4.tcp_fin_timeout", func(v int64) (Status, string, string) {
			if v <= 60 {
				return OK, "", ""
			}
			return Warn, fmt.Sprintf("orphaned connections linger %ds in FIN_WAIT2 (default 60), holding memory and ports", v),
				sysctlFix("net.ipv4.tcp_fin_timeout", "30")
		}),
		a.sysctl("net.ipv4.tcp_syncookies", func(v int64) (Status, string, string) {
			if v != 0 {
				return OK, "", ""
			}
			return Warn, "syncookies are off: once a listener's SYN queue is full (a SYN flood or a burst of clients) new SYNs are dropped",
				sysctlFix("net.ipv4.tcp_syncookies", "1")
		}),
		a.sysctl("net.ipv4.tcp_max_tw_buckets", func(v int64) (Status, string, string) {
			if v >= 32768 {
				return OK, "", ""
			}
			reason := fmt.Sprintf("at most %s sockets may sit in TIME_WAIT; beyond that they are destroyed early ", commas(uint64(v))) +
				"(TCPTimeWaitOverflow, \"time wait bucket table overflow\")"
			return Warn, reason, sysctlFix("net.ipv4.tcp_max_tw_buckets", "262144")
		}),
		a.conntrack(),
		a.sysctl("net.core.netdev_budget", func(v int64) (Status, string, string) {
			if v >= 300 {
				return OK, "", ""
			}
			return Warn, fmt.Sprintf("the receive softirq handles at most %d packets per poll (default 300) before yielding; "+
				"with a low budget time_squeeze rises and packets wait", v), sysctlFix("net.core.netdev_budget", "600")
		}),
		a.sysctl("net.core.netdev_budget_usecs", func(v int64) (Status, string, string) {
			if v >= 2000 {
				return OK, "", ""
			}
			return Warn, fmt.Sprintf("the receive softirq may run only %dµs per poll (default 2000 or more); "+
				"time_squeeze rises and packets wait", v), sysctlFix("net.core.netdev_budget_usecs", "8000")
		}),
		a.sysctl("net.core.netdev_max_backlog", func(v int64) (Status, string, string) {
			if v >= 1000 {
				return OK, "", ""
			}
			return Warn, fmt.Sprintf("each CPU queues at most %d received packets for the softirq; more are dropped (softnet dropped)", v),
				sysctlFix("net.core.netdev_max_backlog", "16384")
		}),
		a.sysctl("fs.file-max", func(v int64) (Status, string, string) {
			if v >= 65535 {
				return OK, "", ""
			}
			return Warn, fmt.Sprintf("at most %s files may be open system-wide and every connection is one: "+
				"busy servers fail with \"too many open files\"", commas(uint64(v))), sysctlFix("fs.file-max", "1048576")
		}),
		a.sysctl("fs.nr_open", func(v int64) (Status, string, string) {
			if v >= 65535 {
				return OK, "", ""
			}
			return Warn, fmt.Sprintf("no process can raise RLIMIT_NOFILE above %s, so servers with many connections "+
				"fail with \"too many open files\"", commas(uint64(v))), sysctlFix("fs.nr_open", "1048576")
		}),
		a.sysctl("net.ipv4.tcp_fastopen", func(v int64) (Status, string, string) {
			return OK, fmt.Sprintf("informational: TCP Fast Open for clients %s, for servers %s", onOff(v&1 != 0), onOff(v&2 != 0)), ""
		}),
	}
}

func (a *auditor) portRange() Setting {
	const name = "net.ipv4.ip_local_port_range"
	s := Setting{Name: name, Status: NA}
	v, err := a.read(name)
	if err != nil {
		s.Reason = "cannot be read: " + err.Error()
		return s
	}
	s.Value = v
	var lo, hi int
	if _, err := fmt.Sscanf(v, "%d %d", &lo, &hi); err != nil {
		s.Reason = fmt.Sprintf("unexpected value %q", v)
		return s
	}
	ports := max(hi-lo+1, 0)
	s.Value = fmt.Sprintf("%s (%d ports)", v, ports)
	switch {
	case ports < 1000:
		s.Status = Bad
	case ports < 10000:
		s.Status = Warn
	default:
		s.Status = OK
		return s
	}
	s.Reason = fmt.Sprintf("only %d ephemeral ports: outgoing connect() fails with EADDRNOTAVAIL once they are in use or in TIME_WAIT, "+
		"and inet_hash_connect burns CPU searching for a free one", ports)
	s.Fix = sysctlFix(name, "10000 65535")
	return s
}

func (a *auditor) conntrack() Setting {
	const name = "net.netfilter.nf_conntrack_max"
	s := Setting{Name: name, Status: NA, Reason: "nf_conntrack not loaded"}
	maxV, err := a.read(name)
	if err != nil {
		return s
	}
	countV, err := a.read("net.netfilter.nf_conntrack_count")
	if err != nil {
		return s
	}
	s.Value, s.Reason = maxV, ""
	limit, err1 := strconv.ParseUint(maxV, 10, 64)
	count, err2 := strconv.ParseUint(countV, 10, 64)
	if err1 != nil || err2 != nil {
		s.Reason = fmt.Sprintf("unexpected values max %q, count %q", maxV, countV)
		return s
	}
	if limit == 0 { // no limit
		s.Status = OK
		return s
	}
	pct := count * 100 / limit
	s.Value = fmt.Sprintf("%d (count %d, %d%%)", limit, count, pct)
	switch {
	case pct >= 100:
		s.Status = Bad
	case pct >= 80:
		s.Status = Warn
	default:
		s.Status = OK
		return s
	}
	s.Reason = fmt.Sprintf("the conntrack table is %d%% full (%s of %s entries); when full the kernel logs "+
		"\"nf_conntrack: table full, dropping packet\" and drops new flows", pct, commas(count), commas(limit))
	s.Fix = sysctlFix(name, "1048576")
	return s
}

// counters reads the counters that show trouble now. Run after settings,
// whose values the reasons quote.
func (a *auditor) counters() []Counter {
	var out []Counter
	add := func(name string, v uint64, reason, fix string) {
		c := Counter{Name: name, Value: v, Status: OK}
		if v > 0 {
			c.Status, c.Reason, c.Fix = Warn, reason, fix
		}
		out = append(out, c)
	}
	na := func(name string, err error) {
		out = append(out, Counter{Name: name, Status: NA, Reason: "cannot be read: " + err.Error()})
	}
	backlogFix := "accept faster, or raise the backlog: sysctl -w net.core.somaxconn=65535" + persist + " and the application's listen backlog"

	ns, err := ReadNetstat(netns.ProcNet("netstat"))
	tcp := ns["TcpExt"]
	for _, c := range []struct{ name, reason, fix string }{
		{"ListenOverflows", "times a listen queue overflowed: the accept queue (backlog capped by somaxconn=%s) was full and the handshake was dropped", backlogFix},
		{"ListenDrops", "SYNs or handshakes were dropped at listening sockets (every ListenOverflows, plus SYN-queue and memory drops; somaxconn=%s)", backlogFix},
		{"TCPTimeWaitOverflow", "TIME_WAIT sockets were destroyed early because tcp_max_tw_buckets=%s was reached",
			sysctlFix("net.ipv4.tcp_max_tw_buckets", "262144") + "; reuse connections (keep-alive, pooling)"},
	} {
		name := "TcpExt." + c.name
		v, ok := tcp[c.name]
		switch {
		case err != nil:
			na(name, err)
		case !ok:
			na(name, fmt.Errorf("not in %s", netns.ProcNet("netstat")))
		default:
			setting := "net.core.somaxconn"
			if c.name == "TCPTimeWaitOverflow" {
				setting = "net.ipv4.tcp_max_tw_buckets"
			}
			add(name, v, commas(v)+" "+fmt.Sprintf(c.reason, a.raw[setting]), c.fix)
		}
	}

	// softnet_stat is global, the same in every namespace.
	if cpus, err := ReadSoftnet(netns.ProcNet("softnet_stat")); err != nil {
		na("softnet.dropped", err)
		na("softnet.time_squeeze", err)
	} else {
		var dropped, squeezed uint64
		for _, c := range cpus {
			dropped += c.Dropped
			squeezed += c.TimeSqueeze
		}
		add("softnet.dropped", dropped, fmt.Sprintf("%s received packets were dropped because a CPU's backlog queue (netdev_max_backlog=%s) was full",
			commas(dropped), a.raw["net.core.netdev_max_backlog"]), sysctlFix("net.core.netdev_max_backlog", "16384"))
		add("softnet.time_squeeze", squeezed, fmt.Sprintf("%s times the receive softirq ran out of budget (netdev_budget=%s packets, netdev_budget_usecs=%s) with packets left",
			commas(squeezed), a.raw["net.core.netdev_budget"], a.raw["net.core.netdev_budget_usecs"]), sysctlFix("net.core.netdev_budget", "600"))
	}

	if st, err := readStatTable(netns.ProcNet("stat/nf_conntrack")); err == nil {
		v := st["drop"] + st["early_drop"] + st["insert_failed"]
		add("nf_conntrack.drops", v, fmt.Sprintf("%s packets were dropped by conntrack (drop %d, early_drop %d, insert_failed %d): the table was full or entries could not be inserted",
			commas(v), st["drop"], st["early_drop"], st["insert_failed"]), sysctlFix("net.netfilter.nf_conntrack_max", "1048576"))
	}
	return out
}

// nofileSetting reports the RLIMIT_NOFILE of process pid.
func nofileSetting(pid int) (Setting, error) {
	soft, hard, err := readNofile(pid)
	if err != nil {
		return Setting{}, err
	}
	s := Setting{Name: fmt.Sprintf("RLIMIT_NOFILE (pid %d)", pid), Value: fmt.Sprintf("%s (hard %s)", limit(soft), limit(hard)), Status: OK}
	if soft < 65535 {
		s.Status = Warn
		s.Reason = fmt.Sprintf("process %d may open only %s files and every connection is one: accept() and connect() fail with "+
			"\"too many open files\" (EMFILE) under load", pid, commas(soft))
		s.Fix = fmt.Sprintf("prlimit --pid %d --nofile=65535:%s (persist: LimitNOFILE=65535 in its systemd unit)", pid, limit(max(hard, 65535)))
	}
	return s, nil
}

// timeWaitSockets is the "tw" figure of sockstat: TCP sockets in TIME_WAIT.
func timeWaitSockets() (uint64, error) {
	ns, err := readSockstat(netns.ProcNet("sockstat"))
	if err != nil {
		return 0, err
	}
	tw, ok := ns["TCP"]["tw"]
	if !ok {
		return 0, fmt.Errorf("no TCP tw in %s", netns.ProcNet("sockstat"))
	}
	return tw, nil
}

func limit(v uint64) string {
	if v == ^uint64(0) {
		return "unlimited"
	}
	return strconv.FormatUint(v, 10)
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// commas formats 290566 as "290,566".
func commas(v uint64) string {
	s := strconv.FormatUint(v, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
