package sched

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/nettrace/nettrace/internal/attach"
)

// taskStatSize is the size of struct task_stat; TaskStat has its layout.
const taskStatSize = int(unsafe.Sizeof(TaskStat{}))

// tidOffset is where a slot's owner (TaskStat.TID) sits in struct task_stat.
const tidOffset = int64(unsafe.Offsetof(TaskStat{}.TID))

// ReadTasks returns every thread's cumulative figures by thread id, from
// the slots array (read through its memory mapping: one copy, no system
// call per thread) and the tasks hash of threads whose slot was taken.
func ReadTasks(objs *attach.Objects) (map[uint32]TaskStat, error) {
	m := objs.Maps["slots"]
	mem, err := m.Memory()
	if err != nil {
		return nil, fmt.Errorf("map sched slots: %w", err)
	}
	if int(m.ValueSize()) != taskStatSize {
		return nil, fmt.Errorf("read sched slots: value size %d, TaskStat %d", m.ValueSize(), taskStatSize)
	}
	n := int(m.MaxEntries())
	slots := make([]TaskStat, n)
	buf := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(slots))), n*taskStatSize)
	if _, err := mem.ReadAt(buf, 0); err != nil {
		return nil, fmt.Errorf("read sched slots: %w", err)
	}
	tasks := make(map[uint32]TaskStat)
	for i := range slots {
		if s := &slots[i]; s.TID != 0 {
			tasks[uint32(s.TID)] = *s
		}
	}
	var (
		tid uint32
		val TaskStat
	)
	it := objs.Maps["tasks"].Iterate()
	for it.Next(&tid, &val) {
		if s, ok := tasks[tid]; ok {
			// In a slot and the hash at once: a race at its first
			// switch. The programs find the slot first: its entry is
			// the live one (timestamps), the hash's adds its counts.
			s.add(&val)
			val = s
		}
		tasks[tid] = val
	}
	if err := it.Err(); err != nil && !errors.Is(err, ebpf.ErrIterationAborted) {
		return nil, fmt.Errorf("read sched tasks: %w", err)
	}
	return tasks, nil
}

// add adds o's counters to s.
func (s *TaskStat) add(o *TaskStat) {
	s.Voluntary += o.Voluntary
	s.Involuntary += o.Involuntary
	s.RunqNS += o.RunqNS
	s.RunqMaxNS = max(s.RunqMaxNS, o.RunqMaxNS)
	s.OffCPUNS += o.OffCPUNS
	s.OnCPUNS += o.OnCPUNS
	s.Runq.Add(&o.Runq)
}

// forget frees an exited thread's slot (by clearing its owner: the next
// owner zeroes the rest; and deleting its claim, which only the _nocas
// programs make) and deletes its entry from the tasks hash: a thread seen
// first on two CPUs at once can have both, the CPU that lost the slot
// having put it in the hash.
func forget(objs *attach.Objects, tid uint32) error {
	m := objs.Maps["slots"]
	mem, err := m.Memory()
	if err != nil {
		return fmt.Errorf("map sched slots: %w", err)
	}
	n := m.MaxEntries() // a power of two
	off := int64(tid&(n-1))*int64(taskStatSize) + tidOffset
	var owner [8]byte
	if _, err := mem.ReadAt(owner[:], off); err != nil {
		return fmt.Errorf("read sched slot: %w", err)
	}
	if binary.NativeEndian.Uint64(owner[:]) == uint64(tid) {
		if _, err := mem.WriteAt(make([]byte, 8), off); err != nil {
			return fmt.Errorf("free sched slot: %w", err)
		}
		if err := objs.Maps["slot_claims"].Delete(tid & (n - 1)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("free sched slot claim: %w", err)
		}
	}
	if err := objs.Maps["tasks"].Delete(tid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("forget thread %d: %w", tid, err)
	}
	return nil
}
