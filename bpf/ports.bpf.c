// SPDX-License-Identifier: GPL-2.0
/* nettrace ports: TCP connect() and ephemeral port allocation, per
 * destination.
 *
 * Every connect attempt gets an entry in `inflight` (keyed by the socket)
 * from the start of the connect to its outcome. The attempt is counted, with
 * its synchronous result, when the connect call returns (fexit/kretprobe of
 * tcp_v{4,6}_connect, or sys_exit_connect); an asynchronous result
 * (ECONNREFUSED, ETIMEDOUT after EINPROGRESS, or while a blocking connect
 * sleeps) is counted when the socket leaves SYN_SENT.
 *
 * Port allocation latency: fentry/kprobe tiers time __inet_hash_connect
 * itself. The tracepoint tier times from CLOSE -> SYN_SENT (set just before
 * the port search) to the first of SYN_SENT -> CLOSE/ESTABLISHED or the
 * return of connect(): the port search plus sending the SYN.
 *
 * Tracepoint tier cost: sys_enter_connect only notes the call in task
 * storage (no user memory, no fd walk); the attempt opens at CLOSE ->
 * SYN_SENT in the connecting thread, where the socket already holds the
 * destination, and lives in that thread's storage, not in `inflight`;
 * sys_exit_connect takes the result. An attempt that leaves SYN_SENT in
 * the connecting thread (loopback and veth, blocking or not: the SYN-ACK is
 * processed before connect returns) or whose call returns its outcome
 * (blocking) never touches a hash map. Only an attempt still in SYN_SENT
 * when a non-blocking connect returns EINPROGRESS moves to `inflight`,
 * where the state change finds it. Only a connect that fails before
 * SYN_SENT (ENETUNREACH, EACCES, ...) resolves its fd and reads the user
 * sockaddr, at sys_exit.
 *
 * The tracepoint tier's default (state only, no syscall tracepoints) opens
 * the attempt at CLOSE -> SYN_SENT and counts it when the socket leaves
 * SYN_SENT. With tp_btf the attempt lives in `slots`, indexed by the
 * socket's cookie, and only falls back to `inflight` when its slot is
 * taken; the connecting process's name is looked up by process id when a
 * destination first needs it (bpf_task_from_pid, 6.2+) instead of copied
 * at every connect.
 *
 * Older kernels (user space chooses by probing): without task storage
 * (5.11+) `sysc` is a hash keyed by thread id (task_storage = 0). Without
 * BPF atomics (5.12+) user space loads the *_noatomics programs in place
 * of the others: the connect call's return and the state change, which the
 * socket lock serializes inside the call, set their flags with plain
 * writes, and after a non-blocking connect() returned, whichever of
 * sys_exit and the state change deletes the attempt from `inflight`
 * reports it; the state-only tier has no slots there (their claim is a
 * compare-and-swap) and keeps its attempts in `inflight`. */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "bpf_endian.h"
#include "common.h"

char LICENSE[] SEC("license") = "GPL";

#define EEXIST 17
#define EADDRNOTAVAIL 99
#define ECONNABORTED 103
#define ECONNRESET 104
#define EISCONN 106
#define ETIMEDOUT 110
#define ECONNREFUSED 111
#define EALREADY 114
#define EINPROGRESS 115
/* Kernel-internal: the system call is restarted after a signal handler. */
#define ERESTARTSYS 512
#define ERESTARTNOINTR 513
#define ERESTARTNOHAND 514
#define ERESTART_RESTARTBLOCK 516

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define SOCK_BINDPORT_LOCK 8

#define ERRNO_SLOTS 256

/* Filters, set from Go before loading. */
const volatile __u32 targ_tgid = 0;  /* 0: every process */
const volatile __u32 targ_netns = 0; /* network namespace inode; 0: every namespace */
const volatile char targ_comm[16] = {};
const volatile __u32 events_on = 0; /* send one event per connect to the ring buffer */
/* 0: no task storage (before 5.11): `sysc` is a hash keyed by thread id. */
const volatile __u32 task_storage = 1;

/* A destination as reached by one process. */
struct proc_key {
	struct dest_key dest;
	__u32 tgid;
};

/* Figures per destination and process (one map, so one lookup per
 * connect); user space sums the per-CPU copies and the processes. */
struct dest_stats {
	__u64 connects;
	__u64 eaddrnotavail;
	__u64 errors;      /* every other error */
	__u64 bound_first; /* connects on sockets bound to port 0 before connect() */
	__u64 lat_max_ns;
	struct hist lat;   /* port allocation latency, ns */
	char comm[16];     /* set in the process's context */
};

#define F_RETURNED 1    /* the connect call returned (EINPROGRESS or started) */
#define F_DONE 2        /* the socket left SYN_SENT */
#define F_ERR_COUNTED 4 /* the outcome was an error, counted at the state change */
#define F_INCALL 8      /* inside tcp_v{4,6}_connect */
#define F_BOUND0 16     /* the socket had a port from bind(port 0) */
#define F_STATE 32      /* opened at CLOSE -> SYN_SENT with no connect hook (state-only) */

/* One connect attempt in flight. */
struct conn {
	struct dest_key dest;
	__u32 tgid;
	__u64 start;   /* connect call entry (--events only, else 0) */
	__u64 born;    /* entry created (user space ages out lost attempts) */
	__u64 ts;      /* port search start */
	__u64 lat;     /* port allocation latency, ns; 0 until known */
	__u32 flags;   /* F_*, updated atomically */
	__s32 outcome; /* errno seen at the state change; 0 = established */
	__u32 fn;      /* 4 or 6: which tcp_vN_connect opened it (fentry/kprobe) */
	__u32 pad;
	char comm[16];
};

