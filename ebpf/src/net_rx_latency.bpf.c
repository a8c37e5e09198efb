// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * net_rx_latency: per-skb receive latency, measured from the skb's software
 * RX timestamp to three later stages (as HUATUO net_rx_latency):
 *
 *   stage NETIF    net/netif_receive_skb        -> rx_netif     (Driver2NetRx, 5 ms)
 *   stage TCPV4    tcp/tcp_probe                -> rx_tcp       (Driver2TCP, 10 ms)
 *   stage USERCOPY skb/skb_copy_datagram_iovec  -> rx_usercopy  (Driver2Userspace, 115 ms)
 *
 * latency = (bpf_ktime_get_ns() + mono_wall_offset) - skb->tstamp
 *
 * skb->tstamp is CLOCK_REALTIME ns (net_timestamp_set -> ktime_get_real())
 * and BPF has no realtime clock, so the HOST MUST pass mono_wall_offset =
 * CLOCK_REALTIME - CLOCK_MONOTONIC (ns) at load time (HUATUO does the same)
 * and reload if the wall clock is stepped.  With mono_wall_offset == 0 the
 * programs emit nothing.  skb->tstamp is 0 unless some socket enabled RX
 * software timestamps (netstamp_needed_key): the host must keep one socket
 * with SO_TIMESTAMPNS / SOF_TIMESTAMPING_RX_SOFTWARE open, like HUATUO.
 * Skbs whose tstamp_type is not CLOCK_REALTIME (forwarded/delivery-time
 * stamps) are skipped.
 *
 * TCP stage: HUATUO uses a kprobe on tcp_v4_rcv.  Without kprobes we use
 * tcp/tcp_probe, which on 6.18 fires at the top of tcp_rcv_established()
 * for every segment of an ESTABLISHED socket and carries skbaddr/skaddr
 * (added in 6.x; checked with CO-RE).  Segments handled in other states (SYN,
 * FIN_WAIT, ...) are not seen at this stage.
 *
 * NETIF and USERCOPY exist twice: as tp_btf programs (a direct call from the
 * tracepoint with typed arguments, skb fields read with plain BTF loads: the
 * cheap path, preferred) and as classic tracepoints, the fallback.
 *
 * Header parsing: NETIF reads the IPv4 header at skb->data (the MAC header
 * has been pulled, network_header is not reset yet at this tracepoint);
 * TCPV4/USERCOPY use skb->head + network_header / transport_header.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* CLOCK_REALTIME - CLOCK_MONOTONIC in ns, set by the host (0 = disabled). */
volatile const __s64 mono_wall_offset = 0;
/* Per-stage thresholds (HUATUO Driver2NetRx / Driver2TCP / Driver2Userspace). */
volatile const __u64 netif_threshold_ns = 5000000ULL;
volatile const __u64 tcp_threshold_ns = 10000000ULL;
volatile const __u64 usercopy_threshold_ns = 115000000ULL;
/* 1: only IPv4/TCP packets are reported (HUATUO behaviour). */
volatile const __u32 tcp_only = 1;
/* Skip packets in this net namespace (inode); 0 = keep all.  Pass the host
 * netns inode to mimic HUATUO ExcludedHostNetnamespace = true. */
volatile const __u32 excluded_netns_inum = 0;
/* Token bucket; 0 = unlimited (HUATUO has no limit here). */
volatile const __u64 max_events_per_second = 0;
volatile const __u32 ratelimit_nr_cpus = 1;

KP_EVENTS_RINGBUF(512 * 1024);
KP_STATS_MAP();
KP_RATELIMIT_MAP();

#define KP_ETH_P_IP      0x0800
#define KP_IPPROTO_TCP   6
#define KP_HDR_UNSET     0xffff

/* Wire formats (stable; deliberately not CO-RE types). */
struct kp_iphdr {
	__u8   ver_ihl;
	__u8   tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8   ttl;
	__u8   protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

struct kp_tcphdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8   doff_res;
	__u8   flags;
	__be16 window;
	__sum16 check;
	__be16 urg_ptr;
};

struct rx_l34 {
	__u32 saddr, daddr, seq, ack_seq;
	__u16 sport, dport;
	__u8  l4_proto, tcp_flags, flags, _pad;
};

