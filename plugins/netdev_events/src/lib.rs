//! `netdev_events`: network devices going admin up/down and gaining or losing carrier
//! (HUATUO's `netdev_events`). The host subscribes to rtnetlink link notifications
//! (`RTNLGRP_LINK`) on one socket of its own and queues them (`link-events` interface); the
//! plugin polls that queue on a timer. The guest has no socket.
//!
//! Like HUATUO, each notification is compared with the device's last known `IFF_*` flags:
//! a change of `IFF_UP` is `linkstatus_adminup`/`_admindown`, a change of `IFF_LOWER_UP` is
//! `linkstatus_carrierup`/`_carrierdown` (setting a device down drops both, so that
//! document says `"linkstatus_admindown, linkstatus_carrierdown"`). Devices are those whose
//! name fully matches one of `device_list` (HUATUO's `Netdev.DeviceList`; empty: none). A
//! device created later that matches is tracked from its first notification (HUATUO
//! ignores devices it did not see at start). When the host's queue overflowed or the kernel
//! dropped notifications, the host's fresh dump is compared with what the plugin knew, so a
//! missed transition still gives its document.
//!
//! Metrics: HUATUO's `linkstatus_<status>_total{device,driver,driver_version,
//! firmware_version}` for every tracked device (zeros included), documents saved, and the
//! notifications the host lost. Devices here are the host network namespace's: documents
//! are the host's (no container), as HUATUO's.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kpulse_sdk::link_events::{ChangeSet, Cursor, IFF_LOWER_UP, IFF_UP, LinkChange};
use kpulse_sdk::prelude::*;
use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use serde::{Deserialize, Serialize};

/// Devices with counters; a host with more (thousands of veths) keeps the first ones.
const MAX_DEVICES: usize = 1024;

/// `[plugins.netdev_events]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Regexes matched against the whole device name (HUATUO's `DeviceList`, shipped as
    /// `["eth0", "eth1", "bond4", "lo"]`); an empty list watches no device.
    device_list: Vec<String>,
    /// How often the host's queue is read, in ms.
    interval_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            device_list: ["eth0", "eth1", "bond4", "lo"].map(str::to_owned).to_vec(),
            interval_ms: 1000,
        }
    }
}

/// HUATUO's `linkStatusType`, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Unknown,
    AdminUp,
    AdminDown,
    CarrierUp,
    CarrierDown,
}

const STATUSES: [Status; 5] = [
    Status::Unknown,
    Status::AdminUp,
    Status::AdminDown,
    Status::CarrierUp,
    Status::CarrierDown,
];

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Unknown => "linkstatus_unknown",
            Status::AdminUp => "linkstatus_adminup",
            Status::AdminDown => "linkstatus_admindown",
            Status::CarrierUp => "linkstatus_carrierup",
            Status::CarrierDown => "linkstatus_carrierdown",
        }
    }
}

/// HUATUO's `flags2status`: what the changed bits of `IFF_UP` and `IFF_LOWER_UP` mean.
fn statuses(flags: u32, change: u32) -> Vec<Status> {
    let mut out = Vec::new();
    if change & IFF_UP != 0 {
        out.push(if flags & IFF_UP != 0 {
            Status::AdminUp
        } else {
            Status::AdminDown
        });
    }
    if change & IFF_LOWER_UP != 0 {
        out.push(if flags & IFF_LOWER_UP != 0 {
            Status::CarrierUp
        } else {
            Status::CarrierDown
        });
    }
    out
}

/// HUATUO's `netdevEventData` (its JSON names) plus the device kind and raw flags.
#[derive(Debug, Clone, Serialize, PartialEq)]
struct LinkEvent {
    ifname: String,
    index: u32,
    linkstatus: String,
    mac: String,
    /// HUATUO's `AtStart`: always false in a saved document (start-up scans save nothing).
    start: bool,
    driver: String,
    driver_version: String,
    firmware_version: String,
    kind: String,
    flags: u32,
}

/// What the plugin last knew of a device.
#[derive(Debug, Clone)]
struct Known {
    name: String,
    flags: u32,
}

/// The counter series of one device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Device {
    name: String,
    driver: String,
    driver_version: String,
    firmware_version: String,
}

fn device_of(c: &LinkChange) -> Device {
    Device {
        name: c.name.clone(),
        driver: c.driver.clone(),
        driver_version: c.driver_version.clone(),
        firmware_version: c.firmware_version.clone(),
    }
}

struct NetdevEvents {
    interval: Duration,
    devices: Vec<Regex>,
    cursor: Cursor,
    /// False until the first resync set the baseline (that scan saves nothing, as HUATUO).
    primed: bool,
    known: BTreeMap<u32, Known>,
    counts: BTreeMap<Device, [u64; 5]>,
    saved: u64,
    lost: u64,
}

kpulse_sdk::register!(NetdevEvents {
    name: "netdev_events",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: ["net"],
    summary: "Network device admin and carrier up/down from rtnetlink link notifications, HUATUO's netdev_events",
});

