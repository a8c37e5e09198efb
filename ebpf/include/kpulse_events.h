/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * kpulse ring-buffer record layouts (kernel -> host ABI).
 *
 * Every record starts with `struct kp_event_header`; `kind` selects the
 * layout.  All structs are naturally aligned, explicitly padded (no implicit
 * holes, no trailing padding) and little-endian (host order) unless a field
 * says "network byte order".  The host reads them with read_unaligned from the
 * ring buffer map named `events` of each object.  Sizes are pinned by the
 * _Static_asserts at the bottom: change a layout => bump KP_ABI_VERSION.
 *
 * ==========================================================================
 * Object / program / attach-point / map table (host attaches by program name
 * + tracepoint category/name; all programs of an object should be attached)
 * ==========================================================================
 *
 *  object               program fn        type        attach (category/name)
 *  -------------------- ----------------- ----------- ------------------------------------------
 *  softirq.bpf.o        softirq_raise     tracepoint  irq/softirq_raise
 *                       softirq_entry     tracepoint  irq/softirq_entry
 *     maps: events (RINGBUF 256K), softirq_raise_ts (PERCPU_ARRAY[10] u64),
 *           softirq_zones (PERCPU_ARRAY[40] u64, idx vec*4+zone), stats
 *  oom.bpf.o            oom_mark_victim   tracepoint  oom/mark_victim
 *     maps: events (RINGBUF 256K), ratelimit, stats
 *  hungtask.bpf.o       process_hang      tracepoint  sched/sched_process_hang
 *     maps: events (RINGBUF 256K), stats
 *  memreclaim.bpf.o     reclaim_begin     tracepoint  vmscan/mm_vmscan_direct_reclaim_begin
 *                       reclaim_end       tracepoint  vmscan/mm_vmscan_direct_reclaim_end
 *                       memcg_rcl_begin   tracepoint  vmscan/mm_vmscan_memcg_reclaim_begin
 *                       memcg_rcl_end     tracepoint  vmscan/mm_vmscan_memcg_reclaim_end
 *     maps: events (RINGBUF 256K), reclaim_start (LRU HASH u32 tid -> struct kp_reclaim_start), stats
 *     (the memcg_* pair is optional: attach it to also see memcg-limit reclaim)
 *  dropwatch.bpf.o      kfree_skb         tracepoint  skb/kfree_skb
 *     maps: events (RINGBUF 256K), drop_reasons (HASH u32 reason -> u64 count),
 *           ratelimit, stats
 *  net_rx_latency.bpf.o rx_netif          tracepoint  net/netif_receive_skb
 *                       rx_tcp            tracepoint  tcp/tcp_probe
 *                       rx_usercopy       tracepoint  skb/skb_copy_datagram_iovec
 *     maps: events (RINGBUF 512K), ratelimit, stats
 *  softlockup.bpf.o     printk_console    tracepoint  printk/console
 *     maps: events (RINGBUF 256K), stats
 *  sched_switch.bpf.o   sched_switch      tp_btf      sched_switch (BtfTracePoint, benchmark only)
 *     maps: events (RINGBUF 4M), stats
 *  iotracing.bpf.o      iot_bio_queue     tp_btf      block_bio_queue
 *                       iot_rq_issue      tp_btf      block_rq_issue
 *                       iot_rq_complete   tp_btf      block_rq_complete
 *                       iot_dio_begin     tp_btf      iomap_dio_rw_begin
 *                       iot_dio_complete  tp_btf      iomap_dio_complete
 *                       iot_ext4_da_write tp_btf      ext4_da_write_begin (optional)
 *                       iot_ext4_write    tp_btf      ext4_write_begin (optional)
 *                       iot_filemap_read  tp_btf      mm_filemap_get_pages
 *                       iot_sched_switch  tp_btf      sched_switch
 *     maps: events (RINGBUF 256K, KP_EV_IOSCHED), file_stats (HASH struct
 *           kp_iot_file_key -> struct kp_iot_file_stat), file_paths (HASH
 *           struct kp_iot_file_key -> struct kp_iot_path), bio_start (LRU bio ->
 *           struct kp_iot_bio), rq_issue (LRU request -> u64 ns), cur_file,
 *           io_sleep, ratelimit, stats; attached only while capturing
 *
 *  Common maps:
 *    events    BPF_MAP_TYPE_RINGBUF; records below; adaptive wakeup (see
 *              kpulse_common.h): the host MUST also drain on a timer.
 *    stats     PERCPU_ARRAY[4] u64, index enum kp_stat (sum over CPUs).
 *    ratelimit PERCPU_ARRAY[1] struct kp_ratelimit_state (internal).
 *
 *  `volatile const` knobs (override with aya EbpfLoader::override_global):
 *    softirq:        softirq_threshold_ns = 10000000 (10 ms)
 *    oom:            max_events_per_second = 100, ratelimit_nr_cpus = 1
 *    memreclaim:     reclaim_threshold_ns = 900000000 (900 ms)
 *    dropwatch:      max_events_per_second = 100, ratelimit_nr_cpus = 1,
 *                    ignore_reason_not_specified = 1
 *    net_rx_latency: mono_wall_offset = 0 (MUST be set, see struct),
 *                    netif_threshold_ns = 5000000, tcp_threshold_ns = 10000000,
 *                    usercopy_threshold_ns = 115000000, tcp_only = 1,
 *                    excluded_netns_inum = 0, max_events_per_second = 0 (off),
 *                    ratelimit_nr_cpus = 1
 *  Rate limits are per-CPU token buckets of max_events_per_second /
 *  ratelimit_nr_cpus events/s each (burst = 1 s worth); set ratelimit_nr_cpus
 *  to the number of possible CPUs to make max_events_per_second a global cap.
 *  max_events_per_second = 0 disables the limiter.
 */
