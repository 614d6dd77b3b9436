// Package softirq measures softirq time per CPU and vector (count, time,
// duration histogram) from the softirq_entry/softirq_exit tracepoints, next
// to the softnet counters of /proc/net/softnet_stat, the netdev_budget
// settings and the CPU time of the ksoftirqd threads.
package softirq

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/hist"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/output"
	"github.com/nettrace/nettrace/internal/settings"
	"github.com/nettrace/nettrace/tracers/softirq/dist"
)

// Hooks declares the softirq hook. There is no function to put fentry or a
// kprobe on (handlers are called through a table), so both alternatives
// are tracepoints.
var Hooks = []attach.Hook{{
	Name: "softirq",
	Alternatives: []attach.Alternative{
		{Tier: attach.Tracepoint, Programs: []string{"softirq_entry_btf", "softirq_exit_btf"}},
		{Tier: attach.Tracepoint, Programs: []string{"softirq_entry_raw", "softirq_exit_raw"},
			GivesUp: "nothing measured; raw_tp costs a little more per event"},
	},
}}

func init() {
	attach.Register(attach.TracerInfo{
		Name: "softirq", Summary: "softirq count and time per CPU and vector, softnet drops and squeezes",
		Spec: loadSoftirq, Hooks: Hooks, Caps: []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon},
	})
}

// nrVecs is NR_VECS in bpf/softirq.bpf.c.
const nrVecs = 16

// Names of the vectors in kernel order (softirq_to_name), used when
// /proc/softirqs cannot be read.
var defaultNames = []string{"HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU"}

// Paths read each interval; variables for tests.
var (
	procSoftirqs = "/proc/softirqs"
	procSoftnet  = "/proc/net/softnet_stat"
)

// Options configure the tracer.
type Options struct {
	Tier attach.Tier // force an attach tier
	Dist bool        // Frame returns histogram rows instead of per-CPU rows
}

// VecStat is one vector's cumulative figures on one CPU, laid out as
// struct vec_stat.
type VecStat struct {
	Count  uint64    // softirq_entry events
	TimeNS uint64    // total duration
	Hist   hist.Log2 // durations in nanoseconds
}

// Snapshot holds cumulative figures since the tracer started (kernel
// counters: since boot).
type Snapshot struct {
	Time      time.Time
	Vecs      [][]VecStat           // [cpu][vector]
	Dropped   uint64                // events not counted: vector out of range, exit without entry
	Softnet   []settings.SoftnetCPU // /proc/net/softnet_stat
	Ksoftirqd map[int]uint64        // CPU -> on-CPU ns of ksoftirqd/CPU (from schedstat)
	// Proc is /proc/softirqs ([vector][cpu]) read just before and just
	// after Vecs; nil where it cannot be read.
	Proc [2][][]uint64
}

// Tracer measures softirqs.
type Tracer struct {
	objs      *attach.Objects
	opts      Options
	names     []string
	ksoftirqd map[int]int // CPU -> pid
	prev      *Snapshot
}

// New loads and attaches the softirq programs.
func New(opts Options) (*Tracer, error) {
	spec, err := loadSoftirq()
	if err != nil {
		return nil, fmt.Errorf("load softirq spec: %w", err)
	}
	objs, err := attach.Load(spec, Hooks, attach.Options{Tier: opts.Tier})
	if err != nil {
		return nil, err
	}
	t := &Tracer{objs: objs, opts: opts, names: vectorNames(), ksoftirqd: findKsoftirqd()}
	s, err := t.Snapshot()
	if err != nil {
		objs.Close()
		return nil, err
	}
	t.prev = s
	return t, nil
}

// Tiers returns hook -> attach method.
func (t *Tracer) Tiers() map[string]string { return t.objs.Tiers() }

// Choice returns how the softirq hook was attached.
func (t *Tracer) Choice() attach.Choice {
	c, _ := t.objs.Choice("softirq")
	return c
}

// VectorName returns the name of vector v ("NET_RX").
func (t *Tracer) VectorName(v int) string {
	if v < len(t.names) {
		return t.names[v]
	}
	return "VEC" + strconv.Itoa(v)
}

// Close detaches and frees everything.
func (t *Tracer) Close() error { return t.objs.Close() }

