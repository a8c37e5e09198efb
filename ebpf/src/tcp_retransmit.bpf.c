// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tcp_retransmit: TCP retransmissions from tracepoints tcp/tcp_retransmit_skb
 * (data, SYN and FIN segments of a full socket) and tcp/tcp_retransmit_synack
 * (a listener's SYN-ACK for a pending request), and optionally the tail loss
 * probe through kprobe tcp_send_loss_probe (HUATUO EnableTLP; only where the
 * kernel has kprobes, the plugin treats the attach as optional).
 *
 * Every retransmit counts into `retransmits` (by source, for metrics); the
 * in-kernel token bucket (HUATUO MaxEventsPerSecond = 100) decides whether a
 * KP_EV_TCP_RETRANSMIT record is emitted.  Everything except the tracepoint's
 * skb/sk pointers (offsets 8 and 16 since the tracepoints exist) and `err`
 * is read from the socket with CO-RE, so the record does not depend on the
 * tracepoint's layout, which changed across kernels.  The plugin classifies
 * the reason (RTO, fast retransmit, TLP) from ca_state and the state.
 *
 * drop_location (HUATUO correlates with dropwatch's events of the last 2 s):
 * `retrans_drop` on skb/kfree_skb remembers, per IPv4 TCP flow as the dropped
 * segment's headers name it, where and why it was last dropped (an LRU table,
 * so a drop flood only evicts old flows).  A retransmit looks its flow up in
 * both directions (its own segment dropped, or the peer's ACK) and carries a
 * drop younger than drop_window_ns.  The hook runs on drops only, not on every
 * packet; the plugin attaches it only with correlation on.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

volatile const __u64 max_events_per_second = 100;
volatile const __u32 ratelimit_nr_cpus = 1;
/* A drop of the flow at most this long before a retransmit is reported with it; 0 = off. */
volatile const __u64 drop_window_ns = 2000000000ULL;

KP_EVENTS_RINGBUF(256 * 1024);
KP_STATS_MAP();
KP_RATELIMIT_MAP();

/* Retransmits by enum kp_tcp_retrans_source, before the rate limit. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KP_TCP_RETRANS_NR);
	__type(key, __u32);
	__type(value, __u64);
} retransmits SEC(".maps");

#define KP_AF_INET  2
#define KP_AF_INET6 10
#define KP_ETH_P_IP 0x0800
#define KP_IPPROTO_TCP 6

/* An IPv4 TCP flow as a segment's headers name it, network order. */
struct kp_flow4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

struct kp_recent_drop {
	__u64 ts_ns;
	__u64 location;
	__u32 reason;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct kp_flow4);
	__type(value, struct kp_recent_drop);
} recent_drops SEC(".maps");

/* The leading fields of both tracepoints, stable since they were added. */
struct kp_tcp_retransmit_skb_ctx {
	__u64 common;         /* struct trace_entry */
	const void *skbaddr;  /* 8 */
	const void *skaddr;   /* 16 */
};

struct kp_tcp_retransmit_synack_ctx {
	__u64 common;
	const void *skaddr;   /* 8 */
	const void *req;      /* 16 */
};

/* 6.x: trace_event_raw_tcp_retransmit_skb carries the retransmit's result. */
struct trace_event_raw_tcp_retransmit_skb___kp {
	int err;
} __attribute__((preserve_access_index));

static __always_inline int count_and_limit(__u32 source)
{
	__u64 *cnt = bpf_map_lookup_elem(&retransmits, &source);

	if (cnt)
		*cnt += 1; /* per-CPU slot */
	kp_stat_inc(&stats, KP_STAT_HITS);
	if (!kp_ratelimit(&ratelimit, max_events_per_second, ratelimit_nr_cpus)) {
		kp_stat_inc(&stats, KP_STAT_RATELIMITED);
		return 0;
	}
	return 1;
}

static __always_inline struct kp_tcp_retransmit_event *reserve(__u32 source)
{
	struct kp_tcp_retransmit_event *e;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		kp_stat_inc(&stats, KP_STAT_RB_FULL);
		return NULL;
	}
	__builtin_memset((void *)e + sizeof(e->hdr), 0, sizeof(*e) - sizeof(e->hdr));
	kp_fill_header(&e->hdr, KP_EV_TCP_RETRANSMIT);
	e->source = source;
	return e;
}

