// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Test only (never a product object, so not in ebpf/src where `make check`
 * loads everything): a program the verifier must reject.  It increments a map
 * value without checking the lookup for NULL, the classic mistake:
 * "R0 invalid mem access 'map_value_or_null'".
 * (A hash map: newer kernels know an array lookup with a constant in-bounds
 * key cannot fail, and accept the same code on an array.)
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} kp_rejected SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpid")
int rejected(void *ctx)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&kp_rejected, &key);

	*count += 1; /* no NULL check */
	return 0;
}