// Snapshot reads the cumulative figures.
func (t *Tracer) Snapshot() (*Snapshot, error) {
	s := &Snapshot{Time: time.Now(), Ksoftirqd: map[int]uint64{}}
	s.Proc[0], _, _ = ReadProcSoftirqs()
	m := t.objs.Maps["vecs"]
	for v := range nrVecs {
		var perCPU []VecStat
		if err := m.Lookup(uint32(v), &perCPU); err != nil {
			return nil, fmt.Errorf("read softirq vector %d: %w", v, err)
		}
		if s.Vecs == nil {
			s.Vecs = make([][]VecStat, len(perCPU))
			for c := range s.Vecs {
				s.Vecs[c] = make([]VecStat, nrVecs)
			}
		}
		for c := range perCPU {
			s.Vecs[c][v] = perCPU[c]
		}
	}
	s.Proc[1], _, _ = ReadProcSoftirqs()
	var drops []uint64
	if err := t.objs.Maps["dropped"].Lookup(uint32(0), &drops); err != nil {
		return nil, fmt.Errorf("read softirq drops: %w", err)
	}
	for _, d := range drops {
		s.Dropped += d
	}
	sn, err := settings.ReadSoftnet(procSoftnet)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	s.Softnet = sn
	for cpu, pid := range t.ksoftirqd {
		if ns, err := readSchedstatRun(pid); err == nil {
			s.Ksoftirqd[cpu] = ns
		}
	}
	return s, nil
}

// Row is one vector on one CPU over one interval. The softnet and ksoftirqd
// figures are per CPU and appear on the CPU's NET_RX row only.
type Row struct {
	CPU       int     `json:"cpu" col:"CPU"`
	Vector    string  `json:"vector" col:"VECTOR"`
	Count     uint64  `json:"count"`
	CountPS   float64 `json:"count_per_s" col:"COUNT/s,%.0f"`
	TimeUS    float64 `json:"time_us"`
	TimeUSPS  float64 `json:"time_us_per_s" col:"TIME(us/s),%.0f"`
	CPUPct    float64 `json:"cpu_pct" col:"CPU%,%.2f"`
	AvgUS     float64 `json:"avg_us" col:"AVG(us),%.2f"`
	P99US     float64 `json:"p99_us" col:"P99(us),%.1f"`
	Processed uint64  `json:"softnet_processed" col:"PROCESSED"`
	Dropped   uint64  `json:"softnet_dropped" col:"DROPPED"`
	Squeezed  uint64  `json:"time_squeeze" col:"SQUEEZED"`
	KsoftPct  float64 `json:"ksoftirqd_cpu_pct" col:"KSOFTIRQD%,%.1f"`
}

// netRX is the vector number of NET_RX_SOFTIRQ.
const netRX = 3

