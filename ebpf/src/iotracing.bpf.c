// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * iotracing: who does the IO of a saturated or slow disk, on which files, and
 * which threads wait for it.  HUATUO's iotracing uses kprobes (rq_qos_issue /
 * rq_qos_done, ext4/xfs read_iter/write_iter, io_schedule); this object uses
 * BTF tracepoints only, so that it runs where kprobes do not:
 *
 *   block_bio_queue      -> iot_bio_queue     who queued a bio (submitter's
 *                                             context), for which file, when
 *   block_rq_issue       -> iot_rq_issue      request handed to the driver
 *   block_rq_complete    -> iot_rq_complete   disk bytes, q2c and d2c of the
 *                                             request's first bio's owner
 *   iomap_dio_rw_begin   -> iot_dio_begin     fs bytes of direct IO, and the
 *   iomap_dio_complete   -> iot_dio_complete  file its bios belong to
 *   ext4_da_write_begin  -> iot_ext4_da_write fs bytes of buffered ext4 writes
 *   ext4_write_begin     -> iot_ext4_write      (optional: ext4 may be absent)
 *   mm_filemap_get_pages -> iot_filemap_read  fs bytes of buffered reads
 *   sched_switch         -> iot_sched_switch  io_schedule() sleeps and stacks
 *
 * Everything is aggregated in the kernel: file_stats per (process, file) and
 * file_paths per file are read with one map walk at the end of a capture; only
 * io_schedule sleeps of at least sched_threshold_ns go through the ring buffer
 * (rate-limited).  The plugin attaches this object only while it captures.
 *
 * File of a bio: the host inode of its first page when that page is page
 * cache (buffered IO and writeback, whichever thread submits it); else the
 * file of the direct IO its thread is submitting (cur_file); else none (ino 0:
 * filesystem metadata, raw block devices).  A request's bytes and latencies go
 * to the owner of its first bio: bios merged into it are not attributed
 * separately.  block_bio_queue fires after blk-throttle released a bio: a bio
 * a cgroup limit held back is owned by the kworker that dispatched it, and its
 * q2c leaves the throttled time out.  Bio-based devices (dm, md) make no
 * requests: their bios are not measured (the requests of the disks below are).
 */
#include "kpulse_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Report io_schedule() sleeps of at least this long (plugin setting). */
volatile const __u64 sched_threshold_ns = 10000000ULL;
/* Rate limit of KP_EV_IOSCHED records (0 = off), see kp_ratelimit(). */
volatile const __u64 max_events_per_second = 1000;
volatile const __u32 ratelimit_nr_cpus = 1;

#define IOT_PAGE_SIZE 4096 /* x86-64 and the usual arm64 configuration */
#define IOT_REQ_OP_MASK 0xff
#define IOT_REQ_OP_READ 0
#define IOT_REQ_OP_WRITE 1
#define IOT_MINORBITS 20

KP_EVENTS_RINGBUF(256 * 1024);
KP_STATS_MAP();
KP_RATELIMIT_MAP();

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct kp_iot_file_key);
	__type(value, struct kp_iot_file_stat);
} file_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct kp_iot_file_key);
	__type(value, struct kp_iot_path);
} file_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);                   /* struct bio address */
	__type(value, struct kp_iot_bio);
} bio_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);                   /* struct request address */
	__type(value, __u64);                 /* issue time, ns */
} rq_issue SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);                   /* thread id */
	__type(value, struct kp_iot_cur_file);
} cur_file SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);                   /* thread id */
	__type(value, struct kp_iot_sleep);
} io_sleep SEC(".maps");

/* Scratch for building a kp_iot_sleep before it is stored. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kp_iot_sleep);
} sleep_scratch SEC(".maps");

/* Scratch for building a kp_iot_path (too large for the BPF stack with the rest). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kp_iot_path);
} path_scratch SEC(".maps");

/* Filesystems on a block device have a real major; tmpfs, proc, overlay... have 0. */
static __always_inline int iot_block_backed(__u32 dev)
{
	return (dev >> IOT_MINORBITS) != 0;
}