static __always_inline void fill_netns(struct kp_tcp_retransmit_event *e, struct sock *sk)
{
	struct net *net = BPF_CORE_READ(sk, __sk_common.skc_net.net);

	e->netns_inum = kp_net_inum(net);
	if (net && bpf_core_field_exists(net->net_cookie) &&
	    bpf_core_field_size(net->net_cookie) == sizeof(__u64))
		bpf_core_read(&e->netns_cookie, sizeof(e->netns_cookie), &net->net_cookie);
}

/* Addresses and ports of a socket or request (both start with sock_common). */
static __always_inline void fill_addrs(struct kp_tcp_retransmit_event *e,
				       struct sock_common *skc)
{
	if (e->family == KP_AF_INET) {
		__be32 src = BPF_CORE_READ(skc, skc_rcv_saddr);
		__be32 dst = BPF_CORE_READ(skc, skc_daddr);

		__builtin_memcpy(e->saddr, &src, sizeof(src));
		__builtin_memcpy(e->daddr, &dst, sizeof(dst));
	} else if (e->family == KP_AF_INET6) {
		BPF_CORE_READ_INTO(&e->saddr, skc, skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&e->daddr, skc, skc_v6_daddr);
	}
}

static __always_inline void fill_from_sk(struct kp_tcp_retransmit_event *e, struct sock *sk)
{
	struct inet_connection_sock *icsk = (struct inet_connection_sock *)sk;
	struct tcp_sock *tp = (struct tcp_sock *)sk;

	e->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	/* Bitfields whose width changed across kernels: let CO-RE size them. */
	e->ca_state = BPF_CORE_READ_BITFIELD_PROBED(icsk, icsk_ca_state);
	e->retransmits = BPF_CORE_READ_BITFIELD_PROBED(icsk, icsk_retransmits);
	e->icsk_pending = BPF_CORE_READ_BITFIELD_PROBED(icsk, icsk_pending);
	if (bpf_core_field_exists(tp->reord_seen))
		e->reord_seen = BPF_CORE_READ(tp, reord_seen);
	if (bpf_core_field_exists(tp->dsack_dups))
		e->dsack_dups = BPF_CORE_READ(tp, dsack_dups);
	fill_netns(e, sk);
	fill_addrs(e, (struct sock_common *)sk);
}

/* The flow's drop within drop_window_ns, in either direction, into the record. */
static __always_inline void fill_drop(struct kp_tcp_retransmit_event *e)
{
	struct kp_recent_drop *drop;
	struct kp_flow4 key = {}, back = {};
	__u64 now, age;

	if (!drop_window_ns || e->family != KP_AF_INET)
		return;
	__builtin_memcpy(&key.saddr, e->saddr, sizeof(key.saddr));
	__builtin_memcpy(&key.daddr, e->daddr, sizeof(key.daddr));
	key.sport = bpf_htons(e->sport);
	key.dport = bpf_htons(e->dport);
	drop = bpf_map_lookup_elem(&recent_drops, &key);
	if (!drop) {
		/* The peer's segment of this flow (a lost handshake ACK makes the
		 * listener resend its SYN-ACK). */
		back.saddr = key.daddr;
		back.daddr = key.saddr;
		back.sport = key.dport;
		back.dport = key.sport;
		drop = bpf_map_lookup_elem(&recent_drops, &back);
		if (!drop)
			return;
	}
	now = bpf_ktime_get_ns();
	age = now > drop->ts_ns ? now - drop->ts_ns : 0;
	if (age > drop_window_ns)
		return;
	e->drop_location = drop->location;
	e->drop_reason = drop->reason;
	e->drop_age_us = (__u32)(age / 1000);
}