/* `nh`: IPv4 header address; `th`: TCP header address or NULL (then nh+ihl). */
static __always_inline void parse_ipv4(const void *nh, const void *th, struct rx_l34 *l)
{
	struct kp_iphdr iph;
	struct kp_tcphdr tcph;
	__u32 ihl;

	if (!nh || bpf_probe_read_kernel(&iph, sizeof(iph), nh))
		return;
	if ((iph.ver_ihl >> 4) != 4)
		return;
	ihl = (iph.ver_ihl & 0xf) * 4;
	if (ihl < sizeof(iph))
		return;
	l->flags |= KP_RX_F_IPV4;
	l->saddr = iph.saddr;
	l->daddr = iph.daddr;
	l->l4_proto = iph.protocol;
	if (iph.protocol != KP_IPPROTO_TCP)
		return;
	if (iph.frag_off & bpf_htons(0x1fff)) /* non-first fragment */
		return;
	if (!th)
		th = nh + ihl;
	if (bpf_probe_read_kernel(&tcph, sizeof(tcph), th))
		return;
	l->flags |= KP_RX_F_TCP;
	l->sport = bpf_ntohs(tcph.source);
	l->dport = bpf_ntohs(tcph.dest);
	l->seq = bpf_ntohl(tcph.seq);
	l->ack_seq = bpf_ntohl(tcph.ack_seq);
	l->tcp_flags = tcph.flags;
}

/* Parse via skb->head + network_header / transport_header. */
static __always_inline void parse_skb_headers(struct sk_buff *skb, struct rx_l34 *l)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);

	if (!head || nh == KP_HDR_UNSET)
		return;
	parse_ipv4(head + nh, th == KP_HDR_UNSET ? NULL : head + th, l);
}

/* Latency in ns (> 0) of a CLOCK_REALTIME stamp, or 0 if not measurable. */
static __always_inline __u64 stamp_latency(__s64 tstamp, __u64 *tstamp_out)
{
	__s64 d;

	if (tstamp <= 0)
		return 0;
	d = (__s64)bpf_ktime_get_ns() + mono_wall_offset - tstamp;
	if (d <= 0)
		return 0;
	*tstamp_out = (__u64)tstamp;
	return (__u64)d;
}

/* Returns latency in ns (> 0) and the raw tstamp, or 0 if not measurable.
 * tstamp_type 0 == SKB_CLOCK_REALTIME; MONOTONIC/TAI are delivery times. */
static __always_inline __u64 skb_latency(struct sk_buff *skb, __u64 *tstamp_out)
{
	__s64 tstamp;

	if (mono_wall_offset == 0)
		return 0;
	tstamp = BPF_CORE_READ(skb, tstamp);
	if (tstamp > 0 && bpf_core_field_exists(skb->tstamp_type) &&
	    BPF_CORE_READ_BITFIELD_PROBED(skb, tstamp_type) != 0)
		return 0;
	return stamp_latency(tstamp, tstamp_out);
}

/* skb_latency for a BTF-typed skb (tp_btf): plain loads instead of probe reads. */
static __always_inline __u64 skb_latency_btf(struct sk_buff *skb, __u64 *tstamp_out)
{
	__s64 tstamp;

	if (mono_wall_offset == 0)
		return 0;
	tstamp = skb->tstamp;
	if (tstamp > 0 && bpf_core_field_exists(skb->tstamp_type) &&
	    BPF_CORE_READ_BITFIELD(skb, tstamp_type) != 0)
		return 0;
	return stamp_latency(tstamp, tstamp_out);
}

static __always_inline int emit(struct sk_buff *skb, struct sock *sk, __u32 stage,
				__u64 threshold, __u32 len, __u64 lat, __u64 tstamp,
				struct rx_l34 *l, struct net_device *dev,
				void *ctx, __u32 name_loc)
{
	struct kp_net_rx_latency_event *e;
	__u32 netns = 0, ifindex = 0;

	if (tcp_only && !(l->flags & KP_RX_F_TCP))
		return 0;
	if (!sk)
		sk = BPF_CORE_READ(skb, sk);
	netns = kp_sock_net_inum(sk);
	if (!netns && dev)
		netns = kp_dev_net_inum(dev);
	if (excluded_netns_inum && netns == excluded_netns_inum)
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
	kp_fill_header(&e->hdr, KP_EV_NET_RX_LATENCY);
	e->latency_ns = lat;
	e->threshold_ns = threshold;
	e->skb_tstamp_ns = tstamp;
	e->skb_addr = (__u64)(unsigned long)skb;
	e->stage = stage;
	e->len = len;
	if (dev)
		ifindex = BPF_CORE_READ(dev, ifindex);
	if (!ifindex)
		ifindex = BPF_CORE_READ(skb, skb_iif);
	e->ifindex = ifindex;
	e->netns_inum = netns;
	e->saddr = l->saddr;
	e->daddr = l->daddr;
	e->sport = l->sport;
	e->dport = l->dport;
	e->seq = l->seq;
	e->ack_seq = l->ack_seq;
	e->l4_proto = l->l4_proto;
	e->tcp_flags = l->tcp_flags;
	e->tcp_state = sk ? BPF_CORE_READ(sk, __sk_common.skc_state) : 0;
	e->flags = l->flags;
	__builtin_memset(e->ifname, 0, sizeof(e->ifname));
	if (name_loc)
		kp_read_data_loc_str(ctx, name_loc, e->ifname, sizeof(e->ifname));
	else if (dev)
		bpf_core_read_str(e->ifname, sizeof(e->ifname), &dev->name);
	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
	return 0;
}

