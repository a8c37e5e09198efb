//! The generated record types (`src/records.rs`) against byte images built from the offsets
//! documented in `ebpf/include/kpulse_events.h` (an independent copy, on purpose: if clang
//! and these disagree, either the header's comments or the generator is wrong).

use kpulse_sdk::records::{
    self, DropEvent, EventHeader, HungtaskEvent, MemreclaimEvent, NetRxLatencyEvent, OomEvent,
    SchedSwitchEvent, SoftirqEvent, SoftlockupEvent,
};

/// A record image written field by field, little-endian.
struct Image(Vec<u8>);

impl Image {
    fn new(size: usize) -> Self {
        Self(vec![0; size])
    }
    fn put(&mut self, offset: usize, bytes: &[u8]) -> &mut Self {
        self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
        self
    }
    fn u8(&mut self, offset: usize, v: u8) -> &mut Self {
        self.put(offset, &[v])
    }
    fn u16(&mut self, offset: usize, v: u16) -> &mut Self {
        self.put(offset, &v.to_le_bytes())
    }
    fn u32(&mut self, offset: usize, v: u32) -> &mut Self {
        self.put(offset, &v.to_le_bytes())
    }
    fn u64(&mut self, offset: usize, v: u64) -> &mut Self {
        self.put(offset, &v.to_le_bytes())
    }
    /// `kp_event_header` at 0: kind, cpu 3, ts 0x0102..., pid 41, tgid 40, comm "curl",
    /// cgroup 0xc0.
    fn header(&mut self, kind: u32) -> &mut Self {
        self.u32(0, kind)
            .u32(4, 3)
            .u64(8, 0x0102_0304_0506_0708)
            .u32(16, 41)
            .u32(20, 40)
            .put(24, b"curl")
            .u64(40, 0xc0)
    }
}

fn check_header(h: &EventHeader, kind: u32) {
    assert_eq!(
        (h.kind, h.cpu, h.ts_ns, h.pid, h.tgid, h.cgroup_id),
        (kind, 3, 0x0102_0304_0506_0708, 41, 40, 0xc0)
    );
    assert_eq!(h.comm_str(), "curl");
    assert_eq!(&h.comm[..5], b"curl\0");
}

#[test]
fn sizes_match_the_header_pins() {
    assert_eq!(EventHeader::SIZE, 48);
    assert_eq!(SoftirqEvent::SIZE, 80);
    assert_eq!(OomEvent::SIZE, 136);
    assert_eq!(HungtaskEvent::SIZE, 72);
    assert_eq!(MemreclaimEvent::SIZE, 104);
    assert_eq!(DropEvent::SIZE, 360);
    assert_eq!(NetRxLatencyEvent::SIZE, 136);
    assert_eq!(SoftlockupEvent::SIZE, 440);
    assert_eq!(SchedSwitchEvent::SIZE, 56);
    assert_eq!(records::RatelimitState::SIZE, 16);
    assert_eq!(records::ReclaimStart::SIZE, 24);
    assert_eq!(kpulse_sdk::bpf::HEADER_SIZE, 48);
}

#[test]
fn constants() {
    assert_eq!(records::KP_EV_SOFTIRQ, 1);
    assert_eq!(records::KP_EV_SCHED_SWITCH, 8);
    assert_eq!(records::KP_STAT_RB_FULL, 1);
    assert_eq!(records::KP_OOM_HAS_VICTIM_MEMCG, 1 << 5);
    assert_eq!(records::KP_RX_F_TCP, 2);
    assert_eq!(records::KP_STACK_DEPTH, 32);
    assert_eq!(records::KP_ABI_VERSION, 1);
}

