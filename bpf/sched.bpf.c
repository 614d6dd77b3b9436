// SPDX-License-Identifier: GPL-2.0
/* Scheduler figures per task: voluntary and involuntary context switches,
 * run-queue delay (from wakeup or preemption to running again), off-CPU
 * and on-CPU time, all from sched_switch, sched_wakeup and
 * sched_wakeup_new, aggregated per thread in an array indexed by thread id
 * (slots), with a hash for the threads whose slot is taken.
 *
 * sched_switch is the hottest tracepoint there is: it does one inlined
 * array lookup for prev and one for next, one per-CPU lookup, no string
 * copies (comm is copied once, when a thread's entry is created) and no
 * atomics but the compare-and-swap that claims a slot: every field of a
 * thread's entry is written by that thread's own switches, which the
 * scheduler serializes, except ts_queued, which a waker sets while the
 * thread sleeps. Kernels before 5.12 have no compare-and-swap and refuse
 * any program that holds one: the *_nocas programs, the same code but for
 * the claim, stand in for the others there (user space picks them by
 * probing).
 *
 * The off-CPU accounting is shared with the profiler's off-CPU stacks
 * (nettrace profile --off-cpu): with offcpu_stacks set, offcpu_out records
 * where a thread blocked and offcpu_in charges the span to that stack; with
 * it clear (nettrace sched), that code is dead and the verifier drops it. */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

#define TASK_RUNNING 0
/* task_stat.nvcsw: the low 31 bits of the task's nvcsw, and this bit when
 * they were read (0: not yet). */
#define NVCSW_SEEN 0x80000000u
#define NVCSW_MASK 0x7fffffffu
#define TASK_COMM_LEN 16
#define MAX_STACK_DEPTH 127
#define EFAULT 14
#define EEXIST 17

/* Filters, set from Go: only this process (0: all), only tasks in this
 * cgroup v2 or below it (id 0: all; level is its depth). */
const volatile __u32 targ_tgid = 0;
const volatile __u64 targ_cgid = 0;
const volatile __u32 targ_cglevel = 0;
/* Off-CPU spans shorter than this are not added to offcpu_ns. */
const volatile __u64 min_block_ns = 0;
/* The profiler's off-CPU stacks: when true, offcpu_out records where a
 * thread blocked and offcpu_in charges the span to that stack. */
const volatile bool offcpu_stacks = false;
/* Only processes with this name (the first 15 bytes), when filter_comm. */
const volatile bool filter_comm = false;
const volatile char targ_comm[TASK_COMM_LEN] = {};

struct task_stat {
	__u64 tid;	 /* the thread (in slots: its owner; 0: free) */
	__u64 ts_out;	 /* switched out at (0: on CPU, or not seen) */
	__u64 ts_queued; /* became runnable at: wakeup or preemption (0: not queued) */
	__u64 vol;	 /* voluntary switches (blocked) */
	__u64 invol;	 /* involuntary switches (preempted) */
	__u64 runq_ns;	 /* total run-queue delay */
	__u64 offcpu_ns; /* switch-out to switch-in, spans >= min_block_ns */
	__u64 oncpu_ns;	 /* switch-in to switch-out */
	/* Every switch touches the 64 bytes above; the rest less often. */
	__u64 runq_max_ns;
	__u32 tgid;
	__s32 kstack;	 /* where it blocked, with offcpu_stacks: kernel stack id */
	__s32 ustack;	 /* and user stack id (-1: none) */
	__u32 nvcsw;	 /* without prev_state: NVCSW_SEEN | its nvcsw at its last switch */
	char comm[TASK_COMM_LEN];
	struct hist runq; /* run-queue delays, log2 microseconds */
};

/* Each thread's figures live in slots[tid & slot_mask], a direct-mapped
 * array the verifier inlines into a few instructions, claimed with one
 * compare-and-swap of its tid the first time the thread is seen; a thread
 * whose slot another live thread holds goes to the tasks hash instead. The
 * hash lookups this saves are most of sched_switch's cost. User space reads
 * the slots through a memory mapping and frees the slot of a thread that
 * exited by zeroing its tid. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 16384); /* a power of two, set from Go */
	__type(key, __u32);
	__type(value, struct task_stat);
} slots SEC(".maps");

