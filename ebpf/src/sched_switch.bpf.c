// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sched_switch (benchmark only): one 56-byte KP_EV_SCHED_SWITCH record per
 * context switch via tp_btf/sched_switch, submitted with the adaptive wakeup
 * of kp_rb_submit().  Used for the ring-buffer throughput benchmark
 * (platform findings: ~743k ev/s per loaded CPU, 1.5% reader CPU).
 * Attach with aya BtfTracePoint::load("sched_switch", &btf) + attach().
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

KP_EVENTS_RINGBUF(4 * 1024 * 1024);
KP_STATS_MAP();

/* task_struct before 5.14 named the state field `state`. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	struct kp_sched_switch_event *e;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		kp_stat_inc(&stats, KP_STAT_RB_FULL);
		return 0;
	}
	kp_fill_header(&e->hdr, KP_EV_SCHED_SWITCH);
	e->next_pid = BPF_CORE_READ(next, pid);
	if (bpf_core_field_exists(prev->__state))
		e->prev_state = BPF_CORE_READ(prev, __state);
	else
		e->prev_state = (__u32)BPF_CORE_READ((struct task_struct___pre514 *)prev, state);
	kp_rb_submit(e, &events);
	return 0;
}
