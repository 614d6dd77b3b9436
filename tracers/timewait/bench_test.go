package timewait

import (
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/testutil"
)

// benchSockets is how many TIME_WAIT sockets the walk benchmark holds;
// NETTRACE_BENCH_TW overrides it.
func benchSockets() int {
	if n, err := strconv.Atoi(os.Getenv("NETTRACE_BENCH_TW")); err == nil && n > 0 {
		return n
	}
	return 100_000
}

// BenchmarkWalk measures one interval (socket table walk, diff, rows) over
// 100,000 TIME_WAIT sockets, with the CPU time it takes (user and system:
// the kernel's side of the iterator included) and its allocations.
func BenchmarkWalk(b *testing.B) {
	testutil.RequireBPF(b)
	n := benchSockets()
	ns := testutil.NewNetns(b)
	testutil.FillTimeWait(b, ns, n)
	tr, err := New(Options{Netns: []string{ns.Path()}, Tier: attach.Auto})
	if err != nil {
		b.Fatalf("%+v", err)
	}
	defer tr.Close()
	// One interval first: the buffers every walk reuses grow to size once.
	if _, err := tr.Snapshot(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	b.ResetTimer()
	for b.Loop() {
		s, err := tr.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		if s.Header.TimeWait < n {
			b.Fatalf("walk saw %d TIME_WAIT, want %d", s.Header.TimeWait, n)
		}
	}
	b.StopTimer()
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano()-before.Utime.Nano()) + time.Duration(after.Stime.Nano()-before.Stime.Nano())
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/walk")
	b.ReportMetric(float64(n), "sockets")
}
