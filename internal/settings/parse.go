package settings

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ReadSysctl reads a sysctl by its dotted name ("net.core.somaxconn") from
// /proc/sys, as the calling thread's network namespace sees it. Whitespace
// runs are normalised to one space: "20000\t20050" reads "20000 20050".
// Names with a "/" are taken as paths below /proc/sys.
func ReadSysctl(name string) (string, error) {
	path := name
	if !strings.Contains(name, "/") {
		path = strings.ReplaceAll(name, ".", "/")
	}
	b, err := os.ReadFile("/proc/sys/" + path)
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.Join(strings.Fields(string(b)), " "), nil
}

// ReadNetstat parses a file of "Prefix: name name ..." header lines each
// followed by a "Prefix: value value ..." line, as /proc/net/netstat and
// /proc/net/snmp are, into prefix -> name -> value ("TcpExt" ->
// "ListenOverflows" -> 3). Negative values (snmp's Tcp MaxConn is -1) are
// stored as their two's complement.
func ReadNetstat(path string) (map[string]map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	out := map[string]map[string]uint64{}
	if len(b) == 0 {
		return out, nil
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	for i := 0; i < len(lines); i += 2 {
		header := lines[i]
		if i+1 == len(lines) {
			return nil, fmt.Errorf("parse %s line %d: header %.30q has no value line", path, i+1, header)
		}
		values := lines[i+1]
		hp, names, ok1 := strings.Cut(header, ":")
		vp, vals, ok2 := strings.Cut(values, ":")
		if !ok1 || !ok2 || hp != vp {
			return nil, fmt.Errorf("parse %s line %d: want a %q value line after header %.30q, got %.30q", path, i+2, hp+":", header, values)
		}
		nf, vf := strings.Fields(names), strings.Fields(vals)
		if len(nf) != len(vf) {
			return nil, fmt.Errorf("parse %s line %d: %d values for %d %s names", path, i+2, len(vf), len(nf), hp)
		}
		m := out[hp]
		if m == nil {
			m = make(map[string]uint64, len(nf))
			out[hp] = m
		}
		for j, name := range nf {
			v, err := parseCounter(vf[j])
			if err != nil {
				return nil, fmt.Errorf("parse %s line %d: %s %s: %w", path, i+2, hp, name, err)
			}
			m[name] = v
		}
	}
	return out, nil
}

func parseCounter(s string) (uint64, error) {
	if strings.HasPrefix(s, "-") {
		v, err := strconv.ParseInt(s, 10, 64)
		return uint64(v), err
	}
	return strconv.ParseUint(s, 10, 64)
}

// SoftnetCPU is one CPU's line of /proc/net/softnet_stat.
type SoftnetCPU struct {
	CPU         int    // from the 13th column, else the line's index
	Processed   uint64 // packets taken off the backlog
	Dropped     uint64 // packets dropped because the backlog (netdev_max_backlog) was full
	TimeSqueeze uint64 // times net_rx_action stopped with work left (budget or time ran out)
}

// ReadSoftnet parses /proc/net/softnet_stat: one line per online CPU of hex
// columns, the first three processed, dropped and time_squeeze.
func ReadSoftnet(path string) ([]SoftnetCPU, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var out []SoftnetCPU
	for i, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			return nil, fmt.Errorf("parse %s line %d: %d columns, want at least 3", path, i+1, len(f))
		}
		var v [3]uint64
		for j := range v {
			if v[j], err = strconv.ParseUint(f[j], 16, 64); err != nil {
				return nil, fmt.Errorf("parse %s line %d column %d: %w", path, i+1, j+1, err)
			}
		}
		c := SoftnetCPU{CPU: i, Processed: v[0], Dropped: v[1], TimeSqueeze: v[2]}
		if len(f) >= 13 {
			cpu, err := strconv.ParseUint(f[12], 16, 32)
			if err != nil {
				return nil, fmt.Errorf("parse %s line %d column 13: %w", path, i+1, err)
			}
			c.CPU = int(cpu)
		}
		out = append(out, c)
	}
	return out, nil
}

// readStatTable sums the hex per-CPU columns of a /proc/net/stat file (a
// header line of names, then one line per CPU), by column name.
func readStatTable(path string) (map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	names := strings.Fields(lines[0])
	sum := make(map[string]uint64, len(names))
	for i, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) != len(names) {
			return nil, fmt.Errorf("parse %s line %d: %d columns for %d names", path, i+2, len(f), len(names))
		}
		for j, s := range f {
			v, err := strconv.ParseUint(s, 16, 64)
			if err != nil {
				return nil, fmt.Errorf("parse %s line %d column %s: %w", path, i+2, names[j], err)
			}
			sum[names[j]] += v
		}
	}
	return sum, nil
}

// readNofile returns the soft and hard "Max open files" of /proc/PID/limits;
// "unlimited" reads as the maximum uint64.
func readNofile(pid int) (soft, hard uint64, err error) {
	path := fmt.Sprintf("/proc/%d/limits", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return 0, 0, fmt.Errorf("process %d does not exist", pid)
		}
		return 0, 0, fmt.Errorf("read %s: %w", path, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Max open files")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			break
		}
		if soft, err = parseLimit(f[0]); err == nil {
			hard, err = parseLimit(f[1])
		}
		if err != nil {
			return 0, 0, fmt.Errorf("parse %s: %w", path, err)
		}
		return soft, hard, nil
	}
	return 0, 0, fmt.Errorf("parse %s: no \"Max open files\" line", path)
}

func parseLimit(s string) (uint64, error) {
	if s == "unlimited" {
		return ^uint64(0), nil
	}
	return strconv.ParseUint(s, 10, 64)
}

// readSockstat parses /proc/net/sockstat lines ("TCP: inuse 5 orphan 0 tw 3
// alloc 7 mem 1") into prefix -> key -> value.
func readSockstat(path string) (map[string]map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	out := map[string]map[string]uint64{}
	for i, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		prefix, rest, ok := strings.Cut(line, ":")
		f := strings.Fields(rest)
		if !ok || len(f)%2 != 0 {
			return nil, fmt.Errorf("parse %s line %d: want \"Prefix: key value ...\", got %.30q", path, i+1, line)
		}
		m := map[string]uint64{}
		for j := 0; j < len(f); j += 2 {
			if m[f[j]], err = strconv.ParseUint(f[j+1], 10, 64); err != nil {
				return nil, fmt.Errorf("parse %s line %d: %s %s: %w", path, i+1, prefix, f[j], err)
			}
		}
		out[prefix] = m
	}
	return out, nil
}