/* A tcp_v{4,6}_connect call in progress on a thread (kprobe tier). */
struct call {
	__u64 sk;
};

#define SC_INCALL 1  /* inside connect() */
#define SC_RESTART 2 /* connect() returned to be restarted after a signal */

/* The connect() system call of a thread (tracepoint tier), in task storage
 * (or the hash that stands in for it). */
struct sysc {
	__u64 sk;    /* the socket, once this call moved it to SYN_SENT */
	__u64 uaddr; /* user sockaddr, read only if the call fails before SYN_SENT */
	__u64 start; /* call entry (--events only, else 0) */
	__s32 fd;
	__u32 flags; /* SC_* */
	struct conn conn; /* the attempt, while sk is set */
	/* Hash only: the thread's start time (an entry left by a dead thread
	 * whose id was reused is not this thread's), and when the call
	 * began (user space ages out entries of threads killed in a call). */
	__u64 task_start;
	__u64 born;
};

/* One connect for --events. */
struct event {
	__u64 ts_ns; /* CLOCK_MONOTONIC at the outcome */
	__u64 lat_ns;
	__u64 connect_ns; /* connect call entry to outcome */
	struct dest_key dest;
	union addr saddr;
	__u16 sport;
	__u16 family;
	__u32 tgid;
	__s32 err; /* 0, or the errno of the outcome */
	__u32 flags;
	char comm[16];
};

enum drop_index {
	DROP_DESTS,
	DROP_INFLIGHT,
	DROP_CALLS,
	DROP_EVENTS,
	DROP_SLOTS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct proc_key);
	__type(value, struct dest_stats);
} dests SEC(".maps");

/* Not an LRU: recycling an LRU slot (delete or eviction) costs about 80 ns
 * more per connect than a hash delete. An attempt whose end is never seen (a
 * connect() interrupted for good by a signal or a kill) is aged out by user
 * space (born). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct conn);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct call);
} calls SEC(".maps");

/* The state-only tier's attempts (tp_btf), before `inflight`: a slot per
 * socket cookie (cookie & SLOT_MASK), claimed with one compare-and-swap of
 * the cookie. The verifier inlines the array lookup, where the hash's
 * insert, lookup and delete cost about 350 ns per connect here; an attempt whose slot is
 * taken goes to `inflight`. Cookies are never reused. User space reads the
 * slots through a memory mapping and frees lost ones with a
 * compare-and-swap of the cookie. */
#define SLOTS 4096
#define SLOT_MASK (SLOTS - 1)

struct att_slot {
	__u64 cookie; /* 0: free */
	struct conn conn;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct att_slot);
} slots SEC(".maps");

/* Task storage; without it (task_storage = 0) user space makes this a
 * preallocated hash keyed by thread id. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sysc);
} sysc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ERRNO_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} errnos SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Set from Go after attaching (index 0): 1 when no connect hook is
 * attached (the tracepoint tier without syscall tracepoints): the state
 * program then opens each attempt at CLOSE -> SYN_SENT and counts it when
 * the socket leaves SYN_SENT. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} state_only SEC(".maps");

/* Force the event types into BTF for bpf2go. */
const struct event *unused_event __attribute__((unused));
const struct proc_key *unused_proc_key __attribute__((unused));
const struct conn *unused_conn __attribute__((unused));
const struct att_slot *unused_slot __attribute__((unused));

static const struct dest_stats zero_stats;
static const struct sysc zero_sysc;

static __always_inline void drop(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&drops, &i);

	if (v)
		(*v)++;
}

static __always_inline bool pass_task(void)
{
	if (targ_tgid && (bpf_get_current_pid_tgid() >> 32) != targ_tgid)
		return false;
	if (targ_comm[0]) {
		char comm[16];

		bpf_get_current_comm(comm, sizeof(comm));
		for (int i = 0; i < 16; i++) {
			if (comm[i] != targ_comm[i])
				return false;
			if (!comm[i])
				break;
		}
	}
	return true;
}

/* RD reads a kernel field: a plain load through a BTF pointer (btf: tp_btf
 * and fentry programs), else bpf_probe_read_kernel. */
#define RD(btf, dst, expr)                                               \
	do {                                                             \
		if (btf)                                                 \
			(dst) = (expr);                                  \
		else                                                     \
			bpf_core_read(&(dst), sizeof(dst), &(expr));     \
	} while (0)

static __always_inline bool pass_sock(const struct sock *sk)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return false;
	if (BPF_CORE_READ(sk, sk_type) != SOCK_STREAM)
		return false;
	if (targ_netns && BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) != targ_netns)
		return false;
	return true;
}

/* sysc_get returns the current thread's connect() call (tracepoint tier),
 * making it when create: its task storage, or without task storage its
 * entry in the `sysc` hash (an entry of another thread that had the same
 * id is started afresh). */
