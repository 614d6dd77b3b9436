// SPDX-License-Identifier: GPL-2.0
/* iter/tcp: one fixed-size record per TCP socket of the reader's network
 * namespace (listening, established, request and TIME_WAIT sockets), read
 * by internal/socktable. The first record of every read is a header with the
 * clock, so user space can turn timer expiries into durations. */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "bpf_endian.h"
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

#define SOCKTABLE_MAGIC 0x6e74736bU /* "ntsk" */

struct sock_header {
	__u32 magic;
	__u32 rec_size;
	__u64 jiffies;
	__u64 ktime_ns;
};

struct sock_rec {
	union addr saddr;
	union addr daddr;
	__u16 sport; /* host order */
	__u16 dport; /* host order */
	__u16 family;
	__u8 state;
	__u8 substate;     /* TIME_WAIT: FIN_WAIT2 or TIME_WAIT proper */
	__u32 rx_queue;    /* LISTEN: accept queue length; else unread bytes */
	__u32 tx_queue;    /* unacknowledged bytes */
	__u32 max_backlog; /* LISTEN: sk_max_ack_backlog */
	__u32 syn_queue;   /* LISTEN: request sockets (SYN_RECV) */
	__u32 uid;
	__u64 ino;         /* socket inode, to find the owning process */
	__u64 expires;     /* TIME_WAIT and request socks: timer expiry, jiffies */
	__u64 netns;       /* network namespace inode */
	__u64 sk;          /* kernel address of the socket, for BPF maps of other tracers */
};

/* Bit (1 << state) set for each TCP state to report; 0 reports every
 * socket. Written by user space before each read. A TIME_WAIT socket is
 * tested by its TCP_TIME_WAIT state whatever its substate. */
volatile __u32 state_mask SEC(".data.filter") = 0;

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* Force the record types into BTF for bpf2go -type. */
const struct sock_rec *unused_rec __attribute__((unused));
const struct sock_header *unused_hdr __attribute__((unused));

SEC("iter/tcp")
int dump_tcp(struct bpf_iter__tcp *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct sock_common *skc = ctx->sk_common;
	struct sock_rec r = {};
	__u32 mask;

	if (ctx->meta->seq_num == 0) {
		struct sock_header h = {
			.magic = SOCKTABLE_MAGIC,
			.rec_size = sizeof(struct sock_rec),
			.jiffies = bpf_jiffies64(),
			.ktime_ns = bpf_ktime_get_ns(),
		};
		bpf_seq_write(seq, &h, sizeof(h));
	}
	if (!skc)
		return 0;
	mask = state_mask;
	if (mask && !(mask & (1U << (skc->skc_state & 31))))
		return 0;

	r.family = skc->skc_family;
	r.state = skc->skc_state;
	r.sport = skc->skc_num;
	r.dport = bpf_ntohs(skc->skc_dport);
	/* Direct loads through the iterator's BTF pointer: no helper call. */
	r.netns = skc->skc_net.net->ns.inum;
	r.sk = (__u64)skc;
	if (r.family == AF_INET) {
		r.saddr.v4 = skc->skc_rcv_saddr;
		r.daddr.v4 = skc->skc_daddr;
	} else {
		BPF_CORE_READ_INTO(&r.saddr.v6, skc, skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&r.daddr.v6, skc, skc_v6_daddr.in6_u.u6_addr8);
	}

	if (r.state == TCP_TIME_WAIT) {
		/* Every timewait socket starts with its sock_common. Not through
		 * bpf_skc_to_tcp_timewait_sock: on 6.18 it returns NULL for the
		 * timewait sockets of accepted connections, whose timer and
		 * substate were then lost. */
		const struct inet_timewait_sock *tw = (const void *)skc;

		if (bpf_rdonly_cast) {
			/* 6.2+: a typed view, plain loads instead of probe reads. */
			tw = bpf_rdonly_cast(skc, bpf_core_type_id_kernel(struct inet_timewait_sock));
			r.expires = tw->tw_timer.expires;
			r.substate = tw->tw_substate;
		} else {
			r.expires = BPF_CORE_READ(tw, tw_timer.expires);
			r.substate = BPF_CORE_READ(tw, tw_substate);
		}
	} else if (r.state == TCP_NEW_SYN_RECV) {
		struct tcp_request_sock *req = bpf_skc_to_tcp_request_sock(skc);

		if (req)
			r.expires = BPF_CORE_READ(req, req.req.rsk_timer.expires);
	} else {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
		struct socket *sock;

		if (!tp)
			goto out;
		if (r.state == TCP_LISTEN) {
			r.rx_queue = BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_ack_backlog);
			r.max_backlog = BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_max_ack_backlog);
			r.syn_queue = BPF_CORE_READ(tp, inet_conn.icsk_accept_queue.qlen.counter);
		} else {
			__s32 rx = BPF_CORE_READ(tp, rcv_nxt) - BPF_CORE_READ(tp, copied_seq);

			r.rx_queue = rx > 0 ? rx : 0;
			r.tx_queue = BPF_CORE_READ(tp, write_seq) - BPF_CORE_READ(tp, snd_una);
		}
		r.uid = BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_uid.val);
		sock = BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_socket);
		if (sock)
			r.ino = BPF_CORE_READ((struct socket_alloc *)sock, vfs_inode.i_ino);
	}
out:
	bpf_seq_write(seq, &r, sizeof(r));
	return 0;
}

/* ---- sock_diag fallback: kernels without BTF of their own ---- */

/* Without iter/tcp, user space reads the sockets from sock_diag netlink,
 * which gives each socket's cookie but not its kernel address. The dump
 * saves every socket's cookie into its message with sock_diag_save_cookie
 * (user space aims these kprobes at __sock_gen_cookie or sock_gen_cookie
 * where that is inlined), making it first if the socket had none: these
 * kprobes, attached while user space dumps the listeners to learn the
 * addresses of new ones, record cookie -> address for the reading thread
 * alone. */

/* The reading thread's id; 0 when no read is under way. */
volatile __u32 diag_tid SEC(".data.diag") = 0;

/* The socket whose cookie is being made now, until the return. */
__u64 diag_sk = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, __u64);   /* socket cookie */
	__type(value, __u64); /* kernel address */
} diag_addrs SEC(".maps");

static __always_inline bool diag_reader(void)
{
	__u32 tid = diag_tid;

	return tid && (__u32)bpf_get_current_pid_tgid() == tid;
}

static __always_inline bool diag_record(__u64 skp)
{
	__u64 cookie = BPF_CORE_READ((struct sock *)skp, __sk_common.skc_cookie.counter);

	if (!cookie)
		return false;
	bpf_map_update_elem(&diag_addrs, &cookie, &skp, BPF_ANY);
	return true;
}

/* Entry: a socket that has its cookie already is recorded now. */
SEC("kprobe/sock_diag_save_cookie")
int BPF_KPROBE(diag_cookie, struct sock *sk)
{
	if (diag_reader() && !diag_record((__u64)sk))
		diag_sk = (__u64)sk;
	return 0;
}

/* Return: the cookie the call made, read from the socket (a call nested in
 * an interrupt on this thread may have taken diag_sk: that socket is then
 * missed, never paired with another's cookie). */
SEC("kretprobe/sock_diag_save_cookie")
int BPF_KRETPROBE(diag_cookie_ret)
{
	__u64 skp = diag_sk;

	if (!skp || !diag_reader())
		return 0;
	diag_sk = 0;
	diag_record(skp);
	return 0;
}
