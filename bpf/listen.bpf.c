// SPDX-License-Identifier: GPL-2.0
/* listen: per listening socket, what happens to SYNs and handshakes: accept
 * queue overflows (at the SYN and at the final ACK), SYN queue drops, SYN
 * cookies, SYN-ACK retransmits, accept queue and SYN queue peaks, and the
 * time from handshake done to accept() returning.
 *
 * Counters are keyed by the listener's kernel address. The tracepoint tier
 * has no program that gets the listener with the SYN, so user space fills
 * `listeners` ({netns, port, address} -> socket) from the iter/tcp table
 * and inet_sock_set_state adds listeners created in between. */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "bpf_endian.h"
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

#define NO_REASON 0xffffffffU

/* Network namespace inode to watch; 0 watches every namespace. */
const volatile __u32 targ_netns = 0;
/* SKB_DROP_REASON_TCP_LISTEN_OVERFLOW from the running kernel's BTF, or
 * NO_REASON when it lacks the value (before 6.15). */
const volatile __u32 reason_listen_overflow = NO_REASON;
/* SKB_DROP_REASON_NO_SOCKET: what cookie_v4_check and cookie_v6_check drop a
 * valid cookie ACK with when the listener made no child (accept queue
 * full, or no memory). Their addresses come from kallsyms. */
const volatile __u32 reason_no_socket = NO_REASON;
const volatile __u64 cookie4_start = 0;
const volatile __u64 cookie4_end = 0;
const volatile __u64 cookie6_start = 0;
const volatile __u64 cookie6_end = 0;
/* skb:kfree_skb passes the receiving socket (6.11+). */
const volatile bool has_rx_sk = false;
/* skb:consume_skb passes the caller's address (6.3+), and where
 * tcp_rcv_state_process lies, to keep only SYNs a listener consumed. */
const volatile bool has_consume_loc = false;
const volatile __u64 rcv_state_start = 0;
const volatile __u64 rcv_state_end = 0;
/* Address of reqsk_timer_handler: a request socket's first timer start
 * marks a SYN the listener admitted. 0 when kallsyms hides addresses. */
const volatile __u64 reqsk_timer_fn = 0;
/* Parameters of tcp_v4_syn_recv_sock, tcp_v6_syn_recv_sock and
 * inet_csk_accept in the running kernel's BTF (6 or 7; 4 or 2): an fexit
 * program finds the return value in the slot after them. */
const volatile __u32 syn_recv4_nargs = 0;
const volatile __u32 syn_recv6_nargs = 0;
const volatile __u32 accept_nargs = 0;
/* bpf_get_current_task_btf (5.11+); before it, the task's file table is
 * read with probe reads from bpf_get_current_task. */
const volatile bool has_task_btf = false;

/* Per listener, monotonic; user space takes deltas. */
struct counters {
	__u64 syn_overflows;  /* SYN dropped: accept queue full */
	__u64 ack_overflows;  /* final ACK dropped: accept queue full */
	__u64 syn_drops;      /* SYN dropped otherwise (SYN queue full without cookies, no memory) */
	__u64 ack_drops;      /* final ACK: no child socket for another reason */
	__u64 cookies;        /* SYN answered with a cookie */
	__u64 admitted;       /* SYN got a request socket */
	__u64 synack_retrans; /* SYN-ACK retransmits */
	__u64 accepts;        /* accept() returned a child we saw complete */
	struct hist accept_us; /* handshake done -> accept() returned */
};

struct lkey {
	__u32 netns;
	__u16 port;
	__u16 family;
	union addr addr;
};

struct peak_key {
	__u64 sk;
	__u32 gen;
	__u32 pad;
};

struct peak {
	__u32 acceptq;
	__u32 synq;
};

/* Per CPU: the SYN or final ACK being processed. SYNs to a listener are
 * processed in softirq without the socket lock, so nothing else of the
 * kind runs on this CPU between entry and exit. */
struct scratch {
	__u64 syn_sk;   /* listener the current SYN admitted to (timer), or entered (fentry) */
	__u64 ack_sk;   /* listener of the current syn_recv_sock (kprobe) */
	__u64 syn_skb;  /* the SYN of tcp_conn_request (kprobe) */
	__u64 ack_skb;  /* the final ACK of syn_recv_sock (kprobe) */
	__u32 admitted;
	__u32 full;     /* accept queue full at tcp_conn_request entry */
	__u32 synq_full;
	__u32 ack_full; /* accept queue full at syn_recv_sock entry (kprobe) */
	__u32 cookie;   /* the current SYN was answered with a cookie (cookie hook) */
	__u32 pad;
	__u64 child;          /* the child the last syn_recv_sock made (fentry, kprobe) */
	__u64 child_listener; /* and its listener, for the child's state change */
};

