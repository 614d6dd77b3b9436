// SPDX-License-Identifier: GPL-2.0
/* timewait: who closes TCP connections first, and (fentry/kprobe tiers)
 * exact TIME_WAIT creation, expiry and early kill, per row. A row is a
 * (local address, remote address:port) pair, or (local address:port, remote
 * address) for the server side, in one network namespace; user space tells
 * the sides apart through the listen_ports map (see row_key_of). */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "bpf_endian.h"
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

/* Count only namespaces in the watch map; 0 counts every namespace. */
const volatile __u8 filter_netns = 0;

#define SIDE_CLIENT 1 /* we connected: the row aggregates local ports */
#define SIDE_SERVER 2 /* we accepted: the row aggregates remote ports */

struct row_key {
	__u32 netns;
	__u16 family;
	__u8 side;
	__u8 pad;
	union addr laddr;
	union addr raddr;
	__u16 lport; /* 0 on client rows */
	__u16 rport; /* 0 on server rows */
};

struct row_val {
	__u64 closed_local;  /* ESTABLISHED -> FIN_WAIT1: we closed first */
	__u64 closed_remote; /* ESTABLISHED -> CLOSE_WAIT: the peer did */
	__u64 created;       /* TIME_WAIT entered (fentry/kprobe tiers) */
	__u64 expired;       /* TIME_WAIT timer ran out (fentry/kprobe tiers) */
	__u64 killed;        /* TIME_WAIT ended early: reused, RST, SYN (fentry/kprobe tiers) */
	__u32 pid;           /* last process that closed first here */
	char comm[16];
};

struct port_key {
	__u32 netns;
	__u16 port;
	__u16 pad;
};

struct tw_stash {
	__u64 tw;
	__u8 substate;
};

/* Force the types into BTF for bpf2go -type. */
const struct row_key *unused_row_key __attribute__((unused));
const struct row_val *unused_row_val __attribute__((unused));
const struct port_key *unused_port_key __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct row_key);
	__type(value, struct row_val);
} rows SEC(".maps");

/* Listening ports per namespace, written by user space from each snapshot. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct port_key);
	__type(value, __u8);
} listen_ports SEC(".maps");

/* Namespaces to count when filter_netns is set, written by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} watch SEC(".maps");

/* Row inserts that failed because rows was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

/* tcp_timewait_state_process entry -> exit: the substate before. Softirq
 * context does not nest on a CPU, so one slot per CPU is enough. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tw_stash);
} stash SEC(".maps");

static __always_inline int is_listening(__u32 netns, __u16 port)
{
	struct port_key k = { .netns = netns, .port = port };

	return bpf_map_lookup_elem(&listen_ports, &k) != NULL;
}

/* row_key_of fills k from a socket or timewait socket; 0 when it is not to
 * be counted. The side rule matches tracers/timewait sideOf. */
static __always_inline int row_key_of(const struct sock_common *skc, struct row_key *k)
{
	__u16 lport, rport;

	k->family = BPF_CORE_READ(skc, skc_family);
	if (k->family != AF_INET && k->family != AF_INET6)
		return 0;
	k->netns = BPF_CORE_READ(skc, skc_net.net, ns.inum);
	if (filter_netns && !bpf_map_lookup_elem(&watch, &k->netns))
		return 0;
	lport = BPF_CORE_READ(skc, skc_num);
	rport = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));
	if (k->family == AF_INET) {
		k->laddr.v4 = BPF_CORE_READ(skc, skc_rcv_saddr);
		k->raddr.v4 = BPF_CORE_READ(skc, skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&k->laddr.v6, skc, skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&k->raddr.v6, skc, skc_v6_daddr.in6_u.u6_addr8);
	}
	if (is_listening(k->netns, lport))
		k->side = SIDE_SERVER;
	else if (is_listening(k->netns, rport))
		k->side = SIDE_CLIENT;
	else
		k->side = lport < rport ? SIDE_SERVER : SIDE_CLIENT;
	if (k->side == SIDE_SERVER)
		k->lport = lport;
	else
		k->rport = rport;
	return 1;
}

static __always_inline struct row_val *row_of(const struct row_key *k)
{
	static const struct row_val zero = {};
	struct row_val *v;
	__u32 z = 0;
	__u64 *d;

	v = bpf_map_lookup_elem(&rows, k);
	if (v)
		return v;
	bpf_map_update_elem(&rows, k, &zero, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&rows, k);
	if (!v) {
		d = bpf_map_lookup_elem(&dropped, &z);
		if (d)
			(*d)++;
	}
	return v;
}

/* on_state counts who closed first: our FIN goes out when the socket leaves
 * ESTABLISHED (or SYN_RECV) for FIN_WAIT1; the peer's FIN arrived first when
 * it goes to CLOSE_WAIT. */