/* The per-(process, file) entry, created zeroed with current's comm. */
static __always_inline struct kp_iot_file_stat *
iot_file_stat(struct kp_iot_file_key *key, const char *comm)
{
	struct kp_iot_file_stat *st = bpf_map_lookup_elem(&file_stats, key);
	struct kp_iot_file_stat zero = {};

	if (st)
		return st;
	if (comm)
		bpf_probe_read_kernel(zero.comm, sizeof(zero.comm), comm);
	else
		bpf_get_current_comm(zero.comm, sizeof(zero.comm));
	bpf_map_update_elem(&file_stats, key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&file_stats, key);
}

/* Records the dentry names of (dev, ino) once per capture. */
static __always_inline void iot_note_path(struct dentry *d, __u32 dev, __u64 ino)
{
	struct kp_iot_file_key key = { .tgid = 0, .dev = dev, .ino = ino };
	struct kp_iot_path *p;
	struct dentry *parent;
	__u32 zero = 0;
	int i;

	if (!d || bpf_map_lookup_elem(&file_paths, &key))
		return;
	p = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!p)
		return;
	__builtin_memset(p, 0, sizeof(*p));
	for (i = 0; i < KP_IOT_PATH_DEPTH; i++) {
		parent = BPF_CORE_READ(d, d_parent);
		if (!parent || parent == d) { /* the root of the filesystem */
			p->complete = 1;
			break;
		}
		bpf_probe_read_kernel_str(p->name[i], KP_IOT_NAME_LEN, BPF_CORE_READ(d, d_name.name));
		p->depth = i + 1;
		d = parent;
	}
	if (!p->complete && d && BPF_CORE_READ(d, d_parent) == d)
		p->complete = 1;
	bpf_map_update_elem(&file_paths, &key, p, BPF_NOEXIST);
}

/* A dentry of an inode (its first alias), for files seen through their inode only. */
static __always_inline struct dentry *iot_inode_dentry(struct inode *inode)
{
	struct hlist_node *first = BPF_CORE_READ(inode, i_dentry.first);

	if (!first)
		return NULL;
	return (struct dentry *)((void *)first - bpf_core_field_offset(struct dentry, d_u.d_alias));
}

static __always_inline void iot_fs_bytes(struct inode *inode, struct dentry *dentry,
					 __u64 bytes, int write, __u32 flags)
{
	struct kp_iot_file_key key = {};
	struct kp_iot_file_stat *st;

	if (!inode || !bytes)
		return;
	key.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	if (!iot_block_backed(key.dev))
		return;
	key.ino = BPF_CORE_READ(inode, i_ino);
	key.tgid = bpf_get_current_pid_tgid() >> 32;
	st = iot_file_stat(&key, NULL);
	if (!st)
		return;
	if (write)
		__sync_fetch_and_add(&st->fs_write_bytes, bytes);
	else
		__sync_fetch_and_add(&st->fs_read_bytes, bytes);
	st->flags |= flags;
	iot_note_path(dentry ? dentry : iot_inode_dentry(inode), key.dev, key.ino);
}

SEC("tp_btf/iomap_dio_rw_begin")
int BPF_PROG(iot_dio_begin, struct kiocb *iocb, struct iov_iter *iter)
{
	struct file *file = BPF_CORE_READ(iocb, ki_filp);
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct kp_iot_cur_file cur = { .flags = KP_IOT_F_DIRECT };

	if (!inode)
		return 0;
	iot_fs_bytes(inode, BPF_CORE_READ(file, f_path.dentry), BPF_CORE_READ(iter, count),
		     BPF_CORE_READ(iter, data_source), KP_IOT_F_DIRECT);
	cur.ino = BPF_CORE_READ(inode, i_ino);
	cur.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	bpf_map_update_elem(&cur_file, &tid, &cur, BPF_ANY);
	return 0;
}

/* Runs in the submitter for synchronous direct IO; async completions run
 * elsewhere and leave the entry to the LRU (the page-cache check of
 * iot_bio_queue comes first, so a stale entry only names direct IO bios). */
SEC("tp_btf/iomap_dio_complete")
int BPF_PROG(iot_dio_complete)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	bpf_map_delete_elem(&cur_file, &tid);
	return 0;
}

