// SPDX-License-Identifier: GPL-2.0
/* nettrace redirect: a safe sockops/sk_msg short-cut for loopback TCP.
 *
 * redirect_sockops puts established loopback TCP sockets (both ends under
 * the cgroup, both selected) in sock_hash, keyed by network namespace cookie
 * and 4-tuple. redirect_msg hands a send straight to the peer's receive queue
 * only when that cannot lose or reorder data; every other send returns
 * SK_PASS (plain TCP) and is counted with its reason:
 *   - draining: `disable` is running;
 *   - no_peer: the peer is not in the map (other cgroup, not selected, gone);
 *   - peer_closing: the peer is not ESTABLISHED or shut down for reading;
 *   - tcp_unread: the peer has not read every byte we sent through TCP, so a
 *     redirected message would overtake it;
 *   - peer_unproven: the peer has not yet read anything through recvmsg, so
 *     it may read with splice, which cannot see redirected data;
 *   - peer_spliced: the peer's owner called splice(2) on it;
 *   - peer_full: the peer's unread redirected bytes would exceed its
 *     SO_RCVBUF (backpressure: TCP then blocks the sender as usual);
 *   - no_queue_info: this kernel's sk_psock has no msg_tot_len to bound the
 *     queue with;
 *   - bulk: this socket sent more than bulk_bytes since its peer last sent
 *     anything: a one-way bulk flow, which TCP carries faster. It stays on
 *     TCP from then on (never back to redirect), and leaves sock_hash as
 *     soon as that cannot drop data (see leave), so that its sends no
 *     longer take the sk_msg path at all;
 *   - peer_leaving: the peer is a bulk sender leaving sock_hash;
 *   - comm: --comm is set and the task sending now, or the task that last
 *     sent on the peer socket, has another comm (or the peer never sent).
 *   - internal: a helper failed.
 */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "bpf_endian.h"
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

#define MAX_PORTS 16
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define RCV_SHUTDOWN 1
#define SK_USER_DATA_PTRMASK (~7UL)

/* Ports selected by --ports (host byte order); n_ports == 0 selects all. */
const volatile __u16 sel_ports[MAX_PORTS] = {};
const volatile __u32 n_ports = 0;
/* A socket that sends more than this many bytes without its peer sending
 * anything back is a bulk flow: it stays on TCP. 0 = no limit. */
const volatile __u64 bulk_bytes = 0;
/* --comm: redirect only between sockets whose senders have this comm. */
const volatile char sel_comm[16] = {};
const volatile __u32 has_comm = 0;

/* One end of a connection: addresses as IPv6 (IPv4 mapped), host-order ports. */
struct sk_key {
	__u64 netns;
	__u8 laddr[16];
	__u8 raddr[16];
	__u32 lport;
	__u32 rport;
};

/* What redirect_pending reports per socket in sock_hash. */
struct pending_rec {
	struct sk_key key;
	__u32 queued; /* unread redirected bytes; ~0 when unknown */
	__u32 state;
	__u64 cookie;
};

struct redir_config {
	__u32 draining;
	__u32 pad;
};

enum redir_stat {
	ST_REDIR_MSGS,
	ST_REDIR_BYTES,
	ST_PASS_MSGS,
	ST_PASS_BYTES,
	ST_MISS_DRAINING,
	ST_MISS_NO_PEER,
	ST_MISS_PEER_CLOSING,
	ST_MISS_TCP_UNREAD,
	ST_MISS_PEER_UNPROVEN,
	ST_MISS_PEER_SPLICED,
	ST_MISS_PEER_FULL,
	ST_MISS_NO_QUEUE_INFO,
	ST_MISS_BULK,
	ST_MISS_COMM,
	ST_MISS_INTERNAL,
	ST_MISS_PEER_LEAVING,
	ST_SOCK_ADDED,
	ST_SOCK_ADD_FAILED,
	ST_SOCK_NOT_ADDED_DRAINING,
	ST_SPLICE_MARKED,
	ST_SPLICE_MARK_FAILED,
	ST_SPLICE_STRANDED,
	ST_SPLICE_STRANDED_BYTES,
	ST_SOCK_LEFT_BULK,    /* bulk senders taken out of sock_hash */
	ST_LEAVE_DEFERRED,    /* a leave put off: the peer was handing us a message, or ours were unread */
	ST_PEER_LEFT,         /* peers of bulk senders taken out with them */
	ST_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct sk_key);
	__type(value, __u64);
} sock_hash SEC(".maps");

