//! The RDMA `nldev` netlink family (`NETLINK_RDMA`, what `rdma statistic` reads): the RDMA
//! devices and the hardware counters of their ports. Built by hand: no kept crate has the
//! family. The family exists only while `ib_core` is loaded; without it the socket cannot be
//! opened and every call answers `NotSupported`.

use super::netlink::{self, NLM_F_DUMP, NLM_F_REQUEST};
use super::{NetError, RdmaLink};

const NETLINK_RDMA: isize = 20;
const RDMA_NL_NLDEV: u16 = 5;
const RDMA_NLDEV_CMD_GET: u16 = 1;
const RDMA_NLDEV_CMD_STAT_GET: u16 = 17;
const RDMA_NLDEV_ATTR_DEV_INDEX: u16 = 1;
const RDMA_NLDEV_ATTR_DEV_NAME: u16 = 2;
/// In a `CMD_GET` answer: the number of ports; in a request: the port.
const RDMA_NLDEV_ATTR_PORT_INDEX: u16 = 3;
const RDMA_NLDEV_ATTR_NODE_GUID: u16 = 6;
const RDMA_NLDEV_ATTR_STAT_HWCOUNTERS: u16 = 80;
const RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY: u16 = 81;
const RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_NAME: u16 = 82;
const RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_VALUE: u16 = 83;
/// Ports asked per device at most (a switch has up to 255; HCAs have 1 or 2).
const MAX_PORTS: u32 = 256;

/// `RDMA_NL_GET_TYPE(client, op)`.
fn kind(op: u16) -> u16 {
    (RDMA_NL_NLDEV << 10) + op
}

fn u32_attr(attrs: &[u8], kind: u16) -> u32 {
    netlink::attr(attrs, kind).map_or(0, |p| netlink::u32_at(p, 0))
}

fn device_of(attrs: &[u8]) -> RdmaLink {
    RdmaLink {
        index: u32_attr(attrs, RDMA_NLDEV_ATTR_DEV_INDEX),
        name: netlink::attr(attrs, RDMA_NLDEV_ATTR_DEV_NAME)
            .map(netlink::string)
            .unwrap_or_default(),
        node_guid: netlink::attr(attrs, RDMA_NLDEV_ATTR_NODE_GUID)
            .map_or(0, |p| netlink::u64_at(p, 0)),
        num_ports: u32_attr(attrs, RDMA_NLDEV_ATTR_PORT_INDEX),
        counters: Vec::new(),
    }
}

/// The `(name, value)` hardware counters of a `STAT_GET` answer.
fn counters_of(attrs: &[u8]) -> Vec<(String, u64)> {
    let Some(table) = netlink::attr(attrs, RDMA_NLDEV_ATTR_STAT_HWCOUNTERS) else {
        return Vec::new();
    };
    netlink::attrs(table)
        .filter(|(k, _)| *k == RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY)
        .filter_map(|(_, entry)| {
            let name = netlink::string(netlink::attr(
                entry,
                RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_NAME,
            )?);
            let value = netlink::u64_at(
                netlink::attr(entry, RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_VALUE)?,
                0,
            );
            Some((name, value))
        })
        .collect()
}

/// Every RDMA device with its ports' hardware counters.
pub fn rdma_links() -> Result<Vec<RdmaLink>, NetError> {
    let request = netlink::request(kind(RDMA_NLDEV_CMD_GET), NLM_F_REQUEST | NLM_F_DUMP, &[]);
    let answer = netlink::exchange(NETLINK_RDMA, "RDMA nldev dump", &request, true)?;
    let mut links: Vec<RdmaLink> = answer.iter().map(|m| device_of(&m.payload)).collect();
    for link in &mut links {
        for port in 1..=link.num_ports.min(MAX_PORTS) {
            let mut attrs = Vec::new();
            netlink::put_attr(
                &mut attrs,
                RDMA_NLDEV_ATTR_DEV_INDEX,
                &link.index.to_ne_bytes(),
            );
            netlink::put_attr(&mut attrs, RDMA_NLDEV_ATTR_PORT_INDEX, &port.to_ne_bytes());
            let request = netlink::request(kind(RDMA_NLDEV_CMD_STAT_GET), NLM_F_REQUEST, &attrs);
            let what = format!("RDMA counters of {} port {port}", link.name);
            match netlink::exchange(NETLINK_RDMA, &what, &request, false) {
                Ok(answer) => {
                    for message in &answer {
                        link.counters.extend(
                            counters_of(&message.payload)
                                .into_iter()
                                .map(|(name, value)| (port, name, value)),
                        );
                    }
                }
                // A port without hardware counters (a driver without `alloc_hw_port_stats`).
                Err(NetError::NotSupported(_)) => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_rdma_the_answer_is_not_supported() {
        let loaded = std::path::Path::new("/sys/class/infiniband").exists()
            || std::path::Path::new("/sys/module/ib_core").exists();
        match rdma_links() {
            Ok(links) => assert!(loaded, "RDMA links without ib_core: {links:?}"),
            Err(NetError::NotSupported(message)) => {
                assert!(!loaded, "ib_core loaded but: {message}");
            }
            Err(err) => panic!("unexpected error: {err}"),
        }
    }

    #[test]
    fn hardware_counters_are_parsed() {
        let mut entry = Vec::new();
        netlink::put_attr(
            &mut entry,
            RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_NAME,
            b"rx_write_requests\0",
        );
        netlink::put_attr(
            &mut entry,
            RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY_VALUE,
            &42u64.to_ne_bytes(),
        );
        let mut table = Vec::new();
        netlink::put_attr(&mut table, RDMA_NLDEV_ATTR_STAT_HWCOUNTER_ENTRY, &entry);
        let mut attrs = Vec::new();
        netlink::put_attr(&mut attrs, RDMA_NLDEV_ATTR_DEV_INDEX, &3u32.to_ne_bytes());
        netlink::put_attr(&mut attrs, RDMA_NLDEV_ATTR_STAT_HWCOUNTERS, &table);
        assert_eq!(
            counters_of(&attrs),
            vec![("rx_write_requests".to_owned(), 42)]
        );
    }
}
