// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * getsid_probe (tests only): a uprobe on a user-space function (the tests use libc's
 * getsid) that reports each call through a perf event array, so the uprobe attach kind,
 * perf-array reading and program detach are tested on the real kernel.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} samples SEC(".maps");

struct getsid_sample {
	__u32 magic; /* "kpul" */
	__u32 tgid;
	__u64 argument;
};

SEC("uprobe")
int on_getsid(struct pt_regs *ctx)
{
	struct getsid_sample sample = {
		.magic = 0x6c75706b,
		.tgid = bpf_get_current_pid_tgid() >> 32,
		.argument = PT_REGS_PARM1(ctx),
	};

	bpf_perf_event_output(ctx, &samples, BPF_F_CURRENT_CPU, &sample, sizeof(sample));
	return 0;
}