static __always_inline struct sysc *sysc_get(bool create)
{
	struct task_struct *task;
	struct sysc *c;
	__u64 start;
	__u32 tid;

	if (task_storage)
		return bpf_task_storage_get(&sysc, bpf_get_current_task_btf(), 0,
					    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	tid = (__u32)bpf_get_current_pid_tgid();
	c = bpf_map_lookup_elem(&sysc, &tid);
	if (!c && !create)
		return NULL;
	task = (struct task_struct *)bpf_get_current_task();
	start = BPF_CORE_READ(task, start_time);
	if (c && c->task_start == start)
		return c;
	if (!create || bpf_map_update_elem(&sysc, &tid, &zero_sysc, BPF_ANY))
		return NULL;
	c = bpf_map_lookup_elem(&sysc, &tid);
	if (c)
		c->task_start = start;
	return c;
}

/* sysc_put ends the current thread's call: task storage keeps it for the
 * next call, the hash drops it. */
static __always_inline void sysc_put(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (!task_storage)
		bpf_map_delete_elem(&sysc, &tid);
}

/* read_dest fills d from a sockaddr in user or kernel memory; non-zero for
 * anything but AF_INET and AF_INET6. */
static __always_inline int read_dest(struct dest_key *d, const void *sa, bool user)
{
	struct {
		__u16 family;
		__u16 port;
		__u32 v4_or_flowinfo;
	} head;
	long err;

	if (user)
		err = bpf_probe_read_user(&head, sizeof(head), sa);
	else
		err = bpf_probe_read_kernel(&head, sizeof(head), sa);
	if (err)
		return -1;
	d->dport = bpf_ntohs(head.port);
	d->family = head.family;
	if (head.family == AF_INET) {
		d->daddr.v4 = head.v4_or_flowinfo;
		return 0;
	}
	if (head.family != AF_INET6)
		return -1;
	if (user)
		err = bpf_probe_read_user(d->daddr.v6, 16, sa + 8);
	else
		err = bpf_probe_read_kernel(d->daddr.v6, 16, sa + 8);
	return err ? -1 : 0;
}

static __always_inline bool bound_port0(const struct sock *sk)
{
	__u16 num = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u8 locks = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_userlocks);

	return num && !(locks & SOCK_BINDPORT_LOCK);
}

/* begin opens the in-flight entry of a connect on sk. */
static __always_inline int begin(__u64 skp, const struct sock *sk, const void *uaddr, bool user, __u32 fn, __u64 start)
{
	struct conn c = {};

	if (read_dest(&c.dest, uaddr, user))
		return -1;
	c.tgid = bpf_get_current_pid_tgid() >> 32;
	c.start = start;
	c.born = bpf_ktime_get_ns();
	c.fn = fn;
	c.flags = F_INCALL;
	if (bound_port0(sk))
		c.flags |= F_BOUND0;
	if (events_on)
		bpf_get_current_comm(c.comm, sizeof(c.comm));
	if (bpf_map_update_elem(&inflight, &skp, &c, BPF_ANY)) {
		drop(DROP_INFLIGHT);
		return -1;
	}
	return 0;
}

static __always_inline struct dest_stats *dest_get(const struct conn *e)
{
	struct proc_key k = {.dest = e->dest, .tgid = e->tgid};
	struct dest_stats *s = bpf_map_lookup_elem(&dests, &k);
	long err;

	if (s)
		return s;
	err = bpf_map_update_elem(&dests, &k, &zero_stats, BPF_NOEXIST);
	if (err && err != -EEXIST) {
		drop(DROP_DESTS);
		return NULL;
	}
	return bpf_map_lookup_elem(&dests, &k);
}

static __always_inline void count_errno(struct dest_stats *s, int err)
{
	__u32 slot = err < ERRNO_SLOTS ? err : ERRNO_SLOTS - 1;
	__u64 *v;

	if (s) {
		if (err == EADDRNOTAVAIL)
			s->eaddrnotavail++;
		else
			s->errors++;
	}
	v = bpf_map_lookup_elem(&errnos, &slot);
	if (v)
		(*v)++;
}

static __always_inline void emit(const struct conn *e, const struct sock *sk, int err)
{
	struct event *ev;
	__u64 now;

	if (!events_on)
		return;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		drop(DROP_EVENTS);
		return;
	}
	now = bpf_ktime_get_ns();
	ev->ts_ns = now;
	ev->lat_ns = e->lat;
	ev->connect_ns = now - e->start;
	ev->dest = e->dest;
	ev->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	ev->saddr.v6[0] = 0;
	if (ev->family == AF_INET6)
		BPF_CORE_READ_INTO(&ev->saddr.v6, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
	else
		ev->saddr.v4 = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
	ev->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	ev->tgid = e->tgid;
	ev->err = err;
	ev->flags = e->flags;
	__builtin_memcpy(ev->comm, e->comm, sizeof(ev->comm));
	bpf_ringbuf_submit(ev, 0);
}

/* 6.2+: the task of a thread group id (tracing programs). */
extern struct task_struct *bpf_task_from_pid(s32 pid) __ksym __weak;
extern void bpf_task_release(struct task_struct *p) __ksym __weak;

/* comm_of copies the name of process tgid (its main thread) into comm:
 * the connecting process's, for a destination seen first at an answer
 * that came in softirq under another task. */
static __always_inline void comm_of(char *comm, __u32 tgid)
{
	struct task_struct *task;

	if ((bpf_get_current_pid_tgid() >> 32) == tgid) {
		bpf_get_current_comm(comm, 16);
		return;
	}
	task = bpf_task_from_pid(tgid);
	if (!task)
		return;
	bpf_probe_read_kernel(comm, 16, task->comm);
	bpf_task_release(task);
}

/* account counts the attempt e of a connect call that returned with err
 * (positive), in the caller's context; by_pid: e has no name, look it up
 * by its process when a destination needs one (the state-only tier on
 * 6.2+, which then need not copy every connecting thread's name). */
