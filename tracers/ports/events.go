package ports

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// Event is one connect, sent when its outcome is known (--events).
type Event struct {
	Time      time.Time      `json:"-"`
	PID       int            `json:"pid"`
	Comm      string         `json:"comm"`
	Source    netip.AddrPort `json:"source"` // port 0 when no port was allocated
	Dest      netip.AddrPort `json:"dest"`
	LatencyNS uint64         `json:"latency_ns"` // see Tracer.Latency; 0 when the port search was not reached
	ConnectNS uint64         `json:"connect_ns"` // from the connect call to the outcome
	Err       syscall.Errno  `json:"-"`          // 0: established (or connect returned 0)
}

// Result is "ok" or the errno name.
func (e Event) Result() string {
	if e.Err == 0 {
		return "ok"
	}
	return errnoName(e.Err)
}

type eventReader struct {
	rd     *ringbuf.Reader
	filter Filter
	boot   time.Time // wall clock at CLOCK_MONOTONIC zero
}

func newEventReader(m *ebpf.Map, f Filter) (*eventReader, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, fmt.Errorf("open events ring buffer: %w", err)
	}
	var ts syscall.Timespec
	if err := clockMonotonic(&ts); err != nil {
		rd.Close()
		return nil, err
	}
	return &eventReader{rd: rd, filter: f, boot: time.Now().Add(-time.Duration(ts.Nano()))}, nil
}

func (r *eventReader) Close() error { return r.rd.Close() }

// ErrNoEvents is returned by ReadEvent when the tracer was made without Events.
var ErrNoEvents = errors.New("read event: events are off (Options.Events)")

// ReadEvent blocks until the next connect that passes the destination
// filter; it returns an error wrapping os.ErrClosed after Close.
func (t *Tracer) ReadEvent() (Event, error) {
	if t.events == nil {
		return Event{}, ErrNoEvents
	}
	for {
		rec, err := t.events.rd.Read()
		if err != nil {
			return Event{}, fmt.Errorf("read event: %w", err)
		}
		var raw portsEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
			return Event{}, fmt.Errorf("decode event: %w", err)
		}
		dest := destKey{Port: raw.Dest.Dport, Family: raw.Dest.Family}
		copy(dest.Addr[:], rawBytes(&raw.Dest.Daddr))
		src := destKey{Port: raw.Sport, Family: raw.Family}
		copy(src.Addr[:], rawBytes(&raw.Saddr))
		e := Event{
			Time:      t.events.boot.Add(time.Duration(raw.TsNs)),
			PID:       int(raw.Tgid),
			Comm:      cString(raw.Comm[:]),
			Source:    src.addrPort(),
			Dest:      dest.addrPort(),
			LatencyNS: raw.LatNs,
			ConnectNS: raw.ConnectNs,
			Err:       syscall.Errno(raw.Err),
		}
		if t.events.filter.Match(e.Dest) {
			return e, nil
		}
	}
}

// LostEvents is the number of events the ring buffer could not take.
func (t *Tracer) LostEvents() (uint64, error) {
	var vals []uint64
	if err := t.objs.Maps["drops"].Lookup(uint32(dropEvents), &vals); err != nil {
		return 0, fmt.Errorf("read drops map: %w", err)
	}
	var n uint64
	for _, v := range vals {
		n += v
	}
	return n, nil
}