enum lost_idx {
	LOST_COUNTERS,   /* counters map full */
	LOST_PEAKS,      /* peaks map full */
	LOST_BORN,       /* born map full: accept latency not measured */
	LOST_UNKNOWN,    /* SYN to a listener not in `listeners` */
	LOST_LISTENERS,  /* listeners map full */
	LOST_EVENTS,     /* events ring buffer full */
	LOST_MAX,
};

/* One drop, for --events. */
struct event {
	__u64 ts_ns;
	__u64 sk;
	union addr saddr;
	__u16 sport;
	__u16 family;
	__u8 kind; /* 1 SYN overflow, 2 ACK overflow, 3 SYN drop, 4 ACK drop */
	__u8 pad[3];
};
const struct event *unused_event __attribute__((unused));

const volatile bool emit_events = false;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct lkey);
	__type(value, __u64);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct counters);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct peak_key);
	__type(value, struct peak);
} peak_map SEC(".maps");

/* A child whose handshake completed, until accept() or close. */
struct born {
	__u64 ts;       /* handshake done */
	__u64 listener; /* its listener, 0 when not in `listeners` */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct born);
} born SEC(".maps");

/* Listener being accepted on, by thread (accept sleeps). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} accepting SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LOST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Set by user space when the accept hook is given up (the tracepoint tier
 * without --syscalls): state_tp then keeps no handshake times. A map, not
 * a constant: the tier is known only after the programs load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} accept_off SEC(".maps");

/* Set by user space when the cookie hook attached (fentry or kprobe on
 * cookie_v4/v6_init_sequence): a refused SYN is then told from a cookie
 * by the kernel's own call, not by the queues. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} cookie_on SEC(".maps");

/* Peak generation: user space flips it, then reads and deletes the old one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline void count_lost(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&lost, &idx);

	if (v)
		(*v)++;
}

static __always_inline struct scratch *get_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&scratch, &zero);
}

/* 6.2+: a typed view of a kernel pointer, for plain loads instead of
 * probe-read calls (the verifier turns the call into a move). */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* A listener's fields. Its address comes from a map, the per-CPU scratch,
 * another object or a raw argument, so reading it takes a probe-read call
 * (30-40 ns each in this VM) unless bpf_rdonly_cast gives a typed view,
 * where plain loads do. t: the program type may call the kfunc (tp_btf,
 * fentry, fexit; kprobes read with probe-read calls). Listeners are
 * inet_connection_socks, which begin with their struct sock. */
#define TYPED(t) ((t) && bpf_rdonly_cast)
#define RO_ICSK(sk) ((const struct inet_connection_sock *)bpf_rdonly_cast((sk), bpf_core_type_id_kernel(struct inet_connection_sock)))
#define RO_SK(sk) ((const struct sock *)RO_ICSK(sk))
#define SK_READ(t, sk, field) (TYPED(t) ? RO_SK(sk)->field : BPF_CORE_READ((sk), field))

static __always_inline __u32 sk_netns(const struct sock *sk, bool t)
{
	if (TYPED(t))
		return RO_SK(sk)->__sk_common.skc_net.net->ns.inum;
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline bool netns_ok(__u32 ns)
{
	return !targ_netns || ns == targ_netns;
}

static __always_inline bool is_listener(const struct sock *sk, bool t)
{
	return SK_READ(t, sk, __sk_common.skc_state) == TCP_LISTEN;
}

static __always_inline bool acceptq_full(const struct sock *sk, bool t)
{
	return SK_READ(t, sk, sk_ack_backlog) > SK_READ(t, sk, sk_max_ack_backlog);
}

static __always_inline __u32 synq_len(const struct sock *sk, bool t)
{
	const struct inet_connection_sock *icsk = (const void *)sk;

	if (TYPED(t))
		return RO_ICSK(sk)->icsk_accept_queue.qlen.counter;
	return BPF_CORE_READ(icsk, icsk_accept_queue.qlen.counter);
}

static __always_inline struct counters *counters_of(__u64 sk)
{
	struct counters *c = bpf_map_lookup_elem(&stats, &sk);
	static const struct counters zero;

	if (c)
		return c;
	bpf_map_update_elem(&stats, &sk, &zero, BPF_NOEXIST);
	c = bpf_map_lookup_elem(&stats, &sk);
	if (!c)
		count_lost(LOST_COUNTERS);
	return c;
}

static __always_inline void update_peak(const struct sock *sk, bool t)
{
	__u32 zero = 0, *g = bpf_map_lookup_elem(&gen, &zero);
	struct peak_key k = { .sk = (__u64)sk };
	struct peak *p, np;

	if (!g)
		return;
	k.gen = *g & 1;
	np.acceptq = SK_READ(t, sk, sk_ack_backlog);
	np.synq = synq_len(sk, t);
	p = bpf_map_lookup_elem(&peak_map, &k);
	if (!p) {
		if (!bpf_map_update_elem(&peak_map, &k, &np, BPF_NOEXIST))
			return;
		/* Another CPU inserted the key first (EEXIST), or the map
		 * is full. */
		p = bpf_map_lookup_elem(&peak_map, &k);
		if (!p) {
			count_lost(LOST_PEAKS);
			return;
		}
	}
	if (np.acceptq > p->acceptq)
		p->acceptq = np.acceptq;
	if (np.synq > p->synq)
		p->synq = np.synq;
}

static __always_inline void emit(const struct sock *sk, __u8 kind, const union addr *saddr, __u16 sport, __u16 family)
{
	struct event *e;

	if (!emit_events)
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost(LOST_EVENTS);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->sk = (__u64)sk;
	e->kind = kind;
	e->family = family;
	e->sport = sport;
	__builtin_memcpy(&e->saddr, saddr, sizeof(e->saddr));
	bpf_ringbuf_submit(e, 0);
}

/* The peer of a SYN or ACK being received. */
static __always_inline void skb_peer(struct sk_buff *skb, union addr *a, __u16 *port, __u16 *family)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u8 ver = 0;
	__be16 sport = 0;

	bpf_probe_read_kernel(&ver, 1, head + nh);
	if ((ver >> 4) == 4) {
		*family = AF_INET;
		bpf_probe_read_kernel(&a->v4, 4, head + nh + offsetof(struct iphdr, saddr));
	} else {
		*family = AF_INET6;
		bpf_probe_read_kernel(a->v6, 16, head + nh + offsetof(struct ipv6hdr, saddr));
	}
	bpf_probe_read_kernel(&sport, 2, head + th + offsetof(struct tcphdr, source));
	*port = bpf_ntohs(sport);
}

