// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * dropwatch: kernel packet drops from tracepoint skb/kfree_skb.
 *
 * Every call counts into `drop_reasons` (reason -> count, for metrics), then
 * optional filters and the in-kernel token bucket (HUATUO MaxEventsPerSecond
 * = 100) decide whether a KP_EV_DROP record with a kernel stack is emitted.
 *
 * Reasons are this kernel's enum skb_drop_reason values (6.18: 2
 * NOT_SPECIFIED, 3 NO_SOCKET, ... 128 MAX; SKB_CONSUMED = 1 never reaches
 * kfree_skb since 6.3 — consume_skb has its own tracepoint — but is skipped
 * defensively).  Values are resolved with CO-RE enum relocations, so they
 * stay correct when the enum is renumbered.  Kernels < 5.17 have no `reason`
 * field: reason is reported as 0.
 *
 * Not ported from HUATUO: the pcap-style filter compiled into BPF (default
 * "tcp") and the devlink_trap_report raw tracepoint (hardware drops).
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Token bucket: HUATUO MaxEventsPerSecond = 100; 0 = unlimited. */
volatile const __u64 max_events_per_second = 100;
volatile const __u32 ratelimit_nr_cpus = 1;
/* 1: do not emit records for SKB_DROP_REASON_NOT_SPECIFIED (still counted). */
volatile const __u32 ignore_reason_not_specified = 1;

KP_EVENTS_RINGBUF(256 * 1024);
KP_STATS_MAP();
KP_RATELIMIT_MAP();

/* Drop counts by reason (all drops, before filters and rate limit). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024); /* core reasons < 256 + subsystem-encoded ones */
	__type(key, __u32);
	__type(value, __u64);
} drop_reasons SEC(".maps");

static __always_inline void count_reason(__u32 reason)
{
	__u64 one = 1, *cnt;

	cnt = bpf_map_lookup_elem(&drop_reasons, &reason);
	if (cnt) {
		__sync_fetch_and_add(cnt, 1);
		return;
	}
	if (bpf_map_update_elem(&drop_reasons, &reason, &one, BPF_NOEXIST)) {
		/* raced with another CPU inserting it */
		cnt = bpf_map_lookup_elem(&drop_reasons, &reason);
		if (cnt)
			__sync_fetch_and_add(cnt, 1);
	}
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
