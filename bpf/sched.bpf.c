// SPDX-License-Identifier: GPL-2.0
/* Scheduler figures per task: voluntary and involuntary context switches,
 * run-queue delay (from wakeup or preemption to running again), off-CPU
 * and on-CPU time, all from sched_switch, sched_wakeup and
 * sched_wakeup_new, aggregated in one hash map keyed by thread id.
 *
 * sched_switch is the hottest tracepoint there is: it does one hash lookup
 * for prev and one for next, no string copies (comm is copied once, when a
 * thread's entry is created) and no atomics: every field of a thread's
 * entry is written by that thread's own switches, which the scheduler
 * serializes, except ts_queued, which a waker sets while the thread sleeps.
 *
 * The off-CPU accounting is shared with the profiler's off-CPU stacks: see
 * offcpu_out/offcpu_in and the offcpu_stacks guard. */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

#define TASK_RUNNING 0
#define TASK_COMM_LEN 16

/* Filters, set from Go: only this process (0: all), only tasks in this
 * cgroup v2 or below it (id 0: all; level is its depth). */
const volatile __u32 targ_tgid = 0;
const volatile __u64 targ_cgid = 0;
const volatile __u32 targ_cglevel = 0;
/* Off-CPU spans shorter than this are not added to offcpu_ns. */
const volatile __u64 min_block_ns = 0;
/* Reserved for the profiler's off-CPU stacks (false here): when true,
 * offcpu_out records where a thread blocked and offcpu_in charges the span
 * to it. */
const volatile bool offcpu_stacks = false;

struct task_stat {
	__u64 ts_in;	 /* switched in at (0: not seen on CPU yet) */
	__u64 ts_out;	 /* switched out at (0: on CPU, or not seen) */
	__u64 ts_queued; /* became runnable at: wakeup or preemption (0: not queued) */
	__u64 vol;	 /* voluntary switches (blocked) */
	__u64 invol;	 /* involuntary switches (preempted) */
	__u64 runq_ns;	 /* total run-queue delay */
	__u64 runq_max_ns;
	__u64 offcpu_ns; /* switch-out to switch-in, spans >= min_block_ns */
	__u64 oncpu_ns;	 /* switch-in to switch-out */
	__u32 tgid;
	__s32 stack_id;	 /* where it blocked, with offcpu_stacks; -1 otherwise */
	char comm[TASK_COMM_LEN];
	struct hist runq; /* run-queue delays, log2 microseconds */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* set from Go */
	__type(key, __u32);
	__type(value, struct task_stat);
} tasks SEC(".maps");

/* The selection as a whole, per CPU: the --dist histogram. Switch counts
 * are summed from the tasks in user space, to keep sched_switch's prev
 * side to one lookup. */
struct sys_stat {
	__u64 runq_ns;
	struct hist runq; /* log2 microseconds */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sys_stat);
} sys SEC(".maps");

/* Threads not tracked because the tasks map was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

static const struct task_stat zero_stat = { .stack_id = -1 };

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

static __always_inline bool wanted(__u32 pid, __u32 tgid, struct task_struct *t)
{
	if (!pid) /* the idle task */
		return false;
	if (targ_tgid && tgid != targ_tgid)
		return false;
	if (targ_cgid && !cgroup_wanted(t))
		return false;
	return true;
}

static __always_inline struct task_stat *get_stat(__u32 pid, __u32 tgid, struct task_struct *t)
{
	struct task_stat *s = bpf_map_lookup_elem(&tasks, &pid);
	__u32 zero = 0;
	__u64 *d;
	long err;

	if (s)
		return s;
	err = bpf_map_update_elem(&tasks, &pid, &zero_stat, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST: another CPU was first */) {
		d = bpf_map_lookup_elem(&dropped, &zero);
		if (d)
			(*d)++;
		return NULL;
	}
	s = bpf_map_lookup_elem(&tasks, &pid);
	if (s) {
		s->tgid = tgid;
		bpf_probe_read_kernel_str(s->comm, sizeof(s->comm), &t->comm);
	}
	return s;
}