static __always_inline void drop_event(const struct sock *sk, struct sk_buff *skb, __u8 kind)
{
	union addr a = {};
	__u16 port = 0, family = 0;

	if (!emit_events)
		return;
	if (skb)
		skb_peer(skb, &a, &port, &family);
	emit(sk, kind, &a, port, family);
}

/* A SYN the listener did not admit: why. The kernel checks, in order, the
 * SYN queue (cookies or drop), then the accept queue (overflow), then the
 * remaining SYN queue room without cookies. cookie: the cookie hook saw a
 * cookie sent (1) or none (0) for this SYN; -1 where it is not attached.
 * With cookies on, a SYN queue that is full leads to a cookie, so a SYN
 * refused without one overflowed the accept queue: the queue readings
 * around the kernel's lock-free check (entry and exit) are needed only
 * without that hook, or with cookies off. */
static __always_inline void syn_refused(const struct sock *sk, bool full, bool synq_full, struct sk_buff *skb, bool t, int cookie)
{
	struct counters *c = counters_of((__u64)sk);
	__u8 cookies, kind = 0;

	if (TYPED(t))
		cookies = RO_SK(sk)->__sk_common.skc_net.net->ipv4.sysctl_tcp_syncookies;
	else
		cookies = BPF_CORE_READ(sk, __sk_common.skc_net.net, ipv4.sysctl_tcp_syncookies);
	if (!c)
		return;
	if (cookie == 1) {
		c->cookies++;
	} else if (full || (cookie == 0 && cookies)) {
		c->syn_overflows++;
		kind = 1;
		update_peak(sk, t);
	} else if (cookie < 0 && cookies && (cookies == 2 || synq_full)) {
		c->cookies++;
	} else {
		c->syn_drops++;
		kind = 3;
	}
	if (kind)
		drop_event(sk, skb, kind);
}

static __always_inline bool synq_is_full(const struct sock *sk, bool t)
{
	return synq_len(sk, t) >= SK_READ(t, sk, sk_max_ack_backlog);
}

/* ---- SYN: fentry tier ---- */

SEC("fentry/tcp_conn_request")
int BPF_PROG(syn_enter_fentry, struct request_sock_ops *rsk_ops, const void *af_ops, struct sock *sk, struct sk_buff *skb)
{
	struct scratch *s = get_scratch();

	if (!s)
		return 0;
	s->syn_sk = 0;
	if (!netns_ok(sk_netns(sk, true)))
		return 0;
	s->syn_sk = (__u64)sk;
	s->syn_skb = (__u64)skb;
	s->admitted = 0;
	s->cookie = 0;
	s->full = acceptq_full(sk, true);
	s->synq_full = synq_is_full(sk, true);
	return 0;
}

static __always_inline void on_admit(const struct sock *sk)
{
	struct scratch *s = get_scratch();

	if (s && s->syn_sk == (__u64)sk)
		s->admitted = 1;
}

SEC("fentry/inet_csk_reqsk_queue_hash_add")
int BPF_PROG(syn_admit_fentry, struct sock *sk)
{
	on_admit(sk);
	return 0;
}