// Frame returns the figures of the interval since the previous call.
func (t *Tracer) Frame(now time.Time) (output.Frame, error) {
	cur, err := t.Snapshot()
	if err != nil {
		return output.Frame{}, err
	}
	prev := t.prev
	t.prev = cur
	ivl := cur.Time.Sub(prev.Time)
	secs := ivl.Seconds()
	f := output.Frame{Tracer: "softirq", Time: now, Interval: ivl, Tiers: t.Tiers(), Sort: "time_us_per_s"}

	// softnet[cpu] = {previous, current}; a CPU that came online counts from zero.
	softnet := map[int][2]settings.SoftnetCPU{}
	prevSN := map[int]settings.SoftnetCPU{}
	for _, c := range prev.Softnet {
		prevSN[c.CPU] = c
	}
	for _, c := range cur.Softnet {
		softnet[c.CPU] = [2]settings.SoftnetCPU{prevSN[c.CPU], c}
	}

	var (
		rows                     []Row
		totals                   = make([]hist.Log2, nrVecs)
		totalCount, totalTimeNS  uint64
		processed, drops, squeez uint64
		netRXByCPU               = map[int]float64{}
		netRXTime                float64
		ksoftNS                  uint64
	)
	for c := range cur.Vecs {
		for v := range nrVecs {
			d := sub(cur.Vecs[c][v], prev.Vecs[c][v])
			totals[v].Add(&d.Hist)
			totalCount += d.Count
			totalTimeNS += d.TimeNS
			if v == netRX {
				netRXByCPU[c] = float64(d.TimeNS)
				netRXTime += float64(d.TimeNS)
			}
			if d.Count == 0 && v != netRX {
				continue
			}
			r := Row{CPU: c, Vector: t.VectorName(v), Count: d.Count, TimeUS: float64(d.TimeNS) / 1e3}
			if secs > 0 {
				r.CountPS = float64(d.Count) / secs
				r.TimeUSPS = r.TimeUS / secs
				r.CPUPct = float64(d.TimeNS) / float64(ivl.Nanoseconds()) * 100
			}
			if n := d.Hist.Count(); n > 0 {
				r.AvgUS = float64(d.TimeNS) / float64(n) / 1e3
				r.P99US = d.Hist.Quantile(0.99) / 1e3
			}
			if v == netRX {
				if sn, ok := softnet[c]; ok {
					r.Processed = sn[1].Processed - sn[0].Processed
					r.Dropped = sn[1].Dropped - sn[0].Dropped
					r.Squeezed = sn[1].TimeSqueeze - sn[0].TimeSqueeze
					processed += r.Processed
					drops += r.Dropped
					squeez += r.Squeezed
				}
				if ns, ok := cur.Ksoftirqd[c]; ok && secs > 0 {
					d := ns - prev.Ksoftirqd[c]
					ksoftNS += d
					r.KsoftPct = float64(d) / float64(ivl.Nanoseconds()) * 100
				}
			}
			rows = append(rows, r)
		}
	}
	unseen := Unseen(prev, cur)
	budget := readIntSysctl("net.core.netdev_budget")
	budgetUS := readIntSysctl("net.core.netdev_budget_usecs")
	ncpu := len(cur.Vecs)
	f.Header = []output.Field{
		{Key: "softirqs", Value: totalCount},
		{Key: "softirqs_per_s", Label: "softirqs/s", Value: rate(totalCount, secs), Format: "%.0f"},
		{Key: "softirq_cpu_pct", Label: "softirq CPU%", Value: pct(float64(totalTimeNS), float64(ivl.Nanoseconds())*float64(ncpu)), Format: "%.2f"},
		{Key: "softnet_processed", Label: "processed", Value: processed},
		{Key: "softnet_dropped", Label: "dropped", Value: drops},
		{Key: "time_squeeze", Label: "squeezed", Value: squeez},
		{Key: "ksoftirqd_cpu_pct", Label: "ksoftirqd CPU%", Value: pct(float64(ksoftNS), float64(ivl.Nanoseconds())*float64(ncpu)), Format: "%.2f"},
		{Key: "netdev_budget", Value: budget},
		{Key: "netdev_budget_usecs", Value: budgetUS},
		{Key: "events_dropped", Label: "events dropped", Value: cur.Dropped - prev.Dropped},
		{Key: "unseen", Value: unseen},
	}
	f.Warnings = warnings(squeez, drops, budget, budgetUS, netRXByCPU, netRXTime, ivl)
	if unseen > 0 {
		f.Warnings = append(f.Warnings, output.Warning{
			Code: "softirqs_unseen",
			Message: fmt.Sprintf("/proc/softirqs counted at least %d softirqs that the kernel did not hand to the softirq_entry program: "+
				"counts, times and histograms leave them out", unseen),
		})
	}
	if t.opts.Dist {
		var drows []dist.Row
		for v := range nrVecs {
			drows = append(drows, dist.Rows(t.VectorName(v), &totals[v], 1e-3)...)
		}
		f.Rows, f.Sort = drows, ""
		return f, nil
	}
	f.Rows = rows
	return f, nil
}

// Unseen returns how many softirqs /proc/softirqs counted between two
// snapshots that the programs did not, at least. The kernel bumps the
// counter and then fires softirq_entry, one softirq after the other on a
// CPU, so a snapshot's count of a vector on a CPU is at most the counter
// read after it and at least the one read before it less one (a softirq
// between the two); what the counter rose by between prev's read after
// and cur's read before, less one, the programs must have counted.
// (Counters are 32 bits in the kernel.)
func Unseen(prev, cur *Snapshot) uint64 {
	before, after := prev.Proc[1], cur.Proc[0]
	var n uint64
	for v := range min(len(before), len(after), nrVecs) {
		for c := range min(len(before[v]), len(after[v]), len(cur.Vecs), len(prev.Vecs)) {
			rose := uint64(uint32(after[v][c]) - uint32(before[v][c]))
			if got := cur.Vecs[c][v].Count - prev.Vecs[c][v].Count; rose > got+1 {
				n += rose - got - 1
			}
		}
	}
	return n
}

func sub(a, b VecStat) VecStat {
	return VecStat{Count: a.Count - b.Count, TimeNS: a.TimeNS - b.TimeNS, Hist: a.Hist.Sub(&b.Hist)}
}

func rate(n uint64, secs float64) float64 {
	if secs <= 0 {
		return 0
	}
	return float64(n) / secs
}

