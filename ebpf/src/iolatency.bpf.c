// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * iolatency: block request latency zones per disk and per blkio cgroup, and
 * queue freezes per disk (HUATUO's iolatency metrics).  HUATUO uses kprobes
 * (blk_mq_start_request, __rq_qos_done_bio, blk_mq_freeze_queue); this object
 * times requests with BTF tracepoints, which run where kprobes do not:
 *
 *   block_bio_queue   -> iol_bio_queue    a bio entered a request-based
 *                                         queue (blktrace's Q): its time, keyed
 *                                         by bio address
 *   block_rq_issue    -> iol_rq_issue     request handed to the driver (D): its
 *                                         time, keyed by request address
 *   block_rq_complete -> iol_rq_complete  q2c = now - the earliest Q of the
 *                                         request's bios (the first 8); d2c =
 *                                         now - D
 *   kprobe blk_mq_freeze_queue[_nomemsave] -> iol_freeze (optional: the
 *                                         plugin attaches it only where the
 *                                         kernel has kprobes; no tracepoint
 *                                         marks a queue freeze)
 *
 * HUATUO's q2c starts at bio->bi_issue; its 6.18 successor issue_time_ns
 * was 0 at completion for every request here (it is stamped for the rq-qos
 * policies only), so this object stamps bios itself.  A request none of whose bios was stamped (bios queued
 * before the attach, front halves of split bios) falls back to the request's
 * allocation time (rq->start_time_ns), else it has no q2c.
 *
 * Only latencies of at least 20 ms are counted, into HUATUO's zones (see
 * iol_zone()): a fast request costs one hash update per bio and per issue,
 * and lookups and deletes at completion, nothing else.  Counts are per request (HUATUO
 * counts q2c per bio): bios merged into a request count once, with the first
 * bio's queue time.  Everything is read by the plugin with one map walk per
 * scrape; there is no ring buffer.
 *
 * Disks are the request's gendisk (partitions count on their disk, as
 * HUATUO's disk="maj:min").  Containers: the blkio cgroup of the request's
 * first bio (bio->bi_blkg->blkcg), which the block layer sets from the
 * submitter and keeps across loop workers, writeback and throttling, so it
 * is right in interrupt context where `current` is not.  The plugin cannot
 * see cgroup inode numbers, so the first time a cgroup gets a slow request
 * its path is recorded (blkcg_paths) for the plugin to match against the
 * containers' cgroup paths.  Bio-based devices (dm, md) make no requests:
 * only the disks below them are measured.
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define IOL_ZONES 6
#define IOL_MIN_NS 20000000ULL /* HUATUO counts nothing under 20 ms */
#define IOL_MINORBITS 20
#define IOL_PATH_DEPTH 8
#define IOL_NAME_LEN 128
#define IOL_BIOS 8 /* bios of a request looked at for their queue time */

/* Slots of the `counters` map (summed over CPUs by the plugin). */
enum iol_counter {
	IOL_C_REQUESTS = 0,   /* requests completed with an issue time */
	IOL_C_NO_ISSUE = 1,   /* completed without one (issued before attach) */
	IOL_C_NO_QUEUE = 2,   /* no bio stamp and no allocation time: no q2c */
	IOL_C_CG_FULL = 3,    /* cgroup entry could not be made */
	IOL_C_MAX = 4,
};

/* Zone counts of one disk or one (cgroup, disk); the plugin reads 12 u64. */
struct iol_zones {
	__u64 q2c[IOL_ZONES];
	__u64 d2c[IOL_ZONES];
};

struct iol_cg_key {
	__u64 blkcg_id;       /* kernfs id of the blkio cgroup */
	__u32 dev;            /* disk, kernel dev_t (major << 20 | minor) */
	__u32 pad;
};

/* Cgroup path, leaf first: name[0] is the cgroup's own directory. */
struct iol_path {
	__u32 depth;          /* names filled */
	__u32 complete;       /* 1: reached the hierarchy root */
	char name[IOL_PATH_DEPTH][IOL_NAME_LEN];
};

_Static_assert(sizeof(struct iol_zones) == 96, "iol_zones layout");
_Static_assert(sizeof(struct iol_cg_key) == 16, "iol_cg_key layout");
_Static_assert(sizeof(struct iol_path) == 8 + IOL_PATH_DEPTH * IOL_NAME_LEN, "iol_path layout");

KP_STATS_MAP();

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, IOL_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Bios merged past the first IOL_BIOS of a request are left to the LRU. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);                   /* struct bio address */
	__type(value, __u64);                 /* queue time, ns */
} bio_queue SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);                   /* struct request address */
	__type(value, __u64);                 /* issue time, ns */
} rq_issue SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);                   /* disk dev_t */
	__type(value, struct iol_zones);
} blkdisk_zones SEC(".maps");

