// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * softirq: raise -> entry latency per softirq vector.
 *
 *   irq/softirq_raise  -> softirq_raise: remember the first raise time of
 *                          `vec` on this CPU (pending bits are per-CPU and the
 *                          softirq runs on the CPU that raised it).
 *   irq/softirq_entry  -> softirq_entry: latency = now - raise; bump the
 *                          per-CPU zone counter softirq_zones[vec*4+zone];
 *                          emit KP_EV_SOFTIRQ if latency >= threshold.
 *
 * HUATUO's equivalent (sched_tick) uses kprobes on account_process_tick with
 * a 10 ms threshold; kprobes are unavailable here, so the softirq
 * raise->entry gap (a long irq-off / softirq-off window delays it) is used
 * with the same default threshold.
 *
 * Each hook exists twice: as tp_btf (a direct call from the tracepoint, no
 * perf trace buffer filled per hit: the cheap one, preferred) and as a
 * classic tracepoint, the fallback where tp_btf cannot attach.  The plugin
 * attaches one of the two.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Emit an event when raise->entry latency >= this many ns (HUATUO 10 ms). */
volatile const __u64 softirq_threshold_ns = 10000000ULL;

KP_EVENTS_RINGBUF(256 * 1024);
KP_STATS_MAP();

/* Per-CPU timestamp of the first pending raise of each vector; 0 = none. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KP_NR_SOFTIRQS);
	__type(key, __u32);
	__type(value, __u64);
} softirq_raise_ts SEC(".maps");

/* Per-CPU latency histogram: index vec * KP_SOFTIRQ_NR_ZONES + zone. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KP_NR_SOFTIRQS * KP_SOFTIRQ_NR_ZONES);
	__type(key, __u32);
	__type(value, __u64);
} softirq_zones SEC(".maps");

static __always_inline int on_raise(__u32 vec)
{
	__u64 *ts;

	if (vec >= KP_NR_SOFTIRQS)
		return 0;
	ts = bpf_map_lookup_elem(&softirq_raise_ts, &vec);
	/* Keep the earliest raise while the vector stays pending. */
	if (ts && *ts == 0)
		*ts = bpf_ktime_get_ns();
	return 0;
}

static __always_inline int on_entry(__u32 vec)
{
	struct kp_softirq_event *e;
	__u64 *ts, *cnt, raise, now, lat;
	__u32 zone, idx;

	if (vec >= KP_NR_SOFTIRQS)
		return 0;
	ts = bpf_map_lookup_elem(&softirq_raise_ts, &vec);
	if (!ts)
		return 0;
	raise = *ts;
	if (raise == 0) /* raise not seen (attached mid-flight or untraced raise) */
		return 0;
	*ts = 0;

	now = bpf_ktime_get_ns();
	lat = now - raise;
	if (lat < 10000ULL)
		zone = KP_SOFTIRQ_ZONE_LT_10US;
	else if (lat < 100000ULL)
		zone = KP_SOFTIRQ_ZONE_LT_100US;
	else if (lat < 1000000ULL)
		zone = KP_SOFTIRQ_ZONE_LT_1MS;
	else
		zone = KP_SOFTIRQ_ZONE_GE_1MS;

	idx = vec * KP_SOFTIRQ_NR_ZONES + zone;
	cnt = bpf_map_lookup_elem(&softirq_zones, &idx);
	if (cnt)
		*cnt += 1;

	if (lat < softirq_threshold_ns)
		return 0;
	kp_stat_inc(&stats, KP_STAT_HITS);

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		kp_stat_inc(&stats, KP_STAT_RB_FULL);
		return 0;
	}
	kp_fill_header(&e->hdr, KP_EV_SOFTIRQ);
	e->vec = vec;
	e->zone = zone;
	e->latency_ns = lat;
	e->raise_ts_ns = raise;
	e->threshold_ns = softirq_threshold_ns;
	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
	return 0;
}

SEC("tp_btf/softirq_raise")
int BPF_PROG(softirq_raise_btf, unsigned int vec_nr)
{
	return on_raise(vec_nr);
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(softirq_entry_btf, unsigned int vec_nr)
{
	return on_entry(vec_nr);
}

SEC("tracepoint/irq/softirq_raise")
int softirq_raise(struct trace_event_raw_softirq *ctx)
{
	return on_raise(ctx->vec);
}

SEC("tracepoint/irq/softirq_entry")
int softirq_entry(struct trace_event_raw_softirq *ctx)
{
	return on_entry(ctx->vec);
}