SEC("tp_btf/ext4_da_write_begin")
int BPF_PROG(iot_ext4_da_write, struct inode *inode, loff_t pos, unsigned int len)
{
	iot_fs_bytes(inode, NULL, len, 1, 0);
	return 0;
}

SEC("tp_btf/ext4_write_begin")
int BPF_PROG(iot_ext4_write, struct inode *inode, loff_t pos, unsigned int len)
{
	iot_fs_bytes(inode, NULL, len, 1, 0);
	return 0;
}

/* filemap_read() asks for page indexes [index, last_index]: page granularity. */
SEC("tp_btf/mm_filemap_get_pages")
int BPF_PROG(iot_filemap_read, struct address_space *mapping, unsigned long index,
	     unsigned long last_index)
{
	if (last_index < index)
		return 0;
	iot_fs_bytes(BPF_CORE_READ(mapping, host), NULL,
		     (__u64)(last_index - index + 1) * IOT_PAGE_SIZE, 0, 0);
	return 0;
}

SEC("tp_btf/block_bio_queue")
int BPF_PROG(iot_bio_queue, struct bio *bio)
{
	__u64 id = bpf_get_current_pid_tgid(), key = (__u64)bio;
	struct kp_iot_bio b = { .ts_ns = bpf_ktime_get_ns(), .tgid = id >> 32 };
	struct bio_vec *vec = BPF_CORE_READ(bio, bi_io_vec);
	struct address_space *mapping = NULL;
	struct kp_iot_cur_file *cur;
	__u32 tid = (__u32)id;

	if (vec) {
		struct page *page = BPF_CORE_READ(vec, bv_page);

		if (page)
			mapping = BPF_CORE_READ(page, mapping);
	}
	/* Low bits set: anonymous/movable/KSM pages (direct IO of user memory). */
	if (mapping && !((unsigned long)mapping & 0x3)) {
		struct inode *host = BPF_CORE_READ(mapping, host);
		__u32 dev = host ? BPF_CORE_READ(host, i_sb, s_dev) : 0;

		if (iot_block_backed(dev)) {
			b.dev = dev;
			b.ino = BPF_CORE_READ(host, i_ino);
		}
	}
	if (!b.ino) {
		cur = bpf_map_lookup_elem(&cur_file, &tid);
		if (cur) {
			b.ino = cur->ino;
			b.dev = cur->dev;
			b.flags = cur->flags;
		}
	}
	if (!b.ino)
		b.dev = BPF_CORE_READ(bio, bi_bdev, bd_dev);
	bpf_get_current_comm(b.comm, sizeof(b.comm));
	bpf_map_update_elem(&bio_start, &key, &b, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(iot_rq_issue, struct request *rq)
{
	__u64 key = (__u64)rq, now = bpf_ktime_get_ns();

	bpf_map_update_elem(&rq_issue, &key, &now, BPF_ANY);
	return 0;
}

static __always_inline void iot_max(__u64 *slot, __u64 v)
{
	if (v > *slot)
		*slot = v; /* a lost race only under-reports one maximum */
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(iot_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	__u64 rq_key = (__u64)rq, bio_key, now = bpf_ktime_get_ns(), *issued, d2c = 0, q2c = 0;
	struct kp_iot_file_key key = {};
	struct kp_iot_file_stat *st;
	struct kp_iot_bio *b;
	__u32 op = BPF_CORE_READ(rq, cmd_flags) & IOT_REQ_OP_MASK, disk_dev = 0;
	struct block_device *part;

	issued = bpf_map_lookup_elem(&rq_issue, &rq_key);
	if (issued) {
		d2c = now - *issued;
		bpf_map_delete_elem(&rq_issue, &rq_key);
	}
	bio_key = (__u64)BPF_CORE_READ(rq, bio);
	b = bio_key ? bpf_map_lookup_elem(&bio_start, &bio_key) : NULL;
	if (!b)
		return 0; /* queued before the capture started, or by a bio-based path */
	kp_stat_inc(&stats, KP_STAT_HITS);
	q2c = now - b->ts_ns;
	key.tgid = b->tgid;
	key.dev = b->dev;
	key.ino = b->ino;
	st = iot_file_stat(&key, b->comm);
	if (!st) {
		bpf_map_delete_elem(&bio_start, &bio_key);
		return 0;
	}
	if (op == IOT_REQ_OP_READ)
		__sync_fetch_and_add(&st->disk_read_bytes, nr_bytes);
	else if (op == IOT_REQ_OP_WRITE)
		__sync_fetch_and_add(&st->disk_write_bytes, nr_bytes);
	__sync_fetch_and_add(&st->q2c_sum_ns, q2c);
	__sync_fetch_and_add(&st->nr_q2c, 1);
	iot_max(&st->max_q2c_ns, q2c);
	if (issued) {
		__sync_fetch_and_add(&st->d2c_sum_ns, d2c);
		__sync_fetch_and_add(&st->nr_d2c, 1);
		iot_max(&st->max_d2c_ns, d2c);
	}
	part = BPF_CORE_READ(rq, part);
	if (part)
		disk_dev = BPF_CORE_READ(part, bd_dev);
	st->disk_dev = disk_dev;
	st->flags |= b->flags;
	bpf_map_delete_elem(&bio_start, &bio_key);
	return 0;
}

/*
 * io_schedule() marks the task in_iowait around schedule(): a non-preempted
 * switch-out with in_iowait set is an IO wait.  Its stack is taken then, from
 * current (= prev), so that it shows io_schedule() and the scheduler frames
 * (the saved stack of a sleeping task leaves those out); it is reported at the
 * switch-in if the sleep was long.
 */
SEC("tp_btf/sched_switch")
int BPF_PROG(iot_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u64 now = bpf_ktime_get_ns(), latency;
	struct kp_iosched_event *e;
	struct kp_iot_sleep *s;
	__u32 tid, zero = 0;

	if (!preempt && BPF_CORE_READ_BITFIELD_PROBED(prev, in_iowait)) {
		s = bpf_map_lookup_elem(&sleep_scratch, &zero);
		if (s) {
			s->ts_ns = now;
			s->cpu = bpf_get_smp_processor_id();
			s->stack_depth = kp_kernel_stack(ctx, s->stack, 0);
			tid = BPF_CORE_READ(prev, pid);
			bpf_map_update_elem(&io_sleep, &tid, s, BPF_ANY);
		}
	}
	tid = BPF_CORE_READ(next, pid);
	s = bpf_map_lookup_elem(&io_sleep, &tid);
	if (!s)
		return 0;
	latency = now - s->ts_ns;
	if (latency < sched_threshold_ns) {
		bpf_map_delete_elem(&io_sleep, &tid);
		return 0;
	}
	kp_stat_inc(&stats, KP_STAT_HITS);
	if (!kp_ratelimit(&ratelimit, max_events_per_second, ratelimit_nr_cpus)) {
		kp_stat_inc(&stats, KP_STAT_RATELIMITED);
		bpf_map_delete_elem(&io_sleep, &tid);
		return 0;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		kp_stat_inc(&stats, KP_STAT_RB_FULL);
		bpf_map_delete_elem(&io_sleep, &tid);
		return 0;
	}
	e->hdr.kind = KP_EV_IOSCHED;
	e->hdr.cpu = bpf_get_smp_processor_id();
	e->hdr.ts_ns = now;
	e->hdr.pid = tid;
	e->hdr.tgid = BPF_CORE_READ(next, tgid);
	if (bpf_probe_read_kernel_str(e->hdr.comm, sizeof(e->hdr.comm), next->comm) < 0)
		__builtin_memset(e->hdr.comm, 0, sizeof(e->hdr.comm));
	e->hdr.cgroup_id = BPF_CORE_READ(next, cgroups, dfl_cgrp, kn, id);
	e->latency_ns = latency;
	e->sleep_ts_ns = s->ts_ns;
	e->sleep_cpu = s->cpu;
	e->stack_depth = s->stack_depth;
	__builtin_memcpy(e->stack, s->stack, sizeof(e->stack));
	/* Deleted last: s points into the map value until here. */
	bpf_map_delete_elem(&io_sleep, &tid);
	kp_rb_submit(e, &events);
	kp_stat_inc(&stats, KP_STAT_EMITTED);
	return 0;
}
