package testutil

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// CProgramEnv names the environment variable that points at a directory of
// prebuilt spin-VARIANT executables; scripts/vmtest.sh sets it in the VM,
// which has no compiler.
const CProgramEnv = "NETTRACE_TESTDATA_BIN"

// cSource is the C test program and cVariants its builds, relative to the
// module's root.
const (
	cSource   = "tracers/profile/testdata/spin.c"
	cVariants = "tracers/profile/testdata/spin.variants"
)

// CProgram returns the path of an executable named name (which becomes the
// process's comm) in a fresh temporary directory: tracers/profile/testdata/
// spin.c built as variant, a line of spin.variants next to it. It copies
// $NETTRACE_TESTDATA_BIN/spin-VARIANT when that variable is set, and builds
// the program with gcc otherwise; without gcc it skips the test, or fails it
// when CI=true.
func CProgram(t testing.TB, variant, name string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), name)
	if dir := os.Getenv(CProgramEnv); dir != "" {
		b, err := os.ReadFile(filepath.Join(dir, "spin-"+variant))
		if err != nil {
			t.Fatalf("prebuilt C test program (%s=%s): %v", CProgramEnv, dir, err)
		}
		if err := os.WriteFile(out, b, 0o755); err != nil {
			t.Fatal(err)
		}
		return out
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		reason := "needs gcc to build the C test program (or " + CProgramEnv + ")"
		if os.Getenv("CI") == "true" {
			t.Fatal(reason)
		}
		t.Skip(reason)
	}
	root := moduleRoot(t)
	flags := cFlags(t, filepath.Join(root, cVariants), variant)
	args := append([]string{"-O2", "-fno-omit-frame-pointer", "-o", out, filepath.Join(root, cSource)}, flags...)
	if b, err := exec.Command(gcc, args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %v: %v\n%s", args, err, b)
	}
	return out
}

// cFlags returns variant's gcc flags on the host from the variants file.
func cFlags(t testing.TB, file, variant string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		host, _, _ := strings.Cut(sc.Text(), "|")
		w := strings.Fields(host)
		if len(w) > 0 && w[0] == variant {
			return w[1:]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read %s: %v", file, err)
	}
	t.Fatalf("no C program variant %q in %s", variant, file)
	return nil
}

// moduleRoot returns the nearest directory above the working directory (the
// test's package) that holds go.mod.
func moduleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = parent
	}
}
