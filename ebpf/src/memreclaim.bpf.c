// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * memreclaim: long synchronous (direct) memory reclaim stalls.
 *
 *   vmscan/mm_vmscan_direct_reclaim_begin -> reclaim_begin   (global direct
 *   vmscan/mm_vmscan_direct_reclaim_end   -> reclaim_end      reclaim, i.e.
 *                                            try_to_free_pages as in HUATUO)
 *   vmscan/mm_vmscan_memcg_reclaim_begin  -> memcg_rcl_begin  (optional:
 *   vmscan/mm_vmscan_memcg_reclaim_end    -> memcg_rcl_end     memcg limit reclaim)
 *
 * Begin stores {ts, gfp, order, source} in the HASH `reclaim_start` keyed by
 * thread id; end computes the duration, deletes the entry and emits
 * KP_EV_MEMRECLAIM when duration >= reclaim_threshold_ns.  Reclaim is
 * synchronous in the task, so begin/end pair up on the same thread.
 * HUATUO keeps only events whose task belongs to a container: that filter is
 * left to the host (memcg_id / hdr.cgroup_id are in the record).
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Emit when a reclaim takes >= this many ns (HUATUO BlockedThreshold 900 ms). */
volatile const __u64 reclaim_threshold_ns = 900000000ULL;

KP_EVENTS_RINGBUF(256 * 1024);
KP_STATS_MAP();

/* LRU: a thread killed inside its reclaim never reaches the end hook; its entry
 * is evicted instead of filling the table over months. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);                       /* thread id */
	__type(value, struct kp_reclaim_start);
} reclaim_start SEC(".maps");

static __always_inline int on_begin(struct trace_event_raw_mm_vmscan_direct_reclaim_begin_template *ctx,
				    __u32 source)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct kp_reclaim_start st = {
		.ts_ns = bpf_ktime_get_ns(),
		.gfp_flags = ctx->gfp_flags,
		.order = ctx->order,
		.source = source,
	};

	bpf_map_update_elem(&reclaim_start, &tid, &st, BPF_ANY);
	return 0;
}

static __always_inline int on_end(struct trace_event_raw_mm_vmscan_direct_reclaim_end_template *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct kp_memreclaim_event *e;
	struct kp_reclaim_start *st;
	__u64 now = bpf_ktime_get_ns(), begin, dur, gfp;
	__s32 order;
	__u32 source;

	st = bpf_map_lookup_elem(&reclaim_start, &tid);
	if (!st)
		return 0;
	begin = st->ts_ns;
	gfp = st->gfp_flags;
	order = st->order;
	source = st->source;
	bpf_map_delete_elem(&reclaim_start, &tid);

	dur = now - begin;
	if (dur < reclaim_threshold_ns)
		return 0;
	kp_stat_inc(&stats, KP_STAT_HITS);

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		kp_stat_inc(&stats, KP_STAT_RB_FULL);
		return 0;
	}
	kp_fill_header(&e->hdr, KP_EV_MEMRECLAIM);
	e->duration_ns = dur;
	e->threshold_ns = reclaim_threshold_ns;
	e->begin_ts_ns = begin;
	e->nr_reclaimed = ctx->nr_reclaimed;
	e->gfp_flags = gfp;
	e->memcg_id = kp_task_memcg_id((struct task_struct *)bpf_get_current_task());
	e->order = order;
	e->source = source;
	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
	return 0;
}

SEC("tracepoint/vmscan/mm_vmscan_direct_reclaim_begin")
int reclaim_begin(struct trace_event_raw_mm_vmscan_direct_reclaim_begin_template *ctx)
{
	return on_begin(ctx, KP_RECLAIM_DIRECT);
}

SEC("tracepoint/vmscan/mm_vmscan_direct_reclaim_end")
int reclaim_end(struct trace_event_raw_mm_vmscan_direct_reclaim_end_template *ctx)
{
	return on_end(ctx);
}

SEC("tracepoint/vmscan/mm_vmscan_memcg_reclaim_begin")
int memcg_rcl_begin(struct trace_event_raw_mm_vmscan_direct_reclaim_begin_template *ctx)
{
	return on_begin(ctx, KP_RECLAIM_MEMCG);
}

SEC("tracepoint/vmscan/mm_vmscan_memcg_reclaim_end")
int memcg_rcl_end(struct trace_event_raw_mm_vmscan_direct_reclaim_end_template *ctx)
{
	return on_end(ctx);
}
