// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * runqlat: run-queue latency (wakeup or preemption -> running again), counted
 * into HUATUO's four zones, host-wide and per memory cgroup.
 *
 *   sched/sched_wakeup, sched/sched_wakeup_new -> runq_wakeup: the task was
 *                        put on a run queue; remember now in runq_start[tid].
 *   tp_btf/sched_switch -> runq_switch: a preempted prev (still TASK_RUNNING)
 *                        goes back on the queue (start = now); for next,
 *                        latency = now - runq_start[next], counted in
 *                        runqlat_host[zone] and runqlat_cgroup[memcg][zone].
 *   sched/sched_process_exit -> runq_exit: drop the tid of an exiting task
 *                        that was woken but never ran here (HUATUO's fix for
 *                        the start table filling up).
 *   tp_btf/cgroup_rmdir -> runq_rmdir (optional): drop a removed memory
 *                        cgroup's counts.
 *
 * Zones (HUATUO): 0 [0, 10) ms, 1 [10, 20) ms, 2 [20, 50) ms, 3 >= 50 ms.
 *
 * HUATUO keys the container table by the task_group address (the cpu css)
 * and drops entries from a kprobe on free_fair_sched_group.  Kprobes are not
 * available here, and kpulse's container registry resolves memory cgroup ids
 * (kp_task_memcg_id), not cpu css addresses; container runtimes put a task in
 * the same cgroup path in every v1 hierarchy, so the memory cgroup names the
 * same container.  Removed cgroups are dropped from tp_btf/cgroup_rmdir.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define RUNQ_NR_ZONES 4
#define TASK_RUNNING 0

/* task_struct before 5.14 named the state field `state`. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

/* Enqueue time (bpf_ktime_get_ns) of each runnable thread not yet running.
 * LRU: entries whose switch-in was never seen (a thread gone another way, or
 * junk written from outside) are evicted instead of filling the table, which
 * would blind the collector for good (the fault matrix fills it on purpose). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);   /* thread id */
	__type(value, __u64);
} runq_start SEC(".maps");

/* Host-wide counts per zone (HUATUO's cpu_host_metric). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RUNQ_NR_ZONES);
	__type(key, __u32);
	__type(value, __u64);
} runqlat_host SEC(".maps");

struct runq_zones {
	__u64 count[RUNQ_NR_ZONES];
};

/* Counts per zone by memory cgroup kernfs id (HUATUO's cpu_tg_metric). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);   /* kp_task_memcg_id() of the task that waited */
	__type(value, struct runq_zones);
} runqlat_cgroup SEC(".maps");

static __always_inline void runq_enqueue(__u32 tid, __u64 now)
{
	if (tid == 0) /* the idle task */
		return;
	bpf_map_update_elem(&runq_start, &tid, &now, BPF_ANY);
}

static __always_inline __u32 runq_zone(__u64 delta_ns)
{
	if (delta_ns < 10 * 1000000ULL)
		return 0;
	if (delta_ns < 20 * 1000000ULL)
		return 1;
	if (delta_ns < 50 * 1000000ULL)
		return 2;
	return 3;
}

SEC("tracepoint/sched/sched_wakeup")
int runq_wakeup(struct trace_event_raw_sched_wakeup_template *ctx)
{
	runq_enqueue((__u32)ctx->pid, bpf_ktime_get_ns());
	return 0;
}

SEC("tracepoint/sched/sched_wakeup_new")
int runq_wakeup_new(struct trace_event_raw_sched_wakeup_template *ctx)
{
	runq_enqueue((__u32)ctx->pid, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(runq_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	struct runq_zones *zones, fresh = {};
	__u64 now = bpf_ktime_get_ns(), *start, delta, *host, memcg;
	__u32 tid, zone;
	long state;

	/* Preempted (still runnable): it waits on the run queue from now. */
	if (bpf_core_field_exists(prev->__state))
		state = BPF_CORE_READ(prev, __state);
	else
		state = BPF_CORE_READ((struct task_struct___pre514 *)prev, state);
	if (state == TASK_RUNNING)
		runq_enqueue(BPF_CORE_READ(prev, pid), now);

	tid = BPF_CORE_READ(next, pid);
	if (tid == 0)
		return 0;
	start = bpf_map_lookup_elem(&runq_start, &tid);
	if (!start) /* enqueued before the programs were attached */
		return 0;
	delta = now - *start;
	bpf_map_delete_elem(&runq_start, &tid);
	zone = runq_zone(delta);

	host = bpf_map_lookup_elem(&runqlat_host, &zone);
	if (host)
		*host += 1; /* per-CPU slot */

	memcg = kp_task_memcg_id(next);
	if (memcg == 0)
		return 0;
	zones = bpf_map_lookup_elem(&runqlat_cgroup, &memcg);
	if (!zones) {
		/* Full table: the host count above still has it. */
		bpf_map_update_elem(&runqlat_cgroup, &memcg, &fresh, BPF_NOEXIST);
		zones = bpf_map_lookup_elem(&runqlat_cgroup, &memcg);
		if (!zones)
			return 0;
	}
	if (zone < RUNQ_NR_ZONES)
		zones->count[zone] += 1;
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int runq_exit(void *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	bpf_map_delete_elem(&runq_start, &tid);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(runq_rmdir, struct cgroup *cgrp, const char *path)
{
	struct cgroup_subsys_state *css = NULL;
	__u64 id;
	int memory;

	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return 0;
	memory = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (memory < 0 || memory >= 16)
		return 0;
	/* Only cgroups of the memory hierarchy: kernfs ids repeat across hierarchies. */
	if (bpf_core_read(&css, sizeof(css), &cgrp->subsys[memory]) || !css)
		return 0;
	id = BPF_CORE_READ(cgrp, kn, id);
	bpf_map_delete_elem(&runqlat_cgroup, &id);
	return 0;
}