static __always_inline void account(struct conn *e, int err, bool by_pid)
{
	struct dest_stats *s;

	if (e->ts && !e->lat)
		e->lat = bpf_ktime_get_ns() - e->ts;
	s = dest_get(e);
	if (s) {
		/* Created now, or at a state change in softirq: the name the
		 * attempt kept when it opened, else the caller's (in its thread). */
		if (!s->comm[0] && e->comm[0])
			__builtin_memcpy(s->comm, e->comm, sizeof(s->comm));
		else if (!s->comm[0] && by_pid)
			comm_of(s->comm, e->tgid);
		else if (!s->comm[0])
			bpf_get_current_comm(s->comm, sizeof(s->comm));
		s->connects++;
		if (e->flags & F_BOUND0)
			s->bound_first++;
		if (e->ts) {
			hist_add(&s->lat, e->lat);
			if (e->lat > s->lat_max_ns)
				s->lat_max_ns = e->lat;
		}
	}
	if (err && err != EINPROGRESS && !(e->flags & F_ERR_COUNTED))
		count_errno(s, err);
}

/* finish counts a connect call that returned ret, in the caller's context,
 * for an attempt in `inflight`. Without atomics the flags are set with a
 * plain write: a call that may still be connecting returns here from
 * tcp_v{4,6}_connect, inside the socket lock, which orders it against the
 * state change (sys_failed only comes with an error). */
static __always_inline int finish(__u64 skp, long ret, bool atomics)
{
	const struct sock *sk = (const struct sock *)skp;
	struct conn *e;
	int err = ret < 0 ? -ret : 0;
	__u32 old;

	e = bpf_map_lookup_elem(&inflight, &skp);
	if (!e)
		return 0;
	if (err == EALREADY || err == EISCONN) {
		/* Not a new attempt. */
		bpf_map_delete_elem(&inflight, &skp);
		return 0;
	}
	account(e, err, false);
	if (err == 0 || err == EINPROGRESS) {
		/* Exactly one of this and the state change sees the other's
		 * flag; F_DONE, once set, is final (no atomic needed then). */
		old = e->flags;
		if (!(old & F_DONE) && atomics)
			old = __sync_fetch_and_or(&e->flags, F_RETURNED);
		else if (!(old & F_DONE))
			e->flags = old | F_RETURNED;
		if (!(old & F_DONE))
			return 0;
		err = e->outcome;
	}
	emit(e, sk, err);
	bpf_map_delete_elem(&inflight, &skp);
	return 0;
}

/* sys_syn_sent opens the attempt of the connect() system call this thread
 * is in (tracepoint tier) as it moves sk to SYN_SENT, just before the port
 * search: the socket holds the destination by then, so nothing is read from
 * user memory. False when the thread is not in such a call. */
/* fill_conn fills a new attempt from sk as it moves to SYN_SENT, in the
 * connecting thread: the destination and bound port are in the socket by
 * then. False when sk is not one to trace (other namespace or family). */
static __always_inline bool fill_conn(struct conn *n, const struct sock *sk, bool btf)
{
	struct net *net;
	__u32 inum;
	__u16 num;
	__u8 locks;

	if (targ_netns) {
		RD(btf, net, sk->__sk_common.skc_net.net);
		RD(btf, inum, net->ns.inum);
		if (inum != targ_netns)
			return false;
	}
	__builtin_memset(n, 0, sizeof(*n));
	RD(btf, n->dest.family, sk->__sk_common.skc_family);
	RD(btf, n->dest.dport, sk->__sk_common.skc_dport);
	n->dest.dport = bpf_ntohs(n->dest.dport);
	if (n->dest.family == AF_INET)
		RD(btf, n->dest.daddr.v4, sk->__sk_common.skc_daddr);
	else if (n->dest.family == AF_INET6)
		bpf_core_read(n->dest.daddr.v6, 16, &sk->__sk_common.skc_v6_daddr);
	else
		return false;
	/* A port already, without SOCK_BINDPORT_LOCK: bind() to port 0. */
	RD(btf, num, sk->__sk_common.skc_num);
	if (num) {
		if (btf)
			locks = BPF_CORE_READ_BITFIELD(sk, sk_userlocks);
		else
			locks = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_userlocks);
		if (!(locks & SOCK_BINDPORT_LOCK))
			n->flags = F_BOUND0;
	}
	n->tgid = bpf_get_current_pid_tgid() >> 32;
	n->ts = bpf_ktime_get_ns();
	n->born = n->ts;
	return true;
}

static __always_inline bool sys_syn_sent(const struct sock *sk, bool btf)
{
	struct sysc *c = sysc_get(false);
	struct conn *n;

	if (!c || c->flags != SC_INCALL || c->sk)
		return false;
	n = &c->conn;
	if (!fill_conn(n, sk, btf))
		return true;
	n->start = c->start;
	if (events_on)
		bpf_get_current_comm(n->comm, sizeof(n->comm));
	c->sk = (__u64)sk;
	return true;
}

/* state_syn_sent opens an attempt in inflight as sk moves to SYN_SENT in
 * the connecting thread, when no connect hook is attached. atomics: claim
 * a slot first (tp_btf). */
