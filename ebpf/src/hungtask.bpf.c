// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * hungtask: the kernel's hung-task detector (khungtaskd) fires
 * sched/sched_process_hang for each task blocked in D state longer than
 * kernel.hung_task_timeout_secs.  current is khungtaskd, so its stack is
 * useless: only the hung task's pid/comm are recorded; the host collects
 * stacks afterwards (sysrq w / l, /proc/<pid>/stack), as HUATUO does.
 *
 * The record's comm is a __data_loc string on 6.18 (and 7.0); older kernels
 * have an inline char comm[16].  Both layouts are handled with CO-RE.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

KP_EVENTS_RINGBUF(256 * 1024);
KP_STATS_MAP();

/* Pre-__data_loc layout (kernels before the comm -> __string change). */
struct trace_event_raw_sched_process_hang___old {
	struct trace_entry ent;
	char comm[16];
	pid_t pid;
} __attribute__((preserve_access_index));

SEC("tracepoint/sched/sched_process_hang")
int process_hang(struct trace_event_raw_sched_process_hang *ctx)
{
	struct trace_event_raw_sched_process_hang___old *old = (void *)ctx;
	struct kp_hungtask_event *e;

	kp_stat_inc(&stats, KP_STAT_HITS);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		kp_stat_inc(&stats, KP_STAT_RB_FULL);
		return 0;
	}
	kp_fill_header(&e->hdr, KP_EV_HUNGTASK);
	e->_pad0 = 0;
	__builtin_memset(e->hung_comm, 0, sizeof(e->hung_comm));

	if (bpf_core_field_exists(ctx->__data_loc_comm)) {
		e->hung_pid = (__u32)ctx->pid;
		kp_read_data_loc_str(ctx, ctx->__data_loc_comm, e->hung_comm,
				     sizeof(e->hung_comm));
	} else if (bpf_core_field_exists(old->comm)) {
		e->hung_pid = (__u32)old->pid;
		bpf_probe_read_kernel_str(e->hung_comm, sizeof(e->hung_comm), old->comm);
	} else {
		e->hung_pid = 0;
	}

	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
	return 0;
}