static __always_inline void syn_exit(struct sk_buff *skb, bool t)
{
	struct scratch *s = get_scratch();
	const struct sock *sk;
	struct counters *c;

	if (!s || !s->syn_sk)
		return;
	sk = (const struct sock *)s->syn_sk;
	s->syn_sk = 0;
	if (s->admitted) {
		c = counters_of((__u64)sk);
		if (c)
			c->admitted++;
		update_peak(sk, t);
		return;
	}
	/* The kernel checks the accept queue after our entry, without the
	 * listener's lock: a handshake completing on another CPU meanwhile
	 * can fill it (seen once in the 6.1 VM: an overflow counted as a SYN
	 * drop), and one doing so after the check makes it full at exit for
	 * a SYN answered with a cookie (seen too). The cookie hook settles
	 * both where cookies are on; else full at entry or exit counts. */
	__u32 zero = 0, *on = bpf_map_lookup_elem(&cookie_on, &zero);

	syn_refused(sk, s->full || acceptq_full(sk, t), s->synq_full, skb, t, on && *on ? (int)s->cookie : -1);
}

SEC("fexit/tcp_conn_request")
int BPF_PROG(syn_exit_fentry, struct request_sock_ops *rsk_ops, const void *af_ops, struct sock *sk, struct sk_buff *skb)
{
	syn_exit(skb, true);
	return 0;
}

/* ---- SYN: kprobe tier ---- */

SEC("kprobe/tcp_conn_request")
int BPF_KPROBE(syn_enter_kprobe, void *rsk_ops, void *af_ops, struct sock *sk, struct sk_buff *skb)
{
	struct scratch *s = get_scratch();

	if (!s)
		return 0;
	s->syn_sk = 0;
	if (!netns_ok(sk_netns(sk, false)))
		return 0;
	s->syn_sk = (__u64)sk;
	s->syn_skb = (__u64)skb; /* the caller frees it after we return */
	s->admitted = 0;
	s->cookie = 0;
	s->full = acceptq_full(sk, false);
	s->synq_full = synq_is_full(sk, false);
	return 0;
}

SEC("kprobe/inet_csk_reqsk_queue_hash_add")
int BPF_KPROBE(syn_admit_kprobe, struct sock *sk)
{
	on_admit(sk);
	return 0;
}

SEC("kretprobe/tcp_conn_request")
int BPF_KRETPROBE(syn_exit_kprobe)
{
	struct scratch *s = get_scratch();

	if (s)
		syn_exit((struct sk_buff *)s->syn_skb, false);
	return 0;
}

/* ---- SYN answered with a cookie (fentry, kprobe) ---- */

/* The cookie of the SYN that tcp_conn_request is processing on this CPU. */
static __always_inline void on_cookie(const struct sk_buff *skb)
{
	struct scratch *s = get_scratch();

	if (s && s->syn_sk && s->syn_skb == (__u64)skb)
		s->cookie = 1;
}

SEC("fentry/cookie_v4_init_sequence")
int BPF_PROG(cookie4_fentry, const struct sk_buff *skb)
{
	on_cookie(skb);
	return 0;
}

SEC("fentry/cookie_v6_init_sequence")
int BPF_PROG(cookie6_fentry, const struct sk_buff *skb)
{
	on_cookie(skb);
	return 0;
}

SEC("kprobe/cookie_v4_init_sequence")
int BPF_KPROBE(cookie4_kprobe, const struct sk_buff *skb)
{
	on_cookie(skb);
	return 0;
}

SEC("kprobe/cookie_v6_init_sequence")
int BPF_KPROBE(cookie6_kprobe, const struct sk_buff *skb)
{
	on_cookie(skb);
	return 0;
}

/* ---- SYN: tracepoint tier ---- */

/* A request socket's first timer start: its listener admitted the SYN
 * this CPU is processing. Re-arms (SYN-ACK retransmits) have num_timeout > 0. */
SEC("tp_btf/timer_start")
int BPF_PROG(syn_admit_tp, struct timer_list *timer)
{
	struct request_sock *req;
	struct scratch *s;
	struct sock *sk;

	if (!reqsk_timer_fn || (__u64)timer->function != reqsk_timer_fn)
		return 0;
	req = container_of(timer, struct request_sock, rsk_timer);
	if (bpf_rdonly_cast) {
		const struct request_sock *r = bpf_rdonly_cast(req, bpf_core_type_id_kernel(struct request_sock));

		if (BPF_CORE_READ_BITFIELD(r, num_timeout))
			return 0;
		sk = r->__req_common.skc_listener;
	} else {
		if (BPF_CORE_READ_BITFIELD_PROBED(req, num_timeout))
			return 0;
		sk = BPF_CORE_READ(req, __req_common.skc_listener);
	}
	if (!sk || !netns_ok(sk_netns(sk, true)))
		return 0;
	s = get_scratch();
	if (s) {
		s->syn_sk = (__u64)sk;
		s->admitted = 1;
	}
	return 0;
}

