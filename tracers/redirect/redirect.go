// Package redirect is a safe sockops/sk_msg short-cut for loopback TCP:
// sends between two established loopback sockets of a cgroup v2 go straight
// to the peer's receive queue, skipping the TCP/IP stack, but only when that
// cannot lose or reorder data; every other send goes through TCP and is
// counted with its reason. Everything is pinned under bpffs, so it stays
// after the enabling process exits; Disable drains it without losing data.
package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/nettrace/nettrace/internal/kernel"
)

// DefaultPinDir is where Enable pins the maps, programs and links.
const DefaultPinDir = kernel.BPFFSPath + "/nettrace/redirect"

// MaxPorts is how many ports Options.Ports may name.
const MaxPorts = 16

// Caps are the capabilities enable, status and disable need.
var Caps = []kernel.Cap{kernel.CapBPF, kernel.CapNetAdmin, kernel.CapPerfmon, kernel.CapSysAdmin}

// Pin names inside the pin directory.
const (
	pinSockopsLink = "sockops_link"
	pinSpliceLink  = "splice_link"
	pinSendLink    = "send_link"
	pinMsgProg     = "msg_prog"
)

var mapNames = []string{"sock_hash", "socks", "spliced", "settings", "stats", "sending", "sending_tid"}

// DefaultBulkBytes is Options.BulkBytes when 0: a socket that sends more
// than this without its peer sending anything back stays on TCP, which
// carries one-way bulk flows faster than redirect (see docs/redirect.md).
const DefaultBulkBytes = 1 << 20

// Options say where to redirect.
type Options struct {
	Cgroup string   // cgroup v2 directory to attach to; "" = the root of the cgroup v2 mount
	Ports  []uint16 // redirect only connections with one of these ports at either end; empty = all
	PinDir string   // "" = DefaultPinDir
	// Comm, when set, redirects only between sockets whose sending task
	// has this comm at both ends: the task sending now, and the task that
	// last sent on the peer socket (a peer that never sent is not redirected
	// to). At most 15 bytes.
	Comm string
	// BulkBytes: after sending more than this many bytes with nothing sent
	// back by the peer, a socket stays on TCP for good. 0 =
	// DefaultBulkBytes, negative = no limit.
	BulkBytes int64
}

func pinDir(dir string) string {
	if dir == "" {
		return DefaultPinDir
	}
	return dir
}

// MsgTotLenSince is where sk_psock.msg_tot_len, the byte count of a
// socket's queue of redirected data, first appeared: Linux 6.19 ("bpf,
// sockmap: Fix FIONREAD for sockmap"), backported to the stable kernels
// 6.18.14, 6.12.75 and 6.6.128.
const MsgTotLenSince = "6.19+; stable 6.18.14+, 6.12.75+, 6.6.128+"