/* Sockets whose owner called splice(2) on them: never redirect to them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sk_key);
	__type(value, __u8);
} spliced SEC(".maps");

/* Where each socket of sock_hash lives, so redirect_msg can read its peer's
 * state (sk_msg programs may not look sockets up and release them). The
 * cookie proves the memory still holds that socket. */
struct sockref {
	__u64 addr;
	__u64 cookie;
	__u64 unanswered; /* bytes this socket sent since its peer last sent */
	__u32 bulk;       /* sent more than bulk_bytes unanswered: TCP for good */
	__u32 comm_ok;    /* the task that last sent on it had comm sel_comm */
	/* Leaving sock_hash (bulk senders; see leave): */
	__u64 inflight;   /* redirects this socket decided whose sendmsg has not returned */
	__u64 leaving;    /* set once: its peer must not redirect to it any more */
	__u64 left;       /* taken out of sock_hash */
};

/* Per thread inside sendmsg: the socket it redirected from and how many
 * redirects it decided there, until sock_send_length sees the call return
 * (the messages are in the peer's queue by then). */
struct sending {
	struct sk_key key;
	__u64 cookie;
	__u64 n;
};

/* In the thread's task storage: the entry stays after the call (n = 0). */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sending);
} sending SEC(".maps");

/* The same per thread, keyed by thread id, where sk_msg programs cannot
 * use task storage (msg_task_storage false). An entry of an exited thread
 * stays until the LRU evicts it; evicting a thread's entry inside sendmsg
 * loses its count, so its peer never leaves (the safe side). User space
 * shrinks it to one entry when unused. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct sending);
} sending_tid SEC(".maps");

/* Whether sk_msg programs may call bpf_task_storage_get (6.16+). */
const volatile bool msg_task_storage = true;

/* Whether bulk senders leave sock_hash: needs the sock_send_length
 * tracepoint (6.4+) to know when a peer's redirect is done. */
const volatile bool leave_bulk = false;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sk_key);
	__type(value, struct sockref);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct redir_config);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 i, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &i);

	if (v)
		*v += n;
}

static __always_inline int draining(void)
{
	__u32 zero = 0;
	struct redir_config *c = bpf_map_lookup_elem(&settings, &zero);

	return !c || c->draining;
}

static __always_inline void set_v4(__u8 *dst, __u32 ip)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &ip, 4);
}

/* set_v6 copies an IPv6 address out of a context, one 32-bit load at a
 * time as the verifier wants. */
#define set_v6(dst, ctx, field)                         \
	do {                                                \
		__u32 *_d = (__u32 *)(dst);                     \
		_d[0] = ctx->field[0];                          \
		barrier_var(_d);                                \
		_d[1] = ctx->field[1];                          \
		barrier_var(_d);                                \
		_d[2] = ctx->field[2];                          \
		barrier_var(_d);                                \
		_d[3] = ctx->field[3];                          \
	} while (0)

static __always_inline int is_loopback(const __u8 *a)
{
	int i;

	for (i = 0; i < 10; i++)
		if (a[i])
			return 0;
	if (a[10] == 0xff && a[11] == 0xff)
		return a[12] == 127;
	if (a[10] || a[11] || a[12] || a[13] || a[14])
		return 0;
	return a[15] == 1;
}

static __always_inline int selected(__u32 lport, __u32 rport)
{
	int i;

	if (n_ports == 0)
		return 1;
	for (i = 0; i < MAX_PORTS; i++) {
		if (i >= n_ports)
			break;
		if (sel_ports[i] == lport || sel_ports[i] == rport)
			return 1;
	}
	return 0;
}