static __always_inline const struct sock *find_listener(__u32 ns, __u16 port, __u16 family, const union addr *daddr)
{
	struct lkey k = { .netns = ns, .port = port, .family = family };
	__u64 *v;

	__builtin_memcpy(&k.addr, daddr, sizeof(k.addr));
	v = bpf_map_lookup_elem(&listeners, &k);
	if (v)
		return (const struct sock *)*v;
	__builtin_memset(&k.addr, 0, sizeof(k.addr));
	v = bpf_map_lookup_elem(&listeners, &k);
	if (v)
		return (const struct sock *)*v;
	if (family == AF_INET) { /* an IPv6 wildcard listener takes IPv4 too */
		k.family = AF_INET6;
		v = bpf_map_lookup_elem(&listeners, &k);
		if (v)
			return (const struct sock *)*v;
	}
	return NULL;
}

/* A listener consumes every SYN it processed, admitted or not. */
SEC("tp_btf/consume_skb")
int BPF_PROG(syn_consume_tp, struct sk_buff *skb)
{
	unsigned char *head;
	__u16 nh, th, port, family;
	__u8 ver = 0, flags = 0;
	union addr daddr = {};
	const struct sock *sk;
	struct scratch *s;
	struct dst_entry *dst;
	__be16 dport = 0;
	__u32 ns;

	if (has_consume_loc) {
		__u64 loc = ctx[1];

		if (loc < rcv_state_start || loc >= rcv_state_end)
			return 0;
	}
	head = skb->head;
	th = skb->transport_header;
	if (bpf_rdonly_cast) {
		/* Byte 13 of the TCP header holds the flags. */
		const struct tcphdr *tcp = bpf_rdonly_cast(head + th, bpf_core_type_id_kernel(struct tcphdr));

		flags = ((const __u8 *)tcp)[13];
	} else if (bpf_probe_read_kernel(&flags, 1, head + th + 13)) {
		return 0;
	}
	if ((flags & 0x12) != 0x02) /* SYN without ACK */
		return 0;
	s = get_scratch();
	if (!s)
		return 0;
	if (s->syn_sk) {
		sk = (const struct sock *)s->syn_sk;
		s->syn_sk = 0;
		struct counters *c = counters_of((__u64)sk);
		if (c)
			c->admitted++;
		update_peak(sk, true);
		return 0;
	}
	/* skb->dev is cleared by now; the input route still names the device. */
	dst = (struct dst_entry *)(skb->_skb_refdst & ~1UL);
	ns = BPF_CORE_READ(dst, dev, nd_net.net, ns.inum);
	if (!netns_ok(ns))
		return 0;
	nh = skb->network_header;
	bpf_probe_read_kernel(&ver, 1, head + nh);
	if ((ver >> 4) == 4) {
		family = AF_INET;
		bpf_probe_read_kernel(&daddr.v4, 4, head + nh + offsetof(struct iphdr, daddr));
	} else {
		family = AF_INET6;
		bpf_probe_read_kernel(daddr.v6, 16, head + nh + offsetof(struct ipv6hdr, daddr));
	}
	bpf_probe_read_kernel(&dport, 2, head + th + offsetof(struct tcphdr, dest));
	port = bpf_ntohs(dport);
	sk = find_listener(ns, port, family, &daddr);
	if (!sk || !is_listener(sk, true) || SK_READ(true, sk, __sk_common.skc_num) != port) {
		count_lost(LOST_UNKNOWN);
		return 0;
	}
	syn_refused(sk, acceptq_full(sk, true), synq_is_full(sk, true), skb, true, -1);
	return 0;
}

/* ---- final ACK: no child socket ---- */

/* A final ACK that made no child. The kernel checks the accept queue
 * first thing, without the listener's lock: an accept() on another CPU can
 * drain it before our exit program looks. full: it was full at entry. */
static __always_inline void ack_failed(const struct sock *sk, struct sk_buff *skb, bool full, bool t)
{
	struct counters *c;

	if (!netns_ok(sk_netns(sk, t)))
		return;
	c = counters_of((__u64)sk);
	if (!c)
		return;
	if (full || acceptq_full(sk, t)) {
		c->ack_overflows++;
		update_peak(sk, t);
		drop_event(sk, skb, 2);
	} else {
		c->ack_drops++;
		drop_event(sk, skb, 4);
	}
}

/* syn_recv_sock made child for listener: the child's state change to
 * ESTABLISHED follows on this CPU (tcp_child_process), and takes its
 * listener from here rather than by address (SO_REUSEPORT siblings share
 * one). */
static __always_inline void note_child(__u64 child, __u64 listener)
{
	struct scratch *s = get_scratch();

	if (s) {
		s->child = child;
		s->child_listener = listener;
	}
}

/* Context slot i, loaded at a fixed offset: the verifier refuses a load
 * through a computed context pointer, which the compiler makes of a switch
 * over ctx[i]. */
