//! Link notifications (`RTNLGRP_LINK`) for the `link-events` interface: one rtnetlink socket
//! of the host's, subscribed on the first call, read by one thread that parses each
//! `RTM_NEWLINK`/`RTM_DELLINK`, adds the device's ethtool driver information and appends it
//! to a bounded queue shared by every reader. Readers keep their own cursor (a generation),
//! like the container registry's `changes`.
//!
//! The queue holds [`CAPACITY`] notifications: a full queue drops its oldest, and a reader
//! whose cursor is older gets a resync (a fresh `RTM_GETLINK` dump). A kernel overrun of the
//! socket (`ENOBUFS`: notifications came faster than the thread read them) does the same to
//! every reader. Both are counted in [`ChangeSet::lost`].

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use netlink_packet_core::ParseableParametrized;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use super::{NetError, OperState, netlink, rtnetlink};

/// Notifications kept for readers. A flapping link sends a few per second; 4096 covers
/// minutes of a storm on a big host for a reader that polls every second.
pub const CAPACITY: usize = 4096;
/// `RTNLGRP_LINK`.
const RTNLGRP_LINK: u32 = 1;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
/// The socket's receive buffer: a burst of notifications waits here while the thread parses.
const RECEIVE_BUFFER: usize = 1024 * 1024;
const NLMSG_HDRLEN: usize = 16;

/// One device as a notification (or a resync's dump) described it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    /// Position in the queue; 0 for a snapshot entry.
    pub generation: u64,
    pub time_ns: u64,
    pub removed: bool,
    pub ifindex: u32,
    pub name: String,
    pub kind: String,
    pub flags: u32,
    pub change_mask: u32,
    pub operstate: Option<OperState>,
    pub mac: String,
    pub driver: String,
    pub driver_version: String,
    pub firmware_version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub generation: u64,
    pub changes: Vec<LinkChange>,
    pub resync: bool,
    pub lost: u64,
}

#[derive(Debug)]
struct Queue {
    entries: VecDeque<LinkChange>,
    /// The generation the next notification gets.
    next: u64,
    /// The oldest generation still in `entries` (or `next` when nothing was evicted yet).
    first_kept: u64,
    /// Generation of the last kernel overrun: a reader whose cursor is below it missed
    /// notifications nobody can name.
    overrun_at: u64,
    evicted: u64,
    overruns: u64,
}

impl Queue {
    fn new() -> Self {
        Queue {
            entries: VecDeque::new(),
            next: 1,
            first_kept: 1,
            overrun_at: 0,
            evicted: 0,
            overruns: 0,
        }
    }

    fn push(&mut self, mut change: LinkChange) {
        change.generation = self.next;
        self.next += 1;
        if self.entries.len() >= CAPACITY
            && let Some(old) = self.entries.pop_front()
        {
            self.evicted += 1;
            self.first_kept = old.generation + 1;
        }
        self.entries.push_back(change);
    }

    /// The kernel dropped notifications: a generation of its own marks the gap, so readers
    /// behind it resync once and readers after their resync do not.
    fn overrun(&mut self) {
        self.overruns += 1;
        self.overrun_at = self.next;
        self.next += 1;
    }

    fn lost(&self) -> u64 {
        self.evicted + self.overruns
    }

    /// The notifications after `since`, or `None` when the reader must resync.
    fn after(&self, since: u64) -> Option<Vec<LinkChange>> {
        let head = self.next - 1;
        if since == 0 || since > head || since + 1 < self.first_kept || since < self.overrun_at {
            return None;
        }
        Some(
            self.entries
                .iter()
                .filter(|c| c.generation > since)
                .cloned()
                .collect(),
        )
    }
}

/// The host's subscription: started once, shared by every plugin instance.
#[derive(Debug)]
pub struct LinkEvents {
    queue: Mutex<Queue>,
    started: OnceLock<Result<(), NetError>>,
}

static SHARED: OnceLock<LinkEvents> = OnceLock::new();

fn shared() -> &'static LinkEvents {
    SHARED.get_or_init(|| LinkEvents {
        queue: Mutex::new(Queue::new()),
        started: OnceLock::new(),
    })
}