static __always_inline void peer_of(const struct sk_key *k, struct sk_key *p)
{
	p->netns = k->netns;
	__builtin_memcpy(p->laddr, k->raddr, 16);
	__builtin_memcpy(p->raddr, k->laddr, 16);
	p->lport = k->rport;
	p->rport = k->lport;
}

/* sk_psock as Linux 6.18 has it; older kernels lack msg_tot_len. */
struct sk_psock___tot {
	__u32 msg_tot_len;
} __attribute__((preserve_access_index));

/* psock_queued returns the unread redirected bytes of a socket, or -1 when
 * this kernel cannot tell. */
static __always_inline long psock_queued(void *user_data)
{
	struct sk_psock___tot *ps = (void *)((unsigned long)user_data & SK_USER_DATA_PTRMASK);

	if (!bpf_core_field_exists(ps->msg_tot_len))
		return -1;
	if (!ps)
		return 0;
	return BPF_CORE_READ(ps, msg_tot_len);
}

/* take_peer_out runs once a bulk sender (key) is out of sock_hash. Its peer
 * gains nothing from staying in: the sender redirects no more, and the
 * peer's redirects to it fall back to TCP; but it pays on every read
 * (tcp_bpf_recvmsg looks at its redirected queue before TCP's). So the
 * peer is taken out too, once no redirect of the sender's is on its way to
 * it (the sender's sk_msg no longer runs; inflight counts what it decided
 * before) and its redirected queue is read: the TCP data behind it then
 * comes in order. true when nothing is left to do. */
static __always_inline bool take_peer_out(const struct sk_key *key, struct sockref *mine)
{
	struct sk_key peer_key;
	struct sockref *peer;
	struct sock *sk;
	long queued;

	peer_of(key, &peer_key);
	peer = bpf_map_lookup_elem(&socks, &peer_key);
	if (!peer || peer->left)
		return true;
	if (*(volatile __u64 *)&mine->inflight) {
		count(ST_LEAVE_DEFERRED, 1);
		return false;
	}
	sk = (void *)peer->addr;
	queued = psock_queued(BPF_CORE_READ(sk, sk_user_data));
	/* Read last: the memory still held the peer while we read it. */
	if (BPF_CORE_READ(sk, __sk_common.skc_cookie.counter) != peer->cookie)
		return true;
	if (queued != 0) {
		count(ST_LEAVE_DEFERRED, 1);
		return false;
	}
	if (bpf_map_delete_elem(&sock_hash, &peer_key))
		return true; /* already out: closed */
	peer->left = 1;
	count(ST_PEER_LEFT, 1);
	return true;
}

/* leave takes a bulk sender (key), which redirect_msg marked leaving so
 * that its peer redirects no more to it, out of sock_hash, so that its
 * sends stop taking the sk_msg path. It runs on an ACK of its TCP data
 * (sockops may delete from sock_hash; sk_msg may not). Taking a socket out
 * drops its psock with whatever redirected data it has not read, and a
 * message a peer is redirecting to it at that moment: so it leaves only
 * when its peer has no redirect under way (hold_peer) and its redirected
 * queue is empty; else at a later ACK. Once out, it takes its peer out
 * (take_peer_out), then asks for no more RTT callbacks. */
static __always_inline void leave(struct bpf_sock_ops *skops, const struct sk_key *key)
{
	struct sk_key peer_key;
	struct sockref *mine, *peer;
	struct tcp_sock *tp;
	struct bpf_sock *sk;
	long queued;

	mine = bpf_map_lookup_elem(&socks, key);
	if (!mine || !mine->leaving)
		return;
	if (mine->left)
		goto peer;
	peer_of(key, &peer_key);
	peer = bpf_map_lookup_elem(&socks, &peer_key);
	/* leaving was set by an atomic in an earlier sk_msg run: this load
	 * comes after it. */
	if (peer && *(volatile __u64 *)&peer->inflight) {
		count(ST_LEAVE_DEFERRED, 1);
		return;
	}
	sk = skops->sk;
	if (!sk)
		return;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	queued = psock_queued(tp->inet_conn.icsk_inet.sk.sk_user_data);
	if (queued != 0) {
		count(ST_LEAVE_DEFERRED, 1);
		return;
	}
	if (bpf_map_delete_elem(&sock_hash, key))
		return;
	mine->left = 1;
	count(ST_SOCK_LEFT_BULK, 1);
peer:
	/* Then its peer, at this or a later ACK; then no more callbacks. */
	if (take_peer_out(key, mine))
		bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
}

