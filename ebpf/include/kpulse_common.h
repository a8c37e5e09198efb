/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * kpulse BPF-side helpers shared by all collectors.
 *
 * License-independent: nothing here needs a GPL-only helper by itself (each
 * object still declares "Dual BSD/GPL" because bpf_probe_read_kernel*,
 * bpf_get_stack, bpf_ringbuf_* etc. are GPL-only).
 *
 * Provides:
 *   KP_EVENTS_RINGBUF(bytes)      define the ring buffer map `events`
 *   KP_STATS_MAP()                define the per-CPU counters map `stats`
 *   KP_RATELIMIT_MAP()            define the per-CPU token bucket `ratelimit`
 *   kp_rb_submit()                adaptive-wakeup ring-buffer submit
 *   kp_ratelimit()                per-CPU token bucket
 *   kp_kernel_stack()             kernel stack into __u64[KP_STACK_DEPTH]
 *   kp_fill_header()              common record header from `current`
 *   kp_task_memcg_id()            memory-cgroup kernfs id of a task (CO-RE)
 *   kp_net_inum()                 inode number of a struct net (CO-RE)
 */
#ifndef KPULSE_COMMON_H
#define KPULSE_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#include "kpulse_events.h"

#define KP_NSEC_PER_SEC 1000000000ULL

/* ------------------------------------------------------------------------ */
/* Maps                                                                      */
/* ------------------------------------------------------------------------ */

/* Ring buffer read by the host. `bytes` must be a power of 2 and a multiple
 * of the page size; the host may override it with EbpfLoader::set_max_entries. */
#define KP_EVENTS_RINGBUF(bytes)                                \
	struct {                                                \
		__uint(type, BPF_MAP_TYPE_RINGBUF);             \
		__uint(max_entries, (bytes));                   \
	} events SEC(".maps")

/* Per-CPU counters, indexed by enum kp_stat. */
#define KP_STATS_MAP()                                          \
	struct {                                                \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);        \
		__uint(max_entries, KP_STAT_MAX);               \
		__type(key, __u32);                             \
		__type(value, __u64);                           \
	} stats SEC(".maps")

/* Per-CPU token bucket state for kp_ratelimit(). */
#define KP_RATELIMIT_MAP()                                      \
	struct {                                                \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);        \
		__uint(max_entries, 1);                         \
		__type(key, __u32);                             \
		__type(value, struct kp_ratelimit_state);       \
	} ratelimit SEC(".maps")

static __always_inline void kp_stat_inc(void *stats_map, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(stats_map, &idx);

	if (v)
		*v += 1; /* per-CPU slot: no atomic needed */
}

/* ------------------------------------------------------------------------ */
/* Adaptive-wakeup ring-buffer submit                                        */
/* ------------------------------------------------------------------------ */

/*
 * Default per-record wakeups dominate the cost of a busy ring buffer (see
 * platform findings: 34k wakeups/s, 722 ns/event).  Submit with
 * BPF_RB_NO_WAKEUP unless a quarter of the ring (1/KP_RB_WAKEUP_DIVISOR) is
 * already waiting, then force a wakeup.  The host drains on a 10 ms timer
 * anyway, so a wakeup only matters when the ring would fill before that
 * timer fires; waking earlier just splits the data into more, smaller
 * batches, and each batch costs the host a guest call.  The host MUST drain on
 * a timer, otherwise a trickle of records below the threshold is never seen.
 */
#ifndef KP_RB_WAKEUP_DIVISOR
#define KP_RB_WAKEUP_DIVISOR 4
#endif

