// Package profile samples stacks on every CPU with a perf_event cpu-clock
// BPF program (kernel and user stacks, aggregated in the kernel), names them
// with internal/symbolize, and writes pprof profiles and folded stacks.
package profile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/symbolize"
)

// Hooks declares the exec hook, which makes a process that execs be read
// again at its next sample. The sampling program itself (perf_event) is
// attached per CPU by New, not by the attach layer.
var Hooks = []attach.Hook{{
	Name: "exec",
	Alternatives: []attach.Alternative{
		{Tier: attach.Tracepoint, Programs: []string{"exec_tp_btf"}},
		{Tier: attach.Tracepoint, Programs: []string{"exec_raw_tp"}, GivesUp: "nothing (reads no arguments)"},
	},
}}

func init() {
	attach.Register(attach.TracerInfo{
		Name: "profile", Summary: "on-CPU stack sampling (perf_event cpu-clock) to pprof, folded stacks and flame graphs",
		Spec: loadProfile, Hooks: Hooks, Caps: []kernel.Cap{kernel.CapBPF, kernel.CapPerfmon},
	})
}

// DefaultFrequency is the default sampling rate per CPU, in Hz: not a
// multiple of common timer rates, so sampling does not lock step with them.
const DefaultFrequency = 99

// Options select what to sample.
type Options struct {
	PID         int    // only this process (0: all)
	Comm        string // only processes with this name (the first 15 bytes)
	Cgroup      string // only tasks in this cgroup v2 (path, absolute or under the cgroup2 mount)
	Frequency   int    // samples per second per CPU (0: DefaultFrequency)
	IncludeIdle bool   // keep samples of the idle task
	Tier        attach.Tier

	// OffCPU records time blocked instead of sampling CPUs: each span a
	// thread spends off CPU (sched_switch out to in) of at least MinBlock,
	// charged to the kernel and user stack where it left the CPU.
	// Frequency and IncludeIdle do not apply.
	OffCPU   bool
	MinBlock time.Duration
}

// Tracer samples stacks until Profile or Close.
type Tracer struct {
	objs    *attach.Objects
	sym     *symbolize.Symbolizer
	mu      sync.Mutex
	images  map[int]uint32 // PID -> its latest image announced (on-CPU)
	links   []link.Link
	fds     []int
	rd      *ringbuf.Reader
	wg      sync.WaitGroup
	start   time.Time
	stopped time.Time
	freq    int
	cpus    int
	filter  Options
	offcpu  bool
}

