//! rtnetlink queries: link and qdisc dumps (messages built and parsed with
//! `netlink-packet-route`), and DCB's IEEE PFC (`RTM_GETDCB`, built by hand: the crate has
//! no DCB messages).

use netlink_packet_core::{NetlinkSerializable, ParseableParametrized};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{self, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{TcAttribute, TcMessage, TcStats2};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::netlink::{self, NLM_F_DUMP, NLM_F_REQUEST};
use super::{Link, LinkStats, NetError, OperState, Pfc, Qdisc};

const RTM_GETDCB: u16 = 78;
const DCB_CMD_IEEE_GET: u8 = 21;
const DCB_ATTR_IFNAME: u16 = 1;
const DCB_ATTR_IEEE: u16 = 13;
const DCB_ATTR_IEEE_PFC: u16 = 2;
/// `struct ieee_pfc`: cap, en, mbc (u8), delay (u16 at 4), requests[8] at 8, indications[8]
/// at 72.
const IEEE_PFC_LEN: usize = 136;
const PRIORITIES: usize = 8;
/// `TCA_STATS_PKT64`: the 64-bit packet count next to `TCA_STATS_BASIC`'s 32-bit one.
const TCA_STATS_PKT64: u16 = 8;
/// `IFNAMSIZ` less the NUL.
const MAX_IFNAME: usize = 15;

/// Dumps with `message` and parses every answer as a route message.
pub(super) fn dump(
    what: &str,
    message: RouteNetlinkMessage,
) -> Result<Vec<RouteNetlinkMessage>, NetError> {
    let mut payload = vec![0u8; message.buffer_len()];
    message.serialize(&mut payload);
    let request = netlink::request(message.message_type(), NLM_F_REQUEST | NLM_F_DUMP, &payload);
    netlink::exchange(NETLINK_ROUTE, what, &request, true)?
        .into_iter()
        .map(|m| {
            RouteNetlinkMessage::parse_with_param(m.payload.as_slice(), m.kind)
                .map_err(|err| NetError::Io(format!("{what}: malformed answer: {err}")))
        })
        .collect()
}

pub(super) fn oper_state(state: link::State) -> OperState {
    match state {
        link::State::NotPresent => OperState::NotPresent,
        link::State::Down => OperState::Down,
        link::State::LowerLayerDown => OperState::LowerLayerDown,
        link::State::Testing => OperState::Testing,
        link::State::Dormant => OperState::Dormant,
        link::State::Up => OperState::Up,
        _ => OperState::Unknown,
    }
}

fn stats(s: &link::Stats64) -> LinkStats {
    LinkStats {
        rx_packets: s.rx_packets,
        tx_packets: s.tx_packets,
        rx_bytes: s.rx_bytes,
        tx_bytes: s.tx_bytes,
        rx_errors: s.rx_errors,
        tx_errors: s.tx_errors,
        rx_dropped: s.rx_dropped,
        tx_dropped: s.tx_dropped,
        multicast: s.multicast,
        collisions: s.collisions,
        rx_length_errors: s.rx_length_errors,
        rx_over_errors: s.rx_over_errors,
        rx_crc_errors: s.rx_crc_errors,
        rx_frame_errors: s.rx_frame_errors,
        rx_fifo_errors: s.rx_fifo_errors,
        rx_missed_errors: s.rx_missed_errors,
        tx_aborted_errors: s.tx_aborted_errors,
        tx_carrier_errors: s.tx_carrier_errors,
        tx_fifo_errors: s.tx_fifo_errors,
        tx_heartbeat_errors: s.tx_heartbeat_errors,
        tx_window_errors: s.tx_window_errors,
        rx_compressed: s.rx_compressed,
        tx_compressed: s.tx_compressed,
        rx_nohandler: s.rx_nohandler,
    }
}

fn link_of(message: LinkMessage) -> Link {
    let mut link = Link {
        ifindex: message.header.index,
        name: String::new(),
        kind: String::new(),
        operstate: OperState::Unknown,
        flags: message.header.flags.bits(),
        mtu: 0,
        stats: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::OperState(state) => link.operstate = oper_state(state),
            LinkAttribute::Stats64(s) => link.stats = Some(stats(&s)),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = kind.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// Every link of the host's network namespace.
pub fn links() -> Result<Vec<Link>, NetError> {
    let answers = dump(
        "RTM_GETLINK dump",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(link_of(link)),
            _ => None,
        })
        .collect())
}

fn qdisc_of(message: TcMessage) -> Qdisc {
    let mut qdisc = Qdisc {
        ifindex: u32::try_from(message.header.index).unwrap_or(0),
        handle: message.header.handle.into(),
        parent: message.header.parent.into(),
        ..Qdisc::default()
    };
    let mut packets64 = None;
    for attribute in message.attributes {
        match attribute {
            TcAttribute::Kind(kind) => qdisc.kind = kind,
            TcAttribute::Stats2(stats) => {
                for stat in stats {
                    match stat {
                        TcStats2::Basic(basic) => {
                            qdisc.bytes = basic.bytes;
                            qdisc.packets = u64::from(basic.packets);
                        }
                        TcStats2::Queue(queue) => {
                            qdisc.qlen = u64::from(queue.qlen);
                            qdisc.backlog = u64::from(queue.backlog);
                            qdisc.drops = u64::from(queue.drops);
                            qdisc.requeues = u64::from(queue.requeues);
                            qdisc.overlimits = u64::from(queue.overlimits);
                        }
                        TcStats2::Other(nla) => {
                            use netlink_packet_core::Nla;
                            if nla.kind() == TCA_STATS_PKT64 && nla.value_len() == 8 {
                                let mut value = [0u8; 8];
                                nla.emit_value(&mut value);
                                packets64 = Some(u64::from_ne_bytes(value));
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(packets) = packets64 {
        qdisc.packets = packets;
    }
    qdisc
}

/// Every qdisc of the host's network namespace, with its device's name.
pub fn qdiscs() -> Result<Vec<Qdisc>, NetError> {
    let answers = dump(
        "RTM_GETQDISC dump",
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
    )?;
    let names: std::collections::HashMap<u32, String> = links()?
        .into_iter()
        .map(|link| (link.ifindex, link.name))
        .collect();
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(tc) => Some(qdisc_of(tc)),
            _ => None,
        })
        .map(|mut qdisc| {
            qdisc.device = names.get(&qdisc.ifindex).cloned().unwrap_or_default();
            qdisc
        })
        .collect())
}

fn check_device(device: &str) -> Result<(), NetError> {
    if device.is_empty()
        || device.len() > MAX_IFNAME
        || device.contains(['/', '\0'])
        || device.chars().any(char::is_whitespace)
    {
        return Err(NetError::Invalid(format!(
            "{device:?} is not a network device name"
        )));
    }
    Ok(())
}

/// Parses the payload of a `DCB_CMD_IEEE_GET` answer (`struct dcbmsg` then attributes).
fn parse_pfc(device: &str, payload: &[u8]) -> Result<Pfc, NetError> {
    let pfc = payload
        .get(4..)
        .and_then(|attrs| netlink::attr(attrs, DCB_ATTR_IEEE))
        .and_then(|ieee| netlink::attr(ieee, DCB_ATTR_IEEE_PFC))
        .ok_or_else(|| {
            NetError::NotSupported(format!("DCB of {device}: the device reports no IEEE PFC"))
        })?;
    if pfc.len() < IEEE_PFC_LEN {
        return Err(NetError::Io(format!(
            "DCB of {device}: ieee_pfc of {} bytes, expected {IEEE_PFC_LEN}",
            pfc.len()
        )));
    }
    let counters = |at: usize| -> Vec<u64> {
        (0..PRIORITIES)
            .map(|prio| netlink::u64_at(pfc, at + 8 * prio))
            .collect()
    };
    Ok(Pfc {
        enabled: pfc[1],
        requests: counters(8),
        indications: counters(8 + 8 * PRIORITIES),
    })
}

/// IEEE PFC counters of `device`; `NotSupported` where the device or kernel has no DCB.
pub fn dcb_pfc(device: &str) -> Result<Pfc, NetError> {
    check_device(device)?;
    let what = format!("DCB of {device}");
    // `struct dcbmsg`: family AF_UNSPEC, cmd, padding.
    let mut payload = vec![0u8, DCB_CMD_IEEE_GET, 0, 0];
    let mut name = device.as_bytes().to_vec();
    name.push(0);
    netlink::put_attr(&mut payload, DCB_ATTR_IFNAME, &name);
    let request = netlink::request(RTM_GETDCB, NLM_F_REQUEST, &payload);
    let answer = netlink::exchange(NETLINK_ROUTE, &what, &request, false)?;
    let first = answer
        .first()
        .ok_or_else(|| NetError::Io(format!("{what}: empty answer")))?;
    parse_pfc(device, &first.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysfs_counter(device: &str, name: &str) -> u64 {
        std::fs::read_to_string(format!("/sys/class/net/{device}/statistics/{name}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(u64::MAX)
    }

    /// `lo`'s stats64 against its sysfs counters read around the dump: the netlink value
    /// lies between the readings before and after (traffic on `lo` only adds).
    #[test]
    fn links_include_lo_with_its_sysfs_counters() {
        let before = (
            sysfs_counter("lo", "rx_bytes"),
            sysfs_counter("lo", "tx_packets"),
        );
        let links = links().expect("RTM_GETLINK dump");
        let after = (
            sysfs_counter("lo", "rx_bytes"),
            sysfs_counter("lo", "tx_packets"),
        );
        let lo = links.iter().find(|l| l.name == "lo").expect("lo is listed");
        assert_eq!(
            u64::from(lo.ifindex),
            std::fs::read_to_string("/sys/class/net/lo/ifindex")
                .expect("lo ifindex")
                .trim()
                .parse::<u64>()
                .expect("a number")
        );
        assert_eq!(
            lo.flags & libc::IFF_LOOPBACK as u32,
            libc::IFF_LOOPBACK as u32
        );
        assert_eq!(
            lo.mtu.to_string(),
            std::fs::read_to_string("/sys/class/net/lo/mtu")
                .expect("mtu")
                .trim()
        );
        let stats = lo.stats.expect("lo has stats64");
        assert!(
            (before.0..=after.0).contains(&stats.rx_bytes),
            "rx_bytes {} outside [{}, {}]",
            stats.rx_bytes,
            before.0,
            after.0
        );
        assert!(
            (before.1..=after.1).contains(&stats.tx_packets),
            "tx_packets {} outside [{}, {}]",
            stats.tx_packets,
            before.1,
            after.1
        );
        // Every device of /sys/class/net is listed, with the same index.
        for entry in std::fs::read_dir("/sys/class/net").expect("sysfs") {
            let name = entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if let Ok(index) = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex")) {
                let link = links.iter().find(|l| l.name == name);
                assert_eq!(
                    link.map(|l| l.ifindex.to_string()),
                    Some(index.trim().to_owned()),
                    "{name}"
                );
            }
        }
    }

    /// Every device with a qdisc has a root one, and qdisc names resolve to devices.
    #[test]
    fn qdiscs_have_devices_and_kinds() {
        let qdiscs = qdiscs().expect("RTM_GETQDISC dump");
        assert!(!qdiscs.is_empty(), "lo at least has a noqueue qdisc");
        for q in &qdiscs {
            assert!(!q.kind.is_empty(), "{q:?}");
            assert!(!q.device.is_empty(), "{q:?}");
        }
        assert!(qdiscs.iter().any(|q| q.parent == u32::MAX), "a root qdisc");
    }

    #[test]
    fn dcb_on_a_device_without_it_is_not_supported() {
        // `lo` has no dcbnl_ops on every kernel.
        match dcb_pfc("lo") {
            Err(NetError::NotSupported(message)) => assert!(message.contains("lo"), "{message}"),
            other => panic!("expected not-supported, got {other:?}"),
        }
        assert!(matches!(dcb_pfc("no/such"), Err(NetError::Invalid(_))));
        assert!(matches!(
            dcb_pfc("kpnosuchdev0"),
            Err(NetError::NotFound(_) | NetError::NotSupported(_))
        ));
    }

    #[test]
    fn ieee_pfc_is_parsed_by_priority() {
        let mut pfc = vec![0u8; IEEE_PFC_LEN];
        pfc[1] = 0b1000_0001;
        for prio in 0..PRIORITIES {
            pfc[8 + 8 * prio..16 + 8 * prio].copy_from_slice(&(prio as u64 * 10).to_ne_bytes());
            pfc[72 + 8 * prio..80 + 8 * prio]
                .copy_from_slice(&(prio as u64 * 100 + 1).to_ne_bytes());
        }
        let mut ieee = Vec::new();
        netlink::put_attr(&mut ieee, DCB_ATTR_IEEE_PFC, &pfc);
        let mut payload = vec![0, DCB_CMD_IEEE_GET, 0, 0];
        netlink::put_attr(&mut payload, DCB_ATTR_IEEE, &ieee);
        let got = parse_pfc("eth9", &payload).expect("parsed");
        assert_eq!(got.enabled, 0b1000_0001);
        assert_eq!(got.requests[7], 70);
        assert_eq!(got.indications[3], 301);
        assert!(matches!(
            parse_pfc("eth9", &[0, 21, 0, 0]),
            Err(NetError::NotSupported(_))
        ));
    }
}
