// SPDX-License-Identifier: GPL-2.0
/* On-CPU profiler: a perf_event program on every CPU's cpu-clock event counts
 * (process, thread, CPU, user stack, kernel stack) in a hash map and announces
 * each process at its first sample, so user space can read its mappings while
 * it still runs. */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

#define MAX_STACK_DEPTH 127
#define COMM_LEN 16
#define EFAULT 14
#define EEXIST 17

/* Filters, set from Go; zero values select everything. */
const volatile __u32 targ_tgid = 0;
const volatile __u64 targ_cgroup = 0;
const volatile __u8 filter_comm = 0;
const volatile char targ_comm[COMM_LEN] = {};
const volatile __u8 include_idle = 0;

struct sample_key {
	__u32 pid;
	__u32 tid;
	__u32 cpu;
	__s32 user_stack;
	__s32 kernel_stack;
	__u32 gen;             /* the process's execs since the profile began: which image ran */
	char comm[COMM_LEN];   /* process (thread group leader) name */
	char thread[COMM_LEN]; /* thread name */
};

struct sample_value {
	__u64 count;
	__u64 period_ns; /* sum of cpu-clock periods: CPU time */
};

/* Why samples or parts of them were lost (per-CPU counters). */
enum lost_reason {
	LOST_SAMPLE = 0,     /* samples map full */
	LOST_USER_STACK,     /* stack map full or hash collision */
	LOST_KERNEL_STACK,
	LOST_NEW_PID,        /* pid or image table or ring buffer full: captured late, or named from the image before an exec */
	LOST_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 40960);
	__type(key, struct sample_key);
	__type(value, struct sample_value);
} samples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LOST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Execs of each process since the profile began (absent: none). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u32);
} gens SEC(".maps");

/* What announce sends user space: read this image's mappings now. */
struct image {
	__u32 pid;
	__u32 gen;
};

/* Processes already announced to user space (in their current image). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u8);
} seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} new_pids SEC(".maps");

/* Keep the type for bpf2go. */
const struct sample_key *unused_sample_key __attribute__((unused));
const struct sample_value *unused_sample_value __attribute__((unused));
const struct image *unused_image __attribute__((unused));

static __always_inline void count_lost(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&lost, &reason);

	if (v)
		(*v)++;
}

static __always_inline bool comm_matches(const char *comm)
{
	if (!filter_comm)
		return true;
	for (int i = 0; i < COMM_LEN; i++) {
		if (comm[i] != targ_comm[i])
			return false;
		if (comm[i] == 0)
			break;
	}
	return true;
}

static __always_inline void announce(__u32 pid, __u32 gen)
{
	__u8 one = 1;
	struct image *e;
	long err;

	if (bpf_map_lookup_elem(&seen, &pid))
		return;
	err = bpf_map_update_elem(&seen, &pid, &one, BPF_NOEXIST);
	if (err == -EEXIST) /* another CPU announced it first */
		return;
	if (err) {
		count_lost(LOST_NEW_PID);
		return;
	}
	e = bpf_ringbuf_reserve(&new_pids, sizeof(*e), 0);
	if (!e) {
		count_lost(LOST_NEW_PID);
		return;
	}
	e->pid = pid;
	e->gen = gen;
	bpf_ringbuf_submit(e, 0);
}

SEC("perf_event")
int profile_cpu(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32, tid = (__u32)id;
	struct sample_key key = {};
	struct sample_value *v, init = {};
	struct task_struct *task;
	__u32 *gen;

	if (tid == 0 && !include_idle)
		return 0;
	if (targ_tgid && pid != targ_tgid)
		return 0;
	if (targ_cgroup && bpf_get_current_cgroup_id() != targ_cgroup)
		return 0;

	task = (struct task_struct *)bpf_get_current_task();
	BPF_CORE_READ_STR_INTO(&key.comm, task, group_leader, comm);
	if (!comm_matches(key.comm))
		return 0;
	bpf_get_current_comm(&key.thread, sizeof(key.thread));
	key.pid = pid;
	key.tid = tid;
	key.cpu = bpf_get_smp_processor_id();

	key.user_stack = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	if (key.user_stack < 0 && key.user_stack != -EFAULT)
		count_lost(LOST_USER_STACK);
	key.kernel_stack = bpf_get_stackid(ctx, &stacks, 0);
	if (key.kernel_stack < 0 && key.kernel_stack != -EFAULT)
		count_lost(LOST_KERNEL_STACK);

	gen = bpf_map_lookup_elem(&gens, &pid);
	key.gen = gen ? *gen : 0;
	if (pid)
		announce(pid, key.gen);

	v = bpf_map_lookup_elem(&samples, &key);
	if (!v) {
		bpf_map_update_elem(&samples, &key, &init, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&samples, &key);
		if (!v) {
			count_lost(LOST_SAMPLE);
			return 0;
		}
	}
	__sync_fetch_and_add(&v->count, 1);
	__sync_fetch_and_add(&v->period_ns, ctx->sample_period);
	return 0;
}

/* A process that execs gets new mappings: its next image number goes into
 * its samples from now on, and it is no longer announced, so its next
 * sample announces the new image and user space reads the new mappings
 * (the old image's stay for the samples taken before). The number first,
 * then the announcement: a sample in between carries the new number and is
 * announced by the next one. */
static __always_inline int on_exec(void)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u32 *gen = bpf_map_lookup_elem(&gens, &pid), next = gen ? *gen + 1 : 1;

	if (bpf_map_update_elem(&gens, &pid, &next, BPF_ANY))
		count_lost(LOST_NEW_PID);
	bpf_map_delete_elem(&seen, &pid);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_tp_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return on_exec();
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(exec_raw_tp, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return on_exec();
}
