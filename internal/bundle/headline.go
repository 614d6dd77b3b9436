package bundle

import (
	"fmt"
	"sort"
	"strings"
)

// Kind says how a headline's per-interval values add up over a run.
type Kind int

// Headline kinds.
const (
	Count Kind = iota // events in the interval: the run's figure is the total (and the mean rate)
	Mean              // a rate, share or level: the run's figure is the time-weighted mean
	Peak              // a level or a percentile: the run's figure is the highest interval
)

// Headline is a figure that record shows on its progress line, compare
// puts side by side and report charts: one numeric header key of a tracer.
type Headline struct {
	Tracer string
	Key    string // header key in the tracer's NDJSON interval objects
	Label  string // "connects", "listen overflows"
	Unit   string // unit of the run's figure: "", "/s", "%", "us"
	Kind   Kind
}

// ID is "tracer.key".
func (h Headline) ID() string { return h.Tracer + "." + h.Key }

// Headlines lists every tracer's headline figures, in display order.
var Headlines = []Headline{
	{"ports", "connects", "connects", "", Count},
	{"ports", "failures", "connect failures", "", Count},
	{"ports", "ports_in_use", "ports in use (peak)", "", Peak},
	{"ports", "time_wait", "TIME_WAIT held toward destinations (peak)", "", Peak},
	{"listen", "listen_overflows", "listen overflows", "", Count},
	{"listen", "listen_drops", "listen drops", "", Count},
	{"listen", "syncookies_sent", "SYN cookies sent", "", Count},
	{"softirq", "softirqs", "softirqs", "", Count},
	{"softirq", "softirq_cpu_pct", "softirq share of CPU", "%", Mean},
	{"softirq", "time_squeeze", "softnet time_squeeze", "", Count},
	{"softirq", "softnet_dropped", "softnet drops", "", Count},
	{"sched", "switches", "context switches", "", Count},
	{"sched", "involuntary_per_s", "involuntary switches", "/s", Mean},
	{"sched", "runq_p99_us", "run-queue delay p99 (worst interval)", "us", Peak},
	{"sched", "runnable_avg", "runnable threads (mean)", "", Mean},
	{"timewait", "time_wait", "TIME_WAIT (peak)", "", Peak},
	{"timewait", "created", "TIME_WAIT created", "", Count},
	{"timewait", "close_wait", "CLOSE_WAIT (peak)", "", Peak},
}

// HeadlinesFor returns the headlines of one tracer.
func HeadlinesFor(tracer string) []Headline {
	var out []Headline
	for _, h := range Headlines {
		if h.Tracer == tracer {
			out = append(out, h)
		}
	}
	return out
}

// Stat is a headline over a whole run.
type Stat struct {
	Headline
	Intervals int
	Seconds   float64 // time covered by the intervals
	Total     float64 // Count: sum over the intervals
	Mean      float64 // Count: per second; Mean, Peak: time-weighted mean
	Max       float64 // Count: highest per-second rate; others: highest value
}

// Value is the run's figure: the total for counts, the mean for means, the
// highest interval for peaks.
func (s Stat) Value() float64 {
	switch s.Kind {
	case Count:
		return s.Total
	case Mean:
		return s.Mean
	}
	return s.Max
}

// Point is one interval of a headline, for charts: seconds since the start
// of the record and the value (per second for counts).
type Point struct {
	T float64
	V float64
}

// Stats computes every headline of the bundle's tracers, in Headlines order.
// Headlines whose key no interval carries are left out.
func (b *Bundle) Stats() []Stat {
	var out []Stat
	for _, h := range Headlines {
		ivs, ok := b.Series[h.Tracer]
		if !ok {
			continue
		}
		s := Stat{Headline: h}
		var weighted float64
		for i := range ivs {
			v, ok := ivs[i].Number(h.Key)
			if !ok {
				continue
			}
			d := ivs[i].IntervalS
			s.Intervals++
			s.Seconds += d
			switch h.Kind {
			case Count:
				s.Total += v
				if d > 0 && (s.Intervals == 1 || v/d > s.Max) {
					s.Max = v / d
				}
			default:
				weighted += v * d
				if s.Intervals == 1 || v > s.Max {
					s.Max = v
				}
			}
		}
		if s.Intervals == 0 {
			continue
		}
		if s.Seconds > 0 {
			if h.Kind == Count {
				s.Mean = s.Total / s.Seconds
			} else {
				s.Mean = weighted / s.Seconds
			}
		}
		out = append(out, s)
	}
	return out
}

