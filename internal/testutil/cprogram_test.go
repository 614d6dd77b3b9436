package testutil

import (
	"debug/elf"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestCProgram builds each variant with gcc and checks the ELF file it
// names, then that a prebuilt program is copied under the asked-for name.
func TestCProgram(t *testing.T) {
	for _, tc := range []struct {
		variant  string
		typ      elf.Type
		stripped bool
	}{
		{"fp", elf.ET_EXEC, false},
		{"pie", elf.ET_DYN, false},
		{"stripped-pie", elf.ET_DYN, true},
	} {
		t.Run(tc.variant, func(t *testing.T) {
			bin := CProgram(t, tc.variant, "spin")
			f, err := elf.Open(bin)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			syms, err := f.Symbols()
			if stripped := err != nil; f.Type != tc.typ || stripped != tc.stripped {
				t.Fatalf("%s: type %v, stripped %v; want %v, %v", bin, f.Type, stripped, tc.typ, tc.stripped)
			}
			if tc.stripped {
				syms, _ = f.DynamicSymbols()
			}
			if !slices.ContainsFunc(syms, func(s elf.Symbol) bool { return s.Name == "nettrace_spin_c" }) {
				t.Errorf("%s names no nettrace_spin_c", bin)
			}
		})
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "spin-pie"), []byte("prebuilt"), 0o644)
	t.Setenv(CProgramEnv, dir)
	bin := CProgram(t, "pie", "offcpu_sleeper")
	b, err := os.ReadFile(bin)
	fi, _ := os.Stat(bin)
	if err != nil || string(b) != "prebuilt" || filepath.Base(bin) != "offcpu_sleeper" || fi.Mode().Perm() != 0o755 {
		t.Errorf("prebuilt copy %s: %q, %v, mode %v", bin, b, err, fi.Mode())
	}
}
