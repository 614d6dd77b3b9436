package socktable

import (
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/attach"
	"github.com/nettrace/nettrace/internal/testutil"
)

// hooksFor are Hooks with only the alternative of method ("iter",
// "sock_diag+kprobe", "sock_diag").
func hooksFor(method string) []attach.Hook {
	h := slices.Clone(Hooks)
	h[0].Alternatives = slices.DeleteFunc(slices.Clone(h[0].Alternatives), func(a attach.Alternative) bool {
		m := a.Method
		if m == "" {
			m = "iter"
		}
		return m != method
	})
	return h
}

// BenchmarkReadMethods reads a namespace of 20,000 TIME_WAIT sockets
// (NETTRACE_BENCH_TW overrides) through iter/tcp and through sock_diag (the
// address kprobes stay detached: no listener to resolve). It reports the
// process's CPU time per read and per socket.
func BenchmarkReadMethods(b *testing.B) {
	testutil.RequireBPF(b)
	n := 20_000
	if v, err := strconv.Atoi(os.Getenv("NETTRACE_BENCH_TW")); err == nil && v > 0 {
		n = v
	}
	ns := testutil.NewNetns(b)
	testutil.FillTimeWait(b, ns, n)
	for _, m := range []string{"iter", "sock_diag"} {
		b.Run(m, func(b *testing.B) {
			tab, err := newTable(hooksFor(m))
			if err != nil {
				b.Skipf("%s: %v", m, err)
			}
			defer tab.Close()
			var snap Snapshot
			if err := tab.ReadInto(&snap, ns.Path(), States(TimeWait)); err != nil {
				b.Fatal(err)
			}
			var before, after unix.Rusage
			unix.Getrusage(unix.RUSAGE_SELF, &before)
			for b.Loop() {
				if err := tab.ReadInto(&snap, ns.Path(), States(TimeWait)); err != nil {
					b.Fatal(err)
				}
			}
			unix.Getrusage(unix.RUSAGE_SELF, &after)
			if len(snap.Sockets) < n*99/100 {
				b.Fatalf("read %d sockets, want at least %d", len(snap.Sockets), n*99/100)
			}
			cpu := time.Duration(after.Utime.Nano()-before.Utime.Nano()) + time.Duration(after.Stime.Nano()-before.Stime.Nano())
			b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/read")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/float64(len(snap.Sockets)), "cpu-ns/socket")
		})
	}
}