static __always_inline void state_syn_sent(const struct sock *sk, bool btf, bool atomics)
{
	__u64 skp = (__u64)sk, cookie, old;
	struct att_slot *sl;
	struct conn n;
	__u32 i;

	if (!pass_task() || !fill_conn(&n, sk, btf))
		return;
	n.flags |= F_STATE;
	n.start = n.ts;
	/* The answer may come in softirq, under another task: keep the
	 * connecting task's name now for events, or where the answer cannot
	 * look it up by process (raw_tp, or no bpf_task_from_pid). Copying
	 * it costs about 60 ns per connect here. */
	if (events_on || !btf || !bpf_task_from_pid)
		bpf_get_current_comm(n.comm, sizeof(n.comm));
	if (btf && atomics) {
		cookie = bpf_get_socket_cookie((void *)sk);
		i = cookie & SLOT_MASK;
		sl = bpf_map_lookup_elem(&slots, &i);
		if (sl) {
			/* The slot's own cookie: this socket's earlier attempt,
			 * whose end was not seen; this one replaces it. */
			old = __sync_val_compare_and_swap(&sl->cookie, 0, cookie);
			if (old == 0 || old == cookie) {
				sl->conn = n;
				return;
			}
		}
	}
	if (bpf_map_update_elem(&inflight, &skp, &n, BPF_ANY))
		drop(DROP_INFLIGHT);
}

/* state_answer counts an attempt state_syn_sent opened as sk leaves
 * SYN_SENT: established; closed with sk_err (refused, unreachable, timed
 * out); closed before any segment went out, which is the port search (or,
 * rarely, the route) failing inside connect(): EADDRNOTAVAIL; or closed
 * after the SYN with no error: its owner closed it before an answer, a
 * connect without an error, as connect() itself counts it. */
static __always_inline void state_answer(struct conn *e, const struct sock *sk, int newstate, struct att_slot *sl, bool btf)
{
	__u64 skp = (__u64)sk;
	int err = 0;

	if (newstate == TCP_CLOSE) {
		err = BPF_CORE_READ(sk, sk_err);
		if (!err && !BPF_CORE_READ((struct tcp_sock *)sk, segs_out))
			err = EADDRNOTAVAIL;
	}
	account(e, err, btf && bpf_task_from_pid);
	emit(e, sk, err);
	if (sl)
		/* Free the slot after every read of it (a full barrier). */
		__sync_fetch_and_and(&sl->cookie, 0);
	else
		bpf_map_delete_elem(&inflight, &skp);
}

/* state_slot returns sk's slot when it holds sk's attempt (tp_btf). */
static __always_inline struct att_slot *state_slot(const struct sock *sk, bool btf, bool atomics)
{
	__u64 cookie;
	struct att_slot *sl;
	__u32 i;

	if (!btf || !atomics)
		return NULL;
	/* The cookie state_syn_sent had made: a plain load, not the helper. */
	cookie = sk->__sk_common.skc_cookie.counter;
	if (!cookie)
		return NULL;
	i = cookie & SLOT_MASK;
	sl = bpf_map_lookup_elem(&slots, &i);
	if (sl && sl->cookie == cookie)
		return sl;
	return NULL;
}

/* in_call_conn returns the attempt on sk that the current thread's connect
 * call holds in its storage (tracepoint tier): sk left SYN_SENT in the
 * connecting thread, before connect returned. NULL otherwise. */
static __always_inline struct conn *in_call_conn(__u64 skp)
{
	struct sysc *c = sysc_get(false);

	if (!c || c->sk != skp || !c->flags)
		return NULL;
	return &c->conn;
}

/* state_returned counts and reports, without atomics, an attempt whose
 * connect() had returned as sk leaves SYN_SENT with err (0: established):
 * sys_exit may hold the same attempt on another CPU, and whoever deletes
 * it from `inflight` reports it. The entry is copied first: a deleted
 * element can be taken again at once. */
static __always_inline void state_returned(const struct conn *e, const struct sock *sk, int err)
{
	__u64 skp = (__u64)sk;
	struct conn c = *e;

	if (c.ts && !c.lat)
		c.lat = bpf_ktime_get_ns() - c.ts;
	if (bpf_map_delete_elem(&inflight, &skp))
		return;
	if (err)
		count_errno(dest_get(&c), err);
	emit(&c, sk, err);
}

/* on_state follows a connecting socket's state changes. btf: sk is a BTF
 * pointer (plain loads); atomics: the kernel has BPF atomics. */
static __always_inline int on_state(const struct sock *sk, int oldstate, int newstate, bool btf, bool atomics)
{
	__u32 zero = 0, *so = bpf_map_lookup_elem(&state_only, &zero);
	__u64 skp = (__u64)sk;
	__u32 old, done;
	struct conn *e;
	int err;

	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
		if (so && *so) {
			state_syn_sent(sk, btf, atomics);
			return 0;
		}
		if (sys_syn_sent(sk, btf))
			return 0;
		e = bpf_map_lookup_elem(&inflight, &skp);
		if (e && !e->ts)
			e->ts = bpf_ktime_get_ns();
		return 0;
	}
	if (oldstate != TCP_SYN_SENT)
		return 0;
	if (so && *so) {
		struct att_slot *sl = state_slot(sk, btf, atomics);

		if (sl) {
			state_answer(&sl->conn, sk, newstate, sl, btf);
			return 0;
		}
		e = bpf_map_lookup_elem(&inflight, &skp);
		if (e && (e->flags & F_STATE))
			state_answer(e, sk, newstate, NULL, btf);
		return 0;
	}
	e = in_call_conn(skp);
	if (e) {
		/* In the connecting thread, inside its call: only this thread
		 * touches its storage, and sys_exit counts and reports. */
		if (e->ts && !e->lat)
			e->lat = bpf_ktime_get_ns() - e->ts;
		if (newstate == TCP_CLOSE) {
			err = BPF_CORE_READ(sk, sk_err);
			if (err) {
				count_errno(dest_get(e), err);
				e->outcome = err;
				e->flags |= F_ERR_COUNTED;
			}
		}
		e->flags |= F_DONE;
		return 0;
	}
	e = bpf_map_lookup_elem(&inflight, &skp);
	if (!e)
		return 0;
	err = 0;
	if (newstate == TCP_CLOSE) {
		err = BPF_CORE_READ(sk, sk_err);
		if (!err) {
			/* Inside connect: the port search or the SYN failed, and
			 * connect returns the error. After it returned: closed by
			 * its owner before an answer. */
			if (e->flags & F_RETURNED)
				bpf_map_delete_elem(&inflight, &skp);
			return 0;
		}
	}
	if (!atomics && (e->flags & F_RETURNED)) {
		state_returned(e, sk, err);
		return 0;
	}
	if (e->ts && !e->lat)
		e->lat = bpf_ktime_get_ns() - e->ts;
	done = F_DONE;
	if (err) {
		e->outcome = err;
		done |= F_ERR_COUNTED;
	}
	if (!atomics) {
		/* Inside the connect call (fentry, kprobe), under the socket
		 * lock: its return reports. */
		if (err)
			count_errno(dest_get(e), err);
		e->flags |= done;
		return 0;
	}
	/* The error is counted, and the attempt reported, by whichever of
	 * this and sys_exit sets F_DONE first; the call's return reports
	 * one that had not returned. */
	old = __sync_fetch_and_or(&e->flags, done);
	if (old & F_DONE)
		return 0;
	if (err)
		count_errno(dest_get(e), err);
	if (old & F_RETURNED) {
		emit(e, sk, err);
		bpf_map_delete_elem(&inflight, &skp);
	}
	return 0;
}

