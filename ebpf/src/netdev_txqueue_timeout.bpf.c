// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * netdev_txqueue_timeout: the TX watchdog declared a queue of a device stuck
 * (net/net_dev_xmit_timeout, fired by dev_watchdog before the driver's
 * ndo_tx_timeout).  Rare by nature: no rate limit, one record per timeout.
 *
 * Two programs fill the same KP_EV_TXQUEUE_TIMEOUT record; the plugin
 * attaches the first that loads:
 *   txq_timeout_btf  tp_btf: the struct net_device itself, so the device's
 *                    ifindex and net namespace (container attribution) too;
 *   txq_timeout_tp   the classic tracepoint's name, driver and queue index,
 *                    for kernels without BTF tracepoints.
 * The driver name is what the tracepoint prints (netdev_drivername):
 * dev->dev.parent->driver->name, "" for a device without a parent driver.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

KP_EVENTS_RINGBUF(64 * 1024);
KP_STATS_MAP();

/* The classic tracepoint's record, CO-RE-relocated (a local flavor, so the
 * object builds against a vmlinux.h that lacks it). */
struct trace_event_raw_net_dev_xmit_timeout___kp {
	__u32 __data_loc_name;
	__u32 __data_loc_driver;
	int queue_index;
} __attribute__((preserve_access_index));

static __always_inline struct kp_txqueue_timeout_event *reserve(void)
{
	struct kp_txqueue_timeout_event *e;

	kp_stat_inc(&stats, KP_STAT_HITS);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		kp_stat_inc(&stats, KP_STAT_RB_FULL);
		return NULL;
	}
	__builtin_memset((void *)e + sizeof(e->hdr), 0, sizeof(*e) - sizeof(e->hdr));
	kp_fill_header(&e->hdr, KP_EV_TXQUEUE_TIMEOUT);
	return e;
}

static __always_inline void submit(struct kp_txqueue_timeout_event *e)
{
	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
}

SEC("tp_btf/net_dev_xmit_timeout")
int BPF_PROG(txq_timeout_btf, struct net_device *dev, int queue_index)
{
	struct kp_txqueue_timeout_event *e;
	struct device_driver *driver;
	const char *driver_name;

	e = reserve();
	if (!e)
		return 0;
	e->queue_index = queue_index;
	e->ifindex = BPF_CORE_READ(dev, ifindex);
	e->netns_inum = kp_dev_net_inum(dev);
	bpf_probe_read_kernel_str(e->name, sizeof(e->name), dev->name);
	driver = BPF_CORE_READ(dev, dev.parent, driver);
	if (driver) {
		driver_name = BPF_CORE_READ(driver, name);
		if (driver_name)
			bpf_probe_read_kernel_str(e->driver, sizeof(e->driver), driver_name);
	}
	submit(e);
	return 0;
}

SEC("tracepoint/net/net_dev_xmit_timeout")
int txq_timeout_tp(struct trace_event_raw_net_dev_xmit_timeout___kp *ctx)
{
	struct kp_txqueue_timeout_event *e;

	e = reserve();
	if (!e)
		return 0;
	e->queue_index = ctx->queue_index;
	kp_read_data_loc_str(ctx, ctx->__data_loc_name, e->name, sizeof(e->name));
	kp_read_data_loc_str(ctx, ctx->__data_loc_driver, e->driver, sizeof(e->driver));
	submit(e);
	return 0;
}
