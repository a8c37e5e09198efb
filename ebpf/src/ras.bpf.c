// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ras: hardware errors the kernel reports through tracepoints (HUATUO's ras):
 *   ras_mce          mce/mce_record                   x86 machine check
 *   ras_edac         ras/mc_event                     EDAC memory controller
 *   ras_non_standard ras/non_standard_event           ACPI GHES non-standard section
 *   ras_aer          ras/aer_event                    PCIe AER
 *   ras_thr          irq_vectors/threshold_apic_entry MCE threshold interrupt
 *   ras_arm          ras/arm_event                    ARM processor error (GHES)
 * Which exist depends on the kernel's config and architecture (a VM often
 * has none of mce and aer): each program is optional and the plugin attaches
 * those whose tracepoint exists.  Every program counts its source in
 * `hw_errors` (HUATUO's ras_hw_err_total{type}) and emits one typed record,
 * decoded here with CO-RE so that the plugin never parses a tracepoint's raw
 * layout; HUATUO's THR back-off is applied by the plugin.
 *
 * The tracepoint record types are declared locally (`___kp` flavors): a
 * kernel without the tracepoint has no such type in its BTF, the program's
 * field reads are then poisoned by the loader, and the program is simply not
 * attached.  Optional fields (added in later kernels) are read under
 * bpf_core_field_exists and left 0 otherwise.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

KP_EVENTS_RINGBUF(256 * 1024);
KP_STATS_MAP();

/* Errors by enum kp_ras_source, every one (records may be lost, counts not). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KP_RAS_NR);
	__type(key, __u32);
	__type(value, __u64);
} hw_errors SEC(".maps");

struct trace_event_raw_mce_record___kp {
	u64 mcgcap, mcgstatus, status, addr, misc, synd, ipid, ip, tsc, ppin, walltime;
	u32 cpu, cpuid, apicid, socketid, microcode;
	u8 cs, bank, cpuvendor;
} __attribute__((preserve_access_index));

struct trace_event_raw_mc_event___kp {
	unsigned int error_type;
	u32 __data_loc_msg, __data_loc_label, __data_loc_driver_detail;
	u16 error_count;
	u8 mc_index, grain_bits;
	s8 top_layer, middle_layer, lower_layer;
	long address, syndrome;
} __attribute__((preserve_access_index));

struct trace_event_raw_non_standard_event___kp {
	char sec_type[16], fru_id[16];
	u32 __data_loc_fru_text, __data_loc_buf, len;
	u8 sev;
} __attribute__((preserve_access_index));

struct trace_event_raw_aer_event___kp {
	u32 __data_loc_dev_name, status;
	u8 severity, tlp_header_valid;
	u32 tlp_header[4];
} __attribute__((preserve_access_index));

struct trace_event_raw_x86_irq_vector___kp {
	int vector;
} __attribute__((preserve_access_index));

struct trace_event_raw_arm_event___kp {
	u64 mpidr, midr;
	u32 running_state, psci_state, pei_len, ctx_len, oem_len;
	u8 affinity, sev;
	int cpu;
} __attribute__((preserve_access_index));

static __always_inline void count(__u32 source)
{
	__u64 *cnt = bpf_map_lookup_elem(&hw_errors, &source);

	if (cnt)
		*cnt += 1; /* per-CPU slot */
	kp_stat_inc(&stats, KP_STAT_HITS);
}

/* Reserves a zeroed record of `size` bytes with its header filled. */
static __always_inline void *reserve(__u64 size, __u32 kind)
{
	struct kp_event_header *h = bpf_ringbuf_reserve(&events, size, 0);

	if (!h) {
		kp_stat_inc(&stats, KP_STAT_RB_FULL);
		return NULL;
	}
	kp_fill_header(h, kind);
	return h;
}

static __always_inline void submit(void *e)
{
	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
}

#define ZERO_AFTER_HDR(e) \
	__builtin_memset((void *)(e) + sizeof((e)->hdr), 0, sizeof(*(e)) - sizeof((e)->hdr))

SEC("tracepoint/mce/mce_record")
int ras_mce(struct trace_event_raw_mce_record___kp *ctx)
{
	struct kp_ras_mce_event *e;

	count(KP_RAS_MCE);
	e = reserve(sizeof(*e), KP_EV_RAS_MCE);
	if (!e)
		return 0;
	ZERO_AFTER_HDR(e);
	e->mcgcap = ctx->mcgcap;
	e->mcgstatus = ctx->mcgstatus;
	e->status = ctx->status;
	e->addr = ctx->addr;
	e->misc = ctx->misc;
	if (bpf_core_field_exists(ctx->synd))
		e->synd = ctx->synd;
	if (bpf_core_field_exists(ctx->ipid))
		e->ipid = ctx->ipid;
	e->ip = ctx->ip;
	e->tsc = ctx->tsc;
	if (bpf_core_field_exists(ctx->ppin))
		e->ppin = ctx->ppin;
	e->walltime = ctx->walltime;
	e->cpu = ctx->cpu;
	e->cpuid = ctx->cpuid;
	e->apicid = ctx->apicid;
	e->socketid = ctx->socketid;
	if (bpf_core_field_exists(ctx->microcode))
		e->microcode = ctx->microcode;
	e->cs = ctx->cs;
	e->bank = ctx->bank;
	e->cpuvendor = ctx->cpuvendor;
	submit(e);
	return 0;
}