fn compile(pattern: &str) -> Result<Regex> {
    // Whole-name match, as HUATUO's full-match list.
    Regex::builder()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .build(&format!("^(?:{pattern})$"))
        .map_err(|err| {
            Error::InvalidConfig(format!("device_list: invalid regex {pattern:?}: {err}"))
        })
}

impl Plugin for NetdevEvents {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        if settings.interval_ms == 0 || settings.interval_ms > 3_600_000 {
            return Err(Error::InvalidConfig(format!(
                "interval_ms must be 1 to 3600000 (got {})",
                settings.interval_ms
            )));
        }
        let devices = settings
            .device_list
            .iter()
            .map(|p| compile(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::new(
            Duration::from_millis(settings.interval_ms),
            devices,
        ))
    }
}

impl NetdevEvents {
    fn new(interval: Duration, devices: Vec<Regex>) -> Self {
        NetdevEvents {
            interval,
            devices,
            cursor: Cursor::new(),
            primed: false,
            known: BTreeMap::new(),
            counts: BTreeMap::new(),
            saved: 0,
            lost: 0,
        }
    }

    fn watched(&self, name: &str) -> bool {
        self.devices.iter().any(|re| re.is_match(name))
    }

    /// Counts the transitions of one device and gives its document, if any changed.
    fn transition(&mut self, old_flags: u32, c: &LinkChange) -> Option<LinkEvent> {
        let found = statuses(c.flags, old_flags ^ c.flags);
        if found.is_empty() {
            return None;
        }
        let device = device_of(c);
        if self.counts.contains_key(&device) || self.counts.len() < MAX_DEVICES {
            let counts = self.counts.entry(device).or_default();
            for status in &found {
                counts[*status as usize] += 1;
            }
        }
        Some(LinkEvent {
            ifname: c.name.clone(),
            index: c.ifindex,
            linkstatus: found
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", "),
            mac: c.mac.clone(),
            start: false,
            driver: c.driver.clone(),
            driver_version: c.driver_version.clone(),
            firmware_version: c.firmware_version.clone(),
            kind: c.kind.clone(),
            flags: c.flags,
        })
    }

    /// Tracks a device (zeroed counters, so the series exist before the first change).
    fn track(&mut self, c: &LinkChange) {
        self.known.insert(
            c.ifindex,
            Known {
                name: c.name.clone(),
                flags: c.flags,
            },
        );
        let device = device_of(c);
        if !self.counts.contains_key(&device) && self.counts.len() < MAX_DEVICES {
            self.counts.insert(device, [0; 5]);
        }
    }

    /// Applies one set from the host; returns the documents to save with their times.
    fn apply(&mut self, set: &ChangeSet) -> Vec<(u64, LinkEvent)> {
        self.lost = set.lost;
        let mut out = Vec::new();
        if set.resync {
            // A dump: compare each watched device with what was known (nothing on the
            // first one), and forget devices that are gone.
            let present: std::collections::BTreeSet<u32> =
                set.changes.iter().map(|c| c.ifindex).collect();
            self.known.retain(|ifindex, _| present.contains(ifindex));
            for c in &set.changes {
                if !self.watched(&c.name) {
                    self.known.remove(&c.ifindex);
                    continue;
                }
                if self.primed
                    && let Some(old) = self.known.get(&c.ifindex).map(|k| k.flags)
                    && let Some(event) = self.transition(old, c)
                {
                    out.push((c.time_ns, event));
                }
                self.track(c);
            }
            self.primed = true;
            return out;
        }
        for c in &set.changes {
            if c.removed || !self.watched(&c.name) {
                // Gone, or renamed to a name not watched.
                self.known.remove(&c.ifindex);
                continue;
            }
            let old = self
                .known
                .get(&c.ifindex)
                .filter(|k| k.name == c.name)
                .map(|k| k.flags);
            if let Some(old) = old
                && let Some(event) = self.transition(old, c)
            {
                out.push((c.time_ns, event));
            }
            self.track(c);
        }
        out
    }

    fn poll(&mut self) -> Result<()> {
        let set = self.cursor.poll()?;
        for (time_ns, event) in self.apply(&set) {
            let time = UNIX_EPOCH + Duration::from_nanos(time_ns);
            let time = if time_ns == 0 {
                SystemTime::now()
            } else {
                time
            };
            storage::save("netdev_events", "", time, &event)?;
            self.saved += 1;
        }
        Ok(())
    }
}

impl Tracing for NetdevEvents {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        // The first poll is the baseline (and subscribes the host), before any timer.
        self.poll()?;
        ctx.every(self.interval)?;
        Ok(())
    }

    fn on_timer(&mut self, _ctx: &mut Context, _timer: TimerId) -> Result<()> {
        self.poll()
    }
}

