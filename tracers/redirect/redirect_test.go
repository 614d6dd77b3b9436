package redirect

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/nettrace/nettrace/internal/kernel"
	"github.com/nettrace/nettrace/internal/testutil"
)

// Ping-pong at several sizes: every echo comes back byte for byte, and the
// messages really were redirected (not a test of plain TCP).
func TestPingPong(t *testing.T) {
	if !enabled(t) {
		return
	}
	ns, _, pins := setup(t)
	for _, size := range []int{64, 1 << 10, 64 << 10, 1 << 20} {
		client, server := pair(t, ns, "127.0.0.1:0")
		before := status(t, pins).Counters
		go func() {
			buf := make([]byte, size)
			for {
				if _, err := io.ReadFull(server, buf); err != nil {
					return
				}
				if _, err := server.Write(buf); err != nil {
					return
				}
			}
		}()
		rounds := 200
		if size >= 64<<10 {
			rounds = 50
		}
		p := pattern{seed: byte(size)}
		msg, got := make([]byte, size), make([]byte, size)
		for i := 0; i < rounds; i++ {
			p.fill(msg)
			if _, err := client.Write(msg); err != nil {
				t.Fatalf("size %d round %d: write: %v", size, i, err)
			}
			if _, err := io.ReadFull(client, got); err != nil {
				t.Fatalf("size %d round %d: read: %v", size, i, err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("size %d round %d: echo differs", size, i)
			}
		}
		client.Close()
		after := status(t, pins).Counters
		redirected := after.RedirectedBytes - before.RedirectedBytes
		total := int64(2 * rounds * size)
		t.Logf("size %d: %d of %d bytes redirected, misses %v", size, redirected, total, after.Misses)
		if size <= 64<<10 && redirected < uint64(total)/2 {
			t.Errorf("size %d: only %d of %d bytes redirected", size, redirected, total)
		}
	}
}

// msgTotLenKernels are the kernels with sk_psock.msg_tot_len, as
// MsgTotLenSince says: each stable line from its backport on, and every
// release from 6.19.
var msgTotLenKernels = map[[2]int]int{{6, 6}: 128, {6, 12}: 75, {6, 18}: 14}

// hasMsgTotLen says whether kernel release "x.y.z-..." has msg_tot_len by
// msgTotLenKernels.
func hasMsgTotLen(release string) bool {
	var v [3]int
	fmt.Sscanf(release, "%d.%d.%d", &v[0], &v[1], &v[2])
	if v[0] > 6 || v[0] == 6 && v[1] >= 19 {
		return true
	}
	since, ok := msgTotLenKernels[[2]int{v[0], v[1]}]
	return ok && v[2] >= since
}

// Redirect runs exactly where the kernel has what it needs: on the stock
// kernels of the matrix, its refusal (or not) agrees with the kernel's
// release and the releases that have msg_tot_len; a refusal is one line
// naming the missing feature and its oldest kernels, and a kernel that runs
// redirect but not task storage in sk_msg uses the thread-id hash.
func TestKernelSupport(t *testing.T) {
	for _, tc := range []struct {
		release string
		want    bool
	}{{"5.10.0-43-cloud-amd64", false}, {"6.1.0-57-cloud-amd64", false}, {"6.6.127", false}, {"6.6.128", true}, {"6.12.74", false}, {"6.12.118+deb13-cloud-amd64", true}, {"6.18.13", false}, {"6.18.44-fc", true}, {"6.19.0", true}, {"7.0.1", true}} {
		if got := hasMsgTotLen(tc.release); got != tc.want {
			t.Errorf("hasMsgTotLen(%q) = %v, want %v", tc.release, got, tc.want)
		}
	}
	testutil.RequireBPF(t)
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	release := strings.TrimSpace(string(b))
	err = Supported()
	t.Logf("kernel %s: Supported: %v; sk_msg task storage: %v", release, err, kernel.SkMsgTaskStorage.Err())
	if os.Getenv("NETTRACE_VMTEST") == "1" {
		if want := hasMsgTotLen(release); (err == nil) != want {
			t.Errorf("stock kernel %s: Supported() = %v, but it has msg_tot_len: %v", release, err, want)
		}
	}
	if err != nil {
		checkRefusal(t, err)
		return
	}
	ns, _, pins := setupOpts(t, Options{BulkBytes: 64 << 10})
	store := "tid_hash"
	if kernel.SkMsgTaskStorage.Has() {
		store = "task_storage"
	}
	checkStore(t, pins, store)
	client, server := pair(t, ns, "127.0.0.1:0")
	if sent := pingPong(t, client, server, 100, 1000); status(t, pins).Counters.RedirectedBytes < sent/2 {
		t.Errorf("%s: less than half of %d bytes redirected", store, sent)
	}
}