SEC("tracepoint/ras/mc_event")
int ras_edac(struct trace_event_raw_mc_event___kp *ctx)
{
	struct kp_ras_mc_event *e;

	count(KP_RAS_EDAC);
	e = reserve(sizeof(*e), KP_EV_RAS_EDAC);
	if (!e)
		return 0;
	ZERO_AFTER_HDR(e);
	e->address = ctx->address;
	e->syndrome = ctx->syndrome;
	e->error_type = ctx->error_type;
	e->error_count = ctx->error_count;
	e->mc_index = ctx->mc_index;
	e->grain_bits = ctx->grain_bits;
	e->top_layer = ctx->top_layer;
	e->middle_layer = ctx->middle_layer;
	e->lower_layer = ctx->lower_layer;
	kp_read_data_loc_str(ctx, ctx->__data_loc_msg, e->msg, sizeof(e->msg));
	kp_read_data_loc_str(ctx, ctx->__data_loc_label, e->label, sizeof(e->label));
	if (bpf_core_field_exists(ctx->__data_loc_driver_detail))
		kp_read_data_loc_str(ctx, ctx->__data_loc_driver_detail, e->driver_detail,
				     sizeof(e->driver_detail));
	submit(e);
	return 0;
}

SEC("tracepoint/ras/non_standard_event")
int ras_non_standard(struct trace_event_raw_non_standard_event___kp *ctx)
{
	struct kp_ras_non_standard_event *e;
	__u32 loc, len;

	count(KP_RAS_ACPI);
	e = reserve(sizeof(*e), KP_EV_RAS_NON_STANDARD);
	if (!e)
		return 0;
	ZERO_AFTER_HDR(e);
	bpf_core_read(e->sec_type, sizeof(e->sec_type), &ctx->sec_type);
	bpf_core_read(e->fru_id, sizeof(e->fru_id), &ctx->fru_id);
	e->len = ctx->len;
	e->sev = ctx->sev;
	kp_read_data_loc_str(ctx, ctx->__data_loc_fru_text, e->fru_text, sizeof(e->fru_text));
	loc = ctx->__data_loc_buf;
	len = e->len;
	if (len > sizeof(e->data))
		len = sizeof(e->data);
	if (len > 0)
		bpf_probe_read_kernel(e->data, len, (void *)ctx + (loc & 0xffff));
	submit(e);
	return 0;
}

SEC("tracepoint/ras/aer_event")
int ras_aer(struct trace_event_raw_aer_event___kp *ctx)
{
	struct kp_ras_aer_event *e;

	count(KP_RAS_AER);
	e = reserve(sizeof(*e), KP_EV_RAS_AER);
	if (!e)
		return 0;
	ZERO_AFTER_HDR(e);
	e->status = ctx->status;
	e->severity = ctx->severity;
	e->tlp_header_valid = ctx->tlp_header_valid;
	bpf_core_read(e->tlp_header, sizeof(e->tlp_header), &ctx->tlp_header);
	kp_read_data_loc_str(ctx, ctx->__data_loc_dev_name, e->dev_name, sizeof(e->dev_name));
	submit(e);
	return 0;
}

SEC("tracepoint/irq_vectors/threshold_apic_entry")
int ras_thr(struct trace_event_raw_x86_irq_vector___kp *ctx)
{
	struct kp_ras_thr_event *e;

	count(KP_RAS_THR);
	e = reserve(sizeof(*e), KP_EV_RAS_THR);
	if (!e)
		return 0;
	e->vector = ctx->vector;
	e->_pad0 = 0;
	submit(e);
	return 0;
}

SEC("tracepoint/ras/arm_event")
int ras_arm(struct trace_event_raw_arm_event___kp *ctx)
{
	struct kp_ras_arm_event *e;

	count(KP_RAS_ARM);
	e = reserve(sizeof(*e), KP_EV_RAS_ARM);
	if (!e)
		return 0;
	ZERO_AFTER_HDR(e);
	e->mpidr = ctx->mpidr;
	e->midr = ctx->midr;
	e->running_state = ctx->running_state;
	e->psci_state = ctx->psci_state;
	e->affinity = ctx->affinity;
	e->cpu = -1;
	e->sev = 0xff;
	if (bpf_core_field_exists(ctx->cpu))
		e->cpu = ctx->cpu;
	if (bpf_core_field_exists(ctx->sev))
		e->sev = ctx->sev;
	if (bpf_core_field_exists(ctx->pei_len))
		e->pei_len = ctx->pei_len;
	if (bpf_core_field_exists(ctx->ctx_len))
		e->ctx_len = ctx->ctx_len;
	if (bpf_core_field_exists(ctx->oem_len))
		e->oem_len = ctx->oem_len;
	submit(e);
	return 0;
}
