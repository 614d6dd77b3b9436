package ports

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

func clockMonotonic(ts *syscall.Timespec) error {
	var t unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &t); err != nil {
		return fmt.Errorf("read monotonic clock: %w", err)
	}
	*ts = syscall.Timespec{Sec: t.Sec, Nsec: t.Nsec}
	return nil
}

// rawBytes returns the 16 bytes of a generated union addr.
func rawBytes[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), 16)
}