#define CTX_SLOT(ctx, i) ({							\
	__u64 __v;								\
	asm volatile("%[v] = *(u64 *)(%[c] + %[off])"				\
		     : [v] "=r"(__v) : [c] "r"(ctx), [off] "i"((i) * 8));	\
	__v; })

/* An fexit program's return value: the context slot after the function's
 * nargs parameters (bpf_get_func_ret needs 5.17). nargs is a constant, so
 * the verifier walks one case only; user space keeps the fentry
 * alternative out where the count is none of these. */
static __always_inline __u64 fexit_ret(unsigned long long *ctx, __u32 nargs)
{
	switch (nargs) {
	case 2:
		return CTX_SLOT(ctx, 2);
	case 4:
		return CTX_SLOT(ctx, 4);
	case 6:
		return CTX_SLOT(ctx, 6);
	case 7:
		return CTX_SLOT(ctx, 7);
	}
	return 0;
}

/* syn_recv_sock entered for a final ACK: whether the accept queue is full
 * now, for its exit (the kernel's check comes first thing). */
static __always_inline void ack_enter(const struct sock *sk, struct sk_buff *skb, bool t)
{
	struct scratch *s = get_scratch();

	if (s) {
		s->ack_sk = (__u64)sk;
		s->ack_skb = (__u64)skb;
		s->ack_full = acceptq_full(sk, t);
	}
}

/* Whether the queue was full when syn_recv_sock entered for sk on this
 * CPU, and forget it. */
static __always_inline bool ack_was_full(const struct sock *sk)
{
	struct scratch *s = get_scratch();
	bool full;

	if (!s || s->ack_sk != (__u64)sk)
		return false;
	full = s->ack_full;
	s->ack_sk = 0;
	return full;
}

SEC("fentry/tcp_v4_syn_recv_sock")
int BPF_PROG(ack4_fentry, const struct sock *sk, struct sk_buff *skb)
{
	ack_enter(sk, skb, true);
	return 0;
}

/* tcp_v4_syn_recv_sock returned: no child (NULL) is a final ACK dropped. */
SEC("fexit/tcp_v4_syn_recv_sock")
int BPF_PROG(ack4_fexit, const struct sock *sk, struct sk_buff *skb)
{
	__u64 child = fexit_ret(ctx, syn_recv4_nargs);
	bool full = ack_was_full(sk);

	if (!child)
		ack_failed(sk, skb, full, true);
	else
		note_child(child, (__u64)sk);
	return 0;
}

SEC("fentry/tcp_v6_syn_recv_sock")
int BPF_PROG(ack6_fentry, const struct sock *sk, struct sk_buff *skb)
{
	ack_enter(sk, skb, true);
	return 0;
}

SEC("fexit/tcp_v6_syn_recv_sock")
int BPF_PROG(ack6_fexit, const struct sock *sk, struct sk_buff *skb)
{
	__u64 child = fexit_ret(ctx, syn_recv6_nargs);
	bool full = ack_was_full(sk);

	if (!child)
		ack_failed(sk, skb, full, true);
	else
		note_child(child, (__u64)sk);
	return 0;
}


static __always_inline void ack_exit(__u64 ret)
{
	struct scratch *s = get_scratch();
	__u64 sk;

	if (!s || !s->ack_sk)
		return;
	sk = s->ack_sk;
	s->ack_sk = 0;
	if (!ret)
		ack_failed((const struct sock *)sk, (struct sk_buff *)s->ack_skb, s->ack_full, false);
	else
		note_child(ret, sk);
}

SEC("kprobe/tcp_v4_syn_recv_sock")
int BPF_KPROBE(ack4_kprobe, const struct sock *sk, struct sk_buff *skb)
{
	ack_enter(sk, skb, false);
	return 0;
}

SEC("kretprobe/tcp_v4_syn_recv_sock")
int BPF_KRETPROBE(ack4_kretprobe, void *ret)
{
	ack_exit((__u64)ret);
	return 0;
}

SEC("kprobe/tcp_v6_syn_recv_sock")
int BPF_KPROBE(ack6_kprobe, const struct sock *sk, struct sk_buff *skb)
{
	ack_enter(sk, skb, false);
	return 0;
}

SEC("kretprobe/tcp_v6_syn_recv_sock")
int BPF_KRETPROBE(ack6_kretprobe, void *ret)
{
	ack_exit((__u64)ret);
	return 0;
}

/* The drop of a final ACK whose listener's accept queue was full; the
 * receiving socket is the listener. Needs the reason (6.15+) and rx_sk
 * (6.11+); user space counts what it cannot see as unattributed. */