/* ---- state: socket state changes, every tier ---- */

/* Only CLOSE -> SYN_SENT and leaving SYN_SENT matter: test the states
 * (arguments) before reading the socket. */
static __always_inline bool connect_state(int oldstate, int newstate)
{
	return oldstate == TCP_SYN_SENT || (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT);
}

static __always_inline int state_fn(struct sock *sk, int state, bool atomics)
{
	int oldstate = sk->__sk_common.skc_state;

	if (!connect_state(oldstate, state))
		return 0;
	return on_state(sk, oldstate, state, true, atomics);
}

static __always_inline int state_tp(const struct sock *sk, int oldstate, int newstate, bool btf, bool atomics)
{
	__u16 proto;

	if (!connect_state(oldstate, newstate))
		return 0;
	RD(btf, proto, sk->sk_protocol);
	if (proto != IPPROTO_TCP)
		return 0;
	return on_state(sk, oldstate, newstate, btf, atomics);
}

/* Every program whose name ends in _noatomics is the one before it without
 * BPF atomics (before 5.12): user space loads it in that one's place. */

SEC("fentry/tcp_set_state")
int BPF_PROG(state_fentry, struct sock *sk, int state)
{
	return state_fn(sk, state, true);
}

SEC("fentry/tcp_set_state")
int BPF_PROG(state_fentry_noatomics, struct sock *sk, int state)
{
	return state_fn(sk, state, false);
}

SEC("kprobe/tcp_set_state")
int BPF_KPROBE(state_kprobe, struct sock *sk, int state)
{
	return on_state(sk, BPF_CORE_READ(sk, __sk_common.skc_state), state, false, true);
}

