// SPDX-License-Identifier: GPL-2.0
/* Softirq time per CPU and vector: softirq_entry stamps the per-CPU start
 * time and counts the vector (where the kernel bumps /proc/softirqs),
 * softirq_exit adds the duration and its log2 histogram (in nanoseconds).
 * Softirqs do not nest on one CPU, so one start slot per CPU is enough. */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

/* Vectors tracked; the kernel has 10 (HI..RCU) since 4.1. */
#define NR_VECS 16

struct vec_stat {
	__u64 count;	/* softirq_entry events */
	__u64 time_ns;	/* sum of entry->exit durations */
	struct hist hist; /* durations, log2 ns */
};

/* Per-CPU, indexed by vector: user space reads each CPU's copy. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_VECS);
	__type(key, __u32);
	__type(value, struct vec_stat);
} vecs SEC(".maps");

struct start {
	__u64 ts;
	__u32 vec;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct start);
} starts SEC(".maps");

/* Events outside the table: vector >= NR_VECS, or an exit without its entry
 * (a softirq that was running when tracing started). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

static __always_inline void drop(void)
{
	__u32 zero = 0;
	__u64 *d = bpf_map_lookup_elem(&dropped, &zero);

	if (d)
		(*d)++;
}

static __always_inline int on_entry(unsigned int vec)
{
	__u32 zero = 0, key = vec;
	struct vec_stat *v;
	struct start *s;

	v = bpf_map_lookup_elem(&vecs, &key);
	s = bpf_map_lookup_elem(&starts, &zero);
	if (!v || !s) {
		drop();
		return 0;
	}
	v->count++;
	s->vec = vec;
	s->ts = bpf_ktime_get_ns();
	return 0;
}

static __always_inline int on_exit(unsigned int vec)
{
	__u32 zero = 0, key = vec;
	struct vec_stat *v;
	struct start *s;
	__u64 d;

	s = bpf_map_lookup_elem(&starts, &zero);
	if (!s)
		return 0;
	if (!s->ts || s->vec != vec) {
		drop();
		return 0;
	}
	d = bpf_ktime_get_ns() - s->ts;
	s->ts = 0;
	v = bpf_map_lookup_elem(&vecs, &key);
	if (!v)
		return 0;
	v->time_ns += d;
	hist_add(&v->hist, d);
	return 0;
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(softirq_entry_btf, unsigned int vec)
{
	return on_entry(vec);
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(softirq_exit_btf, unsigned int vec)
{
	return on_exit(vec);
}

SEC("raw_tp/softirq_entry")
int BPF_PROG(softirq_entry_raw, unsigned int vec)
{
	return on_entry(vec);
}

SEC("raw_tp/softirq_exit")
int BPF_PROG(softirq_exit_raw, unsigned int vec)
{
	return on_exit(vec);
}