/* LRU: cgroups that are gone (and idle ones, past the cap) make room. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct iol_cg_key);
	__type(value, struct iol_zones);
} blkcg_zones SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 2048);
	__type(key, __u64);                   /* blkcg kernfs id */
	__type(value, struct iol_path);
} blkcg_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);                   /* disk dev_t */
	__type(value, __u64);                 /* freezes */
} blkdisk_freeze SEC(".maps");

/* Scratch for a path (too large for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct iol_path);
} path_scratch SEC(".maps");

/* Before 6.15 the parent pointer was `parent` (now `__parent`, RCU-managed). */
struct kernfs_node___old {
	struct kernfs_node *parent;
};


static __always_inline void iol_count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &slot);

	if (v)
		*v += 1;
}

/* HUATUO's zones: 0: 20-30, 1: 30-50, 2: 50-100, 3: 100-200, 4: 200-400,
 * 5: >400 ms; -1 under 20 ms.  Mirrored by `zone()` in the plugin. */
static __always_inline int iol_zone(__u64 ns)
{
	__u64 ms = ns / 1000000ULL;

	if (ns < IOL_MIN_NS)
		return -1;
	if (ms < 30)
		return 0;
	if (ms < 50)
		return 1;
	if (ms < 100)
		return 2;
	if (ms < 200)
		return 3;
	if (ms < 400)
		return 4;
	return 5;
}

static __always_inline __u32 iol_disk_dev(struct gendisk *disk)
{
	__u32 major, minor;

	if (!disk)
		return 0;
	major = BPF_CORE_READ(disk, major);
	minor = BPF_CORE_READ(disk, first_minor);
	return (major << IOL_MINORBITS) | minor;
}

static __always_inline struct kernfs_node *iol_kn_parent(struct kernfs_node *kn)
{
	struct kernfs_node___old *old = (void *)kn;

	if (bpf_core_field_exists(kn->__parent))
		return BPF_CORE_READ(kn, __parent);
	return BPF_CORE_READ(old, parent);
}

/* The earliest queue time of the request's first IOL_BIOS bios (their
 * entries deleted), else its allocation time; 0 if neither is known. */
static __always_inline __u64 iol_queued_ns(struct request *rq, struct bio *bio)
{
	__u64 queued = 0, key, *ts;
	int i;

	for (i = 0; i < IOL_BIOS && bio; i++) {
		key = (__u64)bio;
		ts = bpf_map_lookup_elem(&bio_queue, &key);
		if (ts) {
			if (!queued || *ts < queued)
				queued = *ts;
			bpf_map_delete_elem(&bio_queue, &key);
		}
		bio = BPF_CORE_READ(bio, bi_next);
	}
	if (!queued && bpf_core_field_exists(rq->start_time_ns))
		queued = BPF_CORE_READ(rq, start_time_ns);
	return queued;
}

/* Records the path of a cgroup once (until the LRU drops it). */
static __always_inline void iol_note_path(__u64 id, struct kernfs_node *kn)
{
	struct iol_path *p;
	struct kernfs_node *parent;
	__u32 zero = 0;
	int i;

	if (bpf_map_lookup_elem(&blkcg_paths, &id))
		return;
	p = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!p)
		return;
	p->depth = 0;
	p->complete = 0;
	for (i = 0; i < IOL_PATH_DEPTH; i++) {
		parent = iol_kn_parent(kn);
		if (!parent) { /* kn is the hierarchy root: its name is not part of paths */
			p->complete = 1;
			break;
		}
		if (bpf_probe_read_kernel_str(p->name[i], IOL_NAME_LEN, BPF_CORE_READ(kn, name)) < 0)
			p->name[i][0] = 0;
		p->depth = i + 1;
		kn = parent;
	}
	if (!p->complete && !iol_kn_parent(kn))
		p->complete = 1;
	bpf_map_update_elem(&blkcg_paths, &id, p, BPF_NOEXIST);
}

