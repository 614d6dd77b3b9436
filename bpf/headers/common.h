/* SPDX-License-Identifier: GPL-2.0 */
/* Shared helpers for nettrace's BPF programs. */
#ifndef __NETTRACE_COMMON_H
#define __NETTRACE_COMMON_H

#define AF_INET 2
#define AF_INET6 10

/* Log2 histogram: slot i counts values in [2^i, 2^(i+1)); slot 0 also takes 0.
 * 27 slots cover up to ~67 s in microseconds. User space reads it as
 * internal/hist.Log2. */
#define HIST_SLOTS 27

struct hist {
	__u64 slots[HIST_SLOTS];
};

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0;

	if (v >= 1ULL << 32) { v >>= 32; r += 32; }
	if (v >= 1ULL << 16) { v >>= 16; r += 16; }
	if (v >= 1ULL << 8)  { v >>= 8;  r += 8; }
	if (v >= 1ULL << 4)  { v >>= 4;  r += 4; }
	if (v >= 1ULL << 2)  { v >>= 2;  r += 2; }
	if (v >= 1ULL << 1)  { r += 1; }
	return r;
}

/* hist_add adds one value; call it on a per-CPU map value (no atomics). */
static __always_inline void hist_add(struct hist *h, __u64 v)
{
	__u32 slot = log2_u64(v);

	if (slot >= HIST_SLOTS)
		slot = HIST_SLOTS - 1;
	h->slots[slot]++;
}

/* An IPv4 or IPv6 address; IPv4 is stored in the first 4 bytes. */
union addr {
	__u32 v4;
	__u8 v6[16];
};

/* A TCP/UDP endpoint pair, ports in host byte order. */
struct flow_key {
	union addr saddr;
	union addr daddr;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 pad;
};

/* A destination (address and port); the key of per-destination maps. */
struct dest_key {
	union addr daddr;
	__u16 dport;
	__u16 family;
};

#endif /* __NETTRACE_COMMON_H */