#ifndef KPULSE_EVENTS_H
#define KPULSE_EVENTS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define KP_ABI_VERSION 1

#define KP_COMM_LEN      16
#define KP_IFNAME_LEN    16
#define KP_STACK_DEPTH   32   /* kernel stack frames captured */
#define KP_MSG_LEN       128  /* printk excerpt bytes */

/* kp_event_header.kind */
enum kp_event_kind {
	KP_EV_SOFTIRQ        = 1,
	KP_EV_OOM            = 2,
	KP_EV_HUNGTASK       = 3,
	KP_EV_MEMRECLAIM     = 4,
	KP_EV_DROP           = 5,
	KP_EV_NET_RX_LATENCY = 6,
	KP_EV_SOFTLOCKUP     = 7,
	KP_EV_SCHED_SWITCH   = 8,
	KP_EV_IOSCHED        = 9,
};

/* Index into the per-CPU `stats` map of every object. */
enum kp_stat {
	KP_STAT_EMITTED     = 0, /* records submitted to `events` */
	KP_STAT_RB_FULL     = 1, /* bpf_ringbuf_reserve failed: record lost */
	KP_STAT_RATELIMITED = 2, /* candidate dropped by the token bucket */
	KP_STAT_HITS        = 3, /* candidates (passed threshold/filters) */
	KP_STAT_MAX         = 4,
};

/*
 * Common header, 48 bytes.  Describes `current` on the CPU where the hook ran.
 * In softirq/irq context (softirq, dropwatch, net_rx NETIF) that is the
 * interrupted task, possibly unrelated to the event, or the idle task (pid 0).
 */
struct kp_event_header {
	__u32 kind;                 /*  0: enum kp_event_kind */
	__u32 cpu;                  /*  4: bpf_get_smp_processor_id() */
	__u64 ts_ns;                /*  8: bpf_ktime_get_ns(), CLOCK_MONOTONIC ns */
	__u32 pid;                  /* 16: current thread id (kernel pid) */
	__u32 tgid;                 /* 20: current process id (kernel tgid) */
	char  comm[KP_COMM_LEN];    /* 24: current->comm, NUL padded */
	__u64 cgroup_id;            /* 40: bpf_get_current_cgroup_id(): cgroup v2
	                             *     (default hierarchy) kernfs id = inode of
	                             *     the cgroup2 directory; 0 if none */
};

/* ---- softirq.bpf.o : KP_EV_SOFTIRQ (80 bytes) ---------------------------- */
/* Latency zones used for `zone` and the softirq_zones map. */
enum kp_softirq_zone {
	KP_SOFTIRQ_ZONE_LT_10US  = 0, /* latency <  10 us */
	KP_SOFTIRQ_ZONE_LT_100US = 1, /* latency < 100 us */
	KP_SOFTIRQ_ZONE_LT_1MS   = 2, /* latency <   1 ms */
	KP_SOFTIRQ_ZONE_GE_1MS   = 3, /* latency >=  1 ms */
	KP_SOFTIRQ_NR_ZONES      = 4,
};
#define KP_NR_SOFTIRQS 10

struct kp_softirq_event {
	struct kp_event_header hdr; /*  0: task on the CPU at softirq_entry */
	__u32 vec;                  /* 48: softirq vector: 0 HI, 1 TIMER, 2 NET_TX,
	                             *     3 NET_RX, 4 BLOCK, 5 IRQ_POLL, 6 TASKLET,
	                             *     7 SCHED, 8 HRTIMER, 9 RCU */
	__u32 zone;                 /* 52: enum kp_softirq_zone of latency_ns */
	__u64 latency_ns;           /* 56: softirq_entry - first softirq_raise, ns */
	__u64 raise_ts_ns;          /* 64: CLOCK_MONOTONIC ns of the (first) raise */
	__u64 threshold_ns;         /* 72: softirq_threshold_ns in effect, ns */
};

/* ---- oom.bpf.o : KP_EV_OOM (136 bytes) ----------------------------------- */
/* kp_oom_event.valid bits: which victim fields the kernel provided. */
#define KP_OOM_HAS_COMM         (1u << 0) /* victim_comm */
#define KP_OOM_HAS_MM           (1u << 1) /* victim_{total_vm,anon,file,shmem}_*_kb */
#define KP_OOM_HAS_UID          (1u << 2) /* victim_uid */
#define KP_OOM_HAS_PGTABLES     (1u << 3) /* victim_pgtables_kb */
#define KP_OOM_HAS_SCORE_ADJ    (1u << 4) /* victim_oom_score_adj */
#define KP_OOM_HAS_VICTIM_MEMCG (1u << 5) /* victim_memcg_id (victim == current) */