// Supported says why this kernel cannot redirect safely, or nil, in one
// line naming what is missing and the oldest kernel that has it. Without
// sk_psock.msg_tot_len the unread redirected bytes of a receiver cannot be
// bounded, so nothing would ever be redirected. The sk_msg program also
// reads the peer socket through the bpf_rdonly_cast kfunc (6.2+, older
// than msg_tot_len).
func Supported() error {
	if err := kernel.RequireKernelBTF("redirect (its sk_msg program calls the bpf_rdonly_cast kfunc)"); err != nil {
		return err
	}
	spec, err := kernel.Types()
	if err != nil {
		return err
	}
	var s *btf.Struct
	if err := spec.TypeByName("sk_psock", &s); err != nil {
		return fmt.Errorf("find struct sk_psock in kernel BTF: %w", err)
	}
	found := false
	for _, m := range s.Members {
		if m.Name == "msg_tot_len" {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("kernel lacks sk_psock.msg_tot_len (Linux %s): the receiver's queue of redirected data cannot be bounded", MsgTotLenSince)
	}
	return kernel.RdonlyCast.Err()
}

// canLeave says whether the kernel has the sock:sock_send_length tracepoint
// (6.4+), which bulk senders need to leave the socket map safely (see
// leave in bpf/redirect.bpf.c). Without it they stay in the map, on TCP.
func canLeave() bool {
	spec, err := kernel.Types()
	if err != nil {
		return false
	}
	var td *btf.Typedef
	return spec.TypeByName("btf_trace_sock_send_length", &td) == nil
}

// useTaskStorage says whether the sk_msg program keeps its per-thread
// records in task storage; tests turn it off to run the alternative.
var useTaskStorage = kernel.SkMsgTaskStorage.Has

// Enable loads the programs, attaches sk_msg to the socket map, the splice
// watcher to its tracepoint and sockops to the cgroup (last, so no socket
// enters the map before the rest is in place), and pins all of it. On
// failure it removes what it attached.
func Enable(opts Options) (err error) {
	if len(opts.Ports) > MaxPorts {
		return fmt.Errorf("select ports: at most %d, got %d", MaxPorts, len(opts.Ports))
	}
	if len(opts.Comm) > 15 || strings.ContainsRune(opts.Comm, 0) {
		return fmt.Errorf("select comm: %q is not a comm (at most 15 bytes, no NUL)", opts.Comm)
	}
	if err := Supported(); err != nil {
		return fmt.Errorf("check kernel: %w", err)
	}
	cg := opts.Cgroup
	if cg == "" {
		if cg, err = kernel.Cgroup2Path(); err != nil {
			return err
		}
	}
	if err := isCgroup2(cg); err != nil {
		return err
	}
	if _, err := kernel.EnsureBPFFS(); err != nil {
		return err
	}
	if _, err := kernel.EnsureTracefs(); err != nil {
		return err
	}
	_ = rlimit.RemoveMemlock()
	dir := pinDir(opts.PinDir)
	if pins := existingPins(dir); len(pins) > 0 {
		return fmt.Errorf("enable redirect: already enabled (%s holds %v); see status, or disable first", dir, pins)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			_ = remove(dir)
		}
	}()

	spec, err := loadRedirect()
	if err != nil {
		return fmt.Errorf("load redirect spec: %w", err)
	}
	var ports [MaxPorts]uint16
	copy(ports[:], opts.Ports)
	if err := spec.Variables["sel_ports"].Set(ports); err != nil {
		return fmt.Errorf("set ports: %w", err)
	}
	if err := spec.Variables["n_ports"].Set(uint32(len(opts.Ports))); err != nil {
		return fmt.Errorf("set ports: %w", err)
	}
	var comm [16]byte
	copy(comm[:], opts.Comm)
	if err := spec.Variables["sel_comm"].Set(comm); err != nil {
		return fmt.Errorf("set comm: %w", err)
	}
	if err := spec.Variables["has_comm"].Set(uint32(min(len(opts.Comm), 1))); err != nil {
		return fmt.Errorf("set comm: %w", err)
	}
	bulk := uint64(DefaultBulkBytes)
	if opts.BulkBytes < 0 {
		bulk = 0
	} else if opts.BulkBytes > 0 {
		bulk = uint64(opts.BulkBytes)
	}
	if err := spec.Variables["bulk_bytes"].Set(bulk); err != nil {
		return fmt.Errorf("set bulk threshold: %w", err)
	}
	leave := bulk > 0 && canLeave()
	if err := spec.Variables["leave_bulk"].Set(leave); err != nil {
		return fmt.Errorf("set bulk leave: %w", err)
	}
	if !leave {
		delete(spec.Programs, "redirect_send_done")
	}
	// Where sk_msg cannot use task storage, the per-thread records of
	// redirects in flight live in a hash by thread id instead.
	taskStorage := useTaskStorage()
	if err := spec.Variables["msg_task_storage"].Set(taskStorage); err != nil {
		return fmt.Errorf("set per-thread storage: %w", err)
	}
	if taskStorage || !leave {
		spec.Maps["sending_tid"].MaxEntries = 1
	}
	// The iterators are loaded when status and disable read them.
	delete(spec.Programs, "redirect_pending")
	delete(spec.Programs, "redirect_pending_files")
	for _, name := range mapNames {
		spec.Maps[name].Pinning = ebpf.PinByName
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if err != nil {
		return fmt.Errorf("load redirect programs: %w", err)
	}
	defer coll.Close()

	msg := coll.Programs["redirect_msg"]
	if err := msg.Pin(filepath.Join(dir, pinMsgProg)); err != nil {
		return fmt.Errorf("pin sk_msg program: %w", err)
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: coll.Maps["sock_hash"].FD(), Program: msg, Attach: ebpf.AttachSkMsgVerdict,
	}); err != nil {
		return fmt.Errorf("attach sk_msg to sock_hash: %w", err)
	}
	tp, err := link.Tracepoint("syscalls", "sys_enter_splice", coll.Programs["redirect_splice"], nil)
	if err != nil {
		return fmt.Errorf("attach splice watcher: %w", err)
	}
	defer tp.Close()
	if err := tp.Pin(filepath.Join(dir, pinSpliceLink)); err != nil {
		return fmt.Errorf("pin splice watcher: %w", err)
	}
	if leave {
		sl, err := link.AttachTracing(link.TracingOptions{Program: coll.Programs["redirect_send_done"]})
		if err != nil {
			return fmt.Errorf("attach send watcher: %w", err)
		}
		defer sl.Close()
		if err := sl.Pin(filepath.Join(dir, pinSendLink)); err != nil {
			return fmt.Errorf("pin send watcher: %w", err)
		}
	}
	so, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: ebpf.AttachCGroupSockOps, Program: coll.Programs["redirect_sockops"]})
	if err != nil {
		return fmt.Errorf("attach sockops to cgroup %s: %w", cg, err)
	}
	defer so.Close()
	if err := so.Pin(filepath.Join(dir, pinSockopsLink)); err != nil {
		return fmt.Errorf("pin sockops link: %w", err)
	}
	return nil
}

func isCgroup2(path string) error {
	fi, err := os.Stat(filepath.Join(path, "cgroup.procs"))
	if err != nil {
		return fmt.Errorf("open cgroup v2 %s: %w", path, err)
	}
	if fi.IsDir() {
		return fmt.Errorf("open cgroup v2 %s: cgroup.procs is a directory", path)
	}
	return nil
}

// existingPins lists what a pin directory holds.
func existingPins(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// remove detaches and unpins everything under dir, unconditionally (no
// draining): only for undoing a failed Enable, or after Disable drained.
func remove(dir string) error {
	var errs []error
	for _, name := range []string{pinSockopsLink, pinSpliceLink, pinSendLink} {
		p := filepath.Join(dir, name)
		l, err := link.LoadPinnedLink(p, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("open %s: %w", p, err))
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", p, err))
		}
		l.Close()
	}
	if prog, err := ebpf.LoadPinnedProgram(filepath.Join(dir, pinMsgProg), nil); err == nil {
		if m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "sock_hash"), nil); err == nil {
			err := link.RawDetachProgram(link.RawDetachProgramOptions{Target: m.FD(), Program: prog, Attach: ebpf.AttachSkMsgVerdict})
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("detach sk_msg: %w", err))
			}
			m.Close()
		}
		if err := prog.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin sk_msg program: %w", err))
		}
		prog.Close()
	}
	for _, name := range mapNames {
		p := filepath.Join(dir, name)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin %s: %w", p, err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
	}
	return errors.Join(errs...)
}
