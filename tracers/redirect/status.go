package redirect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/nettrace/nettrace/internal/kernel"
)

// Status is what is pinned and attached, and what redirection did.
type Status struct {
	PinDir   string   `json:"pin_dir"`
	Pins     []string `json:"pins"`     // what the pin directory holds
	Enabled  bool     `json:"enabled"`  // the sockops link is pinned: new loopback sockets are added
	Draining bool     `json:"draining"` // disable started: nothing is redirected any more

	// What the kernel says is attached.
	Cgroup            string   `json:"cgroup"` // the sockops link's cgroup, found by its id under the cgroup v2 mount
	CgroupID          uint64   `json:"cgroup_id"`
	SockopsProgID     uint32   `json:"sockops_prog_id"`
	SockopsAttached   bool     `json:"sockops_attached"` // the cgroup lists the program
	SkMsgProgIDs      []uint32 `json:"sk_msg_prog_ids"`  // programs the socket map runs on sendmsg
	SpliceWatcherLink uint32   `json:"splice_watcher_link_id"`
	SendWatcherLink   uint32   `json:"send_watcher_link_id"` // 0: bulk senders stay in the map

	Sockets     int    `json:"sockets"`      // sockets in the map
	QueuedBytes uint64 `json:"queued_bytes"` // redirected bytes not yet read

	Counters Counters `json:"counters"`
}

// Counters are totals since Enable.
type Counters struct {
	RedirectedMsgs  uint64            `json:"redirected_msgs"`
	RedirectedBytes uint64            `json:"redirected_bytes"`
	PassedMsgs      uint64            `json:"passed_msgs"` // sends that went through TCP (misses)
	PassedBytes     uint64            `json:"passed_bytes"`
	Misses          map[string]uint64 `json:"misses"` // passed sends by reason

	SocketsAdded     uint64 `json:"sockets_added"`
	SocketAddFailed  uint64 `json:"socket_add_failed"` // map full or socket unsuitable: plain TCP
	NotAddedDraining uint64 `json:"sockets_not_added_draining"`
	SpliceMarked     uint64 `json:"splice_marked"` // sockets read with splice(2): never redirected to
	SpliceMarkFailed uint64 `json:"splice_mark_failed"`
	// Sockets that splice(2) started reading while redirected data was
	// still queued: splice cannot see those bytes (read-then-splice).
	SpliceStranded      uint64 `json:"splice_stranded"`
	SpliceStrandedBytes uint64 `json:"splice_stranded_bytes"`
	// Bulk senders taken out of the map (their sends skip sk_msg), their
	// peers taken out after them (their reads skip the redirected queue),
	// and leaves put off to a later ACK because a message was on its way
	// or a redirected queue was not empty.
	SocketsLeftBulk uint64 `json:"sockets_left_bulk"`
	PeersLeft       uint64 `json:"peers_left"`
	LeaveDeferred   uint64 `json:"leave_deferred"`
}

// MissReasons are the keys of Counters.Misses, in the order of the stats map.
var MissReasons = []string{"draining", "no_peer", "peer_closing", "tcp_unread", "peer_unproven", "peer_spliced", "peer_full", "no_queue_info", "bulk", "comm", "internal", "peer_leaving"}

// ReadStatus reads what is pinned under dir ("" = DefaultPinDir) and asks
// the kernel what is attached. Nothing pinned is not an error.
func ReadStatus(dir string) (*Status, error) {
	dir = pinDir(dir)
	st := &Status{PinDir: dir, Pins: existingPins(dir), Counters: Counters{Misses: map[string]uint64{}}}
	if len(st.Pins) == 0 {
		return st, nil
	}
	if err := st.readLinks(dir); err != nil {
		return nil, err
	}
	maps, err := openMaps(dir)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	defer closeMaps(maps)
	var cfg redirectRedirConfig
	if err := maps["settings"].Lookup(uint32(0), &cfg); err != nil {
		return nil, fmt.Errorf("read settings: %w", err)
	}
	st.Draining = cfg.Draining != 0
	if err := st.Counters.read(maps["stats"]); err != nil {
		return nil, err
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: maps["sock_hash"].FD(), Attach: ebpf.AttachSkMsgVerdict})
	if err != nil {
		return nil, fmt.Errorf("query sk_msg programs of sock_hash: %w", err)
	}
	for _, p := range res.Programs {
		st.SkMsgProgIDs = append(st.SkMsgProgIDs, uint32(p.ID))
	}
	recs, err := pending(maps)
	if err != nil {
		return nil, err
	}
	st.Sockets = len(recs)
	for _, r := range recs {
		st.QueuedBytes += uint64(r.Queued)
	}
	return st, nil
}