struct kp_oom_event {
	struct kp_event_header hdr; /*   0: the TRIGGER: task whose allocation ran
	                             *      the OOM killer (current at mark_victim) */
	__u64 trigger_memcg_id;     /*  48: kernfs id of the trigger's memory
	                             *      cgroup (cgroup v1 memory hierarchy or v2)
	                             *      = inode of its memory cgroup dir; 0 if n/a */
	__u32 victim_pid;           /*  56: victim thread id (kernel pid) */
	__u32 victim_uid;           /*  60: victim uid (from the OOM killer) */
	char  victim_comm[KP_COMM_LEN]; /* 64: victim comm, NUL padded */
	__u64 victim_total_vm_kb;   /*  80: victim mm total_vm, KiB */
	__u64 victim_anon_rss_kb;   /*  88: victim anon RSS, KiB */
	__u64 victim_file_rss_kb;   /*  96: victim file RSS, KiB */
	__u64 victim_shmem_rss_kb;  /* 104: victim shmem RSS, KiB */
	__u64 victim_pgtables_kb;   /* 112: victim page-table bytes >> 10, KiB */
	__s16 victim_oom_score_adj; /* 120: -1000..1000 */
	__u16 _pad0;                /* 122: zero */
	__u32 valid;                /* 124: KP_OOM_HAS_* bitmask */
	__u64 victim_memcg_id;      /* 128: like trigger_memcg_id, only when the
	                             *      victim is current; else 0 */
};

/* ---- hungtask.bpf.o : KP_EV_HUNGTASK (72 bytes) -------------------------- */
struct kp_hungtask_event {
	struct kp_event_header hdr; /*  0: current = khungtaskd (not the hung task) */
	__u32 hung_pid;             /* 48: thread id (kernel pid) of the hung task */
	__u32 _pad0;                /* 52: zero */
	char  hung_comm[KP_COMM_LEN]; /* 56: comm of the hung task, NUL padded */
};

/* ---- memreclaim.bpf.o : KP_EV_MEMRECLAIM (104 bytes) --------------------- */
enum kp_reclaim_source {
	KP_RECLAIM_DIRECT = 0, /* global direct reclaim (try_to_free_pages) */
	KP_RECLAIM_MEMCG  = 1, /* memcg limit reclaim (try_to_free_mem_cgroup_pages) */
};

struct kp_memreclaim_event {
	struct kp_event_header hdr; /*   0: the task that stalled in reclaim */
	__u64 duration_ns;          /*  48: reclaim end - begin, ns */
	__u64 threshold_ns;         /*  56: reclaim_threshold_ns in effect, ns */
	__u64 begin_ts_ns;          /*  64: CLOCK_MONOTONIC ns of reclaim begin */
	__u64 nr_reclaimed;         /*  72: pages reclaimed (tracepoint value) */
	__u64 gfp_flags;            /*  80: gfp mask of the allocation (raw bits) */
	__u64 memcg_id;             /*  88: kernfs id of current's memory cgroup */
	__s32 order;                /*  96: allocation order (2^order pages) as
	                             *      reported by the begin tracepoint */
	__u32 source;               /* 100: enum kp_reclaim_source */
};

/* ---- dropwatch.bpf.o : KP_EV_DROP (360 bytes) ---------------------------- */
struct kp_drop_event {
	struct kp_event_header hdr; /*   0: current (often the softirq-interrupted task) */
	__u64 skb_addr;             /*  48: kernel address of the skb (correlation only) */
	__u64 location;             /*  56: kernel text address that freed the skb
	                             *      (resolve with /proc/kallsyms) */
	__u32 reason;               /*  64: enum skb_drop_reason value of THIS
	                             *      kernel (host maps names via BTF or the
	                             *      tracepoint format); 0 if the kernel has
	                             *      no drop reasons (< 5.17) */
	__u16 protocol;             /*  68: skb->protocol, host order (ETH_P_*) */
	__u16 _pad0;                /*  70: zero */
	__u32 len;                  /*  72: skb->len, bytes */
	__u32 ifindex;              /*  76: skb->dev->ifindex, else skb->skb_iif, else 0 */
	__u32 netns_inum;           /*  80: inode of the net namespace (rx_sk,
	                             *      skb->sk, or skb->dev); 0 if unknown */
	__u32 stack_depth;          /*  84: valid entries in stack[] */
	char  ifname[KP_IFNAME_LEN]; /* 88: skb->dev->name, "" if no dev */
	__u64 stack[KP_STACK_DEPTH]; /* 104: kernel return addresses, innermost first */
};

/* ---- net_rx_latency.bpf.o : KP_EV_NET_RX_LATENCY (136 bytes) ------------- */
enum kp_rx_stage {
	KP_RX_STAGE_NETIF    = 1, /* net/netif_receive_skb   (HUATUO RX_STAGE_NETIF)    */
	KP_RX_STAGE_TCPV4    = 2, /* tcp/tcp_probe           (HUATUO RX_STAGE_TCPV4)    */
	KP_RX_STAGE_USERCOPY = 3, /* skb/skb_copy_datagram_iovec (RX_STAGE_USERCOPY)   */
};
#define KP_RX_F_IPV4 (1u << 0) /* saddr/daddr/l4_proto valid */
#define KP_RX_F_TCP  (1u << 1) /* sport/dport/seq/ack_seq/tcp_flags valid */