SEC("tracepoint/net/netif_receive_skb")
int rx_netif(struct trace_event_raw_net_dev_template *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx->skbaddr;
	struct rx_l34 l = {};
	__u64 lat, tstamp = 0;

	lat = skb_latency(skb, &tstamp);
	if (lat == 0 || lat < netif_threshold_ns)
		return 0;
	if (BPF_CORE_READ(skb, protocol) == bpf_htons(KP_ETH_P_IP))
		parse_ipv4(BPF_CORE_READ(skb, data), NULL, &l);
	return emit(skb, NULL, KP_RX_STAGE_NETIF, netif_threshold_ns, ctx->len, lat,
		    tstamp, &l, BPF_CORE_READ(skb, dev), ctx, ctx->__data_loc_name);
}

SEC("tracepoint/tcp/tcp_probe")
int rx_tcp(struct trace_event_raw_tcp_probe *ctx)
{
	struct sk_buff *skb;
	struct sock *sk = NULL;
	struct rx_l34 l = {};
	__u64 lat, tstamp = 0;

	if (!bpf_core_field_exists(ctx->skbaddr))
		return 0; /* older tcp_probe without the skb: stage unsupported */
	if (ctx->family != 2 /* AF_INET */)
		return 0;
	skb = (struct sk_buff *)ctx->skbaddr;
	lat = skb_latency(skb, &tstamp);
	if (lat == 0 || lat < tcp_threshold_ns)
		return 0;
	if (bpf_core_field_exists(ctx->skaddr))
		sk = (struct sock *)ctx->skaddr;
	parse_skb_headers(skb, &l);
	return emit(skb, sk, KP_RX_STAGE_TCPV4, tcp_threshold_ns, BPF_CORE_READ(skb, len),
		    lat, tstamp, &l, NULL, ctx, 0);
}

SEC("tracepoint/skb/skb_copy_datagram_iovec")
int rx_usercopy(struct trace_event_raw_skb_copy_datagram_iovec *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx->skbaddr;
	struct rx_l34 l = {};
	__u64 lat, tstamp = 0;

	lat = skb_latency(skb, &tstamp);
	if (lat == 0 || lat < usercopy_threshold_ns)
		return 0;
	if (BPF_CORE_READ(skb, protocol) == bpf_htons(KP_ETH_P_IP))
		parse_skb_headers(skb, &l);
	return emit(skb, NULL, KP_RX_STAGE_USERCOPY, usercopy_threshold_ns,
		    ctx->len > 0 ? (__u32)ctx->len : 0, lat, tstamp, &l, NULL, ctx, 0);
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(rx_netif_btf, struct sk_buff *skb)
{
	struct rx_l34 l = {};
	__u64 lat, tstamp = 0;

	lat = skb_latency_btf(skb, &tstamp);
	if (lat == 0 || lat < netif_threshold_ns)
		return 0;
	if (BPF_CORE_READ(skb, protocol) == bpf_htons(KP_ETH_P_IP))
		parse_ipv4(BPF_CORE_READ(skb, data), NULL, &l);
	return emit(skb, NULL, KP_RX_STAGE_NETIF, netif_threshold_ns, BPF_CORE_READ(skb, len),
		    lat, tstamp, &l, BPF_CORE_READ(skb, dev), ctx, 0);
}

SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(rx_usercopy_btf, struct sk_buff *skb, int len)
{
	struct rx_l34 l = {};
	__u64 lat, tstamp = 0;

	lat = skb_latency_btf(skb, &tstamp);
	if (lat == 0 || lat < usercopy_threshold_ns)
		return 0;
	if (BPF_CORE_READ(skb, protocol) == bpf_htons(KP_ETH_P_IP))
		parse_skb_headers(skb, &l);
	return emit(skb, NULL, KP_RX_STAGE_USERCOPY, usercopy_threshold_ns,
		    len > 0 ? (__u32)len : 0, lat, tstamp, &l, NULL, ctx, 0);
}
