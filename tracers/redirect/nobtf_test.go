package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/testutil"
)

// TestNoKernelBTF checks the refusal on a kernel without BTF of its own
// (the VM's second pass): the sk_msg program reads the peer socket through
// the bpf_rdonly_cast kfunc, which the kernel resolves by its own BTF, so
// Supported and Enable fail in one line naming CONFIG_DEBUG_INFO_BTF and
// leave nothing pinned. With the kernel's BTF, whatever Supported says is
// not about BTF.
func TestNoKernelBTF(t *testing.T) {
	testutil.RequireBPF(t)
	err := Supported()
	if kernel.KernelHasBTF() {
		if errors.Is(err, kernel.ErrNoKernelBTF) {
			t.Fatalf("kernel with BTF: %v", err)
		}
		t.Logf("kernel BTF present; Supported: %v", err)
		return
	}
	oneLine := func(what string, err error) {
		t.Helper()
		if err == nil || !errors.Is(err, kernel.ErrNoKernelBTF) || !strings.Contains(err.Error(), "CONFIG_DEBUG_INFO_BTF") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s without kernel BTF: %v; want one line naming CONFIG_DEBUG_INFO_BTF", what, err)
		}
	}
	oneLine("Supported", err)
	dir := filepath.Join(kernel.BPFFSPath, "nettrace", fmt.Sprintf("redirect-nobtf-test-%d", os.Getpid()))
	oneLine("Enable", Enable(Options{PinDir: dir}))
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused Enable left %s behind (%v)", dir, err)
		os.RemoveAll(dir)
	}
	t.Logf("refused: %v", err)
}