impl Collector for NetdevEvents {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut out = vec![
            metric::counter("events", self.saved as f64, "Link status documents saved."),
            metric::counter(
                "lost",
                self.lost as f64,
                "Link notifications the host lost (its queue overflowed, or the kernel dropped them).",
            ),
        ];
        for (device, counts) in &self.counts {
            for status in STATUSES {
                out.push(
                    metric::counter(
                        status.name(),
                        counts[status as usize] as f64,
                        "Link status changes of the device.",
                    )
                    .label("device", &device.name)
                    .label("driver", &device.driver)
                    .label("driver_version", &device.driver_version)
                    .label("firmware_version", &device.firmware_version),
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifindex: u32, name: &str, flags: u32) -> LinkChange {
        LinkChange {
            generation: 1,
            time_ns: 1_000,
            removed: false,
            ifindex,
            name: name.to_owned(),
            kind: "veth".to_owned(),
            flags,
            change_mask: u32::MAX,
            operstate: kpulse_sdk::net::OperState::Unknown,
            mac: "02:00:00:00:00:01".to_owned(),
            driver: "veth".to_owned(),
            driver_version: "1.0".to_owned(),
            firmware_version: String::new(),
        }
    }

    fn set(resync: bool, changes: Vec<LinkChange>) -> ChangeSet {
        ChangeSet {
            generation: 1,
            changes,
            resync,
            lost: 0,
        }
    }

    fn plugin(patterns: &[&str]) -> NetdevEvents {
        NetdevEvents::new(
            Duration::from_secs(1),
            patterns
                .iter()
                .map(|p| compile(p).expect("valid"))
                .collect(),
        )
    }

    const UP: u32 = IFF_UP | IFF_LOWER_UP | 0x40;

    #[test]
    fn huatuo_flag_rules() {
        assert_eq!(
            statuses(0, IFF_UP | IFF_LOWER_UP),
            vec![Status::AdminDown, Status::CarrierDown]
        );
        assert_eq!(statuses(IFF_UP, IFF_UP), vec![Status::AdminUp]);
        assert_eq!(statuses(UP, IFF_LOWER_UP), vec![Status::CarrierUp]);
        assert!(
            statuses(UP, 0x40).is_empty(),
            "IFF_RUNNING alone is no status"
        );
    }

    #[test]
    fn first_dump_is_silent_then_changes_give_documents() {
        let mut p = plugin(&["kpv[0-9]+"]);
        assert!(
            p.apply(&set(true, vec![link(5, "kpv0", UP), link(1, "lo", UP)]))
                .is_empty()
        );
        assert!(p.known.contains_key(&5) && !p.known.contains_key(&1));
        let docs = p.apply(&set(false, vec![link(5, "kpv0", 0x1002)]));
        assert_eq!(docs.len(), 1);
        assert_eq!(
            docs[0].1.linkstatus,
            "linkstatus_admindown, linkstatus_carrierdown"
        );
        let docs = p.apply(&set(false, vec![link(5, "kpv0", 0x1002 | IFF_UP)]));
        assert_eq!(docs[0].1.linkstatus, "linkstatus_adminup");
        let docs = p.apply(&set(false, vec![link(5, "kpv0", 0x1002 | UP)]));
        assert_eq!(docs[0].1.linkstatus, "linkstatus_carrierup");
        // The same state again (a notification for another attribute): nothing.
        assert!(
            p.apply(&set(false, vec![link(5, "kpv0", 0x1002 | UP)]))
                .is_empty()
        );
        let counts = p.counts.values().next().expect("one device");
        assert_eq!(counts, &[0, 1, 1, 1, 1]);
    }

    #[test]
    fn a_resync_reports_what_was_missed_and_forgets_gone_devices() {
        let mut p = plugin(&["kpv.*"]);
        p.apply(&set(true, vec![link(5, "kpv0", UP), link(6, "kpv1", UP)]));
        let docs = p.apply(&set(true, vec![link(5, "kpv0", IFF_UP)]));
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].1.linkstatus, "linkstatus_carrierdown");
        assert!(!p.known.contains_key(&6));
    }

    #[test]
    fn new_devices_are_tracked_from_their_first_notification() {
        let mut p = plugin(&["kpv.*"]);
        p.apply(&set(true, vec![]));
        assert!(
            p.apply(&set(false, vec![link(9, "kpv9", 0x1002)]))
                .is_empty()
        );
        let docs = p.apply(&set(false, vec![link(9, "kpv9", 0x1003)]));
        assert_eq!(docs[0].1.linkstatus, "linkstatus_adminup");
        let mut removed = link(9, "kpv9", 0x1003);
        removed.removed = true;
        p.apply(&set(false, vec![removed]));
        assert!(p.known.is_empty());
    }

    #[test]
    fn device_list_is_a_full_match_and_bad_regexes_are_config_errors() {
        let p = plugin(&["eth0"]);
        assert!(p.watched("eth0") && !p.watched("eth01") && !p.watched("veth0"));
        assert!(plugin(&[]).devices.is_empty());
        assert!(matches!(compile("("), Err(Error::InvalidConfig(_))));
    }
}
