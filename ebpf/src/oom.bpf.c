// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * oom: one record per OOM victim, from tracepoint oom/mark_victim.
 *
 * mark_victim runs in __oom_kill_process() in the context of the task whose
 * allocation invoked the OOM killer (the "trigger" = current).  The victim is
 * only known through the tracepoint record: pid always; comm (__data_loc),
 * total_vm/anon/file/shmem rss, uid, pgtables and oom_score_adj on newer
 * kernels (all present on 6.18).  Each optional field is read only if it
 * exists in the running kernel's trace_event_raw_mark_victim (CO-RE), and
 * flagged in `valid`.
 *
 * HUATUO uses a kprobe on oom_kill_process (victim task pointer, memcg of
 * both sides, oc->totalpages); kprobes are unavailable here.  The host can
 * add the victim's cgroup from /proc/<victim_pid>/cgroup while it exits, or
 * use trigger_memcg_id (memcg OOM: the trigger is inside the OOMing memcg).
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Token bucket: 0 = unlimited. See kp_ratelimit(). */
volatile const __u64 max_events_per_second = 100;
volatile const __u32 ratelimit_nr_cpus = 1;

KP_EVENTS_RINGBUF(256 * 1024);
KP_STATS_MAP();
KP_RATELIMIT_MAP();

SEC("tracepoint/oom/mark_victim")
int oom_mark_victim(struct trace_event_raw_mark_victim *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct kp_oom_event *e;
	__u32 valid = 0;

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
	kp_fill_header(&e->hdr, KP_EV_OOM);
	e->trigger_memcg_id = kp_task_memcg_id(task);
	e->victim_pid = (__u32)ctx->pid;
	e->victim_uid = 0;
	__builtin_memset(e->victim_comm, 0, sizeof(e->victim_comm));
	e->victim_total_vm_kb = 0;
	e->victim_anon_rss_kb = 0;
	e->victim_file_rss_kb = 0;
	e->victim_shmem_rss_kb = 0;
	e->victim_pgtables_kb = 0;
	e->victim_oom_score_adj = 0;
	e->_pad0 = 0;
	e->victim_memcg_id = 0;

	if (bpf_core_field_exists(ctx->__data_loc_comm)) {
		if (kp_read_data_loc_str(ctx, ctx->__data_loc_comm, e->victim_comm,
					 sizeof(e->victim_comm)) > 0)
			valid |= KP_OOM_HAS_COMM;
	}
	if (bpf_core_field_exists(ctx->total_vm)) {
		e->victim_total_vm_kb = ctx->total_vm;
		e->victim_anon_rss_kb = ctx->anon_rss;
		e->victim_file_rss_kb = ctx->file_rss;
		e->victim_shmem_rss_kb = ctx->shmem_rss;
		valid |= KP_OOM_HAS_MM;
	}
	if (bpf_core_field_exists(ctx->uid)) {
		e->victim_uid = ctx->uid;
		valid |= KP_OOM_HAS_UID;
	}
	if (bpf_core_field_exists(ctx->pgtables)) {
		e->victim_pgtables_kb = ctx->pgtables;
		valid |= KP_OOM_HAS_PGTABLES;
	}
	if (bpf_core_field_exists(ctx->oom_score_adj)) {
		e->victim_oom_score_adj = ctx->oom_score_adj;
		valid |= KP_OOM_HAS_SCORE_ADJ;
	}
	/* Victim == trigger (it ran out of memory itself): its task is current. */
	if (e->victim_pid == e->hdr.pid) {
		e->victim_memcg_id = e->trigger_memcg_id;
		valid |= KP_OOM_HAS_VICTIM_MEMCG;
		if (!(valid & KP_OOM_HAS_COMM)) {
			__builtin_memcpy(e->victim_comm, e->hdr.comm, sizeof(e->victim_comm));
			valid |= KP_OOM_HAS_COMM;
		}
	}
	e->valid = valid;

	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
	return 0;
}