SEC("kprobe/tcp_set_state")
int BPF_KPROBE(state_kprobe_noatomics, struct sock *sk, int state)
{
	return on_state(sk, BPF_CORE_READ(sk, __sk_common.skc_state), state, false, false);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(state_tp_btf, const struct sock *sk, int oldstate, int newstate)
{
	return state_tp(sk, oldstate, newstate, true, true);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(state_tp_btf_noatomics, const struct sock *sk, int oldstate, int newstate)
{
	return state_tp(sk, oldstate, newstate, true, false);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(state_raw_tp, const struct sock *sk, int oldstate, int newstate)
{
	return state_tp(sk, oldstate, newstate, false, true);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(state_raw_tp_noatomics, const struct sock *sk, int oldstate, int newstate)
{
	return state_tp(sk, oldstate, newstate, false, false);
}

/* ---- connect: fentry tier ---- */

static __always_inline int fn_begin(struct sock *sk, const struct sockaddr *uaddr, __u32 fn)
{
	__u64 skp = (__u64)sk;
	struct conn *e;

	if (!pass_task() || !pass_sock(sk))
		return 0;
	e = bpf_map_lookup_elem(&inflight, &skp);
	if (e && (e->flags & F_INCALL))
		return 0; /* tcp_v4_connect inside tcp_v6_connect (v4-mapped) */
	begin(skp, sk, uaddr, false, fn, events_on ? bpf_ktime_get_ns() : 0);
	return 0;
}

/* fn_end reports whether the entry belonged to this call. Without atomics
 * the flag is cleared with a plain write: this runs inside the socket lock. */
static __always_inline bool fn_end(__u64 skp, long ret, __u32 fn, bool atomics)
{
	struct conn *e = bpf_map_lookup_elem(&inflight, &skp);

	if (!e || e->fn != fn || !(e->flags & F_INCALL))
		return !e;
	if (atomics)
		__sync_fetch_and_and(&e->flags, ~F_INCALL);
	else
		e->flags &= ~F_INCALL;
	finish(skp, ret, atomics);
	return true;
}

SEC("fentry/tcp_v4_connect")
int BPF_PROG(connect4_fentry, struct sock *sk, struct sockaddr *uaddr)
{
	return fn_begin(sk, uaddr, 4);
}

SEC("fexit/tcp_v4_connect")
int BPF_PROG(connect4_fexit, struct sock *sk, struct sockaddr *uaddr, int addr_len, int ret)
{
	fn_end((__u64)sk, ret, 4, true);
	return 0;
}

SEC("fexit/tcp_v4_connect")
int BPF_PROG(connect4_fexit_noatomics, struct sock *sk, struct sockaddr *uaddr, int addr_len, int ret)
{
	fn_end((__u64)sk, ret, 4, false);
	return 0;
}

SEC("fentry/tcp_v6_connect")
int BPF_PROG(connect6_fentry, struct sock *sk, struct sockaddr *uaddr)
{
	return fn_begin(sk, uaddr, 6);
}

SEC("fexit/tcp_v6_connect")
int BPF_PROG(connect6_fexit, struct sock *sk, struct sockaddr *uaddr, int addr_len, int ret)
{
	fn_end((__u64)sk, ret, 6, true);
	return 0;
}

SEC("fexit/tcp_v6_connect")
int BPF_PROG(connect6_fexit_noatomics, struct sock *sk, struct sockaddr *uaddr, int addr_len, int ret)
{
	fn_end((__u64)sk, ret, 6, false);
	return 0;
}

static __always_inline void hash_begin(__u64 skp)
{
	struct conn *e = bpf_map_lookup_elem(&inflight, &skp);

	if (e)
		e->ts = bpf_ktime_get_ns();
}

static __always_inline void hash_end(__u64 skp)
{
	struct conn *e = bpf_map_lookup_elem(&inflight, &skp);

	if (e && e->ts)
		e->lat = bpf_ktime_get_ns() - e->ts;
}

/* __inet_hash_connect(death_row, sk, port_offset, ...): its argument list
 * changed across kernels, the first two did not. */
SEC("fentry/__inet_hash_connect")
int BPF_PROG(hash_fentry, void *death_row, struct sock *sk)
{
	hash_begin((__u64)sk);
	return 0;
}

SEC("fexit/__inet_hash_connect")
int BPF_PROG(hash_fexit, void *death_row, struct sock *sk)
{
	hash_end((__u64)sk);
	return 0;
}

/* ---- connect: kprobe tier ---- */

static __always_inline int kp_begin(struct sock *sk, const struct sockaddr *uaddr, __u32 fn)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct call c = {.sk = (__u64)sk};

	if (!pass_task() || !pass_sock(sk))
		return 0;
	if (bpf_map_update_elem(&calls, &tid, &c, BPF_ANY)) {
		drop(DROP_CALLS);
		return 0;
	}
	return fn_begin(sk, uaddr, fn);
}

static __always_inline int kp_end(long ret, __u32 fn, bool atomics)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct call *c = bpf_map_lookup_elem(&calls, &tid);

	if (!c)
		return 0;
	if (fn_end(c->sk, ret, fn, atomics))
		bpf_map_delete_elem(&calls, &tid);
	return 0;
}

SEC("kprobe/tcp_v4_connect")
int BPF_KPROBE(connect4_kprobe, struct sock *sk, struct sockaddr *uaddr)
{
	return kp_begin(sk, uaddr, 4);
}

SEC("kretprobe/tcp_v4_connect")
int BPF_KRETPROBE(connect4_kretprobe, int ret)
{
	return kp_end(ret, 4, true);
}

SEC("kretprobe/tcp_v4_connect")
int BPF_KRETPROBE(connect4_kretprobe_noatomics, int ret)
{
	return kp_end(ret, 4, false);
}

SEC("kprobe/tcp_v6_connect")
int BPF_KPROBE(connect6_kprobe, struct sock *sk, struct sockaddr *uaddr)
{
	return kp_begin(sk, uaddr, 6);
}

SEC("kretprobe/tcp_v6_connect")
int BPF_KRETPROBE(connect6_kretprobe, int ret)
{
	return kp_end(ret, 6, true);
}

SEC("kretprobe/tcp_v6_connect")
int BPF_KRETPROBE(connect6_kretprobe_noatomics, int ret)
{
	return kp_end(ret, 6, false);
}

SEC("kprobe/__inet_hash_connect")
int BPF_KPROBE(hash_kprobe, void *death_row, struct sock *sk)
{
	hash_begin((__u64)sk);
	return 0;
}

SEC("kretprobe/__inet_hash_connect")
int BPF_KRETPROBE(hash_kretprobe)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct call *c = bpf_map_lookup_elem(&calls, &tid);

	if (c)
		hash_end(c->sk);
	return 0;
}

/* ---- connect: tracepoint tier (connect system call) ---- */

static __always_inline struct sock *fd_sock(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = NULL;
	struct socket *sock;
	umode_t mode;

	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return NULL;
	mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(sock, sk);
}

static __always_inline int sys_begin(int fd, __u64 uaddr)
{
	struct sysc *c;

	if (!pass_task())
		return 0;
	c = sysc_get(true);
	if (!c) {
		drop(DROP_CALLS);
		return 0;
	}
	if (c->flags == SC_RESTART && c->fd == fd) {
		c->flags = SC_INCALL; /* the same call, restarted after a signal */
		return 0;
	}
	c->sk = 0;
	c->uaddr = uaddr;
	c->fd = fd;
	c->start = events_on ? bpf_ktime_get_ns() : 0; /* only events show it */
	if (!task_storage)
		c->born = bpf_ktime_get_ns();
	c->flags = SC_INCALL;
	return 0;
}

/* sys_failed counts a connect() that failed before its socket reached
 * SYN_SENT (no route, EACCES, ...): rare, so it may walk the fd table and
 * read the user's sockaddr. */
static __always_inline int sys_failed(const struct sysc *c, long ret, bool atomics)
{
	struct sock *sk = fd_sock(c->fd);
	__u64 skp = (__u64)sk;

	if (!sk || !pass_sock(sk))
		return 0;
	if (begin(skp, sk, (const void *)c->uaddr, true, 0, c->start))
		return 0;
	return finish(skp, ret, atomics);
}

/* sys_finish counts the attempt the connect call holds in its storage
 * (c->sk set: it reached SYN_SENT) as the call returns ret. */
static __always_inline int sys_finish(struct sysc *c, long ret, bool atomics)
{
	const struct sock *sk = (const struct sock *)c->sk;
	struct conn *e = &c->conn, *m;
	__u64 skp = c->sk;
	int err = ret < 0 ? -ret : 0;
	__u32 old;
	__u8 state;

	c->sk = 0;
	if (err == EALREADY || err == EISCONN)
		return 0; /* not a new attempt */
	account(e, err, false);
	if (err != EINPROGRESS || (e->flags & F_DONE)) {
		/* The outcome is known: the call's error, or the state change
		 * seen in this thread (EINPROGRESS on loopback), or success. */
		if (err == EINPROGRESS || err == 0)
			err = e->outcome;
		emit(e, sk, err);
		return 0;
	}
	/* Non-blocking and still connecting: the answer comes later, maybe on
	 * another CPU, where on_state finds the attempt in inflight. */
	e->flags |= F_RETURNED;
	if (bpf_map_update_elem(&inflight, &skp, e, BPF_ANY)) {
		drop(DROP_INFLIGHT);
		return 0;
	}
	/* The answer may have come on another CPU before the attempt was in
	 * inflight. sk_err is set before the state changes, and the state
	 * before it is seen here: whoever sets F_DONE first reports it
	 * (without atomics: whoever deletes it from inflight). */
	err = BPF_CORE_READ(sk, sk_err);
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (!err && state == TCP_SYN_SENT)
		return 0;
	if (!atomics) {
		if (bpf_map_delete_elem(&inflight, &skp))
			return 0;
		if (err)
			count_errno(dest_get(e), err);
		emit(e, sk, err);
		return 0;
	}
	m = bpf_map_lookup_elem(&inflight, &skp);
	if (!m)
		return 0;
	old = __sync_fetch_and_or(&m->flags, F_DONE | (err ? F_ERR_COUNTED : 0));
	if (old & F_DONE)
		return 0;
	if (err)
		count_errno(dest_get(m), err);
	emit(m, sk, err);
	bpf_map_delete_elem(&inflight, &skp);
	return 0;
}

/* early_failure: a connect() that returned err without moving its socket
 * to SYN_SENT failed before a SYN, and is counted at sys_exit. */
static __always_inline bool early_failure(int err)
{
	switch (err) {
	case 0:           /* not TCP, or connect() again on a connected socket */
	case EINPROGRESS: /* the same, non-blocking */
	case EALREADY:
	case EISCONN:
	case ECONNREFUSED: /* connect() again after an outcome counted at the state change */
	case ETIMEDOUT:
	case ECONNRESET:
	case ECONNABORTED:
		return false;
	}
	return true;
}

static __always_inline int sys_end(long ret, bool atomics)
{
	struct sysc *c = sysc_get(false);
	int err = ret < 0 ? -ret : 0;

	if (!c || c->flags != SC_INCALL)
		return 0;
	if (err == ERESTARTSYS || err == ERESTARTNOINTR || err == ERESTARTNOHAND || err == ERESTART_RESTARTBLOCK) {
		/* A signal interrupted the wait; the call is restarted. */
		c->flags = SC_RESTART;
		return 0;
	}
	c->flags = 0;
	if (c->sk)
		sys_finish(c, ret, atomics);
	else if (early_failure(err))
		sys_failed(c, ret, atomics);
	sysc_put();
	return 0;
}

struct sys_enter_connect_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 fd;
	__u64 uservaddr;
	__u64 addrlen;
};