func (st *Status) readLinks(dir string) error {
	if l, err := link.LoadPinnedLink(filepath.Join(dir, pinSockopsLink), nil); err == nil {
		defer l.Close()
		st.Enabled = true
		info, err := l.Info()
		if err != nil {
			return fmt.Errorf("read sockops link: %w", err)
		}
		st.SockopsProgID = uint32(info.Program)
		if cg := info.Cgroup(); cg != nil {
			st.CgroupID = cg.CgroupId
		}
		st.Cgroup = cgroupPath(st.CgroupID)
		if st.Cgroup != "" {
			ids, err := CgroupSockops(st.Cgroup)
			if err != nil {
				return err
			}
			for _, id := range ids {
				st.SockopsAttached = st.SockopsAttached || id == st.SockopsProgID
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open sockops link: %w", err)
	}
	if l, err := link.LoadPinnedLink(filepath.Join(dir, pinSpliceLink), nil); err == nil {
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			return fmt.Errorf("read splice watcher link: %w", err)
		}
		st.SpliceWatcherLink = uint32(info.ID)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open splice watcher link: %w", err)
	}
	if l, err := link.LoadPinnedLink(filepath.Join(dir, pinSendLink), nil); err == nil {
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			return fmt.Errorf("read send watcher link: %w", err)
		}
		st.SendWatcherLink = uint32(info.ID)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open send watcher link: %w", err)
	}
	return nil
}

// CgroupSockops returns the IDs of the sockops programs attached to a cgroup
// v2 directory, as the kernel reports them.
func CgroupSockops(path string) ([]uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", path, err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupSockOps})
	if err != nil {
		return nil, fmt.Errorf("query sockops programs of %s: %w", path, err)
	}
	var ids []uint32
	for _, p := range res.Programs {
		ids = append(ids, uint32(p.ID))
	}
	return ids, nil
}

// cgroupPath finds a cgroup v2 directory by its id (its inode number).
func cgroupPath(id uint64) string {
	root, err := kernel.Cgroup2Path()
	if err != nil || id == 0 {
		return ""
	}
	var found string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if s, ok := fi.Sys().(*syscall.Stat_t); ok && s.Ino == id {
			found = p
			return filepath.SkipAll
		}
		return nil
	})
	return found
}

func (c *Counters) read(m *ebpf.Map) error {
	v := make([]uint64, redirectRedirStatST_MAX)
	for i := range v {
		var perCPU []uint64
		if err := m.Lookup(uint32(i), &perCPU); err != nil {
			return fmt.Errorf("read stats: %w", err)
		}
		for _, n := range perCPU {
			v[i] += n
		}
	}
	c.RedirectedMsgs, c.RedirectedBytes = v[redirectRedirStatST_REDIR_MSGS], v[redirectRedirStatST_REDIR_BYTES]
	c.PassedMsgs, c.PassedBytes = v[redirectRedirStatST_PASS_MSGS], v[redirectRedirStatST_PASS_BYTES]
	for i, r := range MissReasons {
		c.Misses[r] = v[int(redirectRedirStatST_MISS_DRAINING)+i]
	}
	c.SocketsAdded = v[redirectRedirStatST_SOCK_ADDED]
	c.SocketAddFailed = v[redirectRedirStatST_SOCK_ADD_FAILED]
	c.NotAddedDraining = v[redirectRedirStatST_SOCK_NOT_ADDED_DRAINING]
	c.SpliceMarked = v[redirectRedirStatST_SPLICE_MARKED]
	c.SpliceMarkFailed = v[redirectRedirStatST_SPLICE_MARK_FAILED]
	c.SpliceStranded = v[redirectRedirStatST_SPLICE_STRANDED]
	c.SpliceStrandedBytes = v[redirectRedirStatST_SPLICE_STRANDED_BYTES]
	c.SocketsLeftBulk = v[redirectRedirStatST_SOCK_LEFT_BULK]
	c.LeaveDeferred = v[redirectRedirStatST_LEAVE_DEFERRED]
	c.PeersLeft = v[redirectRedirStatST_PEER_LEFT]
	return nil
}

