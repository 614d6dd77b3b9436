package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/tracers/redirect"
)

// Names of what a benchmark creates, followed by its pid.
const (
	cgroupPrefix = "nettrace-bench-"
	pinPrefix    = "bench-"
)

// drainTimeout bounds how long disabling waits for redirected data to be
// read; the benchmark's sockets are closed by then.
const drainTimeout = 10 * time.Second

// redirector runs this process in a cgroup and enables redirect on it for
// one size at a time.
type redirector struct {
	cgroup  string // where this process runs during the benchmark
	created bool   // cgroup is ours: remove it at the end
	orig    string // where this process ran before
	pins    string
}

// newRedirector moves this process (all its threads) into cg, or into a
// private cgroup it creates when cg is "". Leftovers of benchmarks that were
// killed are removed first.
func newRedirector(cg, pins string) (*redirector, error) {
	if err := redirect.Supported(); err != nil {
		return nil, fmt.Errorf("check kernel for redirect: %w", err)
	}
	root, err := kernel.Cgroup2Path()
	if err != nil {
		return nil, err
	}
	removeStale(root)
	orig, err := ownCgroup(root)
	if err != nil {
		return nil, err
	}
	pid := os.Getpid()
	r := &redirector{cgroup: cg, orig: orig, pins: pins}
	if r.pins == "" {
		r.pins = filepath.Join(kernel.BPFFSPath, "nettrace", pinPrefix+strconv.Itoa(pid))
	}
	if r.cgroup == "" {
		r.cgroup = filepath.Join(root, cgroupPrefix+strconv.Itoa(pid))
		if err := os.Mkdir(r.cgroup, 0o755); err != nil {
			return nil, fmt.Errorf("create cgroup: %w", err)
		}
		r.created = true
	}
	if err := moveTo(r.cgroup); err != nil {
		return nil, errors.Join(err, r.close())
	}
	return r, nil
}

// measure enables redirect, measures one size, and disables it again.
func (r *redirector) measure(ctx context.Context, opts Options, size int) (Figures, error) {
	if err := redirect.Enable(redirect.Options{Cgroup: r.cgroup, PinDir: r.pins}); err != nil {
		return Figures{}, fmt.Errorf("enable redirect: %w", err)
	}
	before, err := redirect.ReadStatus(r.pins)
	if err != nil {
		return Figures{}, errors.Join(err, r.disable())
	}
	var serr error
	f, err := measure(ctx, opts, size, func(f *Figures, test string) {
		after, err := redirect.ReadStatus(r.pins)
		if err != nil {
			serr = err
			return
		}
		redir := after.Counters.RedirectedBytes - before.Counters.RedirectedBytes
		passed := after.Counters.PassedBytes - before.Counters.PassedBytes
		if test == "stream" {
			f.StreamRedirectedBytes, f.StreamPassedBytes = redir, passed
		} else {
			f.PingPongRedirectedBytes, f.PingPongPassedBytes = redir, passed
		}
		before = after
	})
	if err == nil && serr == nil {
		err = r.msgCost(ctx, opts, size, &f)
	}
	return f, errors.Join(err, serr, r.disable())
}

// msgCost runs a ping-pong of a quarter of the duration (at least 200 ms)
// with the kernel's BPF statistics on and fills in the sk_msg program's
// runs and mean run time over it.
func (r *redirector) msgCost(ctx context.Context, opts Options, size int, f *Figures) error {
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(r.pins, "msg_prog"), nil)
	if err != nil {
		return fmt.Errorf("open sk_msg program: %w", err)
	}
	defer prog.Close()
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("enable BPF statistics: %w", err)
	}
	defer stats.Close()
	s0, err := prog.Stats()
	if err != nil {
		return fmt.Errorf("read sk_msg statistics: %w", err)
	}
	o := opts
	o.Duration = max(opts.Duration/4, 200*time.Millisecond)
	_, rounds, _, _, err := pingPong(ctx, o, size)
	if err != nil {
		return err
	}
	s1, err := prog.Stats()
	if err != nil {
		return fmt.Errorf("read sk_msg statistics: %w", err)
	}
	f.MsgRoundTrips = rounds
	f.MsgRuns = s1.RunCount - s0.RunCount
	if f.MsgRuns > 0 {
		f.MsgNsPerRun = float64(s1.Runtime-s0.Runtime) / float64(f.MsgRuns)
	}
	return nil
}

func (r *redirector) disable() error {
	if _, err := redirect.Disable(r.pins, drainTimeout); err != nil {
		return fmt.Errorf("disable redirect: %w", err)
	}
	return nil
}

// close disables redirect, moves this process back and removes the cgroup
// when it created it.
func (r *redirector) close() error {
	errs := []error{r.disable(), moveTo(r.orig)}
	if r.created {
		if err := os.Remove(r.cgroup); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
		}
	}
	return errors.Join(errs...)
}

// moveTo moves this whole process into a cgroup v2 directory.
func moveTo(cg string) error {
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("move process into cgroup %s: %w", cg, err)
	}
	return nil
}

// ownCgroup returns this process's cgroup v2 directory.
func ownCgroup(root string) (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("read own cgroup: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return filepath.Join(root, p), nil
		}
	}
	return "", errors.New("read own cgroup: no cgroup v2 entry in /proc/self/cgroup")
}

// removeStale disables the redirect and removes the cgroup of benchmarks
// whose process is gone (killed with SIGKILL). Best effort.
func removeStale(root string) {
	dead := func(name, prefix string) bool {
		pid, err := strconv.Atoi(strings.TrimPrefix(name, prefix))
		if err != nil || !strings.HasPrefix(name, prefix) {
			return false
		}
		_, err = os.Stat(fmt.Sprintf("/proc/%d", pid))
		return errors.Is(err, os.ErrNotExist)
	}
	pinRoot := filepath.Join(kernel.BPFFSPath, "nettrace")
	if ents, err := os.ReadDir(pinRoot); err == nil {
		for _, e := range ents {
			if dead(e.Name(), pinPrefix) {
				_, _ = redirect.Disable(filepath.Join(pinRoot, e.Name()), time.Second)
			}
		}
	}
	if ents, err := os.ReadDir(root); err == nil {
		for _, e := range ents {
			if dead(e.Name(), cgroupPrefix) {
				_ = os.Remove(filepath.Join(root, e.Name()))
			}
		}
	}
}