static __always_inline void iol_add(struct iol_zones *z, int q2c_zone, int d2c_zone)
{
	if (q2c_zone >= 0 && q2c_zone < IOL_ZONES)
		__sync_fetch_and_add(&z->q2c[q2c_zone], 1);
	if (d2c_zone >= 0 && d2c_zone < IOL_ZONES)
		__sync_fetch_and_add(&z->d2c[d2c_zone], 1);
}

/* The entry of `key` in `map`, made zeroed if missing; NULL if the map is full. */
static __always_inline struct iol_zones *iol_entry(void *map, void *key)
{
	struct iol_zones zero = {}, *z = bpf_map_lookup_elem(map, key);

	if (z)
		return z;
	bpf_map_update_elem(map, key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

/* Bio-based queues (dm, md: no mq_ops) make no requests to complete them. */
SEC("tp_btf/block_bio_queue")
int BPF_PROG(iol_bio_queue, struct bio *bio)
{
	__u64 key = (__u64)bio, now = bpf_ktime_get_ns();

	if (!BPF_CORE_READ(bio, bi_bdev, bd_disk, queue, mq_ops))
		return 0;
	bpf_map_update_elem(&bio_queue, &key, &now, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(iol_rq_issue, struct request *rq)
{
	__u64 key = (__u64)rq, now = bpf_ktime_get_ns();

	bpf_map_update_elem(&rq_issue, &key, &now, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(iol_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	__u64 key = (__u64)rq, now = bpf_ktime_get_ns(), *issued, queued = 0, d2c = 0, q2c = 0;
	int q2c_zone = -1, d2c_zone = -1;
	struct iol_cg_key cg = {};
	struct blkcg *blkcg;
	struct kernfs_node *kn;
	struct iol_zones *z;
	struct bio *bio;

	issued = bpf_map_lookup_elem(&rq_issue, &key);
	if (!issued) {
		iol_count(IOL_C_NO_ISSUE);
		return 0;
	}
	d2c = now - *issued;
	bpf_map_delete_elem(&rq_issue, &key);
	iol_count(IOL_C_REQUESTS);
	bio = BPF_CORE_READ(rq, bio);
	queued = iol_queued_ns(rq, bio);
	if (queued && queued <= now)
		q2c = now - queued;
	else
		iol_count(IOL_C_NO_QUEUE);
	q2c_zone = q2c ? iol_zone(q2c) : -1;
	d2c_zone = iol_zone(d2c);
	if (q2c_zone < 0 && d2c_zone < 0)
		return 0;
	kp_stat_inc(&stats, KP_STAT_HITS);

	cg.dev = iol_disk_dev(BPF_CORE_READ(rq, q, disk));
	z = iol_entry(&blkdisk_zones, &cg.dev);
	if (z)
		iol_add(z, q2c_zone, d2c_zone);

	/* The root cgroup (no parent) is the host, not a container. */
	blkcg = bio ? BPF_CORE_READ(bio, bi_blkg, blkcg) : NULL;
	if (!blkcg || !BPF_CORE_READ(blkcg, css.parent))
		return 0;
	kn = BPF_CORE_READ(blkcg, css.cgroup, kn);
	if (!kn)
		return 0;
	cg.blkcg_id = BPF_CORE_READ(kn, id);
	z = iol_entry(&blkcg_zones, &cg);
	if (!z) {
		iol_count(IOL_C_CG_FULL);
		return 0;
	}
	iol_add(z, q2c_zone, d2c_zone);
	iol_note_path(cg.blkcg_id, kn);
	return 0;
}

/* blk_mq_freeze_queue_nomemsave (6.15+) or blk_mq_freeze_queue: the plugin
 * picks the symbol; both take the queue first. */
SEC("kprobe/blk_mq_freeze_queue_nomemsave")
int BPF_KPROBE(iol_freeze, struct request_queue *q)
{
	__u32 dev = iol_disk_dev(BPF_CORE_READ(q, disk));
	__u64 one = 1, *n;

	if (!dev)
		return 0;
	n = bpf_map_lookup_elem(&blkdisk_freeze, &dev);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return 0;
	}
	bpf_map_update_elem(&blkdisk_freeze, &dev, &one, BPF_NOEXIST);
	return 0;
}
