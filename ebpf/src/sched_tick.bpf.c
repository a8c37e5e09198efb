// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sched_tick: windows in which a CPU could not take its timer interrupt
 * (interrupts disabled, or the vCPU not running) longer than threshold_ns.
 *
 * HUATUO times the scheduler tick itself with a kprobe on account_process_tick
 * (and tick_stop / tick_nohz_restart_sched_tick to skip NOHZ idle).  kprobes
 * do not attach on every kernel (not on this one), so this program times a
 * clock of its own: the host attaches it to a software cpu-clock perf event on
 * every online CPU.  That event is an hrtimer (HRTIMER_MODE_REL_PINNED_HARD)
 * whose handler runs in hard-irq context at a fixed period, like the tick, so
 * two samples farther apart than the period mean the interrupt was held off
 * for the difference.  Unlike the tick, the hrtimer keeps firing while the CPU
 * idles under NOHZ (the event is CPU-wide and does not exclude idle), so an
 * idle CPU gives no false gap: it is woken once per period instead.
 *
 * The stack is that of the interrupted context when the late interrupt was
 * finally taken: the code that re-enabled interrupts (local_irq_restore,
 * spin_unlock_irqrestore, ...) and its callers; `current` is the task that
 * had them off (or the idle task).
 *
 * Cost: one run per CPU per period (250 Hz by default): a map lookup, one
 * compare and a store; a record only past the threshold.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

KP_EVENTS_RINGBUF(64 * 1024);
KP_STATS_MAP();

const volatile __u64 threshold_ns = 10000000;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_sample SEC(".maps");

SEC("perf_event")
int sched_tick(struct bpf_perf_event_data *ctx)
{
	struct kp_sched_tick_event *e;
	__u64 now = bpf_ktime_get_ns();
	__u32 zero = 0;
	__u64 *last, interval;

	last = bpf_map_lookup_elem(&last_sample, &zero);
	if (!last)
		return 0;
	/* The first sample on a CPU only starts its clock. */
	interval = *last ? now - *last : 0;
	*last = now;
	if (interval < threshold_ns)
		return 0;
	kp_stat_inc(&stats, KP_STAT_HITS);

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		kp_stat_inc(&stats, KP_STAT_RB_FULL);
		return 0;
	}
	kp_fill_header(&e->hdr, KP_EV_SCHED_TICK);
	e->interval_ns = interval;
	e->threshold_ns = threshold_ns;
	e->period_ns = ctx->sample_period;
	e->_pad0 = 0;
	e->stack_depth = kp_kernel_stack(ctx, e->stack, 0);
	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
	return 0;
}