/* offcpu_out runs when a thread leaves the CPU, in its own context (it is
 * current): a stack-capturing variant records bpf_get_stackid() into
 * s->stack_id here, guarded by offcpu_stacks. */
static __always_inline void offcpu_out(struct task_stat *s, __u64 now)
{
	s->ts_out = now;
}

/* offcpu_in runs when the thread gets the CPU back, with the span it was
 * off; a stack-capturing variant adds d to a map keyed by s->stack_id here. */
static __always_inline void offcpu_in(struct task_stat *s, __u64 d)
{
	s->offcpu_ns += d;
}

static __always_inline void on_switch(bool preempt, unsigned int prev_state,
				      struct task_struct *prev, __u32 prev_pid, __u32 prev_tgid,
				      struct task_struct *next, __u32 next_pid, __u32 next_tgid)
{
	struct task_stat *s;
	struct sys_stat *ss;
	__u64 now = bpf_ktime_get_ns();
	__u32 zero = 0;
	bool invol;

	if (wanted(prev_pid, prev_tgid, prev)) {
		s = get_stat(prev_pid, prev_tgid, prev);
		if (s) {
			/* As __schedule counts nvcsw: blocked when not preempted
			 * and no longer TASK_RUNNING. */
			invol = preempt || prev_state == TASK_RUNNING;
			if (invol) {
				s->invol++;
				s->ts_queued = now;
			} else {
				s->vol++;
			}
			if (s->ts_in)
				s->oncpu_ns += now - s->ts_in;
			s->ts_in = 0;
			offcpu_out(s, now);
		}
	}
	if (!wanted(next_pid, next_tgid, next))
		return;
	s = get_stat(next_pid, next_tgid, next);
	if (!s)
		return;
	if (s->ts_queued) {
		__u64 d = now - s->ts_queued;

		s->ts_queued = 0;
		s->runq_ns += d;
		if (d > s->runq_max_ns)
			s->runq_max_ns = d;
		hist_add(&s->runq, d / 1000);
		ss = bpf_map_lookup_elem(&sys, &zero);
		if (ss) {
			ss->runq_ns += d;
			hist_add(&ss->runq, d / 1000);
		}
	}
	if (s->ts_out) {
		__u64 d = now - s->ts_out;

		s->ts_out = 0;
		if (d >= min_block_ns)
			offcpu_in(s, d);
	}
	s->ts_in = now;
}

static __always_inline void on_wakeup(struct task_struct *p, __u32 pid, __u32 tgid)
{
	struct task_stat *s;

	if (!wanted(pid, tgid, p))
		return;
	s = get_stat(pid, tgid, p);
	if (s)
		s->ts_queued = bpf_ktime_get_ns();
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch_btf, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	on_switch(preempt, prev_state, prev, prev->pid, prev->tgid, next, next->pid, next->tgid);
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(sched_wakeup_btf, struct task_struct *p)
{
	on_wakeup(p, p->pid, p->tgid);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new_btf, struct task_struct *p)
{
	on_wakeup(p, p->pid, p->tgid);
	return 0;
}

SEC("raw_tp/sched_switch")
int BPF_PROG(sched_switch_raw, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	on_switch(preempt, prev_state, prev, BPF_CORE_READ(prev, pid), BPF_CORE_READ(prev, tgid),
		  next, BPF_CORE_READ(next, pid), BPF_CORE_READ(next, tgid));
	return 0;
}

SEC("raw_tp/sched_wakeup")
int BPF_PROG(sched_wakeup_raw, struct task_struct *p)
{
	on_wakeup(p, BPF_CORE_READ(p, pid), BPF_CORE_READ(p, tgid));
	return 0;
}

SEC("raw_tp/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new_raw, struct task_struct *p)
{
	on_wakeup(p, BPF_CORE_READ(p, pid), BPF_CORE_READ(p, tgid));
	return 0;
}