static __always_inline int on_state(const struct sock *sk, int oldstate, int newstate)
{
	struct row_key k = {};
	struct row_val *v;

	if (newstate != TCP_FIN_WAIT1 && newstate != TCP_CLOSE_WAIT)
		return 0;
	if (newstate == TCP_FIN_WAIT1 && oldstate != TCP_ESTABLISHED && oldstate != TCP_SYN_RECV)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	if (!row_key_of(&sk->__sk_common, &k))
		return 0;
	v = row_of(&k);
	if (!v)
		return 0;
	if (newstate == TCP_CLOSE_WAIT) {
		__sync_fetch_and_add(&v->closed_remote, 1);
		return 0;
	}
	__sync_fetch_and_add(&v->closed_local, 1);
	/* close() and shutdown() run in the process that closes. */
	v->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(v->comm, sizeof(v->comm));
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(close_tp_btf, const struct sock *sk, int oldstate, int newstate)
{
	return on_state(sk, oldstate, newstate);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(close_raw_tp, const struct sock *sk, int oldstate, int newstate)
{
	return on_state(sk, oldstate, newstate);
}

SEC("fentry/tcp_set_state")
int BPF_PROG(close_fentry, struct sock *sk, int state)
{
	return on_state(sk, BPF_CORE_READ(sk, __sk_common.skc_state), state);
}

SEC("kprobe/tcp_set_state")
int BPF_KPROBE(close_kprobe, struct sock *sk, int state)
{
	return on_state(sk, BPF_CORE_READ(sk, __sk_common.skc_state), state);
}

/* TIME_WAIT events. */
enum tw_event { TW_CREATED, TW_EXPIRED, TW_KILLED };

static __always_inline void count_tw(const struct sock_common *skc, enum tw_event ev)
{
	struct row_key k = {};
	struct row_val *v;

	if (!row_key_of(skc, &k))
		return;
	v = row_of(&k);
	if (!v)
		return;
	switch (ev) {
	case TW_CREATED:
		__sync_fetch_and_add(&v->created, 1);
		break;
	case TW_EXPIRED:
		__sync_fetch_and_add(&v->expired, 1);
		break;
	case TW_KILLED:
		__sync_fetch_and_add(&v->killed, 1);
		break;
	}
}

static __always_inline int tw_is_time_wait(const struct inet_timewait_sock *tw)
{
	return BPF_CORE_READ(tw, tw_substate) == TCP_TIME_WAIT;
}

/* A full socket becomes a TIME_WAIT socket (not a FIN_WAIT2 one). */
SEC("fexit/inet_twsk_alloc")
int BPF_PROG(tw_alloc_fexit, const struct sock *sk, struct inet_timewait_death_row *dr,
	     const int state, struct inet_timewait_sock *ret)
{
	if (!ret || state != TCP_TIME_WAIT || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	count_tw(&sk->__sk_common, TW_CREATED);
	return 0;
}

/* kprobe tier: tcp_time_wait is called before the allocation, which fails
 * past tcp_max_tw_buckets. */
SEC("kprobe/tcp_time_wait")
int BPF_KPROBE(tw_time_wait_kprobe, struct sock *sk, int state)
{
	if (state == TCP_TIME_WAIT)
		count_tw(&sk->__sk_common, TW_CREATED);
	return 0;
}

/* A FIN_WAIT2 timewait socket (what an orphaned socket becomes once its FIN
 * is acknowledged) turns into TIME_WAIT when the peer's FIN arrives, inside
 * tcp_timewait_state_process. */
static __always_inline void stash_substate(const struct inet_timewait_sock *tw)
{
	__u32 z = 0;
	struct tw_stash *s = bpf_map_lookup_elem(&stash, &z);

	if (!s)
		return;
	s->tw = (__u64)tw;
	s->substate = BPF_CORE_READ(tw, tw_substate);
}

static __always_inline void check_substate(void)
{
	__u32 z = 0;
	struct tw_stash *s = bpf_map_lookup_elem(&stash, &z);
	const struct inet_timewait_sock *tw;

	if (!s || !s->tw)
		return;
	tw = (const struct inet_timewait_sock *)s->tw;
	s->tw = 0;
	if (s->substate == TCP_FIN_WAIT2 && tw_is_time_wait(tw))
		count_tw(&tw->__tw_common, TW_CREATED);
}

SEC("fentry/tcp_timewait_state_process")
int BPF_PROG(tw_process_fentry, struct inet_timewait_sock *tw)
{
	stash_substate(tw);
	return 0;
}

SEC("fexit/tcp_timewait_state_process")
int BPF_PROG(tw_process_fexit, struct inet_timewait_sock *tw)
{
	check_substate();
	return 0;
}

SEC("kprobe/tcp_timewait_state_process")
int BPF_KPROBE(tw_process_kprobe, struct inet_timewait_sock *tw)
{
	stash_substate(tw);
	return 0;
}

SEC("kretprobe/tcp_timewait_state_process")
int BPF_KRETPROBE(tw_process_kretprobe)
{
	check_substate();
	return 0;
}

/* The TIME_WAIT timer: tw_timer_handler(&tw->tw_timer). */
static __always_inline void on_timer(const void *timer)
{
	const struct inet_timewait_sock *tw;

	tw = (const void *)timer - bpf_core_field_offset(struct inet_timewait_sock, tw_timer);
	if (tw_is_time_wait(tw))
		count_tw(&tw->__tw_common, TW_EXPIRED);
}

SEC("fentry/tw_timer_handler")
int BPF_PROG(tw_timer_fentry, struct timer_list *t)
{
	on_timer(t);
	return 0;
}

SEC("kprobe/tw_timer_handler")
int BPF_KPROBE(tw_timer_kprobe, struct timer_list *t)
{
	on_timer(t);
	return 0;
}

/* Ended before its timer: reused by connect() (tcp_tw_reuse), or killed by
 * an RST or a new SYN. */
SEC("fentry/inet_twsk_deschedule_put")
int BPF_PROG(tw_kill_fentry, struct inet_timewait_sock *tw)
{
	if (tw_is_time_wait(tw))
		count_tw(&tw->__tw_common, TW_KILLED);
	return 0;
}

SEC("kprobe/inet_twsk_deschedule_put")
int BPF_KPROBE(tw_kill_kprobe, struct inet_timewait_sock *tw)
{
	if (tw_is_time_wait(tw))
		count_tw(&tw->__tw_common, TW_KILLED);
	return 0;
}
