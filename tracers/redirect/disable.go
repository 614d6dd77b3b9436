package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// grace is how long Disable waits after turning redirection off before it
// trusts the queues it reads: a send that read the flag just before keeps
// running for microseconds.
const grace = 50 * time.Millisecond

// DisableResult says what Disable did.
type DisableResult struct {
	WasEnabled bool          `json:"was_enabled"` // something was pinned
	Drained    int           `json:"drained"`     // sockets taken out of the map once their queue was empty
	Waited     time.Duration `json:"waited_ns"`
}

// PendingError is returned when sockets still hold unread redirected data at
// the timeout: redirection stays off (draining) and everything stays pinned,
// so nothing is lost; disable again once their readers catch up.
type PendingError struct {
	Sockets int
	Bytes   uint64
}

func (e *PendingError) Error() string {
	return fmt.Sprintf("drain redirect: %d sockets still hold %d unread redirected bytes; redirection is off, run disable again when their readers have caught up", e.Sockets, e.Bytes)
}

// Disable stops adding sockets and redirecting, waits up to timeout for
// every redirected byte to be read, takes each drained socket out of the map
// (which gives it back plain TCP), then detaches and unpins everything.
// Nothing pinned is not an error.
func Disable(dir string, timeout time.Duration) (DisableResult, error) {
	dir = pinDir(dir)
	start := time.Now()
	res := DisableResult{WasEnabled: len(existingPins(dir)) > 0}
	if !res.WasEnabled {
		return res, nil
	}
	maps, err := openMaps(dir)
	if errors.Is(err, os.ErrNotExist) {
		// Enable died before pinning its maps: no socket was ever added.
		return res, remove(dir)
	}
	if err != nil {
		return res, err
	}
	defer closeMaps(maps)
	if err := maps["settings"].Put(uint32(0), redirectRedirConfig{Draining: 1}); err != nil {
		return res, fmt.Errorf("turn redirection off: %w", err)
	}
	if err := unpinLink(filepath.Join(dir, pinSockopsLink)); err != nil {
		return res, err
	}
	time.Sleep(grace)
	for deadline := start.Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		recs, err := pending(maps)
		if err != nil {
			return res, err
		}
		var left PendingError
		for _, r := range recs {
			if r.Queued != 0 {
				left.Sockets++
				left.Bytes += uint64(r.Queued)
				continue
			}
			if err := maps["sock_hash"].Delete(r.Key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return res, fmt.Errorf("remove drained socket: %w", err)
			}
			res.Drained++
		}
		res.Waited = time.Since(start)
		if left.Sockets == 0 {
			break
		}
		if time.Now().After(deadline) {
			return res, &left
		}
	}
	return res, remove(dir)
}

func unpinLink(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin %s: %w", path, err)
	}
	return nil
}