struct kp_net_rx_latency_event {
	struct kp_event_header hdr; /*   0: current (softirq-interrupted task for
	                             *      NETIF/TCPV4, the reader for USERCOPY) */
	__u64 latency_ns;           /*  48: (bpf_ktime_get_ns() + mono_wall_offset)
	                             *      - skb->tstamp, ns */
	__u64 threshold_ns;         /*  56: stage threshold in effect, ns */
	__u64 skb_tstamp_ns;        /*  64: skb->tstamp, CLOCK_REALTIME ns */
	__u64 skb_addr;             /*  72: kernel address of the skb */
	__u32 stage;                /*  80: enum kp_rx_stage */
	__u32 len;                  /*  84: bytes: skb->len (NETIF/TCPV4) or bytes
	                             *      copied to user (USERCOPY) */
	__u32 ifindex;              /*  88: NETIF: skb->dev->ifindex, else skb->skb_iif */
	__u32 netns_inum;           /*  92: net namespace inode (sock if any, else dev) */
	__u32 saddr;                /*  96: IPv4 source, network byte order */
	__u32 daddr;                /* 100: IPv4 destination, network byte order */
	__u16 sport;                /* 104: TCP source port, host order */
	__u16 dport;                /* 106: TCP destination port, host order */
	__u32 seq;                  /* 108: TCP sequence number, host order */
	__u32 ack_seq;              /* 112: TCP ack number, host order */
	__u8  l4_proto;             /* 116: IPv4 protocol (6 = TCP), 0 if not IPv4 */
	__u8  tcp_flags;            /* 117: TCP header flags byte (FIN 0x01 .. CWR 0x80) */
	__u8  tcp_state;            /* 118: sk->sk_state (1 = ESTABLISHED), 0 if no sock */
	__u8  flags;                /* 119: KP_RX_F_* */
	char  ifname[KP_IFNAME_LEN]; /* 120: device name (NETIF stage only), else "" */
};

/* ---- softlockup.bpf.o : KP_EV_SOFTLOCKUP (440 bytes) --------------------- */
struct kp_softlockup_event {
	struct kp_event_header hdr; /*   0: runs on the stuck CPU from the watchdog
	                             *      hrtimer: current = the task hogging it */
	__u32 msg_len;              /*  48: bytes of msg[] used (excl. NUL) */
	__u32 stack_depth;          /*  52: valid entries in stack[] */
	char  msg[KP_MSG_LEN];      /*  56: start of the printk line, NUL terminated,
	                             *      e.g. "BUG: soft lockup - CPU#1 stuck for 22s! [x:42]" */
	__u64 stack[KP_STACK_DEPTH]; /* 184: kernel stack at the printk (crosses the
	                             *      hrtimer IRQ into the stuck code) */
};

/* ---- sched_switch.bpf.o : KP_EV_SCHED_SWITCH (56 bytes, benchmark) ------- */
struct kp_sched_switch_event {
	struct kp_event_header hdr; /*  0: prev task (current at the switch) */
	__u32 next_pid;             /* 48: thread id of the task switched in */
	__u32 prev_state;           /* 52: prev->__state (0 = runnable/preempted) */
};

/* ---- internal map value types (not ring-buffer records) ------------------ */
struct kp_ratelimit_state {
	__u64 tokens;   /* available budget, in 1e-9 events (1e9 = one event) */
	__u64 last_ns;  /* CLOCK_MONOTONIC ns of the last refill */
};

struct kp_reclaim_start {
	__u64 ts_ns;     /* CLOCK_MONOTONIC ns at reclaim begin */
	__u64 gfp_flags; /* gfp mask from the begin tracepoint */
	__s32 order;     /* allocation order from the begin tracepoint */
	__u32 source;    /* enum kp_reclaim_source */
};

/* ---- iotracing.bpf.o : KP_EV_IOSCHED (328 bytes) + map values ----------- */
#define KP_IOT_PATH_DEPTH 4  /* dentry names kept per file, innermost first */
#define KP_IOT_NAME_LEN   48 /* bytes per dentry name, NUL terminated */
#define KP_IOT_F_DIRECT   (1u << 0) /* some fs IO of the file went through iomap direct IO */

/* A thread that slept in io_schedule() (task->in_iowait) at least
 * sched_threshold_ns, emitted when it is switched back in. */
struct kp_iosched_event {
	struct kp_event_header hdr; /*   0: the task that slept (`next` at the
	                             *      switch-in), not current; cpu = the CPU
	                             *      it is switched in on */
	__u64 latency_ns;           /*  48: switch-out in io_schedule -> switch-in, ns */
	__u64 sleep_ts_ns;          /*  56: CLOCK_MONOTONIC ns of the switch-out */
	__u32 sleep_cpu;            /*  64: CPU it switched out on */
	__u32 stack_depth;          /*  68: valid entries in stack[] */
	__u64 stack[KP_STACK_DEPTH]; /* 72: its kernel stack at the switch-out (scheduler
	                             *     and tracing frames included), innermost first */
};

/* Key of the HASH maps file_stats and file_paths (tgid 0 in file_paths). */
struct kp_iot_file_key {
	__u32 tgid;                 /*  0: process id (kernel tgid) */
	__u32 dev;                  /*  4: kernel dev_t (major << 20 | minor) of the
	                             *     file's filesystem (inode->i_sb->s_dev), or of
	                             *     the disk when ino == 0 */
	__u64 ino;                  /*  8: inode number; 0 = disk IO of no known file */
};

