package testutil

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// RequireNoOrphans fails when a BPF program with one of names is still
// loaded while no process holds it: what a tracer leaves attached (pinned,
// or attached to a cgroup or map) after its process exited. Programs that a
// live process holds, such as another test's, do not count. The kernel frees
// programs shortly after their last reference goes, so it retries for a second.
func RequireNoOrphans(t testing.TB, names ...string) {
	t.Helper()
	RequireNoOrphansExcept(t, nil, names...)
}

// PinnedPrograms returns the IDs of the programs pinned under dir, or held
// by links pinned there, at any depth; skip names a directory to leave out.
// Tests that run beside another package's pinned objects (redirect) use it
// to tell those from their own leftovers.
func PinnedPrograms(dir, skip string) map[uint32]bool {
	ids := map[uint32]bool{}
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			if path == skip {
				return filepath.SkipDir
			}
			return nil
		}
		if p, err := ebpf.LoadPinnedProgram(path, nil); err == nil {
			if info, err := p.Info(); err == nil {
				if id, ok := info.ID(); ok {
					ids[uint32(id)] = true
				}
			}
			p.Close()
		} else if l, err := link.LoadPinnedLink(path, nil); err == nil {
			if info, err := l.Info(); err == nil {
				ids[uint32(info.Program)] = true
			}
			l.Close()
		}
		return nil
	})
	return ids
}

// RequireNoOrphansBeside is RequireNoOrphans for tests that run beside
// other packages' tests pinning the same programs (redirect) under bpffs:
// programs pinned there outside own, this test's pin directory, are
// theirs and do not count; what is left under own does.
func RequireNoOrphansBeside(t testing.TB, bpffs, own string, names ...string) {
	t.Helper()
	RequireNoOrphansExcept(t, PinnedPrograms(bpffs, own), names...)
}

// RequireNoOrphansExcept is RequireNoOrphans leaving out the programs in
// except (from PinnedPrograms).
func RequireNoOrphansExcept(t testing.TB, except map[uint32]bool, names ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, n := range names {
		if len(n) > 15 { // the kernel keeps 15 characters
			n = n[:15]
		}
		want[n] = true
	}
	var orphans []string
	for deadline := time.Now().Add(time.Second); ; time.Sleep(50 * time.Millisecond) {
		held := heldProgramIDs()
		orphans = orphans[:0]
		var id ebpf.ProgramID
		for {
			next, err := ebpf.ProgramGetNextID(id)
			if err != nil {
				break
			}
			id = next
			p, err := ebpf.NewProgramFromID(id)
			if err != nil {
				continue
			}
			info, err := p.Info()
			p.Close()
			if err == nil && want[info.Name] && !held[uint32(id)] && !except[uint32(id)] {
				orphans = append(orphans, info.Name+" (id "+strconv.Itoa(int(id))+")")
			}
		}
		if len(orphans) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(orphans) > 0 {
		t.Errorf("BPF programs left behind with no process holding them: %s", strings.Join(orphans, ", "))
	}
}

// heldProgramIDs returns the IDs of programs that some process holds through
// a program or link file descriptor (from /proc/*/fdinfo).
func heldProgramIDs() map[uint32]bool {
	held := map[uint32]bool{}
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		target, err := os.Readlink(fd)
		if err != nil || !strings.HasPrefix(target, "anon_inode:bpf") {
			continue
		}
		f, err := os.Open(strings.Replace(fd, "/fd/", "/fdinfo/", 1))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "prog_id:"); ok {
				if id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
					held[uint32(id)] = true
				}
			}
		}
		f.Close()
	}
	return held
}
