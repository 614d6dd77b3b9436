package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nettrace/nettrace/internal/doctor"
	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/testutil"
)

// runEnv is run with env added to the environment.
func runEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{so.String(), se.String(), code}
}

// btfCopy returns a BTF file of this kernel: $NETTRACE_BTF (the VM's copy
// when its BTF is hidden) or a copy of /sys/kernel/btf/vmlinux.
func btfCopy(t *testing.T) string {
	t.Helper()
	if p := os.Getenv(kernel.BTFEnv); p != "" {
		return p
	}
	src, err := os.Open(kernel.SysfsBTF)
	if err != nil {
		t.Skipf("no kernel BTF to copy: %v", err)
	}
	defer src.Close()
	p := filepath.Join(t.TempDir(), "vmlinux.btf")
	dst, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	return p
}

// TestNoKernelBTFCLI checks --btf and NETTRACE_BTF: a file that is not a
// kernel's BTF is one line and exit 2; with one, doctor's btf row names it,
// and on a kernel without BTF of its own (the VM's second pass) no tracer
// is planned with a method that needs it.
func TestNoKernelBTFCLI(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.btf")
	os.WriteFile(bad, []byte("this is not BTF, and long enough to be read as a header\n"), 0o644)
	oneLineError(t, run(t, nil, "--btf", bad, "doctor"), 2, "read BTF file "+bad)
	oneLineError(t, run(t, nil, "--btf", bad+".missing", "doctor"), 2, "read BTF file "+bad+".missing")
	oneLineError(t, runEnv(t, []string{kernel.BTFEnv + "=" + bad}, "doctor"), 2, "read BTF file "+bad)

	testutil.RequireBPF(t)
	file := btfCopy(t)
	r := run(t, nil, "--btf", file, "doctor", "-o", "json")
	if r.code != 0 {
		t.Fatalf("doctor --btf %s failed (%d): %s", file, r.code, r.stderr)
	}
	var rep doctor.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("decode doctor JSON: %v\n%s", err, r.stdout)
	}
	for _, p := range rep.Probes {
		if p.Name != "btf" {
			continue
		}
		t.Logf("btf row: %s", p.Detail)
		if !p.OK || !strings.HasPrefix(p.Detail, "file "+file+" (--btf)") {
			t.Errorf("btf row ok=%v %q, want the file given with --btf", p.OK, p.Detail)
		}
		if kernel.KernelHasBTF() == strings.Contains(p.Detail, "CONFIG_DEBUG_INFO_BTF") {
			t.Errorf("btf row %q: kernel BTF %v", p.Detail, kernel.KernelHasBTF())
		}
	}
	if kernel.KernelHasBTF() {
		return
	}
	kprobes := false
	for _, p := range rep.Probes {
		kprobes = kprobes || (p.Name == "kprobe" && p.OK)
	}
	var sockdiag bool
	for _, tr := range rep.Tracers {
		t.Logf("%s %s: %s (%s) %s", tr.Tracer, tr.Hook, tr.Method, tr.Tier, tr.Error)
		if tr.Error != "" {
			// Only redirect needs the kernel's BTF whatever the kernel;
			// the others need kprobes instead where they have no raw_tp.
			if (kprobes && tr.Tracer != "redirect") || !strings.Contains(tr.Error, "CONFIG_DEBUG_INFO_BTF") {
				t.Errorf("%s cannot run without kernel BTF (kprobes %v): %s", tr.Tracer, kprobes, tr.Error)
			}
			continue
		}
		for _, m := range []string{"fentry", "tp_btf", "iter"} {
			if strings.Split(tr.Method, "+")[0] == m {
				t.Errorf("%s %s planned with %s on a kernel without BTF", tr.Tracer, tr.Hook, tr.Method)
			}
		}
		sockdiag = sockdiag || (tr.Tracer == "socktable" && strings.HasPrefix(tr.Method, "sock_diag"))
	}
	if !sockdiag {
		t.Errorf("the socket table is not planned with sock_diag")
	}
}
