package kernel

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// HashBatch: BPF_MAP_LOOKUP_AND_DELETE_BATCH on hash maps, which takes
// a map's elements out bucket by bucket, each under the bucket's lock as
// the lookup-and-delete of one element does (that is 5.14+; the batch is
// much older). The timewait tracer drains its rows with it.
var HashBatch = NewFeature("hash_batch", "batch lookup-and-delete of hash map elements", "5.6", probeHashBatch)

// probeHashBatch stores two elements in a hash map, takes them out with
// one batch lookup-and-delete, and checks that the map is empty after.
func probeHashBatch() error {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 2})
	if err != nil {
		return fmt.Errorf("create hash map: %w", err)
	}
	defer m.Close()
	for k := range uint32(2) {
		if err := m.Put(k, k+10); err != nil {
			return fmt.Errorf("update hash map: %w", err)
		}
	}
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]uint32, 4)
		vals   = make([]uint32, 4)
		got    int
	)
	for {
		n, err := m.BatchLookupAndDelete(&cursor, keys[got:], vals[got:], nil)
		got += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return err
		}
		if n == 0 || got >= len(keys) {
			return errors.New("batch lookup and delete: no end of map")
		}
	}
	if got != 2 || vals[0] != keys[0]+10 || vals[1] != keys[1]+10 {
		return fmt.Errorf("batch lookup and delete: took %d elements (%v %v), want 2", got, keys[:got], vals[:got])
	}
	var v uint32
	if err := m.Lookup(keys[0], &v); !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("batch lookup and delete left key %d in the map (%v)", keys[0], err)
	}
	return nil
}