const volatile __u32 slot_mask = 16383;

/* The *_nocas programs claim a slot by inserting its index here: of the
 * CPUs that try at once, one inserts it. User space deletes the claim when
 * it frees the slot. Sized from Go (one entry per slot) where they run. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} slot_claims SEC(".maps");

/* Threads whose slot was taken. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); /* set from Go */
	__type(key, __u32);
	__type(value, struct task_stat);
} tasks SEC(".maps");

/* The task each CPU runs and since when: prev's time on CPU is the time
 * since the CPU's previous switch. Taken from the CPU rather than from
 * prev's own switch-in because the sched_switch stream does not always
 * show one: on 6.18 a task can leave a CPU more often than it is seen
 * entering one (measured with the plain tracepoint too), which lost whole
 * spans of on-CPU time. User space credits the span under way from it. */
struct cpu_run {
	__u64 since; /* the CPU's last context switch (0: none seen yet) */
	__u32 tid;   /* the task it switched to */
	__u32 sync;  /* the clock_sync generation of sync_ktime/sync_clock */
	__u64 sync_ktime; /* bpf_ktime_get_ns() and */
	__u64 sync_clock; /* the run-queue clock, read together */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_run);
} running SEC(".maps");

/* Timestamps are taken from the scheduler's own clock, the run queue's
 * rq->clock, which __schedule and every wakeup update just before these
 * tracepoints: one load instead of bpf_ktime_get_ns(), which costs 30-40 ns
 * per call in a VM (sched_switch measured 106-113 ns with it, 65-76 ns with
 * the load, 63-80 ns empty, on 6.18). It is also the clock of the kernel's
 * own run-queue accounting (schedstat's run_delay). The run queue is reached
 * through the task's CFS queue (cfs_rq->rq exists with
 * CONFIG_FAIR_GROUP_SCHED, which every distribution kernel sets); without
 * it the programs use bpf_ktime_get_ns().
 *
 * User space credits spans under way up to "now" and needs the offset of
 * this clock from CLOCK_MONOTONIC: when it bumps clock_sync, each CPU's next
 * switch records both clocks in its cpu_run. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} clock_sync SEC(".maps");

/* Figures of the selection as a whole (switch counts, the --dist run-queue
 * histogram) are summed from the tasks' in user space: sched_switch touches
 * no map but the tasks of prev and next. */

/* Threads not tracked because the tasks map was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

/* Off-CPU time by (thread, kernel stack, user stack), with offcpu_stacks.
 * Sized from Go; one entry (unused) for nettrace sched. */
struct offcpu_key {
	__u32 tgid;
	__u32 pid;
	__s32 kstack; /* <0: -errno of bpf_get_stackid (-EFAULT: none) */
	__s32 ustack;
};

struct offcpu_val {
	__u64 ns;    /* time off CPU */
	__u64 count; /* spans */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct offcpu_key);
	__type(value, struct offcpu_val);
} offcpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));
} offcpu_stackmap SEC(".maps");

/* What the off-CPU side lost, per CPU. */
enum offcpu_lost_reason {
	OFFCPU_LOST_SPAN = 0,	 /* offcpu map full: the span is not charged */
	OFFCPU_LOST_USER_STACK,	 /* stack map full or hash collision */
	OFFCPU_LOST_KERNEL_STACK,
	OFFCPU_LOST_NEW_PID,	 /* pid table or ring buffer full: captured late */
	OFFCPU_LOST_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OFFCPU_LOST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} offcpu_lost SEC(".maps");

/* Processes announced to user space (through new_pids) so that it reads
 * their mappings while they run, as the on-CPU profiler does. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8);
} seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} new_pids SEC(".maps");

/* Keep the types for bpf2go. */
const struct offcpu_key *unused_offcpu_key __attribute__((unused));
const struct offcpu_val *unused_offcpu_val __attribute__((unused));
const struct cpu_run *unused_cpu_run __attribute__((unused));

static const struct task_stat zero_stat = { .kstack = -1, .ustack = -1 };