SEC("sockops")
int redirect_sockops(struct bpf_sock_ops *skops)
{
	struct sk_key key = {};
	struct sockref ref;
	struct bpf_sock *sk;
	__u32 op = skops->op;

	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_STATE_CB && op != BPF_SOCK_OPS_RTT_CB)
		return 1;
	if (skops->family == AF_INET) {
		set_v4(key.laddr, skops->local_ip4);
		set_v4(key.raddr, skops->remote_ip4);
	} else if (skops->family == AF_INET6) {
		set_v6(key.laddr, skops, local_ip6);
		set_v6(key.raddr, skops, remote_ip6);
	} else {
		return 1;
	}
	key.netns = bpf_get_netns_cookie(skops);
	key.lport = skops->local_port;
	key.rport = bpf_ntohl(skops->remote_port);

	if (op == BPF_SOCK_OPS_RTT_CB) {
		leave(skops, &key);
		return 1;
	}
	if (op == BPF_SOCK_OPS_STATE_CB) {
		/* The kernel removes closed sockets from sock_hash itself. */
		if (skops->args[1] == BPF_TCP_CLOSE) {
			bpf_map_delete_elem(&spliced, &key);
			bpf_map_delete_elem(&socks, &key);
		}
		return 1;
	}
	if (!is_loopback(key.laddr) || !is_loopback(key.raddr) || !selected(key.lport, key.rport))
		return 1;
	if (draining()) {
		count(ST_SOCK_NOT_ADDED_DRAINING, 1);
		return 1;
	}
	sk = skops->sk;
	if (!sk)
		return 1;
	__builtin_memset(&ref, 0, sizeof(ref));
	ref.addr = (__u64)sk;
	ref.cookie = bpf_get_socket_cookie(skops);
	/* RTT: an ACK of TCP data, when a bulk sender may leave sock_hash. */
	bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG | (leave_bulk ? BPF_SOCK_OPS_RTT_CB_FLAG : 0));
	if (bpf_map_update_elem(&socks, &key, &ref, BPF_NOEXIST)) {
		count(ST_SOCK_ADD_FAILED, 1);
		return 1;
	}
	if (bpf_sock_hash_update(skops, &sock_hash, &key, BPF_NOEXIST)) {
		bpf_map_delete_elem(&socks, &key);
		count(ST_SOCK_ADD_FAILED, 1);
		return 1;
	}
	count(ST_SOCK_ADDED, 1);
	return 1;
}

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/* check_peer returns 0 when a message of size bytes may go to the peer,
 * else the stat of the reason it may not. write_seq is the sender's.
 *
 * It reads the peer's socket through bpf_rdonly_cast (6.2+; every kernel
 * with msg_tot_len has it): plain loads that the JIT makes fault-safe, where
 * eight probe_read helper calls cost about 100 ns per send. */
