package kernel

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"sync"
)

// Kallsyms is a parsed /proc/kallsyms: which function names exist and
// whether addresses are visible.
type Kallsyms struct {
	names      map[string]struct{}
	suffixed   map[string]string // base name -> first suffixed name (foo -> foo.isra.0)
	Restricted bool              // every address reads as zero (kptr_restrict or no CAP_SYSLOG)
}

var (
	kallsymsOnce sync.Once
	kallsyms     *Kallsyms
	kallsymsErr  error
)

// LoadKallsyms reads /proc/kallsyms once per process.
func LoadKallsyms() (*Kallsyms, error) {
	kallsymsOnce.Do(func() {
		kallsyms, kallsymsErr = readKallsyms("/proc/kallsyms")
	})
	return kallsyms, kallsymsErr
}

func readKallsyms(path string) (*Kallsyms, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open kallsyms: %w", err)
	}
	defer f.Close()
	k := &Kallsyms{names: make(map[string]struct{}, 1<<17), suffixed: map[string]string{}, Restricted: true}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		// ffffffff81000000 T _stext [module]
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) < 3 {
			continue
		}
		if k.Restricted && strings.Trim(fields[0], "0") != "" {
			k.Restricted = false
		}
		switch fields[1] {
		case "t", "T", "w", "W":
		default:
			continue
		}
		name := fields[2]
		k.names[name] = struct{}{}
		if i := strings.IndexByte(name, '.'); i > 0 {
			base := name[:i]
			if _, ok := k.suffixed[base]; !ok {
				k.suffixed[base] = name
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read kallsyms: %w", err)
	}
	return k, nil
}

// Resolve returns the kernel's name for function fn: fn itself when it
// exists, else a compiler-suffixed variant (fn.isra.0, fn.constprop.0,
// fn.part.0), else an error.
func (k *Kallsyms) Resolve(fn string) (string, error) {
	if _, ok := k.names[fn]; ok {
		return fn, nil
	}
	if s, ok := k.suffixed[fn]; ok {
		return s, nil
	}
	return "", fmt.Errorf("find kernel function %s: not in /proc/kallsyms", fn)
}