static __always_inline bool cgroup_wanted(struct task_struct *t)
{
	struct cgroup *cg = BPF_CORE_READ(t, cgroups, dfl_cgrp);
	struct cgroup *anc = NULL;
	__u32 lvl = targ_cglevel;

	if (!cg || BPF_CORE_READ(cg, level) < (int)lvl || lvl > 255)
		return false;
	bpf_core_read(&anc, sizeof(anc), &cg->ancestors[lvl]);
	return anc && BPF_CORE_READ(anc, kn, id) == targ_cgid;
}

static __always_inline bool comm_wanted(struct task_struct *t)
{
	char comm[TASK_COMM_LEN];

	BPF_CORE_READ_STR_INTO(&comm, t, group_leader, comm);
	for (int i = 0; i < TASK_COMM_LEN; i++) {
		if (comm[i] != targ_comm[i])
			return false;
		if (comm[i] == 0)
			break;
	}
	return true;
}

static __always_inline bool wanted(__u32 pid, __u32 tgid, struct task_struct *t)
{
	if (!pid) /* the idle task */
		return false;
	if (targ_tgid && tgid != targ_tgid)
		return false;
	if (filter_comm && !comm_wanted(t))
		return false;
	if (targ_cgid && !cgroup_wanted(t))
		return false;
	return true;
}

static __always_inline void init_stat(struct task_stat *s, __u32 tgid, struct task_struct *t)
{
	s->tgid = tgid;
	s->kstack = -1;
	s->ustack = -1;
	bpf_probe_read_kernel_str(s->comm, sizeof(s->comm), &t->comm);
}

/* claim_slot makes pid the owner of the free slot s (index idx), with a
 * compare-and-swap of its tid, or without one (cas false) through
 * slot_claims; false when another thread was first. */
static __always_inline bool claim_slot(struct task_stat *s, __u32 idx, __u32 pid, bool cas)
{
	if (cas)
		return __sync_val_compare_and_swap(&s->tid, 0, (__u64)pid) == 0;
	if (bpf_map_update_elem(&slot_claims, &idx, &pid, BPF_NOEXIST))
		return false;
	s->tid = pid;
	return true;
}

static __always_inline struct task_stat *get_stat(__u32 pid, __u32 tgid, struct task_struct *t, bool cas)
{
	__u32 idx = pid & slot_mask, zero = 0;
	struct task_stat *s = bpf_map_lookup_elem(&slots, &idx);
	bool free = false;
	__u64 *d;
	long err;

	if (s) {
		if (s->tid == pid)
			return s;
		free = s->tid == 0;
	}
	/* Not in its slot: in the hash, or seen for the first time. */
	s = bpf_map_lookup_elem(&tasks, &pid);
	if (s)
		return s;
	if (free) {
		s = bpf_map_lookup_elem(&slots, &idx);
		if (s && claim_slot(s, idx, pid, cas)) {
			/* The new owner zeroes the slot: user space frees it by
			 * clearing tid alone, so no store of user space's can
			 * land on the new owner's figures. */
			__builtin_memset((void *)s + sizeof(s->tid), 0, sizeof(*s) - sizeof(s->tid));
			init_stat(s, tgid, t);
			return s;
		}
	}
	err = bpf_map_update_elem(&tasks, &pid, &zero_stat, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST: another CPU was first */) {
		d = bpf_map_lookup_elem(&dropped, &zero);
		if (d)
			(*d)++;
		return NULL;
	}
	s = bpf_map_lookup_elem(&tasks, &pid);
	if (s && !err) {
		s->tid = pid;
		init_stat(s, tgid, t);
	}
	return s;
}

static __always_inline void offcpu_count_lost(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&offcpu_lost, &reason);

	if (v)
		(*v)++;
}

static __always_inline void announce(__u32 tgid)
{
	__u8 one = 1;
	__u32 *e;
	long err;

	if (bpf_map_lookup_elem(&seen, &tgid))
		return;
	err = bpf_map_update_elem(&seen, &tgid, &one, BPF_NOEXIST);
	if (err == -EEXIST) /* another CPU announced it first */
		return;
	if (err) {
		offcpu_count_lost(OFFCPU_LOST_NEW_PID);
		return;
	}
	e = bpf_ringbuf_reserve(&new_pids, sizeof(*e), 0);
	if (!e) {
		offcpu_count_lost(OFFCPU_LOST_NEW_PID);
		return;
	}
	*e = tgid;
	bpf_ringbuf_submit(e, 0);
}