static __always_inline __u32 check_peer(const struct sockref *ref, __u32 write_seq, __u32 size)
{
	struct tcp_sock *tp = bpf_rdonly_cast((void *)ref->addr, bpf_core_type_id_kernel(struct tcp_sock));
	struct sock *sk = (void *)tp;
	struct sk_psock___tot *ps;
	__u32 copied, queued_ok;
	__u64 received, ud;
	long queued = -1;
	int rcvbuf;

	if (sk->__sk_common.skc_state != BPF_TCP_ESTABLISHED || (sk->sk_shutdown & RCV_SHUTDOWN))
		return ST_MISS_PEER_CLOSING;
	copied = tp->copied_seq;
	received = tp->bytes_received;
	ud = (__u64)sk->sk_user_data & SK_USER_DATA_PTRMASK;
	if (bpf_core_field_exists(struct sk_psock___tot, msg_tot_len)) {
		queued = 0;
		if (ud) {
			ps = bpf_rdonly_cast((void *)ud, bpf_core_type_id_kernel(struct sk_psock___tot));
			queued = ps->msg_tot_len;
		}
	}
	rcvbuf = sk->sk_rcvbuf;
	/* Read last: the memory still held this socket while we read it. */
	asm volatile("" ::: "memory");
	if (sk->__sk_common.skc_cookie.counter != ref->cookie)
		return ST_MISS_PEER_CLOSING;
	/* Every byte we sent through TCP must have been read, or redirected
	 * data would overtake it. */
	if (copied != write_seq)
		return ST_MISS_TCP_UNREAD;
	/* The peer must have read TCP data (so it reads with recvmsg, or
	 * splice already marked it) before anything is redirected to it. */
	if (received == 0)
		return ST_MISS_PEER_UNPROVEN;
	if (queued < 0)
		return ST_MISS_NO_QUEUE_INFO;
	queued_ok = queued + size <= (long)rcvbuf;
	if (!queued_ok)
		return ST_MISS_PEER_FULL;
	return 0;
}

/* comm_selected says whether the current task's comm is sel_comm. sk_msg
 * runs in the sending task (sendmsg), unlike sockops' established
 * callbacks, which on loopback run in softirq on whatever task was
 * interrupted. It reads the comm through the task's BTF pointer: sk_msg
 * programs may not call bpf_get_current_comm before 6.16. */
static __always_inline int comm_selected(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	char c;
	int i;

#pragma unroll
	for (i = 0; i < 16; i++) {
		c = task->comm[i];
		if (c != sel_comm[i])
			return 0;
		if (!c)
			break;
	}
	return 1;
}

/* sending_get returns this thread's struct sending, creating it when
 * create is set; NULL when there is none or it cannot be made. */