/* Value of file_stats: one process's IO on one file during a capture. */
struct kp_iot_file_stat {
	char  comm[KP_COMM_LEN];    /*   0: comm of the thread that created the entry */
	__u64 fs_read_bytes;        /*  16: bytes asked of the filesystem to read */
	__u64 fs_write_bytes;       /*  24: bytes asked of the filesystem to write */
	__u64 disk_read_bytes;      /*  32: bytes of completed read requests */
	__u64 disk_write_bytes;     /*  40: bytes of completed write requests */
	__u64 q2c_sum_ns;           /*  48: sum of bio queued -> request completed, ns */
	__u64 d2c_sum_ns;           /*  56: sum of request issued -> completed, ns */
	__u64 max_q2c_ns;           /*  64: largest q2c, ns */
	__u64 max_d2c_ns;           /*  72: largest d2c, ns */
	__u64 nr_q2c;               /*  80: completions in q2c_sum_ns */
	__u64 nr_d2c;               /*  88: completions in d2c_sum_ns */
	__u32 disk_dev;             /*  96: dev_t of the disk (partition) of the last
	                             *      completed request; 0 if none */
	__u32 flags;                /* 100: KP_IOT_F_* */
};

/* Value of bio_start (LRU HASH, key = struct bio address): who queued a bio. */
struct kp_iot_bio {
	__u64 ts_ns;                /*  0: CLOCK_MONOTONIC ns at block_bio_queue */
	__u64 ino;                  /*  8: file (struct kp_iot_file_key.ino) */
	__u32 tgid;                 /* 16: submitter's process id */
	__u32 dev;                  /* 20: struct kp_iot_file_key.dev */
	char  comm[KP_COMM_LEN];    /* 24: submitter's comm */
	__u32 flags;                /* 40: KP_IOT_F_* */
	__u32 _pad0;                /* 44: zero */
};

/* Value of cur_file (HASH, key = thread id): the file of the direct IO the
 * thread is submitting (iomap_dio_rw_begin .. iomap_dio_complete). */
struct kp_iot_cur_file {
	__u64 ino;                  /*  0: inode number */
	__u32 dev;                  /*  8: dev_t of its filesystem */
	__u32 flags;                /* 12: KP_IOT_F_* */
};

/* Value of io_sleep (LRU HASH, key = thread id): a pending io_schedule() sleep.
 * The stack is taken at the switch-out, from current: a sleeping task's own
 * saved stack (bpf_get_task_stack) leaves out the scheduler functions,
 * io_schedule() among them. */
struct kp_iot_sleep {
	__u64 ts_ns;                /*  0: CLOCK_MONOTONIC ns of the switch-out */
	__u32 cpu;                  /*  8: CPU it switched out on */
	__u32 stack_depth;          /* 12: valid entries in stack[] */
	__u64 stack[KP_STACK_DEPTH]; /* 16: kernel stack at the switch-out, innermost first */
};

/* Value of file_paths: a file's dentry names, innermost first. */
struct kp_iot_path {
	__u32 depth;                /*  0: names filled in name[] */
	__u32 complete;             /*  4: 1 if the walk reached the root of the
	                             *     file's filesystem (the path is whole) */
	char  name[KP_IOT_PATH_DEPTH][KP_IOT_NAME_LEN]; /* 8: NUL terminated each */
};

