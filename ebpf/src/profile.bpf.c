// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * profile: the host's built-in sampler (host/src/profiler/), not a plugin object.
 *
 *   on_cpu   perf_event (software cpu-clock, one event per online CPU, attached
 *            by the host at the requested frequency): the kernel and user stack
 *            of whatever runs, counted in `counts`.
 *   off_cpu  tp_btf/sched_switch: the stack of a task that blocks is kept in
 *            `offcpu_start` at switch-out; when the task runs again the
 *            blocked nanoseconds are added to its `counts` entry.
 *
 * Stacks are deduplicated in the STACK_TRACE map `stacks` (bcc's scheme:
 * BPF_F_FAST_STACK_CMP | BPF_F_REUSE_STACKID); the host sizes `stacks` and
 * `counts` at load (set_max_entries), so a profile's kernel memory is bounded.
 * What does not fit is counted in `stats`, never silently dropped.
 *
 * Filter (volatile consts set at load): every task, the tasks of one cgroup v2
 * subtree (ancestor id at the target's level), of one memory cgroup subtree
 * (v1 hybrid hosts, where containers have no v2 id), or one thread group.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define PROFILE_TARGET_HOST 0
#define PROFILE_TARGET_CGROUP 1
#define PROFILE_TARGET_MEMCG 2
#define PROFILE_TARGET_PID 3

/* Counters in `stats` (per CPU). */
#define PROFILE_STAT_SAMPLES 0
#define PROFILE_STAT_LOST_STACK 1 /* bpf_get_stackid failed: map full or collision */
#define PROFILE_STAT_LOST_COUNT 2 /* `counts` full */
#define PROFILE_STAT_LOST_OFFCPU 3 /* `offcpu_start` full */
#define PROFILE_STAT_MAX 4

/* Walks up this many memory cgroups to find the target (nesting inside a container). */
#define PROFILE_MEMCG_DEPTH 8

#define PROFILE_EFAULT 14 /* no such stack: errno.h is not available to BPF */

const volatile __u32 target_kind = PROFILE_TARGET_HOST;
const volatile __u64 target_id = 0; /* cgroup v2 id, memcg kernfs id, or tgid */
const volatile __u32 target_level = 0; /* the v2 cgroup's level (root is 0) */
const volatile __u32 kernel_stacks = 1;
const volatile __u32 user_stacks = 1;

struct profile_key {
	__u32 tgid;
	__s32 kernel_stack_id; /* < 0: none (not asked, or lost) */
	__s32 user_stack_id; /* < 0: none (a kernel thread, not asked, or lost) */
	__u32 pad;
	__u64 cgroup_id;
	char comm[16];
};

struct offcpu_start {
	__u64 ts;
	struct profile_key key;
};

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
	__uint(max_entries, 4096);
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct profile_key);
	__type(value, __u64);
	__uint(max_entries, 4096);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* tid */
	__type(value, struct offcpu_start);
	__uint(max_entries, 16384);
} offcpu_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, PROFILE_STAT_MAX);
} stats SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline int memcg_matches(struct task_struct *task)
{
	struct cgroup_subsys_state *css = NULL;
	struct css_set *cgroups;
	int id;

	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return 0;
	id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (id < 0 || id >= 16)
		return 0;
	cgroups = BPF_CORE_READ(task, cgroups);
	if (!cgroups || bpf_core_read(&css, sizeof(css), &cgroups->subsys[id]))
		return 0;
	for (int i = 0; i < PROFILE_MEMCG_DEPTH && css; i++) {
		if (BPF_CORE_READ(css, cgroup, kn, id) == target_id)
			return 1;
		css = BPF_CORE_READ(css, parent);
	}
	return 0;
}

/* Whether the current task is one the session samples. */
static __always_inline int wanted(struct task_struct *task, __u32 tgid)
{
	switch (target_kind) {
	case PROFILE_TARGET_CGROUP:
		return bpf_get_current_ancestor_cgroup_id(target_level) == target_id;
	case PROFILE_TARGET_MEMCG:
		return memcg_matches(task);
	case PROFILE_TARGET_PID:
		return tgid == (__u32)target_id;
	default:
		return 1;
	}
}

/* Fills `key` for the current task; returns 0 when the task is not sampled. */
static __always_inline int current_key(void *ctx, struct profile_key *key)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (!wanted(task, tgid))
		return 0;
	key->tgid = tgid;
	key->pad = 0;
	key->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&key->comm, sizeof(key->comm));
	key->kernel_stack_id = -1;
	key->user_stack_id = -1;
	if (kernel_stacks) {
		key->kernel_stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_FAST_STACK_CMP | BPF_F_REUSE_STACKID);
		if (key->kernel_stack_id < 0 && key->kernel_stack_id != -PROFILE_EFAULT)
			stat_inc(PROFILE_STAT_LOST_STACK);
	}
	/* Kernel threads have no user stack: -EFAULT, not a loss. */
	if (user_stacks && BPF_CORE_READ(task, mm)) {
		key->user_stack_id = bpf_get_stackid(ctx, &stacks,
						     BPF_F_USER_STACK | BPF_F_FAST_STACK_CMP | BPF_F_REUSE_STACKID);
		if (key->user_stack_id < 0 && key->user_stack_id != -PROFILE_EFAULT)
			stat_inc(PROFILE_STAT_LOST_STACK);
	}
	return 1;
}

static __always_inline void add(struct profile_key *key, __u64 value)
{
	__u64 *count = bpf_map_lookup_elem(&counts, key);

	if (count) {
		__sync_fetch_and_add(count, value);
		return;
	}
	if (bpf_map_update_elem(&counts, key, &value, BPF_NOEXIST)) {
		/* Raced with another CPU creating it, or the map is full. */
		count = bpf_map_lookup_elem(&counts, key);
		if (count)
			__sync_fetch_and_add(count, value);
		else
			stat_inc(PROFILE_STAT_LOST_COUNT);
	}
}

SEC("perf_event")
int on_cpu(struct bpf_perf_event_data *ctx)
{
	struct profile_key key;

	if (!current_key(ctx, &key))
		return 0;
	stat_inc(PROFILE_STAT_SAMPLES);
	add(&key, 1);
	return 0;
}

/* task_struct before 5.14 named the state field `state`. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

SEC("tp_btf/sched_switch")
int BPF_PROG(off_cpu, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	struct offcpu_start *start, entry = {};
	__u64 now = bpf_ktime_get_ns();
	__u32 next_tid = BPF_CORE_READ(next, pid);
	long state;

	/* `prev` is the current task: its stack is the one that blocks. A preempted or
	 * still-runnable task is waiting for a CPU, not blocked. */
	if (bpf_core_field_exists(prev->__state))
		state = BPF_CORE_READ(prev, __state);
	else
		state = BPF_CORE_READ((struct task_struct___pre514 *)prev, state);
	if (!preempt && state != 0 && current_key(ctx, &entry.key)) {
		__u32 prev_tid = BPF_CORE_READ(prev, pid);

		entry.ts = now;
		if (bpf_map_update_elem(&offcpu_start, &prev_tid, &entry, BPF_ANY))
			stat_inc(PROFILE_STAT_LOST_OFFCPU);
	}

	start = bpf_map_lookup_elem(&offcpu_start, &next_tid);
	if (start) {
		if (now > start->ts) {
			stat_inc(PROFILE_STAT_SAMPLES);
			add(&start->key, now - start->ts);
		}
		bpf_map_delete_elem(&offcpu_start, &next_tid);
	}
	return 0;
}
