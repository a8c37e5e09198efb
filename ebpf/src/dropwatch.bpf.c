// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * dropwatch: kernel packet drops from tracepoint skb/kfree_skb.
 *
 * Every call counts into `drop_reasons` (reason -> count, for metrics), then
 * the filters (IP protocol, reason NOT_SPECIFIED) and the in-kernel token
 * bucket (HUATUO MaxEventsPerSecond = 100) decide whether a KP_EV_DROP record
 * with a kernel stack is emitted.
 *
 * The protocol filter stands in for HUATUO's pcap-style filter, whose default
 * is "tcp": a flood of UDP drops (a receiver's full socket queue) is counted
 * and never costs a record, a stack walk or a wake-up of the consumer.  It
 * reads one byte of the dropped packet's IP header; non-IP packets only pass
 * an empty filter.
 *
 * Reasons are this kernel's enum skb_drop_reason values (6.18: 2
 * NOT_SPECIFIED, 3 NO_SOCKET, ... 128 MAX; SKB_CONSUMED = 1 never reaches
 * kfree_skb since 6.3 — consume_skb has its own tracepoint — but is skipped
 * defensively).  Values are resolved with CO-RE enum relocations, so they
 * stay correct when the enum is renumbered.  Kernels < 5.17 have no `reason`
 * field: reason is reported as 0.
 *
 * Not ported from HUATUO: filters on addresses and ports (its pcap-style
 * filter compiled into BPF) and the devlink_trap_report raw tracepoint
 * (hardware drops).
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Token bucket: HUATUO MaxEventsPerSecond = 100; 0 = unlimited. */
volatile const __u64 max_events_per_second = 100;
volatile const __u32 ratelimit_nr_cpus = 1;
/* 1: do not emit records for SKB_DROP_REASON_NOT_SPECIFIED (still counted). */
volatile const __u32 ignore_reason_not_specified = 1;
/* 1: only drops whose IP protocol is set in report_protocols are reported. */
volatile const __u32 filter_protocols = 0;
/* report_protocols[n] != 0: report drops of IP protocol n (6 TCP, 17 UDP, ...). */
volatile const __u8 report_protocols[256] = {};

#define KP_ETH_P_IP   0x0800
#define KP_ETH_P_IPV6 0x86DD

KP_EVENTS_RINGBUF(256 * 1024);
KP_STATS_MAP();
KP_RATELIMIT_MAP();

/* Drop counts by reason (all drops, before filters and rate limit); per CPU, so
 * a drop flood on several CPUs shares no counter cache line. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024); /* core reasons < 256 + subsystem-encoded ones */
	__type(key, __u32);
	__type(value, __u64);
} drop_reasons SEC(".maps");

static __always_inline void count_reason(__u32 reason)
{
	__u64 one = 1, *cnt;

	cnt = bpf_map_lookup_elem(&drop_reasons, &reason);
	if (cnt) {
		*cnt += 1; /* this CPU's slot */
		return;
	}
	/* The first drop of this reason: sets this CPU's slot, zeroes the others. */
	if (bpf_map_update_elem(&drop_reasons, &reason, &one, BPF_NOEXIST)) {
		/* another CPU inserted it first */
		cnt = bpf_map_lookup_elem(&drop_reasons, &reason);
		if (cnt)
			*cnt += 1;
	}
}

/* Whether the protocol filter lets this drop through (ctx->protocol is the
 * ethertype, already ntohs()'d by the tracepoint). */
static __always_inline int protocol_wanted(struct sk_buff *skb, __u16 eth_proto)
{
	unsigned char *head;
	__u16 nh;
	__u8 proto;

	if (!filter_protocols)
		return 1;
	if (eth_proto != KP_ETH_P_IP && eth_proto != KP_ETH_P_IPV6)
		return 0;
	head = BPF_CORE_READ(skb, head);
	nh = BPF_CORE_READ(skb, network_header);
	if (!head || nh == (__u16)~0U)
		return 0;
	/* IPv4: protocol at offset 9; IPv6: next header at offset 6 (extension
	 * headers are not walked). */
	if (bpf_probe_read_kernel(&proto, 1, head + nh + (eth_proto == KP_ETH_P_IP ? 9 : 6)))
		return 0;
	return report_protocols[proto] != 0;
}

SEC("tracepoint/skb/kfree_skb")
int kfree_skb(struct trace_event_raw_kfree_skb *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx->skbaddr;
	struct net_device *dev;
	struct sock *sk = NULL;
	struct kp_drop_event *e;
	__u32 reason = 0, netns = 0, ifindex = 0;

	if (bpf_core_field_exists(ctx->reason)) {
		reason = (__u32)ctx->reason;
		if (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_CONSUMED) &&
		    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED))
			return 0;
	}
	count_reason(reason);

	if (ignore_reason_not_specified &&
	    bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED) &&
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED))
		return 0;
	if (!protocol_wanted(skb, ctx->protocol))
		return 0;

	kp_stat_inc(&stats, KP_STAT_HITS);
	if (!kp_ratelimit(&ratelimit, max_events_per_second, ratelimit_nr_cpus)) {
		kp_stat_inc(&stats, KP_STAT_RATELIMITED);
		return 0;
	}

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		kp_stat_inc(&stats, KP_STAT_RB_FULL);
		return 0;
	}
	kp_fill_header(&e->hdr, KP_EV_DROP);
	e->skb_addr = (__u64)(unsigned long)skb;
	e->location = (__u64)(unsigned long)ctx->location;
	e->reason = reason;
	e->protocol = ctx->protocol; /* already ntohs()'d by the tracepoint */
	e->_pad0 = 0;
	e->len = BPF_CORE_READ(skb, len);
	__builtin_memset(e->ifname, 0, sizeof(e->ifname));

	/* Namespace: receiving socket (rx_sk, 6.11+), skb owner, then device. */
	if (bpf_core_field_exists(ctx->rx_sk))
		sk = (struct sock *)ctx->rx_sk;
	if (!sk)
		sk = BPF_CORE_READ(skb, sk);
	netns = kp_sock_net_inum(sk);

	/* skb->dev shares a union with dev_scratch (UDP queues); a garbage
	 * pointer only makes the probe reads fail, which leaves zeros. */
	dev = BPF_CORE_READ(skb, dev);
	if (dev) {
		ifindex = BPF_CORE_READ(dev, ifindex);
		bpf_probe_read_kernel_str(e->ifname, sizeof(e->ifname), dev->name);
		if (!netns)
			netns = kp_dev_net_inum(dev);
	}
	if (!ifindex)
		ifindex = BPF_CORE_READ(skb, skb_iif);
	e->ifindex = ifindex;
	e->netns_inum = netns;

	e->stack_depth = kp_kernel_stack(ctx, e->stack, 0);
	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
	return 0;
}