struct sys_exit_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

SEC("tracepoint/syscalls/sys_enter_connect")
int sys_enter_connect(struct sys_enter_connect_args *ctx)
{
	return sys_begin((int)ctx->fd, ctx->uservaddr);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int sys_exit_connect(struct sys_exit_args *ctx)
{
	return sys_end(ctx->ret, true);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int sys_exit_connect_noatomics(struct sys_exit_args *ctx)
{
	return sys_end(ctx->ret, false);
}

/* raw_syscalls: for kernels without syscall tracepoints
 * (CONFIG_FTRACE_SYSCALLS=n). They run on every system call: sys_enter
 * passes connect's number only, and sys_exit acts only after a connect's
 * sys_enter (SC_INCALL in the thread's storage). */
#if defined(__TARGET_ARCH_x86)
#define NR_CONNECT 42
#elif defined(__TARGET_ARCH_arm64)
#define NR_CONNECT 203
#endif

SEC("raw_tp/sys_enter")
int BPF_PROG(sys_enter_raw, struct pt_regs *regs, long id)
{
	if (id != NR_CONNECT)
		return 0;
	return sys_begin((int)PT_REGS_PARM1_CORE_SYSCALL(regs), PT_REGS_PARM2_CORE_SYSCALL(regs));
}

SEC("raw_tp/sys_exit")
int BPF_PROG(sys_exit_raw, struct pt_regs *regs, long ret)
{
	return sys_end(ret, true);
}

SEC("raw_tp/sys_exit")
int BPF_PROG(sys_exit_raw_noatomics, struct pt_regs *regs, long ret)
{
	return sys_end(ret, false);
}
