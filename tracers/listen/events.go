package listen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// DropKind says where a connection was dropped.
type DropKind uint8

// Drop kinds, as bpf/listen.bpf.c numbers them.
const (
	SynOverflow DropKind = 1 // SYN dropped, accept queue full
	AckOverflow DropKind = 2 // final ACK dropped, accept queue full
	SynDrop     DropKind = 3 // SYN dropped otherwise
	AckDrop     DropKind = 4 // final ACK without a child socket otherwise
)

func (k DropKind) String() string {
	switch k {
	case SynOverflow:
		return "syn_overflow"
	case AckOverflow:
		return "ack_overflow"
	case SynDrop:
		return "syn_drop"
	case AckDrop:
		return "ack_drop"
	}
	return fmt.Sprintf("kind_%d", k)
}

// Drop is one dropped SYN or final ACK.
type Drop struct {
	Time time.Time
	sk   uint64
	Peer netip.AddrPort // invalid when the tier does not see the packet
	Kind DropKind
}

// maxPending bounds the drops kept between two reads; more are counted lost.
const maxPending = 10000

// eventReader drains the events ring buffer in the background.
type eventReader struct {
	rd   *ringbuf.Reader
	boot time.Time // wall clock at CLOCK_MONOTONIC zero
	done chan struct{}

	mu      sync.Mutex
	pending []Drop
	lost    uint64
}

func newEventReader(m *ebpf.Map) (*eventReader, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, fmt.Errorf("open events ring buffer: %w", err)
	}
	e := &eventReader{rd: rd, boot: monotonicZero(), done: make(chan struct{})}
	go e.loop()
	return e, nil
}

func (e *eventReader) loop() {
	defer close(e.done)
	for {
		rec, err := e.rd.Read()
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		b := rec.RawSample
		if len(b) < 40 {
			continue
		}
		ne := binary.NativeEndian
		d := Drop{
			Time: e.boot.Add(time.Duration(ne.Uint64(b[0:]))),
			sk:   ne.Uint64(b[8:]),
			Kind: DropKind(b[36]),
		}
		port, family := ne.Uint16(b[32:]), ne.Uint16(b[34:])
		switch family {
		case 2:
			d.Peer = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), port)
		case 10:
			d.Peer = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[16:32])).Unmap(), port)
		}
		e.mu.Lock()
		if len(e.pending) < maxPending {
			e.pending = append(e.pending, d)
		} else {
			e.lost++
		}
		e.mu.Unlock()
	}
}

// take returns the drops read since the last call and how many were lost
// because too many were pending.
func (e *eventReader) take() ([]Drop, uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d, l := e.pending, e.lost
	e.pending, e.lost = nil, 0
	return d, l
}

// Close stops the reader.
func (e *eventReader) Close() error {
	err := e.rd.Close()
	<-e.done
	return err
}

// monotonicZero is the wall-clock time at which CLOCK_MONOTONIC (what
// bpf_ktime_get_ns reads) was zero.
func monotonicZero() time.Time {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return now
	}
	return now.Add(-time.Duration(ts.Nano()))
}
