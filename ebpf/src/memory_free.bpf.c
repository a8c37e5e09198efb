// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * memory_free: time tasks stalled in global direct reclaim and in direct
 * compaction, host-wide (HUATUO's memory_free_allocpages_stall and
 * memory_free_compaction_stall), summed in nanoseconds since load.
 *
 *   vmscan/mm_vmscan_direct_reclaim_begin  -> free_reclaim_begin
 *   vmscan/mm_vmscan_direct_reclaim_end    -> free_reclaim_end
 *       begin/end of try_to_free_pages on the stalled thread: the duration
 *       goes to memory_free_stall[KP_FREE_ALLOCPAGES].
 *   compaction/mm_compaction_try_to_compact_pages -> free_compact_direct
 *       marks the thread as being in direct compaction (try_to_compact_pages,
 *       called only from the page allocator's slow path);
 *   compaction/mm_compaction_begin         -> free_compact_begin
 *   compaction/mm_compaction_end           -> free_compact_end
 *       begin/end of compact_zone(): for a marked thread the duration goes to
 *       memory_free_stall[KP_FREE_COMPACTION].  kcompactd and writes to
 *       /proc/sys/vm/compact_memory run compact_zone() too, but are never
 *       marked, so they are not counted (HUATUO counts direct compaction only).
 *   sched/sched_process_exit               -> free_exit: drops the thread's
 *       entries.
 *
 * HUATUO times try_to_compact_pages with a kprobe + kretprobe; kprobes are
 * not available here and that function has no end tracepoint.  The sum of
 * its compact_zone() runs is what is measured instead: the zone walk,
 * deferral and suitability checks between them (microseconds) are left out,
 * and an allocation whose zones are all deferred adds nothing.  A thread's
 * mark stays until its next direct compaction or its exit, so a process that
 * compacted directly and later writes compact_memory itself would be counted
 * for that too.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define KP_FREE_COMPACTION 0
#define KP_FREE_ALLOCPAGES 1

/* Stall nanoseconds: [0] direct compaction, [1] direct reclaim. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} memory_free_stall SEC(".maps");

/* Thread id -> start of its direct reclaim.  LRU for the same reason as the
 * compaction marks below: a start whose end is never seen cannot fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, __u64);
} free_reclaim_start SEC(".maps");

/* Thread id -> start of its compact_zone() run, or 0: marked as in direct
 * compaction, not in a zone.  LRU: marks of threads that never exit here (or
 * missed events) cannot fill the table. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, __u64);
} free_compact_start SEC(".maps");

static __always_inline __u32 current_tid(void)
{
	return (__u32)bpf_get_current_pid_tgid();
}

static __always_inline void add_stall(__u32 slot, __u64 ns)
{
	__u64 *total = bpf_map_lookup_elem(&memory_free_stall, &slot);

	if (total)
		*total += ns; /* per-CPU slot */
}

SEC("tracepoint/vmscan/mm_vmscan_direct_reclaim_begin")
int free_reclaim_begin(void *ctx)
{
	__u32 tid = current_tid();
	__u64 now = bpf_ktime_get_ns();

	bpf_map_update_elem(&free_reclaim_start, &tid, &now, BPF_ANY);
	return 0;
}

SEC("tracepoint/vmscan/mm_vmscan_direct_reclaim_end")
int free_reclaim_end(void *ctx)
{
	__u32 tid = current_tid();
	__u64 *start, begin;

	start = bpf_map_lookup_elem(&free_reclaim_start, &tid);
	if (!start)
		return 0;
	begin = *start;
	bpf_map_delete_elem(&free_reclaim_start, &tid);
	add_stall(KP_FREE_ALLOCPAGES, bpf_ktime_get_ns() - begin);
	return 0;
}

SEC("tracepoint/compaction/mm_compaction_try_to_compact_pages")
int free_compact_direct(void *ctx)
{
	__u32 tid = current_tid();
	__u64 marked = 0;

	bpf_map_update_elem(&free_compact_start, &tid, &marked, BPF_ANY);
	return 0;
}

SEC("tracepoint/compaction/mm_compaction_begin")
int free_compact_begin(void *ctx)
{
	__u32 tid = current_tid();
	__u64 *start = bpf_map_lookup_elem(&free_compact_start, &tid);

	if (start)
		*start = bpf_ktime_get_ns();
	return 0;
}

SEC("tracepoint/compaction/mm_compaction_end")
int free_compact_end(void *ctx)
{
	__u32 tid = current_tid();
	__u64 *start = bpf_map_lookup_elem(&free_compact_start, &tid), begin;

	if (!start || *start == 0)
		return 0;
	begin = *start;
	*start = 0; /* still in direct compaction: the next zone may follow */
	add_stall(KP_FREE_COMPACTION, bpf_ktime_get_ns() - begin);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int free_exit(void *ctx)
{
	__u32 tid = current_tid();

	bpf_map_delete_elem(&free_reclaim_start, &tid);
	bpf_map_delete_elem(&free_compact_start, &tid);
	return 0;
}
