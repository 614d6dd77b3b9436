package symbolize

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseKallsyms(t *testing.T) {
	k, err := ParseKallsyms(strings.NewReader(`ffffffff81000000 T _stext
ffffffff81000100 t helper
ffffffff81000200 D some_data
ffffffffc0000000 t mod_func	[nf_conntrack]
`))
	if err != nil {
		t.Fatal(err)
	}
	if k.Restricted {
		t.Fatal("restricted")
	}
	for _, tc := range []struct {
		addr uint64
		name string
	}{
		{0xffffffff81000010, "_stext"},
		{0xffffffff81000150, "helper"},
		{0xffffffff81000250, "helper"}, // data symbols are skipped
		{0xffffffffc0000004, "mod_func"},
		{0x1000, "kernel+0x1000"},
	} {
		if got := k.Lookup(tc.addr).Name(); got != tc.name {
			t.Errorf("Lookup(%#x) = %s, want %s", tc.addr, got, tc.name)
		}
	}
	if f := k.Lookup(0xffffffffc0000004); f.Module != "nf_conntrack" || f.Offset != 4 {
		t.Errorf("module frame %+v", f)
	}
	r, err := ParseKallsyms(strings.NewReader("0000000000000000 T _stext\n0000000000000000 t helper\n"))
	if err != nil || !r.Restricted {
		t.Fatalf("all-zero table: restricted=%v, %v", r != nil && r.Restricted, err)
	}
	if got := r.Lookup(0xffffffff81000010).Name(); got != "kernel+0xffffffff81000010" {
		t.Errorf("restricted lookup = %s", got)
	}
}

func TestParseMaps(t *testing.T) {
	maps := parseMaps([]byte(`55d0c4a00000-55d0c4a01000 r--p 00000000 fd:01 1234 /usr/bin/my prog
55d0c4a01000-55d0c4a02000 r-xp 00001000 fd:01 1234 /usr/bin/my prog
7f0000000000-7f0000100000 r-xp 00028000 fd:01 99 /lib/libc.so.6 (deleted)
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
`))
	if len(maps) != 3 {
		t.Fatalf("%d executable mappings, want 3: %+v", len(maps), maps)
	}
	if maps[0].path != "/usr/bin/my prog" || maps[0].off != 0x1000 || maps[1].path != "/lib/libc.so.6" || maps[2].path != "[vdso]" {
		t.Errorf("maps %+v", maps)
	}
}

func TestPerfMap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "perf-1.map")
	os.WriteFile(path, []byte("7f0000001000 100 LazyCompile:~handler app.js:10\n7f0000002000 0x20 Stub\nbad line\n"), 0o644)
	pm, err := readPerfMap(path)
	if err != nil {
		t.Fatal(err)
	}
	if name, off, ok := pm.lookup(0x7f0000001010); !ok || name != "LazyCompile:~handler app.js:10" || off != 0x10 {
		t.Errorf("lookup = %q %#x %v", name, off, ok)
	}
	if _, _, ok := pm.lookup(0x7f0000001100); ok {
		t.Error("past the end of a symbol: found")
	}
}

// TestSelf symbolizes this test binary (a Go PIE or not) through its own
// /proc/self/maps: the address of a function names that function.
func TestSelf(t *testing.T) {
	s := New()
	pc := funcPC()
	frames := s.User(Image{PID: os.Getpid()}, []uint64{pc})
	if !strings.HasSuffix(frames[0].Func, "symbolize.funcPC") {
		t.Fatalf("own address %#x named %+v", pc, frames[0])
	}
	if frames[0].Line == 0 || !strings.HasSuffix(frames[0].File, ".go") {
		t.Errorf("no line from .gopclntab: %+v", frames[0])
	}
	// An address in no mapping is named, not dropped.
	if f := s.User(Image{PID: os.Getpid()}, []uint64{0x10}); f[0].Name() != "[unknown]+0x10" {
		t.Errorf("unmapped address named %q", f[0].Name())
	}
}

