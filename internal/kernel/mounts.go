package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Default mount points.
const (
	TracefsPath = "/sys/kernel/tracing"
	BPFFSPath   = "/sys/fs/bpf"
)

// Mount describes one line of /proc/mounts.
type Mount struct {
	Source, Path, FSType, Options string
}

// Mounts parses /proc/self/mounts.
func Mounts() ([]Mount, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var ms []Mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 {
			continue
		}
		ms = append(ms, Mount{Source: fs[0], Path: unescapeMount(fs[1]), FSType: fs[2], Options: fs[3]})
	}
	return ms, sc.Err()
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// FindMount returns the first mount point of a file system type.
func FindMount(fstype string) (string, error) {
	ms, err := Mounts()
	if err != nil {
		return "", err
	}
	for _, m := range ms {
		if m.FSType == fstype {
			return m.Path, nil
		}
	}
	return "", fmt.Errorf("find %s mount: none in /proc/self/mounts", fstype)
}

// Cgroup2Path returns where the cgroup v2 hierarchy is mounted
// (/sys/fs/cgroup on most systems, /sys/fs/cgroup/unified on hybrid ones).
func Cgroup2Path() (string, error) { return FindMount("cgroup2") }

// EnsureTracefs makes tracefs available at /sys/kernel/tracing (or finds it
// elsewhere, e.g. under debugfs) and returns its path. As root it mounts it
// when missing; otherwise it says what is missing.
func EnsureTracefs() (string, error) {
	if p, err := FindMount("tracefs"); err == nil {
		return p, nil
	}
	if err := mountIfMissing("tracefs", TracefsPath, "tracefs", unix.TRACEFS_MAGIC, ""); err != nil {
		return "", err
	}
	return TracefsPath, nil
}

// EnsureBPFFS makes sure a bpf file system is mounted at /sys/fs/bpf.
func EnsureBPFFS() (string, error) {
	if err := mountIfMissing("bpf", BPFFSPath, "bpf", unix.BPF_FS_MAGIC, "mode=0700"); err != nil {
		return "", err
	}
	return BPFFSPath, nil
}

func mountIfMissing(source, path, fstype string, magic int64, data string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err == nil && int64(st.Type) == magic {
		return nil
	}
	if err := unix.Mount(source, path, fstype, 0, data); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("mount %s at %s: %w (needs CAP_SYS_ADMIN; or mount it: mount -t %s %s %s)", fstype, path, err, fstype, source, path)
		}
		return fmt.Errorf("mount %s at %s: %w", fstype, path, err)
	}
	return nil
}