static __always_inline struct sending *sending_get(bool create)
{
	struct sending zero = {};
	struct sending *s;
	__u32 tid;

	if (msg_task_storage)
		return bpf_task_storage_get(&sending, bpf_get_current_task_btf(), 0,
					    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	tid = (__u32)bpf_get_current_pid_tgid();
	s = bpf_map_lookup_elem(&sending_tid, &tid);
	if (s || !create)
		return s;
	bpf_map_update_elem(&sending_tid, &tid, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&sending_tid, &tid);
}

/* release takes a thread's finished redirects off its socket's count. */
static __always_inline void release(struct sending *s)
{
	struct sockref *r;

	if (!s->n)
		return;
	r = bpf_map_lookup_elem(&socks, &s->key);
	if (r)
		__sync_fetch_and_sub(&r->inflight, s->n);
	s->n = 0;
}

/* hold_peer counts a redirect this thread is about to make from mine (key)
 * to peer, unless the peer is leaving. The peer marked itself leaving with
 * an atomic before leave (sockops) reads our count, and we count with an
 * atomic before reading its mark: one of the two sides sees the other's,
 * so a peer never leaves with one of our messages on its way. 0, or the
 * reason not to redirect. */
static __always_inline __u32 hold_peer(const struct sk_key *key, struct sockref *mine, struct sockref *peer)
{
	struct sending *s;

	s = sending_get(true);
	if (!s)
		return ST_MISS_INTERNAL;
	if (s->cookie != mine->cookie) {
		/* Idle (n == 0), or this thread's earlier sendmsg, on
		 * another socket, returned unseen: its redirects are done. */
		release(s);
		s->key = *key;
		s->cookie = mine->cookie;
	}
	s->n++;
	/* A fully ordered atomic, then a plain load: the load cannot pass
	 * it (x86 locked instructions; BPF's fetch atomics are full
	 * barriers on every JIT). */
	__sync_fetch_and_add(&mine->inflight, 1);
	if (*(volatile __u64 *)&peer->leaving) {
		__sync_fetch_and_sub(&mine->inflight, 1);
		s->n--;
		return ST_MISS_PEER_LEAVING;
	}
	return 0;
}

SEC("sk_msg")
int redirect_msg(struct sk_msg_md *msg)
{
	struct sk_key key = {}, peer_key = {};
	struct sockref *ref, *mine;
	struct bpf_sock *sk;
	struct tcp_sock *me;
	__u32 size = msg->size, reason;

	if (draining()) {
		reason = ST_MISS_DRAINING;
		goto pass;
	}
	if (msg->family == AF_INET) {
		set_v4(key.laddr, msg->local_ip4);
		set_v4(key.raddr, msg->remote_ip4);
	} else {
		set_v6(key.laddr, msg, local_ip6);
		set_v6(key.raddr, msg, remote_ip6);
	}
	key.netns = bpf_get_netns_cookie(msg);
	key.lport = msg->local_port;
	key.rport = bpf_ntohl(msg->remote_port);
	peer_of(&key, &peer_key);

	if (bpf_map_lookup_elem(&spliced, &peer_key)) {
		reason = ST_MISS_PEER_SPLICED;
		goto pass;
	}
	reason = ST_MISS_INTERNAL;
	sk = msg->sk;
	if (!sk)
		goto pass;
	me = bpf_skc_to_tcp_sock(sk);
	if (!me)
		goto pass;
	ref = bpf_map_lookup_elem(&socks, &peer_key);
	if (!ref) {
		reason = ST_MISS_NO_PEER;
		goto pass;
	}
	mine = bpf_map_lookup_elem(&socks, &key);
	if (!mine)
		goto pass;
	/* We answer the peer: its run of one-way bytes ends. */
	ref->unanswered = 0;
	if (has_comm) {
		mine->comm_ok = comm_selected();
		if (!mine->comm_ok || !ref->comm_ok) {
			reason = ST_MISS_COMM;
			goto pass;
		}
	}
	if (bulk_bytes) {
		mine->unanswered += size;
		if (mine->bulk || mine->unanswered > bulk_bytes) {
			mine->bulk = 1;
			reason = ST_MISS_BULK;
			/* Its peer redirects no more to it: redirect_sockops
			 * takes it out of sock_hash at a later ACK. */
			if (leave_bulk && !mine->leaving)
				__sync_fetch_and_or(&mine->leaving, 1);
			goto pass;
		}
	}
	reason = check_peer(ref, me->write_seq, size);
	if (reason)
		goto pass;
	if (leave_bulk) {
		reason = hold_peer(&key, mine, ref);
		if (reason)
			goto pass;
	}
	if (bpf_msg_redirect_hash(msg, &sock_hash, &peer_key, BPF_F_INGRESS) != SK_PASS) {
		reason = ST_MISS_NO_PEER;
		goto pass;
	}
	count(ST_REDIR_MSGS, 1);
	count(ST_REDIR_BYTES, size);
	return SK_PASS;
pass:
	count(reason, 1);
	count(ST_PASS_MSGS, 1);
	count(ST_PASS_BYTES, size);
	return SK_PASS;
}

/* redirect_send_done sees a sendmsg return: the redirects the thread
 * decided in it are in the peer's queue, and the peer may leave. Sockets
 * without a psock (not in sock_hash) are skipped at the first load. */
SEC("tp_btf/sock_send_length")
int BPF_PROG(redirect_send_done, struct sock *sk, int ret, int flags)
{
	struct sending *s;

	if (!sk->sk_user_data)
		return 0;
	s = sending_get(false);
	if (!s || !s->n || s->cookie != sk->__sk_common.skc_cookie.counter)
		return 0;
	release(s);
	return 0;
}

struct splice_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 fd_in;
	__u64 off_in;
	__u64 fd_out;
	__u64 off_out;
	__u64 len;
	__u64 flags;
};