#[test]
fn drop_event() {
    let mut img = Image::new(360);
    img.header(records::KP_EV_DROP)
        .u64(48, 0xffff_8880_0000_1000)
        .u64(56, 0xffff_ffff_8100_0000)
        .u32(64, 3)
        .u16(68, 0x0800)
        .u32(72, 1500)
        .u32(76, 2)
        .u32(80, 4_026_531_833)
        .u32(84, 2)
        .put(88, b"eth0")
        .u64(104, 0xa)
        .u64(112, 0xb)
        .u64(352, 0xff);
    let e = DropEvent::parse(&img.0).expect("full record");
    check_header(&e.hdr, records::KP_EV_DROP);
    assert_eq!(
        (e.skb_addr, e.location),
        (0xffff_8880_0000_1000, 0xffff_ffff_8100_0000)
    );
    assert_eq!((e.reason, e.protocol, e._pad0, e.len), (3, 0x0800, 0, 1500));
    assert_eq!(
        (e.ifindex, e.netns_inum, e.stack_depth),
        (2, 4_026_531_833, 2)
    );
    assert_eq!(e.ifname_str(), "eth0");
    assert_eq!(
        (e.stack[0], e.stack[1], e.stack[2], e.stack[31]),
        (0xa, 0xb, 0, 0xff)
    );
    assert_eq!(e.to_bytes().as_slice(), img.0.as_slice(), "round trip");
}

#[test]
fn oom_event() {
    let mut img = Image::new(136);
    img.header(records::KP_EV_OOM)
        .u64(48, 777)
        .u32(56, 1234)
        .u32(60, 1000)
        .put(64, b"tail")
        .u64(80, 1)
        .u64(88, 2)
        .u64(96, 3)
        .u64(104, 4)
        .u64(112, 5)
        .u16(120, (-17i16) as u16)
        .u32(124, 0x3f)
        .u64(128, 888);
    let e = OomEvent::parse(&img.0).expect("full record");
    check_header(&e.hdr, records::KP_EV_OOM);
    assert_eq!(
        (e.trigger_memcg_id, e.victim_pid, e.victim_uid),
        (777, 1234, 1000)
    );
    assert_eq!(e.victim_comm_str(), "tail");
    assert_eq!(
        (
            e.victim_total_vm_kb,
            e.victim_anon_rss_kb,
            e.victim_file_rss_kb,
            e.victim_shmem_rss_kb,
            e.victim_pgtables_kb
        ),
        (1, 2, 3, 4, 5)
    );
    assert_eq!(
        (e.victim_oom_score_adj, e.valid, e.victim_memcg_id),
        (-17, 0x3f, 888)
    );
    assert_eq!(e.to_bytes().as_slice(), img.0.as_slice());
}

#[test]
fn net_rx_latency_event() {
    let mut img = Image::new(136);
    img.header(records::KP_EV_NET_RX_LATENCY)
        .u64(48, 2_500_000)
        .u64(56, 1_000_000)
        .u64(64, 1_700_000_000_000_000_000)
        .u64(72, 0xffff_8880_0000_2000)
        .u32(80, records::KP_RX_STAGE_TCPV4)
        .u32(84, 60)
        .u32(88, 1)
        .u32(92, 4_026_531_840)
        .put(96, &[127, 0, 0, 1])
        .put(100, &[10, 1, 2, 3])
        .u16(104, 8080)
        .u16(106, 443)
        .u32(108, 1000)
        .u32(112, 2000)
        .u8(116, 6)
        .u8(117, 0x18)
        .u8(118, 1)
        .u8(119, 3)
        .put(120, b"lo");
    let e = NetRxLatencyEvent::parse(&img.0).expect("full record");
    check_header(&e.hdr, records::KP_EV_NET_RX_LATENCY);
    assert_eq!((e.latency_ns, e.threshold_ns), (2_500_000, 1_000_000));
    assert_eq!(
        (e.skb_tstamp_ns, e.skb_addr),
        (1_700_000_000_000_000_000, 0xffff_8880_0000_2000)
    );
    assert_eq!(
        (e.stage, e.len, e.ifindex, e.netns_inum),
        (2, 60, 1, 4_026_531_840)
    );
    assert_eq!(
        e.saddr.to_le_bytes(),
        [127, 0, 0, 1],
        "network byte order kept"
    );
    assert_eq!(e.daddr.to_le_bytes(), [10, 1, 2, 3]);
    assert_eq!(
        (e.sport, e.dport, e.seq, e.ack_seq),
        (8080, 443, 1000, 2000)
    );
    assert_eq!(
        (e.l4_proto, e.tcp_flags, e.tcp_state, e.flags),
        (6, 0x18, 1, 3)
    );
    assert_eq!(e.ifname_str(), "lo");
    assert_eq!(e.to_bytes().as_slice(), img.0.as_slice());
}