SEC("tp_btf/kfree_skb")
int ack_kfree_tp(__u64 *ctx)
{
	const struct sock *sk;

	__u32 reason;
	__u64 loc;

	if (reason_listen_overflow == NO_REASON || !has_rx_sk)
		return 0;
	reason = (__u32)ctx[2];
	if (reason == reason_listen_overflow) {
		sk = (const struct sock *)ctx[3];
		if (!sk || !is_listener(sk, true) || !netns_ok(sk_netns(sk, true)))
			return 0;
		struct counters *c = counters_of((__u64)sk);
		if (!c)
			return 0;
		c->ack_overflows++;
		update_peak(sk, true);
		drop_event(sk, (struct sk_buff *)ctx[0], 2);
		return 0;
	}
	if (reason != reason_no_socket)
		return 0;
	loc = ctx[1];
	if (!((loc >= cookie4_start && loc < cookie4_end) || (loc >= cookie6_start && loc < cookie6_end)))
		return 0;
	sk = (const struct sock *)ctx[3];
	if (sk && is_listener(sk, true))
		ack_failed(sk, (struct sk_buff *)ctx[0], false, true);
	return 0;
}

/* ---- SYN-ACK retransmits (every tier) ---- */

/* t: sk is a tp_btf argument (typed loads); else probe reads. */
static __always_inline void on_synack(const struct sock *sk, bool t)
{
	struct counters *c;

	if (!netns_ok(sk_netns(sk, t)))
		return;
	c = counters_of((__u64)sk);
	if (c)
		c->synack_retrans++;
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(synack_tp, const struct sock *sk, const struct request_sock *req)
{
	on_synack(sk, true);
	return 0;
}

/* The same where the kernel has no BTF of its own for tp_btf. */
SEC("raw_tp/tcp_retransmit_synack")
int BPF_PROG(synack_raw_tp, const struct sock *sk, const struct request_sock *req)
{
	on_synack(sk, false);
	return 0;
}

static __always_inline void count_accept(__u64 listener, __u64 us)
{
	struct counters *c = counters_of(listener);

	if (!c)
		return;
	c->accepts++;
	hist_add(&c->accept_us, us);
}

/* ---- state changes (every tier): listeners, handshakes done, closes ---- */

/* t: sk is a tp_btf argument, plain loads with no probe-read calls; else
 * probe reads. */
static __always_inline void sk_lkey(const struct sock *sk, struct lkey *k, bool t)
{
	if (!t) {
		k->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
		k->port = BPF_CORE_READ(sk, __sk_common.skc_num);
		k->family = BPF_CORE_READ(sk, __sk_common.skc_family);
		if (k->family == AF_INET)
			k->addr.v4 = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		else
			BPF_CORE_READ_INTO(&k->addr.v6, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		return;
	}
	k->netns = sk->__sk_common.skc_net.net->ns.inum;
	k->port = sk->__sk_common.skc_num;
	k->family = sk->__sk_common.skc_family;
	if (k->family == AF_INET)
		k->addr.v4 = sk->__sk_common.skc_rcv_saddr;
	else
		__builtin_memcpy(&k->addr.v6, &sk->__sk_common.skc_v6_rcv_saddr, sizeof(k->addr.v6));
}

static __always_inline int on_set_state(const struct sock *sk, int oldstate, int newstate, bool t)
{
	__u32 zero = 0, *off = bpf_map_lookup_elem(&accept_off, &zero);
	bool timed = !(off && *off);
	struct lkey k = {};
	struct born b = {};
	__u64 skp = (__u64)sk;

	/* Most changes are none of ours: decide on the states first, and
	 * look before deleting (a lookup takes no bucket lock). */
	if (newstate == TCP_CLOSE) {
		if (oldstate == TCP_LISTEN) {
			sk_lkey(sk, &k, t);
			__u64 *v = bpf_map_lookup_elem(&listeners, &k);
			if (v && *v == skp)
				bpf_map_delete_elem(&listeners, &k);
		} else if (timed && bpf_map_lookup_elem(&born, &skp)) {
			bpf_map_delete_elem(&born, &skp);
		}
		return 0;
	}
	if (newstate != TCP_LISTEN && (oldstate != TCP_SYN_RECV || newstate != TCP_ESTABLISHED))
		return 0;
	if ((t ? sk->sk_protocol : BPF_CORE_READ(sk, sk_protocol)) != IPPROTO_TCP)
		return 0;
	sk_lkey(sk, &k, t);
	if (!netns_ok(k.netns))
		return 0;
	if (newstate == TCP_LISTEN) {
		if (bpf_map_update_elem(&listeners, &k, &skp, BPF_ANY))
			count_lost(LOST_LISTENERS);
		return 0;
	}
	/* A passive handshake is done: its child sits in the accept queue.
	 * Its listener is the one syn_recv_sock made it for, where the ack
	 * hook saw that (fentry, kprobe), else the one at its address. */
	struct scratch *s = get_scratch();
	const struct sock *l;

	if (s && s->child == skp) {
		l = (const struct sock *)s->child_listener;
		s->child = 0;
	} else
		l = find_listener(k.netns, k.port, k.family, &k.addr);
	if (l && is_listener(l, t)) {
		b.listener = (__u64)l;
		update_peak(l, t);
	}
	if (!timed)
		return 0;
	b.ts = bpf_ktime_get_ns();
	/* The child is queued before this state change: an accept() on
	 * another CPU can take (and graft) it first. That accept waited 0. */
	if (t ? sk->sk_socket : BPF_CORE_READ(sk, sk_socket)) {
		if (b.listener)
			count_accept(b.listener, 0);
		return 0;
	}
	if (bpf_map_update_elem(&born, &skp, &b, BPF_ANY))
		count_lost(LOST_BORN);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(state_tp, const struct sock *sk, int oldstate, int newstate)
{
	return on_set_state(sk, oldstate, newstate, true);
}

/* The same where the kernel has no BTF of its own for tp_btf. */
SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(state_raw_tp, const struct sock *sk, int oldstate, int newstate)
{
	return on_set_state(sk, oldstate, newstate, false);
}

/* ---- accept() ---- */

/* accept() returned child; listener 0 takes the one recorded at birth. */
static __always_inline void accepted(__u64 listener, __u64 child)
{
	struct born *b = bpf_map_lookup_elem(&born, &child);
	__u64 d;

	if (!b)
		return;
	d = (bpf_ktime_get_ns() - b->ts) / 1000;
	if (!listener)
		listener = b->listener;
	bpf_map_delete_elem(&born, &child);
	if (listener)
		count_accept(listener, d);
}

/* inet_csk_accept returned the child it took from sk's accept queue. */
SEC("fexit/inet_csk_accept")
int BPF_PROG(accept_fexit, struct sock *sk)
{
	__u64 ret = fexit_ret(ctx, accept_nargs);

	if (ret && netns_ok(sk_netns(sk, true)))
		accepted((__u64)sk, ret);
	return 0;
}

/* accept() grafts the child it took to the new socket, with bottom halves
 * off: no softirq runs inside this probe, so it makes the kernel skip no
 * SYN or final-ACK probe (the probes of inet_csk_accept run with them on).
 * The listener is the one recorded when the handshake was done. */
SEC("kprobe/security_sock_graft")
int BPF_KPROBE(accept_graft_kprobe, struct sock *sk)
{
	accepted(0, (__u64)sk);
	return 0;
}

SEC("kprobe/inet_csk_accept")
int BPF_KPROBE(accept_kprobe, struct sock *sk)
{
	__u64 id = bpf_get_current_pid_tgid(), skp = (__u64)sk;

	if (netns_ok(sk_netns(sk, false)))
		bpf_map_update_elem(&accepting, &id, &skp, BPF_ANY);
	return 0;
}

SEC("kretprobe/inet_csk_accept")
int BPF_KRETPROBE(accept_kretprobe, void *ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 *l = bpf_map_lookup_elem(&accepting, &id);

	if (!l)
		return 0;
	if (ret)
		accepted(*l, (__u64)ret);
	bpf_map_delete_elem(&accepting, &id);
	return 0;
}

/* Tracepoint tier: the return of accept4()/accept() gives the new fd; its
 * socket is the child whose handshake time state_tp recorded. */
struct sys_exit_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

/* The socket of fd, a descriptor accept() just returned (so a socket, and
 * within the table): one probe read after the typed walk to the table
 * (three more before 5.11), then typed loads (6.2+) or two more probe
 * reads. */
static __always_inline struct sock *fd_sock(long fd)
{
	struct file **fds;
	struct file *f = NULL;
	struct socket *sock = NULL;
	struct sock *sk = NULL;

	if (has_task_btf) {
		struct task_struct *task = bpf_get_current_task_btf();

		fds = task->files->fdt->fd;
	} else {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();

		fds = BPF_CORE_READ(task, files, fdt, fd);
	}
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return NULL;
	if (bpf_rdonly_cast) {
		struct file *tf = bpf_rdonly_cast(f, bpf_core_type_id_kernel(struct file));
		struct socket *ts = bpf_rdonly_cast(tf->private_data, bpf_core_type_id_kernel(struct socket));

		return ts->sk;
	}
	if (bpf_probe_read_kernel(&sock, sizeof(sock), &f->private_data) || !sock)
		return NULL;
	bpf_probe_read_kernel(&sk, sizeof(sk), &sock->sk);
	return sk;
}

static __always_inline void accept_exit(long fd)
{
	struct sock *sk;

	if (fd < 0)
		return;
	sk = fd_sock(fd);
	if (sk)
		accepted(0, (__u64)sk);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int accept4_exit_tp(struct sys_exit_args *ctx)
{
	accept_exit(ctx->ret);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int accept_exit_tp(struct sys_exit_args *ctx)
{
	accept_exit(ctx->ret);
	return 0;
}
