package socktable

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nettrace/nettrace/internal/testutil"
)

// BenchmarkRead measures one read of a namespace holding 100,000 TIME_WAIT
// sockets (NETTRACE_BENCH_TW overrides the count): every state, TIME_WAIT
// only, and LISTEN only (the walk with every socket skipped in the kernel).
// It reports the process's CPU time per read (user and system: the kernel's
// side of the iterator included) and the iterator program's run time per
// socket from the kernel's BPF statistics.
func BenchmarkRead(b *testing.B) {
	testutil.RequireBPF(b)
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("NETTRACE_BENCH_TW")); err == nil && v > 0 {
		n = v
	}
	ns := testutil.NewNetns(b)
	testutil.FillTimeWait(b, ns, n)
	tab, err := New()
	if err != nil {
		b.Fatalf("%+v", err)
	}
	defer tab.Close()
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF statistics: %v", err)
	}
	defer stats.Close()
	tab.HZ()
	for _, c := range []struct {
		name   string
		states StateMask
		want   int
	}{
		{"all", 0, n * 99 / 100},
		{"timewait", States(TimeWait), n * 99 / 100},
		{"listen", States(Listen), 1},
	} {
		b.Run(c.name, func(b *testing.B) {
			var snap Snapshot
			if err := tab.ReadInto(&snap, ns.Path(), c.states); err != nil {
				b.Fatal(err) // and the buffers have grown to size
			}
			b.ReportAllocs()
			var before, after unix.Rusage
			prog := tab.objs.Programs["dump_tcp"]
			st0, err := progStats(prog)
			if err != nil {
				b.Fatal(err)
			}
			unix.Getrusage(unix.RUSAGE_SELF, &before)
			for b.Loop() {
				if err := tab.ReadInto(&snap, ns.Path(), c.states); err != nil {
					b.Fatal(err)
				}
			}
			unix.Getrusage(unix.RUSAGE_SELF, &after)
			st1, err := progStats(prog)
			if err != nil {
				b.Fatal(err)
			}
			if len(snap.Sockets) < c.want {
				b.Fatalf("read %d sockets, want at least %d", len(snap.Sockets), c.want)
			}
			cpu := time.Duration(after.Utime.Nano()-before.Utime.Nano()) + time.Duration(after.Stime.Nano()-before.Stime.Nano())
			b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/read")
			if runs := st1.RunCount - st0.RunCount; runs > 0 {
				b.ReportMetric(float64(st1.Runtime-st0.Runtime)/float64(runs), "bpf-ns/socket")
			}
			b.ReportMetric(float64(len(snap.Sockets)), "sockets")
		})
	}
}

func progStats(p *ebpf.Program) (*ebpf.ProgramStats, error) {
	if p == nil {
		return nil, fmt.Errorf("read program statistics: no dump_tcp program")
	}
	return p.Stats()
}

// BenchmarkDecode measures decoding 100,000 iterator records (IPv4
// TIME_WAIT) into a reused snapshot: no BPF, no allocation per socket.
func BenchmarkDecode(b *testing.B) {
	const n = 100_000
	buf := make([]byte, hdrSize+n*recSize)
	binary.LittleEndian.PutUint32(buf, magic)
	binary.LittleEndian.PutUint32(buf[4:], uint32(recSize))
	for i := range n {
		r := buf[hdrSize+i*recSize:]
		copy(r, []byte{127, 0, 0, 1})
		copy(r[16:], []byte{127, 0, 0, 2})
		binary.LittleEndian.PutUint16(r[32:], uint16(i))
		binary.LittleEndian.PutUint16(r[34:], 8080)
		binary.LittleEndian.PutUint16(r[36:], 2)
		r[38] = uint8(TimeWait)
		binary.LittleEndian.PutUint64(r[72:], 1000)
		binary.LittleEndian.PutUint64(r[88:], 0xffff888000000000+uint64(i)*256)
	}
	socks, err := decode(buf, nil, 0, 250)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if socks, err = decode(buf, socks[:0], 0, 250); err != nil {
			b.Fatal(err)
		}
	}
	if len(socks) != n || int(socks[n-1].Local.Port()) != (n-1)%65536 {
		b.Fatalf("decoded %d sockets, last %v", len(socks), socks[len(socks)-1])
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/socket")
}