/// What changed after generation `since` (0: a snapshot of every device). Subscribes on the
/// first call; a subscription that could not be opened fails every call with its reason.
pub fn changes(since: u64) -> Result<ChangeSet, NetError> {
    shared().changes(since)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl LinkEvents {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic in the listener while it held the lock leaves a queue that is still
        // consistent (every update is one push): keep serving it.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&'static self) -> Result<(), NetError> {
        self.started
            .get_or_init(|| {
                let socket = subscribe()?;
                std::thread::Builder::new()
                    .name("kpulse-link-events".to_owned())
                    .spawn(move || self.listen(&socket))
                    .map(drop)
                    .map_err(|err| NetError::Io(format!("link events: spawn the reader: {err}")))
            })
            .clone()
    }

    fn changes(&'static self, since: u64) -> Result<ChangeSet, NetError> {
        self.start()?;
        let (head, lost) = {
            let queue = self.lock();
            if let Some(changes) = queue.after(since) {
                return Ok(ChangeSet {
                    generation: queue.next - 1,
                    changes,
                    resync: false,
                    lost: queue.lost(),
                });
            }
            (queue.next - 1, queue.lost())
        };
        // The dump runs after `head` was taken: a notification that races it is delivered
        // again by the next call, which a reader comparing states sees as no change.
        Ok(ChangeSet {
            generation: head,
            changes: snapshot()?,
            resync: true,
            lost,
        })
    }

    /// The reader thread: runs for the agent's lifetime (the socket is its only resource).
    fn listen(&self, socket: &Socket) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut errors = 0u64;
        loop {
            match socket.recv(&mut &mut buf[..], 0) {
                Ok(size) => {
                    let received = now_ns();
                    for change in parse_datagram(&buf[..size.min(buf.len())], received) {
                        let change = with_driver(change);
                        self.lock().push(change);
                    }
                }
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!("link events: the kernel dropped notifications (ENOBUFS)");
                    self.lock().overrun();
                }
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                Err(err) => {
                    // Not expected on a netlink socket; log the first few, then back off
                    // rather than spin.
                    errors += 1;
                    if errors <= 5 {
                        tracing::warn!(%err, "link events: receive failed");
                    }
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
    }
}

fn subscribe() -> Result<Socket, NetError> {
    let what = "link events";
    let mut socket = Socket::new(NETLINK_ROUTE)
        .map_err(|err| NetError::from_errno(what, "open a netlink socket", &err))?;
    socket
        .bind(&SocketAddr::new(0, 0))
        .map_err(|err| NetError::from_errno(what, "bind", &err))?;
    socket
        .add_membership(RTNLGRP_LINK)
        .map_err(|err| NetError::from_errno(what, "join RTNLGRP_LINK", &err))?;
    // A smaller buffer only means earlier overruns, which are counted: not fatal.
    if let Err(err) = socket.set_rx_buf_sz(RECEIVE_BUFFER) {
        tracing::debug!(%err, "link events: SO_RCVBUF");
    }
    Ok(socket)
}

/// Every link-notification message of one datagram; other messages and malformed ones are
/// skipped (a datagram is the kernel's, but its layout is still checked).
fn parse_datagram(bytes: &[u8], time_ns: u64) -> Vec<LinkChange> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= NLMSG_HDRLEN {
        let len = netlink::u32_at(rest, 0) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < NLMSG_HDRLEN || len > rest.len() {
            tracing::debug!(len, "link events: malformed notification");
            break;
        }
        if kind == RTM_NEWLINK || kind == RTM_DELLINK {
            match RouteNetlinkMessage::parse_with_param(&rest[NLMSG_HDRLEN..len], kind) {
                Ok(RouteNetlinkMessage::NewLink(m)) => out.push(change_of(m, false, time_ns)),
                Ok(RouteNetlinkMessage::DelLink(m)) => out.push(change_of(m, true, time_ns)),
                Ok(_) => {}
                Err(err) => tracing::debug!(%err, "link events: unparsable notification"),
            }
        }
        rest = &rest[netlink::align(len).min(rest.len())..];
    }
    out
}

fn mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn change_of(message: LinkMessage, removed: bool, time_ns: u64) -> LinkChange {
    let mut change = LinkChange {
        time_ns,
        removed,
        ifindex: message.header.index,
        flags: message.header.flags.bits(),
        change_mask: message.header.change_mask.bits(),
        ..LinkChange::default()
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => change.name = name,
            LinkAttribute::Address(bytes) => change.mac = mac(&bytes),
            LinkAttribute::OperState(state) => {
                change.operstate = Some(rtnetlink::oper_state(state));
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        change.kind = kind.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    change
}

/// Every current device, with driver information: what a resync starts from.
fn snapshot() -> Result<Vec<LinkChange>, NetError> {
    let time_ns = now_ns();
    let answers = rtnetlink::dump(
        "link events: RTM_GETLINK dump",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => {
                Some(with_driver(change_of(link, false, time_ns)))
            }
            _ => None,
        })
        .collect())
}