/* offcpu_out runs when a thread leaves the CPU, in its own context (on
 * sched_switch, current is still prev): with offcpu_stacks it records
 * where the thread blocked. */
static __always_inline void offcpu_out(void *ctx, struct task_stat *s, __u64 now)
{
	s->ts_out = now;
	if (!offcpu_stacks)
		return;
	/* Skip this program, bpf_trace_run4 and __traceiter_sched_switch:
	 * the stack starts at __schedule. */
	s->kstack = bpf_get_stackid(ctx, &offcpu_stackmap, 3 & BPF_F_SKIP_FIELD_MASK);
	if (s->kstack < 0 && s->kstack != -EFAULT)
		offcpu_count_lost(OFFCPU_LOST_KERNEL_STACK);
	s->ustack = bpf_get_stackid(ctx, &offcpu_stackmap, BPF_F_USER_STACK);
	if (s->ustack < 0 && s->ustack != -EFAULT)
		offcpu_count_lost(OFFCPU_LOST_USER_STACK);
	announce(s->tgid);
}

/* offcpu_in runs when the thread gets the CPU back, with the span it was
 * off (at least min_block_ns): with offcpu_stacks it charges the span to
 * the stack offcpu_out recorded. A thread's switches are serialized, so its
 * entries need no atomics. */
static __always_inline void offcpu_in(struct task_stat *s, __u32 pid, __u64 d)
{
	struct offcpu_key key;
	struct offcpu_val *v, init = {};

	s->offcpu_ns += d;
	if (!offcpu_stacks)
		return;
	key.tgid = s->tgid;
	key.pid = pid;
	key.kstack = s->kstack;
	key.ustack = s->ustack;
	v = bpf_map_lookup_elem(&offcpu, &key);
	if (!v) {
		bpf_map_update_elem(&offcpu, &key, &init, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&offcpu, &key);
		if (!v) {
			offcpu_count_lost(OFFCPU_LOST_SPAN);
			return;
		}
	}
	v->ns += d;
	v->count++;
}

static __always_inline bool has_rq_clock(void)
{
	return bpf_core_field_exists(struct cfs_rq, rq);
}

/* The clock of t's run queue, for tp_btf programs (direct loads). */
static __always_inline __u64 rq_clock_btf(struct task_struct *t)
{
	if (has_rq_clock())
		return t->se.cfs_rq->rq->clock;
	return bpf_ktime_get_ns();
}

/* The same for raw_tp programs, which read through probe_read. */
static __always_inline __u64 rq_clock_raw(struct task_struct *t)
{
	if (has_rq_clock())
		return BPF_CORE_READ(t, se.cfs_rq, rq, clock);
	return bpf_ktime_get_ns();
}

/* One sched_switch as a program reads it. */
struct switch_ev {
	struct task_struct *prev, *next;
	__u64 now; /* the run queue's clock */
	__u32 prev_pid, prev_tgid, next_pid, next_tgid;
	bool preempt;
	bool btf;	/* the tasks are BTF pointers (tp_btf): direct loads */
	bool has_state; /* prev_state is the tracepoint's (Linux 5.18+) */
	unsigned int prev_state;
};

/* The task's state for kernels whose sched_switch has no prev_state
 * (task_struct.state before 5.14, __state since). */
struct task_struct___state_long {
	long state;
} __attribute__((preserve_access_index));

static __always_inline unsigned int task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return BPF_CORE_READ((struct task_struct___state_long *)t, state);
}

static __always_inline __u32 task_nvcsw(struct task_struct *t, bool btf)
{
	return (btf ? t->nvcsw : BPF_CORE_READ(t, nvcsw)) & NVCSW_MASK;
}