/* ---- layout pins ---------------------------------------------------------- */
#define KP_ASSERT_SIZE(t, n) _Static_assert(sizeof(struct t) == (n), #t " size")
#define KP_ASSERT_OFF(t, f, n) \
	_Static_assert(__builtin_offsetof(struct t, f) == (n), #t "." #f " offset")

KP_ASSERT_SIZE(kp_event_header, 48);
KP_ASSERT_OFF(kp_event_header, cgroup_id, 40);
KP_ASSERT_SIZE(kp_softirq_event, 80);
KP_ASSERT_SIZE(kp_oom_event, 136);
KP_ASSERT_OFF(kp_oom_event, victim_oom_score_adj, 120);
KP_ASSERT_OFF(kp_oom_event, victim_memcg_id, 128);
KP_ASSERT_SIZE(kp_hungtask_event, 72);
KP_ASSERT_SIZE(kp_memreclaim_event, 104);
KP_ASSERT_OFF(kp_memreclaim_event, order, 96);
KP_ASSERT_SIZE(kp_drop_event, 360);
KP_ASSERT_OFF(kp_drop_event, ifname, 88);
KP_ASSERT_OFF(kp_drop_event, stack, 104);
KP_ASSERT_SIZE(kp_net_rx_latency_event, 136);
KP_ASSERT_OFF(kp_net_rx_latency_event, l4_proto, 116);
KP_ASSERT_OFF(kp_net_rx_latency_event, ifname, 120);
KP_ASSERT_SIZE(kp_softlockup_event, 440);
KP_ASSERT_OFF(kp_softlockup_event, stack, 184);
KP_ASSERT_SIZE(kp_sched_switch_event, 56);
KP_ASSERT_SIZE(kp_ratelimit_state, 16);
KP_ASSERT_SIZE(kp_reclaim_start, 24);
KP_ASSERT_SIZE(kp_iosched_event, 328);
KP_ASSERT_OFF(kp_iosched_event, stack, 72);
KP_ASSERT_SIZE(kp_iot_file_key, 16);
KP_ASSERT_SIZE(kp_iot_file_stat, 104);
KP_ASSERT_OFF(kp_iot_file_stat, disk_dev, 96);
KP_ASSERT_SIZE(kp_iot_bio, 48);
KP_ASSERT_SIZE(kp_iot_cur_file, 16);
KP_ASSERT_SIZE(kp_iot_sleep, 272);
KP_ASSERT_SIZE(kp_iot_path, 200);

/* ==========================================================================
 * tcp_retransmit, netdev_txqueue_timeout, ras (issue 12): kinds, records, pins
 * ==========================================================================
 *
 *  object                       program fn       type        attach (category/name)
 *  ---------------------------- ---------------- ----------- -------------------------------
 *  tcp_retransmit.bpf.o         retrans_skb      tracepoint  tcp/tcp_retransmit_skb
 *                               retrans_synack   tracepoint  tcp/tcp_retransmit_synack
 *                               retrans_tlp      kprobe      tcp_send_loss_probe (optional:
 *                                                            enable_tlp, where kprobes exist)
 *     maps: events (RINGBUF 256K), retransmits (PERCPU_ARRAY[4] u64, index
 *           enum kp_tcp_retrans_source), ratelimit, stats
 *  netdev_txqueue_timeout.bpf.o txq_timeout_btf  tp_btf      net_dev_xmit_timeout (device:
 *                                                            netns and ifindex too)
 *                               txq_timeout_tp   tracepoint  net/net_dev_xmit_timeout (fallback)
 *     maps: events (RINGBUF 64K), stats
 *  ras.bpf.o                    ras_mce          tracepoint  mce/mce_record
 *                               ras_edac         tracepoint  ras/mc_event
 *                               ras_non_standard tracepoint  ras/non_standard_event
 *                               ras_aer          tracepoint  ras/aer_event
 *                               ras_thr          tracepoint  irq_vectors/threshold_apic_entry
 *                               ras_arm          tracepoint  ras/arm_event
 *     maps: events (RINGBUF 256K), hw_errors (PERCPU_ARRAY[6] u64, index
 *           enum kp_ras_source), stats; attach the programs whose
 *           tracepoint exists (each is optional)
 *
 *  `volatile const` knobs:
 *    tcp_retransmit: max_events_per_second = 100, ratelimit_nr_cpus = 1
 */

/* kp_event_header.kind of these records; a separate range so that the
 * kinds of kp_event_kind above can grow without a clash. */
enum kp_event_kind_net_hw {
	KP_EV_TCP_RETRANSMIT    = 32,
	KP_EV_TXQUEUE_TIMEOUT   = 33,
	KP_EV_RAS_MCE           = 34,
	KP_EV_RAS_EDAC          = 35,
	KP_EV_RAS_NON_STANDARD  = 36,
	KP_EV_RAS_AER           = 37,
	KP_EV_RAS_THR           = 38,
	KP_EV_RAS_ARM           = 39,
};

/* ---- tcp_retransmit.bpf.o : KP_EV_TCP_RETRANSMIT (152 bytes) ------------- */
enum kp_tcp_retrans_source {
	KP_TCP_RETRANS_SKB    = 1, /* tcp/tcp_retransmit_skb (data, SYN, FIN) */
	KP_TCP_RETRANS_SYNACK = 2, /* tcp/tcp_retransmit_synack (listener side) */
	KP_TCP_RETRANS_TLP    = 3, /* kprobe tcp_send_loss_probe */
	KP_TCP_RETRANS_NR     = 4,
};

struct kp_tcp_retransmit_event {
	struct kp_event_header hdr; /*   0: current (often the timer softirq's
	                             *      interrupted task, or the sender) */
	__u64 skb_addr;             /*  48: skb retransmitted; 0 for SYNACK and TLP */
	__u64 netns_cookie;         /*  56: net->net_cookie of the socket's netns, 0 if n/a */
	__u32 netns_inum;           /*  64: inode of the socket's net namespace */
	__u32 seq;                  /*  68: SKB: TCP_SKB_CB(skb)->seq; TLP: snd_nxt */
	__u32 end_seq;              /*  72: SKB: TCP_SKB_CB(skb)->end_seq, else 0 */
	__u32 ack_seq;              /*  76: SKB: tp->rcv_nxt; TLP: snd_una */
	__u32 reord_seen;           /*  80: tp->reord_seen (cumulative) */
	__u32 dsack_dups;           /*  84: tp->dsack_dups (cumulative) */
	__s32 err;                  /*  88: SKB: the retransmit's result (6.x
	                             *      tracepoint `err`), else 0 */
	__u16 sport;                /*  92: local port, host order */
	__u16 dport;                /*  94: remote port, host order */
	__u16 family;               /*  96: AF_INET (2) or AF_INET6 (10) */
	__u8  source;               /*  98: enum kp_tcp_retrans_source */
	__u8  state;                /*  99: sk_state (TCP_ESTABLISHED = 1 ...; 12
	                             *      TCP_NEW_SYN_RECV for SYNACK) */
	__u8  ca_state;             /* 100: icsk_ca_state: 0 Open, 1 Disorder, 2 CWR,
	                             *      3 Recovery, 4 Loss */
	__u8  tcp_flags;            /* 101: SKB: TCP_SKB_CB(skb)->tcp_flags, else 0 */
	__u8  retransmits;          /* 102: icsk_retransmits, or the request's num_retrans */
	__u8  icsk_pending;         /* 103: icsk_pending timer: 1 RTO, 3 probe0, 5 TLP, ... */
	__u8  saddr[16];            /* 104: local address, network order (IPv4: 4 bytes) */
	__u8  daddr[16];            /* 120: remote address, network order (IPv4: 4 bytes) */
	__u64 drop_location;        /* 136: kfree_skb location of this IPv4 flow's last
	                             *      drop (either direction) within drop_window_ns
	                             *      before the retransmit, 0 = none seen */
	__u32 drop_reason;          /* 144: its enum skb_drop_reason (0: kernel has none) */
	__u32 drop_age_us;          /* 148: how long before the retransmit, microseconds */
};

/* ---- netdev_txqueue_timeout.bpf.o : KP_EV_TXQUEUE_TIMEOUT (112 bytes) ---- */
#define KP_DRIVER_LEN 32

struct kp_txqueue_timeout_event {
	struct kp_event_header hdr; /*   0: current (the dev_watchdog timer's CPU) */
	__s32 queue_index;          /*  48: TX queue that timed out */
	__u32 ifindex;              /*  52: device ifindex (tp_btf only), else 0 */
	__u32 netns_inum;           /*  56: device's net namespace (tp_btf only), else 0 */
	__u32 _pad0;                /*  60: zero */
	char  name[KP_IFNAME_LEN];  /*  64: device name */
	char  driver[KP_DRIVER_LEN]; /* 80: driver name (netdev_drivername) */
};

/* ---- ras.bpf.o : KP_EV_RAS_* --------------------------------------------- */
/* Index of the hw_errors map: HUATUO's HW_ERR_* and ras_hw_err_total{type}. */
enum kp_ras_source {
	KP_RAS_MCE  = 0, /* mce/mce_record                  type="mce"      */
	KP_RAS_EDAC = 1, /* ras/mc_event                    type="edac"     */
	KP_RAS_ACPI = 2, /* ras/non_standard_event (GHES)   type="acpi"     */
	KP_RAS_AER  = 3, /* ras/aer_event (PCIe)            type="aer"      */
	KP_RAS_THR  = 4, /* irq_vectors/threshold_apic_entry type="thr"     */
	KP_RAS_ARM  = 5, /* ras/arm_event                   type="arm_ghes" */
	KP_RAS_NR   = 6,
};
#define KP_RAS_STR_LEN  64 /* bytes kept of each EDAC string */
#define KP_RAS_DATA_LEN 64 /* bytes kept of a non-standard section's raw data */

/* KP_EV_RAS_MCE (160 bytes): a machine-check record (fields 0 where the
 * kernel's tracepoint lacks them). */
struct kp_ras_mce_event {
	struct kp_event_header hdr; /*   0: current */
	__u64 mcgcap;               /*  48: MCG_CAP */
	__u64 mcgstatus;            /*  56: MCG_STATUS */
	__u64 status;               /*  64: MCi_STATUS (bit 61 UC, 44 deferred) */
	__u64 addr;                 /*  72: MCi_ADDR */
	__u64 misc;                 /*  80: MCi_MISC */
	__u64 synd;                 /*  88: MCA_SYND (AMD SMCA) */
	__u64 ipid;                 /*  96: MCA_IPID (AMD SMCA) */
	__u64 ip;                   /* 104: instruction pointer */
	__u64 tsc;                  /* 112: TSC at the error */
	__u64 ppin;                 /* 120: protected processor inventory number */
	__u64 walltime;             /* 128: wall time, seconds since the epoch */
	__u32 cpu;                  /* 136: CPU that logged it */
	__u32 cpuid;                /* 140: CPUID(1).EAX */
	__u32 apicid;               /* 144 */
	__u32 socketid;             /* 148 */
	__u32 microcode;            /* 152: microcode revision */
	__u8  cs;                   /* 156: code segment */
	__u8  bank;                 /* 157: MCA bank */
	__u8  cpuvendor;            /* 158: X86_VENDOR_* */
	__u8  _pad0;                /* 159: zero */
};

/* KP_EV_RAS_EDAC (272 bytes): a memory-controller error (ras/mc_event). */
struct kp_ras_mc_event {
	struct kp_event_header hdr; /*   0: current */
	__s64 address;              /*  48: page address of the error */
	__s64 syndrome;             /*  56: syndrome of the error */
	__u32 error_type;           /*  64: 0 corrected, 1 uncorrected, 2 deferred,
	                             *      3 fatal, 4 info (enum hw_event_mc_err_type) */
	__u16 error_count;          /*  68 */
	__u8  mc_index;             /*  70: memory controller */
	__u8  grain_bits;           /*  71: grain = 1 << grain_bits bytes */
	__s8  top_layer;            /*  72: location, -1 = unknown */
	__s8  middle_layer;         /*  73 */
	__s8  lower_layer;          /*  74 */
	__u8  _pad0;                /*  75: zero */
	__u32 _pad1;                /*  76: zero */
	char  msg[KP_RAS_STR_LEN];  /*  80: error message */
	char  label[KP_RAS_STR_LEN]; /* 144: DIMM label(s) */
	char  driver_detail[KP_RAS_STR_LEN]; /* 208: driver's detail */
};

/* KP_EV_RAS_NON_STANDARD (184 bytes): an ACPI GHES non-standard section. */
struct kp_ras_non_standard_event {
	struct kp_event_header hdr; /*   0: current */
	__u8  sec_type[16];         /*  48: section type GUID, raw bytes */
	__u8  fru_id[16];           /*  64: FRU id GUID, raw bytes */
	__u32 len;                  /*  80: bytes of raw data in the section */
	__u8  sev;                  /*  84: GHES severity: 0 none, 1 corrected,
	                             *      2 recoverable, 3 panic */
	__u8  _pad0[3];             /*  85: zero */
	char  fru_text[32];         /*  88: FRU text */
	__u8  data[KP_RAS_DATA_LEN]; /* 120: first bytes of the raw data */
};

/* KP_EV_RAS_AER (104 bytes): a PCIe AER error (ras/aer_event). */
struct kp_ras_aer_event {
	struct kp_event_header hdr; /*   0: current */
	__u32 status;               /*  48: AER status register bits */
	__u8  severity;             /*  52: 0 uncorrected non-fatal, 1 fatal,
	                             *      2 correctable */
	__u8  tlp_header_valid;     /*  53 */
	__u16 _pad0;                /*  54: zero */
	__u32 tlp_header[4];        /*  56: first 4 dwords of the TLP header log */
	char  dev_name[32];         /*  72: PCI device name, e.g. 0000:00:1c.0 */
};

/* KP_EV_RAS_THR (56 bytes): an MCE threshold interrupt. */
struct kp_ras_thr_event {
	struct kp_event_header hdr; /*   0: current; hdr.cpu = the CPU interrupted */
	__s32 vector;               /*  48: interrupt vector */
	__u32 _pad0;                /*  52: zero */
};

/* KP_EV_RAS_ARM (96 bytes): an ARM processor error section (ras/arm_event). */
struct kp_ras_arm_event {
	struct kp_event_header hdr; /*   0: current */
	__u64 mpidr;                /*  48 */
	__u64 midr;                 /*  56 */
	__u32 running_state;        /*  64: ~0 = not given; bit 0 = running */
	__u32 psci_state;           /*  68 */
	__s32 cpu;                  /*  72: -1 if the tracepoint has no cpu */
	__u32 pei_len;              /*  76: bytes of processor error info */
	__u32 ctx_len;              /*  80: bytes of context info */
	__u32 oem_len;              /*  84: bytes of vendor info */
	__u8  affinity;             /*  88: affinity level, 0xff = not given */
	__u8  sev;                  /*  89: CPER severity, 0xff if not given */
	__u16 _pad0;                /*  90: zero */
	__u32 _pad1;                /*  92: zero */
};

KP_ASSERT_SIZE(kp_tcp_retransmit_event, 152);
KP_ASSERT_OFF(kp_tcp_retransmit_event, drop_location, 136);
KP_ASSERT_OFF(kp_tcp_retransmit_event, sport, 92);
KP_ASSERT_OFF(kp_tcp_retransmit_event, saddr, 104);
KP_ASSERT_SIZE(kp_txqueue_timeout_event, 112);
KP_ASSERT_OFF(kp_txqueue_timeout_event, driver, 80);
KP_ASSERT_SIZE(kp_ras_mce_event, 160);
KP_ASSERT_OFF(kp_ras_mce_event, cpu, 136);
KP_ASSERT_SIZE(kp_ras_mc_event, 272);
KP_ASSERT_OFF(kp_ras_mc_event, msg, 80);
KP_ASSERT_SIZE(kp_ras_non_standard_event, 184);
KP_ASSERT_OFF(kp_ras_non_standard_event, fru_text, 88);
KP_ASSERT_SIZE(kp_ras_aer_event, 104);
KP_ASSERT_OFF(kp_ras_aer_event, dev_name, 72);
KP_ASSERT_SIZE(kp_ras_thr_event, 56);
KP_ASSERT_SIZE(kp_ras_arm_event, 96);
KP_ASSERT_OFF(kp_ras_arm_event, affinity, 88);
/* ==== end of tcp_retransmit / netdev_txqueue_timeout / ras ================ */

/* ==== sched_tick ============================================================
 *
 *   sched_tick.bpf.o  programs: sched_tick  perf_event (software cpu-clock,
 *                               one event per online CPU, attached by the host
 *                               at the plugin's frequency)
 *     maps: events (RINGBUF 64K, KP_EV_SCHED_TICK), last_sample (PERCPU_ARRAY[1]
 *           u64 ns), stats
 *
 *  `volatile const` knobs: threshold_ns = 10000000 (HUATUO's
 *  sched_tick_interval_threshold_ns)
 */
enum kp_event_kind_sched {
	KP_EV_SCHED_TICK = 40,
};

/* KP_EV_SCHED_TICK (336 bytes): two samples of the CPU's clock event farther
 * apart than threshold_ns: the hrtimer interrupt could not run in between
 * (interrupts off, or the vCPU not running). */
struct kp_sched_tick_event {
	struct kp_event_header hdr; /*   0: current when the late interrupt ran: the
	                             *      task that had interrupts off (or idle) */
	__u64 interval_ns;          /*  48: this sample - the CPU's previous one */
	__u64 threshold_ns;         /*  56: threshold_ns in effect */
	__u64 period_ns;            /*  64: the event's sample period (1e9 / Hz) */
	__u32 stack_depth;          /*  72: valid entries in stack[] */
	__u32 _pad0;                /*  76: zero */
	__u64 stack[KP_STACK_DEPTH]; /* 80: kernel stack where the interrupt landed,
	                             *      i.e. where interrupts were enabled again */
};

KP_ASSERT_SIZE(kp_sched_tick_event, 336);
KP_ASSERT_OFF(kp_sched_tick_event, stack, 80);
/* ==== end of sched_tick ==================================================== */

#endif /* KPULSE_EVENTS_H */