#[test]
fn other_events() {
    let mut img = Image::new(80);
    img.header(records::KP_EV_SOFTIRQ)
        .u32(48, 3)
        .u32(52, 2)
        .u64(56, 500_000)
        .u64(64, 99)
        .u64(72, 1000);
    let e = SoftirqEvent::parse(&img.0).expect("full record");
    check_header(&e.hdr, records::KP_EV_SOFTIRQ);
    assert_eq!(
        (e.vec, e.zone, e.latency_ns, e.raise_ts_ns, e.threshold_ns),
        (3, 2, 500_000, 99, 1000)
    );

    let mut img = Image::new(72);
    img.header(records::KP_EV_HUNGTASK)
        .u32(48, 4242)
        .put(56, b"0123456789abcdef");
    let e = HungtaskEvent::parse(&img.0).expect("full record");
    check_header(&e.hdr, records::KP_EV_HUNGTASK);
    assert_eq!(e.hung_pid, 4242);
    assert_eq!(
        e.hung_comm_str(),
        "0123456789abcdef",
        "no NUL: all 16 bytes"
    );

    let mut img = Image::new(104);
    img.header(records::KP_EV_MEMRECLAIM)
        .u64(48, 5_000)
        .u64(56, 900)
        .u64(64, 7)
        .u64(72, 32)
        .u64(80, 0xcc0)
        .u64(88, 55)
        .u32(96, (-1i32) as u32)
        .u32(100, records::KP_RECLAIM_MEMCG);
    let e = MemreclaimEvent::parse(&img.0).expect("full record");
    check_header(&e.hdr, records::KP_EV_MEMRECLAIM);
    assert_eq!(
        (e.duration_ns, e.threshold_ns, e.begin_ts_ns, e.nr_reclaimed),
        (5_000, 900, 7, 32)
    );
    assert_eq!(
        (e.gfp_flags, e.memcg_id, e.order, e.source),
        (0xcc0, 55, -1, 1)
    );

    let mut img = Image::new(440);
    img.header(records::KP_EV_SOFTLOCKUP)
        .u32(48, 11)
        .u32(52, 1)
        .put(56, b"BUG: soft lockup")
        .u64(184, 0xdead)
        .u64(432, 0xbeef);
    let e = SoftlockupEvent::parse(&img.0).expect("full record");
    check_header(&e.hdr, records::KP_EV_SOFTLOCKUP);
    assert_eq!((e.msg_len, e.stack_depth), (11, 1));
    assert_eq!(e.msg_str(), "BUG: soft lockup");
    assert_eq!((e.stack[0], e.stack[31]), (0xdead, 0xbeef));

    let mut img = Image::new(56);
    img.header(records::KP_EV_SCHED_SWITCH)
        .u32(48, 77)
        .u32(52, 1);
    let e = SchedSwitchEvent::parse(&img.0).expect("full record");
    check_header(&e.hdr, records::KP_EV_SCHED_SWITCH);
    assert_eq!((e.next_pid, e.prev_state), (77, 1));
}

#[test]
fn short_records() {
    let mut img = Image::new(72);
    img.header(records::KP_EV_HUNGTASK)
        .u32(48, 4242)
        .put(56, b"touch");
    assert_eq!(HungtaskEvent::parse(&img.0[..71]), None);
    assert!(HungtaskEvent::parse(&[0; 100]).is_some(), "longer is fine");
    // Padded: what is missing reads as zeros, a field cut in two included, but the bytes of
    // a cut `char` array that are there are kept, like `bpf::Record::str_at`.
    let cut = HungtaskEvent::parse_padded(&img.0[..50]);
    assert_eq!(
        (cut.hdr.pid, cut.hung_pid, cut.hung_comm_str()),
        (41, 0, String::new())
    );
    let cut = HungtaskEvent::parse_padded(&img.0[..59]);
    assert_eq!(
        (cut.hung_pid, cut.hung_comm_str()),
        (4242, "tou".to_owned())
    );
    assert_eq!(HungtaskEvent::parse_padded(&[]), HungtaskEvent::default());
    assert_eq!(DropEvent::default().to_bytes(), [0; 360]);
    // The SDK's `Record::header()` reads the same layout.
    let h = kpulse_sdk::bpf::Record(&img.0).header();
    assert_eq!(
        (h.kind, h.pid, h.tgid, h.comm.as_str()),
        (3, 41, 40, "curl")
    );
}