func pct(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b * 100
}

// warnings flags squeezes, backlog drops and NET_RX on one CPU.
func warnings(squeeze, drops uint64, budget, budgetUS int, netRXByCPU map[int]float64, netRXTime float64, ivl time.Duration) []output.Warning {
	var ws []output.Warning
	if squeeze > 0 {
		fix := fmt.Sprintf("sysctl -w net.core.netdev_budget=%d net.core.netdev_budget_usecs=%d", 2*max(budget, 300), 2*max(budgetUS, 2000))
		ws = append(ws, output.Warning{
			Code:    "softnet_time_squeeze",
			Message: fmt.Sprintf("net_rx_action ran out of budget %d times (netdev_budget %d packets, netdev_budget_usecs %d us) and left packets for later", squeeze, budget, budgetUS),
			Fix:     fix,
		})
	}
	if drops > 0 {
		fix := fmt.Sprintf("sysctl -w net.core.netdev_max_backlog=%d", 2*max(readIntSysctl("net.core.netdev_max_backlog"), 1000))
		ws = append(ws, output.Warning{
			Code:    "softnet_dropped",
			Message: fmt.Sprintf("%d packets dropped because a CPU's input backlog was full", drops),
			Fix:     fix,
		})
	}
	// NET_RX taking at least 5% of one CPU, 90% of it on that CPU.
	if len(netRXByCPU) > 1 && ivl > 0 {
		for cpu, ns := range netRXByCPU {
			if ns >= 0.05*float64(ivl.Nanoseconds()) && ns >= 0.9*netRXTime {
				ws = append(ws, output.Warning{
					Code:    "net_rx_one_cpu",
					Message: fmt.Sprintf("CPU %d runs %.0f%% of the NET_RX softirq time (%.1f%% of that CPU)", cpu, ns/netRXTime*100, ns/float64(ivl.Nanoseconds())*100),
					Fix:     "spread receive work: more RX queues (ethtool -L DEV combined N), RPS (echo ff > /sys/class/net/DEV/queues/rx-0/rps_cpus), irqbalance",
				})
			}
		}
	}
	return ws
}

// readIntSysctl reads an integer sysctl; 0 when it cannot.
func readIntSysctl(name string) int {
	v, err := settings.ReadSysctl(name)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(v))
	return n
}

// vectorNames reads the vector names from /proc/softirqs, in kernel order.
func vectorNames() []string {
	b, err := os.ReadFile(procSoftirqs)
	if err != nil {
		return defaultNames
	}
	counts, names, err := parseSoftirqs(b)
	if err != nil || len(counts) == 0 {
		return defaultNames
	}
	return names
}

// ReadProcSoftirqs parses /proc/softirqs: counts[vector][cpu] and the vector names.
func ReadProcSoftirqs() ([][]uint64, []string, error) {
	b, err := os.ReadFile(procSoftirqs)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", procSoftirqs, err)
	}
	return parseSoftirqs(b)
}

func parseSoftirqs(b []byte) ([][]uint64, []string, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	var (
		counts [][]uint64
		names  []string
	)
	first := true
	for sc.Scan() {
		if first { // CPU0 CPU1 ...
			first = false
			continue
		}
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			return nil, nil, fmt.Errorf("parse %s: line %q has no colon", procSoftirqs, sc.Text())
		}
		var row []uint64
		for _, f := range strings.Fields(rest) {
			v, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				return nil, nil, fmt.Errorf("parse %s: %w", procSoftirqs, err)
			}
			row = append(row, v)
		}
		names = append(names, strings.TrimSpace(name))
		counts = append(counts, row)
	}
	return counts, names, sc.Err()
}

// findKsoftirqd maps each CPU to its ksoftirqd thread.
func findKsoftirqd() map[int]int {
	out := map[int]int{}
	dirs, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		cpuStr, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "ksoftirqd/")
		if !ok {
			continue
		}
		cpu, err1 := strconv.Atoi(cpuStr)
		pid, err2 := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err1 == nil && err2 == nil {
			out[cpu] = pid
		}
	}
	return out
}

// readSchedstatRun returns the on-CPU nanoseconds of a task from
// /proc/PID/schedstat.
func readSchedstatRun(pid int) (uint64, error) {
	path := "/proc/" + strconv.Itoa(pid) + "/schedstat"
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 0, fmt.Errorf("parse %s: empty", path)
	}
	return strconv.ParseUint(f[0], 10, 64)
}
