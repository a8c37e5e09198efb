// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * memory_reclaim: memory cgroup limit reclaims ("direct stalls") per memory
 * cgroup (HUATUO's memory_reclaim_container_directstall).
 *
 *   vmscan/mm_vmscan_memcg_reclaim_begin -> memcg_reclaim_begin: one count
 *       for the memory cgroup of the task that reclaims (try_charge hitting
 *       the limit, memory.high, a memory.reclaim write), unless it is kswapd.
 *   tp_btf/cgroup_rmdir -> memcg_reclaim_rmdir (optional): drop a removed
 *       memory cgroup's count.
 *
 * HUATUO keys the table by the memory css address and drops entries from a
 * kprobe on mem_cgroup_css_released; kprobes are not available here, and
 * kpulse's container registry resolves memory cgroup kernfs ids
 * (kp_task_memcg_id), so those are the keys, dropped on cgroup_rmdir.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* include/linux/sched.h */
#define PF_KSWAPD 0x00020000

/* Memory cgroup kernfs id -> limit reclaims entered by its tasks. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, __u64);
} memcg_directstall SEC(".maps");

SEC("tracepoint/vmscan/mm_vmscan_memcg_reclaim_begin")
int memcg_reclaim_begin(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 memcg, *count, one = 1;

	if (BPF_CORE_READ(task, flags) & PF_KSWAPD)
		return 0;
	memcg = kp_task_memcg_id(task);
	if (memcg == 0)
		return 0;
	count = bpf_map_lookup_elem(&memcg_directstall, &memcg);
	if (count)
		*count += 1; /* per-CPU slot */
	else
		bpf_map_update_elem(&memcg_directstall, &memcg, &one, BPF_NOEXIST);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(memcg_reclaim_rmdir, struct cgroup *cgrp, const char *path)
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
	bpf_map_delete_elem(&memcg_directstall, &id);
	return 0;
}
