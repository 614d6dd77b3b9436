package socktable

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/nettrace/nettrace/internal/netns"
)

// ReadProc reads /proc/net/tcp and /proc/net/tcp6 of the namespace at path:
// the kernel's own text view of the same sockets, used as ground truth in
// tests. It fills State, Local, Remote, RxQueue, TxQueue, UID and Inode.
func ReadProc(nsPath string) ([]Socket, error) {
	var out []Socket
	err := netns.Do(nsPath, func() error {
		for _, f := range []string{"tcp", "tcp6"} {
			s, err := readProcFile(netns.ProcNet(f))
			if err != nil {
				return err
			}
			out = append(out, s...)
		}
		return nil
	})
	return out, err
}

func readProcFile(path string) ([]Socket, error) {
	f, err := os.Open(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil // no IPv6
		}
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	var out []Socket
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for line := 2; sc.Scan(); line++ {
		// sl local rem st tx:rx tr:when retr uid timeout inode ...
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 {
			return nil, fmt.Errorf("read %s line %d: %d fields", path, line, len(fs))
		}
		local, err1 := parseHexAddr(fs[1])
		remote, err2 := parseHexAddr(fs[2])
		st, err3 := strconv.ParseUint(fs[3], 16, 8)
		txs, rxs, _ := strings.Cut(fs[4], ":")
		tx, err4 := strconv.ParseUint(txs, 16, 32)
		rx, err5 := strconv.ParseUint(rxs, 16, 32)
		uid, err6 := strconv.ParseUint(fs[7], 10, 32)
		ino, err7 := strconv.ParseUint(fs[9], 10, 64)
		for _, err := range []error{err1, err2, err3, err4, err5, err6, err7} {
			if err != nil {
				return nil, fmt.Errorf("read %s line %d: %w", path, line, err)
			}
		}
		out = append(out, Socket{State: State(st), Local: local, Remote: remote,
			TxQueue: uint32(tx), RxQueue: uint32(rx), UID: uint32(uid), Inode: ino})
	}
	return out, sc.Err()
}

// parseHexAddr parses "0100007F:1F90" (IPv4) or the 32-digit IPv6 form; the
// kernel prints each 32-bit word in host byte order.
func parseHexAddr(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("parse address %q", s)
	}
	b, err := hex.DecodeString(a)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, fmt.Errorf("parse address %q", s)
	}
	for i := 0; i < len(b); i += 4 {
		binary.BigEndian.PutUint32(b[i:], binary.LittleEndian.Uint32(b[i:]))
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("parse port %q: %w", p, err)
	}
	var ip netip.Addr
	if len(b) == 4 {
		ip = netip.AddrFrom4([4]byte(b))
	} else {
		ip = netip.AddrFrom16([16]byte(b)).Unmap()
	}
	return netip.AddrPortFrom(ip, uint16(port)), nil
}

// Process is a process holding a socket.
type Process struct {
	PID  int
	Comm string
}

// Owners maps socket inodes to the processes that hold them, from
// /proc/*/fd (lowest PID first when several share a socket, as workers do).
func Owners() (map[uint64][]Process, error) {
	dirs, err := filepath.Glob("/proc/[0-9]*/fd")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	out := map[uint64][]Process{}
	for _, dir := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue // gone, or not ours to read
		}
		var comm string
		for _, e := range ents {
			target, err := os.Readlink(filepath.Join(dir, e.Name()))
			if err != nil || !strings.HasPrefix(target, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 64)
			if err != nil {
				continue
			}
			if comm == "" {
				b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
				comm = strings.TrimSpace(string(b))
			}
			if ps := out[ino]; len(ps) == 0 || ps[len(ps)-1].PID != pid {
				out[ino] = append(ps, Process{PID: pid, Comm: comm})
			}
		}
	}
	for _, ps := range out {
		sort.Slice(ps, func(i, j int) bool { return ps[i].PID < ps[j].PID })
	}
	return out, nil
}