static __always_inline __u64 kp_rb_wakeup_flags(void *ringbuf_map)
{
	__u64 avail = bpf_ringbuf_query(ringbuf_map, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(ringbuf_map, BPF_RB_RING_SIZE);

	return avail >= size / KP_RB_WAKEUP_DIVISOR ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline void kp_rb_submit(void *rec, void *ringbuf_map)
{
	bpf_ringbuf_submit(rec, kp_rb_wakeup_flags(ringbuf_map));
}

/* ------------------------------------------------------------------------ */
/* Per-CPU token bucket                                                      */
/* ------------------------------------------------------------------------ */

/*
 * Returns 1 if an event may be emitted now, 0 if it must be dropped.
 *
 * events_per_sec: budget (0 = unlimited).  Each CPU gets
 *   max(1, events_per_sec / nr_cpus) events/s with a burst of one second's
 *   worth, so pass the number of possible CPUs as nr_cpus to make
 *   events_per_sec a global cap (nr_cpus 0 or 1 = per-CPU budget).
 * Token unit: 1e-9 event, so refill = elapsed_ns * rate with no division.
 * Per-CPU state and no nesting of tracepoint programs on one CPU make this
 * lock-free; a rare lost update only mis-counts one token.
 */
static __always_inline int kp_ratelimit(void *rl_map, __u64 events_per_sec, __u32 nr_cpus)
{
	struct kp_ratelimit_state *s;
	__u64 now, elapsed, tokens, rate, cap;
	__u32 zero = 0;

	if (events_per_sec == 0)
		return 1;
	s = bpf_map_lookup_elem(rl_map, &zero);
	if (!s)
		return 0;

	rate = events_per_sec;
	if (nr_cpus > 1)
		rate /= nr_cpus;
	if (rate == 0)
		rate = 1;
	if (rate > KP_NSEC_PER_SEC) /* keeps elapsed * rate < 2^64 */
		rate = KP_NSEC_PER_SEC;
	cap = rate * KP_NSEC_PER_SEC;

	now = bpf_ktime_get_ns();
	elapsed = now - s->last_ns;           /* first call: last_ns == 0 */
	if (elapsed > KP_NSEC_PER_SEC)
		elapsed = KP_NSEC_PER_SEC;    /* a full bucket is 1 s of refill */
	tokens = s->tokens + elapsed * rate;
	if (tokens > cap)
		tokens = cap;
	s->last_ns = now;

	if (tokens < KP_NSEC_PER_SEC) {
		s->tokens = tokens;
		return 0;
	}
	s->tokens = tokens - KP_NSEC_PER_SEC;
	return 1;
}

/* ------------------------------------------------------------------------ */
/* Kernel stack capture                                                      */
/* ------------------------------------------------------------------------ */

/*
 * Fill stack[KP_STACK_DEPTH] (may point into a ring-buffer record) with the
 * kernel stack of the hook's caller; unused slots are zeroed by the helper.
 * skip: frames to skip (0..255).  Returns the number of valid entries.
 */
static __always_inline __u32 kp_kernel_stack(void *ctx, __u64 *stack, __u32 skip)
{
	long n = bpf_get_stack(ctx, stack, KP_STACK_DEPTH * sizeof(__u64),
			       skip & BPF_F_SKIP_FIELD_MASK);

	if (n <= 0)
		return 0;
	return (__u32)n / sizeof(__u64);
}

/* ------------------------------------------------------------------------ */
/* Record header                                                             */
/* ------------------------------------------------------------------------ */

static __always_inline void kp_fill_header(struct kp_event_header *h, __u32 kind)
{
	__u64 id = bpf_get_current_pid_tgid();

	h->kind = kind;
	h->cpu = bpf_get_smp_processor_id();
	h->ts_ns = bpf_ktime_get_ns();
	h->pid = (__u32)id;
	h->tgid = (__u32)(id >> 32);
	if (bpf_get_current_comm(h->comm, sizeof(h->comm)))
		__builtin_memset(h->comm, 0, sizeof(h->comm));
	h->cgroup_id = bpf_get_current_cgroup_id();
}

/* ------------------------------------------------------------------------ */
/* CO-RE helpers                                                             */
/* ------------------------------------------------------------------------ */

/*
 * kernfs id of the task's memory cgroup: the v1 memory hierarchy on hybrid
 * systems, the v2 cgroup with memory enabled on unified ones.  Equals the
 * inode number of that cgroup's directory.  0 if CONFIG_MEMCG is off.
 */
static __always_inline __u64 kp_task_memcg_id(struct task_struct *task)
{
	struct cgroup_subsys_state *css = NULL;
	struct css_set *cgroups;
	int id;

	if (!task)
		return 0;
	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return 0;
	id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (id < 0 || id >= 16)
		return 0;
	cgroups = BPF_CORE_READ(task, cgroups);
	if (!cgroups)
		return 0;
	if (bpf_core_read(&css, sizeof(css), &cgroups->subsys[id]) || !css)
		return 0;
	return BPF_CORE_READ(css, cgroup, kn, id);
}

static __always_inline __u32 kp_net_inum(struct net *net)
{
	if (!net)
		return 0;
	return BPF_CORE_READ(net, ns.inum);
}

static __always_inline __u32 kp_sock_net_inum(struct sock *sk)
{
	if (!sk)
		return 0;
	return kp_net_inum(BPF_CORE_READ(sk, __sk_common.skc_net.net));
}

static __always_inline __u32 kp_dev_net_inum(struct net_device *dev)
{
	if (!dev)
		return 0;
	return kp_net_inum(BPF_CORE_READ(dev, nd_net.net));
}

/*
 * Read a tracepoint __data_loc string (low 16 bits: offset from the record
 * start, high 16 bits: length) into dst.  The helper stops at the NUL and
 * does not pad: zero dst first if the bytes after the string matter (they do
 * in ring-buffer records).  Returns bytes copied (including NUL) or < 0.
 */
static __always_inline long kp_read_data_loc_str(void *ctx, __u32 data_loc,
						 char *dst, __u32 dst_len)
{
	return bpf_probe_read_kernel_str(dst, dst_len, (void *)ctx + (data_loc & 0xffff));
}

#endif /* KPULSE_COMMON_H */