// New loads the profiler and starts sampling on every online CPU.
func New(opts Options) (_ *Tracer, err error) {
	if opts.OffCPU {
		return newOffCPU(opts)
	}
	if opts.Frequency == 0 {
		opts.Frequency = DefaultFrequency
	}
	if opts.Frequency < 0 {
		return nil, fmt.Errorf("set frequency %d: want a positive rate", opts.Frequency)
	}
	consts := map[string]any{"targ_tgid": uint32(opts.PID)}
	if opts.IncludeIdle {
		consts["include_idle"] = uint8(1)
	}
	if opts.Comm != "" {
		var c [16]int8
		for i := 0; i < len(opts.Comm) && i < 15; i++ {
			c[i] = int8(opts.Comm[i])
		}
		consts["filter_comm"], consts["targ_comm"] = uint8(1), c
	}
	if opts.Cgroup != "" {
		id, err := CgroupID(opts.Cgroup)
		if err != nil {
			return nil, err
		}
		consts["targ_cgroup"] = id
	}
	spec, err := loadProfile()
	if err != nil {
		return nil, fmt.Errorf("load profile spec: %w", err)
	}
	objs, err := attach.Load(spec, Hooks, attach.Options{Tier: opts.Tier, Constants: consts})
	if err != nil {
		return nil, err
	}
	t := &Tracer{objs: objs, sym: symbolize.New(), freq: opts.Frequency, filter: opts}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	cpus, err := t.begin()
	if err != nil {
		return nil, err
	}
	for _, cpu := range cpus {
		if err := t.attachCPU(cpu); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// begin starts what the on- and off-CPU profilers share once their objects
// are loaded: the kernel's symbols (a restricted table is reported early),
// the reader of processes announced at their first sample, and the clock.
// It returns the online CPUs.
func (t *Tracer) begin() ([]int, error) {
	_, _ = t.sym.KernelSymbols()
	rd, err := ringbuf.NewReader(t.objs.Maps["new_pids"])
	if err != nil {
		return nil, fmt.Errorf("open new-process ring buffer: %w", err)
	}
	t.rd = rd
	t.wg.Add(1)
	go t.capture()
	cpus, err := onlineCPUs()
	if err != nil {
		return nil, err
	}
	t.cpus = len(cpus)
	t.start = time.Now()
	return cpus, nil
}

// capture reads the mappings and symbols of each process at its first sample.
func (t *Tracer) capture() {
	defer t.wg.Done()
	for {
		rec, err := t.rd.Read()
		if err != nil {
			return
		}
		if len(rec.RawSample) < 4 {
			continue
		}
		pid := int(binary.NativeEndian.Uint32(rec.RawSample))
		if t.offcpu {
			// Off-CPU announcements carry the PID alone: one image per
			// process, read again a little later.
			t.sym.Forget(symbolize.Image{PID: pid})
			_ = t.sym.Capture(symbolize.Image{PID: pid})
			t.recapture(pid)
			continue
		}
		// struct image: a process announced again has exec'd (or its PID
		// was reused): its new image's mappings are read now; the old
		// image's stay for the samples taken before.
		var img profileImage
		if len(rec.RawSample) < int(unsafe.Sizeof(img)) {
			continue
		}
		img.Pid, img.Gen = uint32(pid), binary.NativeEndian.Uint32(rec.RawSample[4:])
		t.announced(symbolize.Image{PID: int(img.Pid), Gen: img.Gen})
	}
}

// announced reads a new image's mappings now, and again a little later
// for what its dynamic loader maps after the first sample, unless the
// process has exec'd again (or exited) by then.
func (t *Tracer) announced(img symbolize.Image) {
	t.mu.Lock()
	if t.images == nil {
		t.images = map[int]uint32{}
	}
	t.images[img.PID] = img.Gen
	t.mu.Unlock()
	_ = t.sym.Capture(img)
	t.wg.Add(1)
	time.AfterFunc(recaptureDelay, func() {
		defer t.wg.Done()
		t.mu.Lock()
		current := t.images[img.PID] == img.Gen
		t.mu.Unlock()
		if current {
			_ = t.sym.Recapture(img)
		}
	})
}

func (t *Tracer) attachCPU(cpu int) error {
	attr := unix.PerfEventAttr{
		Type:   unix.PERF_TYPE_SOFTWARE,
		Config: unix.PERF_COUNT_SW_CPU_CLOCK,
		Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Sample: uint64(t.freq),
		Bits:   unix.PerfBitFreq,
	}
	fd, err := unix.PerfEventOpen(&attr, -1, cpu, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open cpu-clock perf event on CPU %d: %w", cpu, err)
	}
	prog := t.objs.Programs["profile_cpu"]
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: fd, Program: prog, Attach: ebpf.AttachPerfEvent})
	if err == nil {
		t.links = append(t.links, l)
		t.fds = append(t.fds, fd)
		return nil
	}
	// Kernels before 5.15 have no perf_event links: attach with the ioctl.
	if err2 := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_SET_BPF, prog.FD()); err2 != nil {
		unix.Close(fd)
		return fmt.Errorf("attach BPF to perf event on CPU %d: %w", cpu, errors.Join(err, err2))
	}
	t.fds = append(t.fds, fd)
	return nil
}

// stop detaches sampling; the maps stay readable.
func (t *Tracer) stop() {
	if t.stopped.IsZero() {
		t.stopped = time.Now()
	}
	for _, l := range t.links {
		l.Close()
	}
	t.links = nil
	for _, fd := range t.fds {
		unix.Close(fd)
	}
	t.fds = nil
}

// Close stops sampling and frees everything.
func (t *Tracer) Close() error {
	t.stop()
	if t.rd != nil {
		t.rd.Close()
		t.wg.Wait()
		t.rd = nil
	}
	if t.objs == nil {
		return nil
	}
	err := t.objs.Close()
	t.objs = nil
	return err
}

// Symbolizer returns the tracer's symbolizer.
func (t *Tracer) Symbolizer() *symbolize.Symbolizer { return t.sym }

// CgroupID returns the ID of a cgroup v2 directory (its inode number), which
// bpf_get_current_cgroup_id reports.
func CgroupID(path string) (uint64, error) {
	if !filepath.IsAbs(path) {
		root, err := kernel.Cgroup2Path()
		if err != nil {
			return 0, fmt.Errorf("find cgroup %s: %w", path, err)
		}
		path = filepath.Join(root, path)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// onlineCPUs parses /sys/devices/system/cpu/online ("0-3,5").
func onlineCPUs() ([]int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		cpus := make([]int, runtime.NumCPU())
		for i := range cpus {
			cpus[i] = i
		}
		return cpus, nil
	}
	return parseCPUList(strings.TrimSpace(string(b)))
}

func parseCPUList(s string) ([]int, error) {
	var cpus []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, found := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("parse CPU list %q: %w", s, err)
		}
		b := a
		if found {
			if b, err = strconv.Atoi(hi); err != nil {
				return nil, fmt.Errorf("parse CPU list %q: %w", s, err)
			}
		}
		for c := a; c <= b; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}