// Points returns a headline's time series (counts as per-second rates).
func (b *Bundle) Points(h Headline) []Point {
	var out []Point
	for _, iv := range b.Series[h.Tracer] {
		v, ok := iv.Number(h.Key)
		if !ok {
			continue
		}
		if h.Kind == Count && iv.IntervalS > 0 {
			v /= iv.IntervalS
		}
		out = append(out, Point{T: iv.Time.Sub(b.Meta.Start).Seconds(), V: v})
	}
	return out
}

// Fired is a warning seen during a record: how many intervals carried it,
// and the first and last message (figures change between intervals).
type Fired struct {
	Tracer    string
	Code      string
	Intervals int
	FirstT    float64 // seconds since the start
	Message   string  // the last message
	Fix       string
}

// Key identifies a warning across runs: tracer and code.
func (f Fired) Key() string { return f.Tracer + "/" + f.Code }

// Warnings returns every warning that fired in the record, one per tracer
// and code, in order of first appearance. A code that carries the object it
// is about (a listener, a destination) in its message is still one entry:
// compare matches warnings by code.
func (b *Bundle) Warnings() []Fired {
	idx := map[string]int{}
	var out []Fired
	tracers := append([]string(nil), b.Meta.Tracers...)
	for _, tr := range tracers {
		for _, iv := range b.Series[tr] {
			for _, w := range iv.Warnings {
				k := tr + "/" + w.Code
				i, ok := idx[k]
				if !ok {
					i = len(out)
					idx[k] = i
					out = append(out, Fired{Tracer: tr, Code: w.Code, FirstT: iv.Time.Sub(b.Meta.Start).Seconds()})
				}
				out[i].Intervals++
				out[i].Message = w.Message
				out[i].Fix = w.Fix
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].FirstT < out[j].FirstT })
	return out
}

// Difference is a condition in which two records differ.
type Difference struct {
	What string // "kernel", "cpus", "setting net.core.somaxconn", "command"
	A, B string
}

// Differences lists the conditions in which two records differ: what makes
// comparing their figures unfair. Settings are compared as they were before
// each record started.
func Differences(a, b *Bundle) []Difference {
	var out []Difference
	add := func(what, x, y string) {
		if x != y {
			out = append(out, Difference{what, x, y})
		}
	}
	add("kernel", a.Meta.Kernel, b.Meta.Kernel)
	add("cpus", fmt.Sprint(a.Meta.CPUs), fmt.Sprint(b.Meta.CPUs))
	add("host", a.Meta.Host, b.Meta.Host)
	add("arch", a.Meta.Arch, b.Meta.Arch)
	add("nettrace version", a.Meta.NettraceVersion, b.Meta.NettraceVersion)
	add("command", strings.Join(a.Meta.Command, " "), strings.Join(b.Meta.Command, " "))
	add("interval", fmt.Sprintf("%gs", a.Meta.IntervalS), fmt.Sprintf("%gs", b.Meta.IntervalS))
	add("tracers", strings.Join(a.Meta.Tracers, ","), strings.Join(b.Meta.Tracers, ","))
	for _, tr := range union(keys(a.Meta.Tiers), keys(b.Meta.Tiers)) {
		add("attach tiers of "+tr, tiersString(a.Meta.Tiers[tr]), tiersString(b.Meta.Tiers[tr]))
	}
	sa, sb := settingValues(a), settingValues(b)
	for _, name := range union(keys(sa), keys(sb)) {
		add("setting "+name, sa[name], sb[name])
	}
	return out
}

func settingValues(b *Bundle) map[string]string {
	m := map[string]string{}
	if b.SettingsBefore == nil {
		return m
	}
	for _, s := range b.SettingsBefore.Settings {
		m[s.Name] = s.Value
	}
	return m
}

func tiersString(m map[string]string) string {
	var parts []string
	for _, k := range keys(m) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, " ")
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func union(a, b []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range append(append([]string(nil), a...), b...) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}
