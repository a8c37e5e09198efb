// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * softlockup: detect the watchdog's "BUG: soft lockup - CPU#%d stuck for
 * %us! [%s:%d]" line through tracepoint printk/console.
 *
 * HUATUO uses a kprobe on add_taint(TAINT_SOFTLOCKUP); kprobes are
 * unavailable here.  printk/console fires for every printk record as it is
 * stored (printk_sprint), independent of the console loglevel.  The watchdog
 * prints from its hrtimer on the stuck CPU, so hdr.cpu is the stuck CPU,
 * hdr.pid/comm the task hogging it, and the captured kernel stack unwinds
 * through the timer interrupt into the stuck code.
 *
 * The match is a bounded scan of the first KP_MSG_LEN (128) bytes for
 * "soft lockup".  Each printk costs one probe read + the scan (~0.1 us).
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

KP_EVENTS_RINGBUF(256 * 1024);
KP_STATS_MAP();

#define PAT_LEN 11 /* strlen("soft lockup") */

static __always_inline int match_at(const char *b)
{
	return b[0] == 's' && b[1] == 'o' && b[2] == 'f' && b[3] == 't' &&
	       b[4] == ' ' && b[5] == 'l' && b[6] == 'o' && b[7] == 'c' &&
	       b[8] == 'k' && b[9] == 'u' && b[10] == 'p';
}

SEC("tracepoint/printk/console")
int printk_console(struct trace_event_raw_console *ctx)
{
	struct kp_softlockup_event *e;
	char buf[KP_MSG_LEN];
	long n;
	int i, found = 0;

	__builtin_memset(buf, 0, sizeof(buf));
	n = kp_read_data_loc_str(ctx, ctx->__data_loc_msg, buf, sizeof(buf));
	if (n <= PAT_LEN)
		return 0;

	for (i = 0; i <= KP_MSG_LEN - PAT_LEN; i++) {
		if (buf[i] == 0)
			break;
		if (buf[i] == 's' && match_at(&buf[i])) {
			found = 1;
			break;
		}
	}
	if (!found)
		return 0;
	kp_stat_inc(&stats, KP_STAT_HITS);

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		kp_stat_inc(&stats, KP_STAT_RB_FULL);
		return 0;
	}
	kp_fill_header(&e->hdr, KP_EV_SOFTLOCKUP);
	e->msg_len = (__u32)(n - 1); /* n counts the NUL */
	__builtin_memcpy(e->msg, buf, sizeof(e->msg));
	e->msg[KP_MSG_LEN - 1] = 0;
	e->stack_depth = kp_kernel_stack(ctx, e->stack, 0);
	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
	return 0;
}