/* switched_invol tells whether prev's switch is involuntary as __schedule
 * counts it: not preempted and no longer TASK_RUNNING is a block
 * (nvcsw). Without the tracepoint's prev_state, the task's own nvcsw says
 * it: __schedule adds the switch to nvcsw or nivcsw before the tracepoint
 * (the state read now can be TASK_RUNNING again for a task that blocked
 * with a signal pending, which __schedule counts as a block); at a task's
 * first switch seen, which only a task running when the programs attached
 * has, its state now is all there is. */
static __always_inline bool switched_invol(struct task_stat *s, const struct switch_ev *e)
{
	__u32 nvcsw;
	bool invol;

	if (e->has_state)
		return e->preempt || e->prev_state == TASK_RUNNING;
	nvcsw = task_nvcsw(e->prev, e->btf) | NVCSW_SEEN;
	if (s->nvcsw & NVCSW_SEEN)
		invol = s->nvcsw == nvcsw;
	else
		invol = e->preempt || task_state(e->prev) == TASK_RUNNING;
	s->nvcsw = nvcsw;
	return invol;
}

static __always_inline void on_switch(void *ctx, const struct switch_ev *e, bool cas)
{
	struct task_stat *s;
	__u64 since = 0, now = e->now;
	struct cpu_run *c;
	__u32 zero = 0, *sync;

	c = bpf_map_lookup_elem(&running, &zero);
	if (c) {
		since = c->since;
		c->since = now;
		c->tid = e->next_pid;
		sync = bpf_map_lookup_elem(&clock_sync, &zero);
		if (sync && *sync != c->sync) {
			c->sync = *sync;
			c->sync_ktime = bpf_ktime_get_ns();
			c->sync_clock = now;
		}
	}
	if (wanted(e->prev_pid, e->prev_tgid, e->prev)) {
		s = get_stat(e->prev_pid, e->prev_tgid, e->prev, cas);
		if (s) {
			if (switched_invol(s, e)) {
				s->invol++;
				s->ts_queued = now;
			} else {
				s->vol++;
				/* Blocked: not queued, whatever switch-in was
				 * not seen. */
				s->ts_queued = 0;
			}
			if (since)
				s->oncpu_ns += now - since;
			offcpu_out(ctx, s, now);
		}
	}
	if (!wanted(e->next_pid, e->next_tgid, e->next))
		return;
	s = get_stat(e->next_pid, e->next_tgid, e->next, cas);
	if (!s)
		return;
	if (!e->has_state) /* the count its next switch adds to */
		s->nvcsw = task_nvcsw(e->next, e->btf) | NVCSW_SEEN;
	if (s->ts_queued) {
		__u64 d = now - s->ts_queued;

		s->ts_queued = 0;
		s->runq_ns += d;
		if (d > s->runq_max_ns)
			s->runq_max_ns = d;
		hist_add(&s->runq, d / 1000);
	}
	if (s->ts_out) {
		__u64 d = now - s->ts_out;

		s->ts_out = 0;
		if (d >= min_block_ns)
			offcpu_in(s, e->next_pid, d);
	}
}

static __always_inline void on_wakeup(struct task_struct *p, __u32 pid, __u32 tgid, bool btf, bool cas)
{
	struct task_stat *s;

	if (!wanted(pid, tgid, p))
		return;
	s = get_stat(pid, tgid, p, cas);
	if (s)
		s->ts_queued = btf ? rq_clock_btf(p) : rq_clock_raw(p);
}

/* The programs, as typed (tp_btf) or raw (raw_tp) tracepoints, each with
 * the tracepoint's prev_state (5.18+) or without (_nostate), and with the
 * compare-and-swap or without (_nocas). */
static __always_inline void switch_btf(void *ctx, bool preempt, struct task_struct *prev,
				       struct task_struct *next, bool has_state, unsigned int prev_state, bool cas)
{
	struct switch_ev e = {
		.prev = prev, .next = next, .now = rq_clock_btf(prev),
		.prev_pid = prev->pid, .prev_tgid = prev->tgid, .next_pid = next->pid, .next_tgid = next->tgid,
		.preempt = preempt, .btf = true, .has_state = has_state, .prev_state = prev_state,
	};