fn with_driver(mut change: LinkChange) -> LinkChange {
    if !change.removed
        && let Some(info) = driver_info(&change.name)
    {
        change.driver = info.driver;
        change.driver_version = info.version;
        change.firmware_version = info.firmware_version;
    }
    change
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverInfo {
    pub driver: String,
    pub version: String,
    pub firmware_version: String,
}

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes on 64-bit).
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

const ETHTOOL_GDRVINFO: u32 = 0x3;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// The driver of device `name` (`ethtool -i`), or `None` when the name is not a device name
/// or the device answers nothing (gone, or a driver without `get_drvinfo`).
pub fn driver_info(name: &str) -> Option<DriverInfo> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return None;
    }
    #[allow(unsafe_code, reason = "socket(2): the descriptor is owned right away")]
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    #[allow(
        unsafe_code,
        reason = "a descriptor socket(2) just returned, owned once"
    )]
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    let mut request = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (&raw mut info).cast(),
        _pad: [0; 16],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    #[allow(
        unsafe_code,
        reason = "SIOCETHTOOL with an ifreq whose data points at a drvinfo that outlives the call"
    )]
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &raw mut request) };
    if rc != 0 {
        return None;
    }
    Some(DriverInfo {
        driver: netlink::string(&info.driver),
        version: netlink::string(&info.version),
        firmware_version: netlink::string(&info.fw_version),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(name: &str) -> LinkChange {
        LinkChange {
            name: name.to_owned(),
            ..LinkChange::default()
        }
    }

    #[test]
    fn readers_follow_the_queue_and_resync_when_behind() {
        let mut q = Queue::new();
        assert_eq!(q.after(0), None, "0 always asks for a snapshot");
        q.push(change("a"));
        q.push(change("b"));
        let got = q.after(1).expect("kept");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].generation, got[0].name.as_str()), (2, "b"));
        assert_eq!(q.after(2), Some(Vec::new()));
        assert_eq!(q.after(3), None, "a cursor from the future resyncs");
        for i in 0..CAPACITY {
            q.push(change(&format!("x{i}")));
        }
        assert_eq!(q.evicted, 2);
        assert_eq!(q.after(1), None, "generation 2 was evicted");
        assert_eq!(q.after(2).map(|v| v.len()), Some(CAPACITY));
        assert_eq!(q.lost(), 2);
    }

    #[test]
    fn an_overrun_resyncs_each_reader_once() {
        let mut q = Queue::new();
        q.push(change("a"));
        q.overrun();
        assert_eq!(q.after(1), None);
        let head = q.next - 1;
        assert_eq!(q.after(head), Some(Vec::new()), "after the resync: no loop");
        assert_eq!(q.lost(), 1);
    }

    #[test]
    fn malformed_datagrams_parse_to_nothing() {
        assert!(parse_datagram(&[], 0).is_empty());
        let mut bytes = 200u32.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        bytes.extend_from_slice(&[0; 10]);
        assert!(parse_datagram(&bytes, 0).is_empty(), "length past the end");
        let mut truncated = 20u32.to_ne_bytes().to_vec();
        truncated.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        truncated.extend_from_slice(&[0; 14]);
        assert!(
            parse_datagram(&truncated, 0).is_empty(),
            "ifinfomsg cut short"
        );
    }

    #[test]
    fn lo_is_in_the_snapshot_with_its_flags() {
        let links = snapshot().expect("dump");
        let lo = links.iter().find(|l| l.name == "lo").expect("lo");
        assert_ne!(lo.flags & 0x8, 0, "IFF_LOOPBACK");
        assert_eq!(lo.mac, "00:00:00:00:00:00");
    }

    #[test]
    fn driver_info_refuses_bad_names() {
        assert_eq!(driver_info(""), None);
        assert_eq!(driver_info("a-name-far-too-long-for-ifnamsiz"), None);
        assert_eq!(driver_info("no-such-dev0"), None);
    }
}