// TestCBinary builds a C program (PIE and not, stripped and not) and checks
// that a function's address, relocated as the loader would, resolves.
func TestCBinary(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("needs gcc")
	}
	src := filepath.Join(t.TempDir(), "p.c")
	os.WriteFile(src, []byte("int nettrace_target(int x) { return x * 3 + 1; }\nint main(int c, char **v) { return nettrace_target(c); }\n"), 0o644)
	for _, flags := range [][]string{{"-no-pie"}, {"-pie", "-fPIE"}, {"-pie", "-fPIE", "-rdynamic", "-s"}} {
		t.Run(strings.Join(flags, ""), func(t *testing.T) {
			bin := filepath.Join(t.TempDir(), "p")
			if out, err := exec.Command(gcc, append([]string{"-O1", "-o", bin, src}, flags...)...).CombinedOutput(); err != nil {
				t.Fatalf("gcc: %v\n%s", err, out)
			}
			b, err := OpenBinary(bin)
			if err != nil {
				t.Fatal(err)
			}
			if b.BuildID == "" {
				t.Error("no build ID")
			}
			f, _ := elf.Open(bin)
			defer f.Close()
			syms, _ := f.DynamicSymbols()
			if s2, err := f.Symbols(); err == nil {
				syms = append(syms, s2...)
			}
			var target uint64
			for _, s := range syms {
				if s.Name == "nettrace_target" {
					target = s.Value
				}
			}
			if target == 0 {
				t.Fatal("nettrace_target not in the symbol tables")
			}
			// Map the text segment at a PIE-like base and look an address
			// inside the function up through a fake process.
			var text elf.ProgHeader
			for _, p := range f.Progs {
				if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 {
					text = p.ProgHeader
				}
			}
			base := uint64(0x55d0c4a00000)
			if f.Type == elf.ET_EXEC {
				base = 0
			}
			start := base + text.Vaddr&^0xfff
			p := &process{cache: map[uint64]Frame{}, maps: []mapping{{start: start, end: start + text.Memsz + 0x1000,
				off: text.Off &^ 0xfff, path: bin, bin: b}}}
			fr := p.lookup(base + target + 2)
			if fr.Func != "nettrace_target" || fr.Offset != 2 {
				t.Errorf("%#x (target %#x, base %#x) named %+v", base+target+2, target, base, fr)
			}
		})
	}
}

//go:noinline
func funcPC() uint64 {
	var pcs [1]uintptr
	runtimeCallers(&pcs)
	return uint64(pcs[0])
}

func BenchmarkSymbolize(b *testing.B) {
	s := New()
	k, err := s.KernelSymbols()
	if err != nil || k.Restricted || len(k.addrs) == 0 {
		b.Skip("no kernel symbols")
	}
	pid := os.Getpid()
	s.Capture(Image{PID: pid})
	p := s.procs[Image{PID: pid}]
	var text mapping
	for _, m := range p.maps {
		if m.bin != nil && m.end-m.start > 1<<20 {
			text = m
		}
	}
	if text.bin == nil {
		b.Skip("no text mapping")
	}
	// 1,000,000 samples: a 1-deep user and kernel frame each, from 20,000
	// distinct addresses (what aggregated stacks give), half uncached.
	const n = 1_000_000
	b.ReportMetric(n, "samples/op")
	for b.Loop() {
		s.Forget(Image{PID: pid})
		s.Capture(Image{PID: pid})
		x := uint64(1)
		for i := 0; i < n; i++ {
			x = x*6364136223846793005 + 1442695040888963407
			slot := (x >> 33) % 20000
			s.User(Image{PID: pid}, []uint64{text.start + slot*((text.end-text.start)/20000)})
			s.Kernel([]uint64{k.addrs[int(slot)*len(k.addrs)/20000] + 4})
		}
	}
}