func openMaps(dir string) (map[string]*ebpf.Map, error) {
	maps := map[string]*ebpf.Map{}
	for _, name := range mapNames {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if err != nil {
			closeMaps(maps)
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		maps[name] = m
	}
	return maps, nil
}

func closeMaps(maps map[string]*ebpf.Map) {
	for _, m := range maps {
		m.Close()
	}
}

// pending lists the sockets in the map with their unread redirected bytes,
// through an iter/sockmap program, or where the kernel refuses map
// iterators, from the tasks' open files.
func pending(maps map[string]*ebpf.Map) ([]redirectPendingRec, error) {
	if !kernel.MapIter.Has() {
		return pendingFromFiles(maps)
	}
	return readPending(maps, "redirect_pending", maps["sock_hash"])
}

// pendingFromFiles lists sock_hash's sockets (a user-space lookup gives
// each one's cookie) with the unread redirected bytes an iter/task_file
// walk reads from the tasks' open sockets. A socket of the map that no task
// holds open (one still in an accept queue) is listed with none queued: a
// socket that was never read is never redirected to (peer_unproven).
func pendingFromFiles(maps map[string]*ebpf.Map) ([]redirectPendingRec, error) {
	members := map[uint64]redirectSkKey{}
	var (
		key    redirectSkKey
		cookie uint64
	)
	iter := maps["sock_hash"].Iterate()
	for iter.Next(&key, &cookie) {
		members[cookie] = key
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("read sock_hash: %w", err)
	}
	files, err := readPending(maps, "redirect_pending_files", nil)
	if err != nil {
		return nil, err
	}
	var recs []redirectPendingRec
	for _, r := range files {
		if k, ok := members[r.Cookie]; ok && k == r.Key {
			recs = append(recs, r)
			delete(members, r.Cookie)
		}
	}
	for c, k := range members {
		recs = append(recs, redirectPendingRec{Key: k, Cookie: c})
	}
	return recs, nil
}

// readPending runs iterator program prog (over map m, when given) and
// decodes its records.
func readPending(maps map[string]*ebpf.Map, prog string, m *ebpf.Map) ([]redirectPendingRec, error) {
	spec, err := loadRedirect()
	if err != nil {
		return nil, fmt.Errorf("load redirect spec: %w", err)
	}
	for name := range spec.Programs {
		if name != prog {
			delete(spec.Programs, name)
		}
	}
	// Enable sizes some maps to what this kernel needs.
	for name, m := range maps {
		if ms := spec.Maps[name]; ms != nil {
			ms.MaxEntries = m.MaxEntries()
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: maps})
	if err != nil {
		return nil, fmt.Errorf("load %s iterator: %w", prog, err)
	}
	defer coll.Close()
	it, err := link.AttachIter(link.IterOptions{Program: coll.Programs[prog], Map: m})
	if err != nil {
		return nil, fmt.Errorf("attach %s iterator: %w", prog, err)
	}
	defer it.Close()
	rd, err := it.Open()
	if err != nil {
		return nil, fmt.Errorf("open %s iterator: %w", prog, err)
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		return nil, fmt.Errorf("read %s iterator: %w", prog, err)
	}
	size := binary.Size(redirectPendingRec{})
	recs := make([]redirectPendingRec, len(b)/size)
	if err := binary.Read(bytes.NewReader(b[:len(recs)*size]), binary.NativeEndian, recs); err != nil {
		return nil, fmt.Errorf("decode %s iterator: %w", prog, err)
	}
	return recs, nil
}