	on_switch(ctx, &e, cas);
}

static __always_inline void switch_raw(void *ctx, bool preempt, struct task_struct *prev,
				       struct task_struct *next, bool has_state, unsigned int prev_state, bool cas)
{
	struct switch_ev e = {
		.prev = prev, .next = next, .now = rq_clock_raw(prev),
		.prev_pid = BPF_CORE_READ(prev, pid), .prev_tgid = BPF_CORE_READ(prev, tgid),
		.next_pid = BPF_CORE_READ(next, pid), .next_tgid = BPF_CORE_READ(next, tgid),
		.preempt = preempt, .has_state = has_state, .prev_state = prev_state,
	};

	on_switch(ctx, &e, cas);
}

/* sched_switch: prev leaves the CPU (a voluntary or involuntary switch,
 * its on-CPU span ends, its off-CPU span starts), next gets it (its
 * run-queue wait and off-CPU span end). */
SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch_btf, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	switch_btf(ctx, preempt, prev, next, true, prev_state, true);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch_btf_nocas, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	switch_btf(ctx, preempt, prev, next, true, prev_state, false);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch_btf_nostate, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	switch_btf(ctx, preempt, prev, next, false, 0, true);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch_btf_nostate_nocas, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	switch_btf(ctx, preempt, prev, next, false, 0, false);
	return 0;
}

SEC("raw_tp/sched_switch")
int BPF_PROG(sched_switch_raw, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	switch_raw(ctx, preempt, prev, next, true, prev_state, true);
	return 0;
}

SEC("raw_tp/sched_switch")
int BPF_PROG(sched_switch_raw_nocas, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	switch_raw(ctx, preempt, prev, next, true, prev_state, false);
	return 0;
}

SEC("raw_tp/sched_switch")
int BPF_PROG(sched_switch_raw_nostate, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	switch_raw(ctx, preempt, prev, next, false, 0, true);
	return 0;
}

SEC("raw_tp/sched_switch")
int BPF_PROG(sched_switch_raw_nostate_nocas, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	switch_raw(ctx, preempt, prev, next, false, 0, false);
	return 0;
}

/* sched_wakeup and sched_wakeup_new: p becomes runnable (its run-queue
 * wait starts). */
SEC("tp_btf/sched_wakeup")
int BPF_PROG(sched_wakeup_btf, struct task_struct *p)
{
	on_wakeup(p, p->pid, p->tgid, true, true);
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(sched_wakeup_btf_nocas, struct task_struct *p)
{
	on_wakeup(p, p->pid, p->tgid, true, false);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new_btf, struct task_struct *p)
{
	on_wakeup(p, p->pid, p->tgid, true, true);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new_btf_nocas, struct task_struct *p)
{
	on_wakeup(p, p->pid, p->tgid, true, false);
	return 0;
}

SEC("raw_tp/sched_wakeup")
int BPF_PROG(sched_wakeup_raw, struct task_struct *p)
{
	on_wakeup(p, BPF_CORE_READ(p, pid), BPF_CORE_READ(p, tgid), false, true);
	return 0;
}

SEC("raw_tp/sched_wakeup")
int BPF_PROG(sched_wakeup_raw_nocas, struct task_struct *p)
{
	on_wakeup(p, BPF_CORE_READ(p, pid), BPF_CORE_READ(p, tgid), false, false);
	return 0;
}

SEC("raw_tp/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new_raw, struct task_struct *p)
{
	on_wakeup(p, BPF_CORE_READ(p, pid), BPF_CORE_READ(p, tgid), false, true);
	return 0;
}

SEC("raw_tp/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new_raw_nocas, struct task_struct *p)
{
	on_wakeup(p, BPF_CORE_READ(p, pid), BPF_CORE_READ(p, tgid), false, false);
	return 0;
}

/* A process that execs gets new mappings: with offcpu_stacks, forget that
 * it was announced, so that its next switch announces it again. */
static __always_inline void on_exec(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (offcpu_stacks)
		bpf_map_delete_elem(&seen, &tgid);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(sched_exec_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	on_exec();
	return 0;
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(sched_exec_raw, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	on_exec();
	return 0;
}