SEC("tracepoint/skb/kfree_skb")
int retrans_drop(struct trace_event_raw_kfree_skb *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx->skbaddr;
	struct kp_recent_drop drop = {};
	struct kp_flow4 key = {};
	unsigned char *head;
	__u16 nh, th;
	__u8 version_ihl, proto;
	__be16 ports[2];

	if (!skb || ctx->protocol != KP_ETH_P_IP) /* protocol: ntohs()'d by the tracepoint */
		return 0;
	head = BPF_CORE_READ(skb, head);
	nh = BPF_CORE_READ(skb, network_header);
	th = BPF_CORE_READ(skb, transport_header);
	if (!head || nh == (__u16)~0U)
		return 0;
	if (bpf_probe_read_kernel(&version_ihl, 1, head + nh) ||
	    bpf_probe_read_kernel(&proto, 1, head + nh + 9))
		return 0;
	if ((version_ihl >> 4) != 4 || proto != KP_IPPROTO_TCP)
		return 0;
	/* Not set yet on some receive paths: right after the IP header. */
	if (th == (__u16)~0U || th <= nh)
		th = nh + (version_ihl & 0xf) * 4;
	if (bpf_probe_read_kernel(&key.saddr, sizeof(key.saddr), head + nh + 12) ||
	    bpf_probe_read_kernel(&key.daddr, sizeof(key.daddr), head + nh + 16) ||
	    bpf_probe_read_kernel(ports, sizeof(ports), head + th))
		return 0;
	key.sport = ports[0];
	key.dport = ports[1];
	drop.ts_ns = bpf_ktime_get_ns();
	drop.location = (__u64)(unsigned long)ctx->location;
	if (bpf_core_field_exists(ctx->reason))
		drop.reason = (__u32)ctx->reason;
	bpf_map_update_elem(&recent_drops, &key, &drop, BPF_ANY);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int retrans_skb(struct kp_tcp_retransmit_skb_ctx *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx->skbaddr;
	struct sock *sk = (struct sock *)ctx->skaddr;
	struct trace_event_raw_tcp_retransmit_skb___kp *raw = (void *)ctx;
	struct kp_tcp_retransmit_event *e;

	if (!sk || !count_and_limit(KP_TCP_RETRANS_SKB))
		return 0;
	e = reserve(KP_TCP_RETRANS_SKB);
	if (!e)
		return 0;
	fill_from_sk(e, sk);
	e->skb_addr = (__u64)(unsigned long)skb;
	if (skb) {
		/* TCP_SKB_CB(skb): the control block at skb->cb. */
		struct tcp_skb_cb *tcb =
			(void *)skb + bpf_core_field_offset(struct sk_buff, cb);

		e->seq = BPF_CORE_READ(tcb, seq);
		e->end_seq = BPF_CORE_READ(tcb, end_seq);
		e->tcp_flags = BPF_CORE_READ_BITFIELD_PROBED(tcb, tcp_flags);
	}
	e->ack_seq = BPF_CORE_READ((struct tcp_sock *)sk, rcv_nxt);
	if (bpf_core_field_exists(raw->err))
		e->err = raw->err;
	fill_drop(e);
	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_synack")
int retrans_synack(struct kp_tcp_retransmit_synack_ctx *ctx)
{
	struct sock *sk = (struct sock *)ctx->skaddr;
	struct request_sock *req = (struct request_sock *)ctx->req;
	struct kp_tcp_retransmit_event *e;

	if (!req || !count_and_limit(KP_TCP_RETRANS_SYNACK))
		return 0;
	e = reserve(KP_TCP_RETRANS_SYNACK);
	if (!e)
		return 0;
	/* The request holds the connection's addresses; the listener its netns. */
	e->family = BPF_CORE_READ(req, __req_common.skc_family);
	e->sport = BPF_CORE_READ(req, __req_common.skc_num);
	e->dport = bpf_ntohs(BPF_CORE_READ(req, __req_common.skc_dport));
	e->state = BPF_CORE_READ(req, __req_common.skc_state); /* TCP_NEW_SYN_RECV */
	if (bpf_core_field_exists(req->num_retrans))
		e->retransmits = BPF_CORE_READ_BITFIELD_PROBED(req, num_retrans);
	fill_addrs(e, (struct sock_common *)req);
	if (sk)
		fill_netns(e, sk);
	fill_drop(e);
	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
	return 0;
}

SEC("kprobe/tcp_send_loss_probe")
int BPF_KPROBE(retrans_tlp, struct sock *sk)
{
	struct kp_tcp_retransmit_event *e;

	if (!sk || !count_and_limit(KP_TCP_RETRANS_TLP))
		return 0;
	e = reserve(KP_TCP_RETRANS_TLP);
	if (!e)
		return 0;
	fill_from_sk(e, sk);
	/* No skb here: the probe's next sequence and the oldest unacked one. */
	e->seq = BPF_CORE_READ((struct tcp_sock *)sk, snd_nxt);
	e->ack_seq = BPF_CORE_READ((struct tcp_sock *)sk, snd_una);
	fill_drop(e);
	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
	return 0;
}