/* loopback_tcp returns the socket of file f when it is a loopback TCP
 * socket, with its sock_hash key in *key; NULL otherwise. */
static __always_inline struct sock *loopback_tcp(struct file *f, struct sk_key *key)
{
	struct socket *sock;
	struct sock *sk;
	__u16 family;

	if ((BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(f, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return NULL;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == AF_INET) {
		set_v4(key->laddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		set_v4(key->raddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	} else if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&key->laddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&key->raddr, sk, __sk_common.skc_v6_daddr);
	} else {
		return NULL;
	}
	if (!is_loopback(key->laddr) || !is_loopback(key->raddr))
		return NULL;
	key->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, net_cookie);
	key->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	key->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	return sk;
}

/* redirect_splice marks a loopback TCP socket that splice(2) reads from:
 * splice cannot see redirected data, so nothing is redirected to it again. */
SEC("tracepoint/syscalls/sys_enter_splice")
int redirect_splice(struct splice_args *ctx)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct sk_key key = {};
	struct file **fdarr, *f;
	struct sock *sk;
	unsigned int fd = ctx->fd_in, max;
	__u8 one = 1;
	long queued;

	max = BPF_CORE_READ(task, files, fdt, max_fds);
	if (fd >= max)
		return 0;
	fdarr = BPF_CORE_READ(task, files, fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fdarr[fd]) || !f)
		return 0;
	sk = loopback_tcp(f, &key);
	if (!sk)
		return 0;
	if (bpf_map_update_elem(&spliced, &key, &one, BPF_ANY))
		count(ST_SPLICE_MARK_FAILED, 1);
	else
		count(ST_SPLICE_MARKED, 1);
	queued = psock_queued(BPF_CORE_READ(sk, sk_user_data));
	if (queued > 0) {
		count(ST_SPLICE_STRANDED, 1);
		count(ST_SPLICE_STRANDED_BYTES, queued);
	}
	return 0;
}

/* pending_write writes socket sk's record (key, unread redirected bytes,
 * state, cookie) to the iterator's output. */
static __always_inline void pending_write(struct seq_file *seq, struct sock *sk, const struct sk_key *key)
{
	struct pending_rec r = {};
	long queued;

	r.key = *key;
	queued = psock_queued(BPF_CORE_READ(sk, sk_user_data));
	r.queued = queued < 0 ? ~0U : queued;
	r.state = BPF_CORE_READ(sk, __sk_common.skc_state);
	r.cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	bpf_seq_write(seq, &r, sizeof(r));
}

/* redirect_pending reports each socket in sock_hash with its unread
 * redirected bytes: disable waits for them to drain. */
SEC("iter/sockmap")
int redirect_pending(struct bpf_iter__sockmap *ctx)
{
	struct sock *sk = ctx->sk;
	void *k = ctx->key;
	struct sk_key key;

	/* Null-checked once, in registers: a second load from ctx would be
	 * a maybe-NULL pointer again to the verifier. */
	barrier_var(sk);
	if (!sk || !k)
		return 0;
	bpf_probe_read_kernel(&key, sizeof(key), k);
	pending_write(ctx->meta->seq, sk, &key);
	return 0;
}

/* redirect_pending_files reports every loopback TCP socket a task holds
 * open that has a psock (some socket map holds it), once per file
 * descriptor: the same records from the tasks' files, for kernels that
 * refuse map iterators. User space keeps those of sock_hash's sockets, by
 * cookie. */
SEC("iter/task_file")
int redirect_pending_files(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	struct sk_key key = {};
	struct sock *sk;

	if (!file)
		return 0;
	barrier_var(file);
	sk = loopback_tcp(file, &key);
	if (!sk || !BPF_CORE_READ(sk, sk_user_data))
		return 0;
	pending_write(ctx->meta->seq, sk, &key);
	return 0;
}

/* Keep these types in BTF for bpf2go. */
const struct pending_rec *unused_pending_rec __attribute__((unused));
const enum redir_stat *unused_redir_stat __attribute__((unused));
