// SPDX-License-Identifier: GPL-2.0
/* Demo hook for the attach layer: counts IPv4 TCP connect() calls of one
 * process, with one program per attach method. internal/attach loads only the
 * alternative it chooses. */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

/* Process to count; 0 counts every process. */
const volatile __u32 targ_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} connects SEC(".maps");

static __always_inline int count_connect(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 zero = 0;
	__u64 *v;

	if (targ_tgid && tgid != targ_tgid)
		return 0;
	v = bpf_map_lookup_elem(&connects, &zero);
	if (v)
		(*v)++;
	return 0;
}

SEC("fentry/tcp_v4_connect")
int BPF_PROG(connect_fentry, struct sock *sk)
{
	return count_connect();
}

SEC("kprobe/tcp_v4_connect")
int BPF_KPROBE(connect_kprobe, struct sock *sk)
{
	return count_connect();
}

/* tcp_v4_connect moves the socket from CLOSE to SYN_SENT before it allocates
 * the port, so the transition counts the calls that got past the route lookup. */
static __always_inline int on_state(const struct sock *sk, int newstate)
{
	if (newstate != TCP_SYN_SENT)
		return 0;
	if (BPF_CORE_READ(sk, __sk_common.skc_family) != AF_INET)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	return count_connect();
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(connect_tp_btf, const struct sock *sk, int oldstate, int newstate)
{
	return on_state(sk, newstate);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(connect_raw_tp, const struct sock *sk, int oldstate, int newstate)
{
	return on_state(sk, newstate);
}
