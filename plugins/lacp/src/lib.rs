//! `lacp`: LACP state changes of the slaves of 802.3ad bonds (HUATUO's
//! `netdev_bonding_lacp`, whose documents are saved as `tracer_name = "lacp"`).
//!
//! HUATUO hooks `ad_disable_collecting_distributing` in bonding.ko with a kprobe, and saves
//! the concatenated `/proc/net/bonding/*` when it runs. Kernels without kprobes (this one)
//! cannot do that, so the plugin reads `/proc/net/bonding/*` on a timer (1 s by default) and
//! compares each slave's LACP state with the previous reading: the actor's and the partner's
//! port state bits (`LACP_Activity`, `Timeout`, `Aggregation`, `Synchronization`,
//! `Collecting`, `Distributing`, `Defaulted`, `Expired`), the aggregator, the MII status and
//! the churn states. A change gives one document per slave, with HUATUO's `content` (every
//! bond file at that moment) and the decoded before/after. A change that reverts within one
//! period is not seen: the kprobe would have been exact, the timer is not.
//!
//! Like HUATUO the plugin exists only where an 802.3ad bond exists when it starts: without
//! the bonding driver, or with bonds in other modes only, it is `inactive` with the reason.
//! Bonds live in the host network namespace: documents are the host's (no container).

use std::collections::BTreeMap;
use std::time::Duration;

use kpulse_sdk::prelude::*;
use serde::{Deserialize, Serialize};

const BONDING: &str = "/proc/net/bonding";
const MODE_8023AD: &str = "IEEE 802.3ad Dynamic link aggregation";
/// Bond files read per poll; a host with more bonds keeps the first ones (by name).
const MAX_BONDS: usize = 64;
/// The port state bits that carry traffic: a slave leaving them is HUATUO's event.
const COLLECTING: u8 = 0x10;
const DISTRIBUTING: u8 = 0x20;

/// `[plugins.lacp]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// How often `/proc/net/bonding/*` is read, in ms.
    interval_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self { interval_ms: 1000 }
    }
}

/// What one slave section of a bond file says about LACP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
struct SlaveState {
    mii_status: String,
    aggregator_id: Option<u32>,
    actor_churn_state: String,
    partner_churn_state: String,
    actor_port_state: Option<u8>,
    partner_port_state: Option<u8>,
}

/// One bond file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Bond {
    mode: String,
    /// Slaves by interface name, in file order kept by name.
    slaves: BTreeMap<String, SlaveState>,
}

/// Parses `/proc/net/bonding/<bond>` (drivers/net/bonding/bond_procfs.c). Unknown lines are
/// ignored; a value that does not parse is left unset, never guessed.
fn parse_bond(text: &str) -> Bond {
    #[derive(PartialEq)]
    enum Section {
        Bond,
        Slave,
        ActorPdu,
        PartnerPdu,
    }
    let mut bond = Bond::default();
    let mut section = Section::Bond;
    let mut current: Option<(String, SlaveState)> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("Slave Interface:") {
            if let Some((name, state)) = current.take() {
                bond.slaves.insert(name, state);
            }
            current = Some((name.trim().to_owned(), SlaveState::default()));
            section = Section::Slave;
            continue;
        }
        if trimmed == "details actor lacp pdu:" {
            section = Section::ActorPdu;
            continue;
        }
        if trimmed == "details partner lacp pdu:" {
            section = Section::PartnerPdu;
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if section == Section::Bond {
            if key == "Bonding Mode" {
                bond.mode = value.to_owned();
            }
            continue;
        }
        let Some((_, state)) = current.as_mut() else {
            continue;
        };
        match (&section, key) {
            (Section::Slave, "MII Status") => state.mii_status = value.to_owned(),
            (Section::Slave, "Aggregator ID") => state.aggregator_id = value.parse().ok(),
            (Section::Slave, "Actor Churn State") => state.actor_churn_state = value.to_owned(),
            (Section::Slave, "Partner Churn State") => {
                state.partner_churn_state = value.to_owned();
            }
            (Section::ActorPdu, "port state") => state.actor_port_state = value.parse().ok(),
            (Section::PartnerPdu, "port state") => state.partner_port_state = value.parse().ok(),
            _ => {}
        }
    }
    if let Some((name, state)) = current.take() {
        bond.slaves.insert(name, state);
    }
    bond
}

/// The names of the bits of an LACP port state (IEEE 802.1AX `Actor_State`).
fn state_bits(state: Option<u8>) -> Vec<&'static str> {
    const NAMES: [&str; 8] = [
        "activity",
        "timeout",
        "aggregation",
        "synchronization",
        "collecting",
        "distributing",
        "defaulted",
        "expired",
    ];
    let Some(state) = state else {
        return Vec::new();
    };
    NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| state & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

fn carries_traffic(state: Option<u8>) -> bool {
    state.is_some_and(|s| s & (COLLECTING | DISTRIBUTING) == COLLECTING | DISTRIBUTING)
}

/// The document of one slave whose LACP state changed.
#[derive(Debug, Serialize, PartialEq)]
struct LacpChange {
    bond: String,
    slave: String,
    /// HUATUO's field: every `/proc/net/bonding/*` file, concatenated, at this reading.
    content: String,
    /// The slave left (true) or rejoined (false) collecting and distributing; null when
    /// that did not change.
    left_collecting_distributing: Option<bool>,
    before: Option<SlaveState>,
    after: Option<SlaveState>,
    actor_port_state_bits: Vec<&'static str>,
    partner_port_state_bits: Vec<&'static str>,
}

struct Lacp {
    interval: Duration,
    /// Last reading per 802.3ad bond.
    bonds: BTreeMap<String, Bond>,
    saved: u64,
    /// Slaves that left collecting/distributing (HUATUO's event), per bond.
    left: BTreeMap<String, u64>,
    read_errors: u64,
}

kpulse_sdk::register!(Lacp {
    name: "lacp",
    version: "0.1.0",
    interval: 60,
    kinds: [tracing, metric],
    capabilities: ["read:/proc/net/bonding"],
    summary: "LACP state changes of 802.3ad bond slaves (/proc/net/bonding on a timer), HUATUO's netdev_bonding_lacp",
});

/// Every bond file: `(name, text)`, by name.
fn read_bonds() -> Result<Vec<(String, String)>> {
    let mut names: Vec<String> = fs::read_dir(BONDING)?
        .into_iter()
        .map(|e| e.name)
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names.truncate(MAX_BONDS);
    let mut out = Vec::new();
    for name in names {
        match fs::read_to_string(&format!("{BONDING}/{name}")) {
            Ok(text) => out.push((name, text)),
            // Deleted between the listing and the read.
            Err(err) if err.is_not_found() => {}
            Err(err) => return Err(err),
        }
    }
    Ok(out)
}

/// The 802.3ad bonds of a reading.
fn lacp_bonds(files: &[(String, String)]) -> BTreeMap<String, Bond> {
    files
        .iter()
        .map(|(name, text)| (name.clone(), parse_bond(text)))
        .filter(|(_, bond)| bond.mode == MODE_8023AD)
        .collect()
}

fn content(files: &[(String, String)]) -> String {
    files
        .iter()
        .map(|(name, text)| format!("==> {BONDING}/{name} <==\n{text}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Plugin for Lacp {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        if settings.interval_ms == 0 || settings.interval_ms > 3_600_000 {
            return Err(Error::InvalidConfig(format!(
                "interval_ms must be 1 to 3600000 (got {})",
                settings.interval_ms
            )));
        }
        let files = match read_bonds() {
            Ok(files) => files,
            Err(err) if err.is_access_denied() => return Err(err),
            Err(err) => {
                return Err(Error::NotSupported(format!(
                    "no bonding driver ({BONDING}: {err})"
                )));
            }
        };
        let bonds = lacp_bonds(&files);
        if bonds.is_empty() {
            return Err(Error::NotSupported(format!(
                "no bond in 802.3ad mode ({} bond(s) in {BONDING})",
                files.len()
            )));
        }
        Ok(Lacp {
            interval: Duration::from_millis(settings.interval_ms),
            bonds,
            saved: 0,
            left: BTreeMap::new(),
            read_errors: 0,
        })
    }
}

impl Lacp {
    /// Compares a reading with the last one; returns the documents and keeps the reading.
    fn compare(&mut self, files: &[(String, String)]) -> Vec<LacpChange> {
        let now = lacp_bonds(files);
        let mut out = Vec::new();
        let empty = Bond::default();
        for name in now
            .keys()
            .chain(self.bonds.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            let before = self.bonds.get(name).unwrap_or(&empty);
            let after = now.get(name).unwrap_or(&empty);
            let slaves: std::collections::BTreeSet<&String> =
                before.slaves.keys().chain(after.slaves.keys()).collect();
            for slave in slaves {
                let (old, new) = (before.slaves.get(slave), after.slaves.get(slave));
                if old == new {
                    continue;
                }
                let was = carries_traffic(old.and_then(|s| s.actor_port_state));
                let is = carries_traffic(new.and_then(|s| s.actor_port_state));
                let left = (was != is).then_some(was && !is);
                if left == Some(true) {
                    *self.left.entry(name.clone()).or_default() += 1;
                }
                out.push(LacpChange {
                    bond: name.clone(),
                    slave: slave.clone(),
                    content: content(files),
                    left_collecting_distributing: left,
                    before: old.cloned(),
                    after: new.cloned(),
                    actor_port_state_bits: state_bits(new.and_then(|s| s.actor_port_state)),
                    partner_port_state_bits: state_bits(new.and_then(|s| s.partner_port_state)),
                });
            }
        }
        self.bonds = now;
        out
    }
}

impl Tracing for Lacp {
    fn start(&mut self, ctx: &mut Context) -> Result<()> {
        ctx.every(self.interval)?;
        Ok(())
    }

    fn on_timer(&mut self, _ctx: &mut Context, _timer: TimerId) -> Result<()> {
        let files = match read_bonds() {
            Ok(files) => files,
            // The driver was unloaded: every bond is gone, which `compare` reports.
            Err(err) if err.is_not_found() => Vec::new(),
            Err(err) => {
                self.read_errors += 1;
                return Err(err);
            }
        };
        for change in self.compare(&files) {
            storage::save("lacp", "", storage::now(), &change)?;
            self.saved += 1;
        }
        Ok(())
    }
}

impl Collector for Lacp {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut out = vec![
            metric::counter(
                "events",
                self.saved as f64,
                "LACP state change documents saved.",
            ),
            metric::gauge("bonds", self.bonds.len() as f64, "802.3ad bonds watched."),
        ];
        for (bond, state) in &self.bonds {
            out.push(
                metric::counter(
                    "left_collecting_distributing",
                    self.left.get(bond).copied().unwrap_or(0) as f64,
                    "Slaves seen leaving collecting and distributing (HUATUO's netdev_bonding_lacp event).",
                )
                .label("bond", bond),
            );
            for (slave, s) in &state.slaves {
                out.push(
                    metric::gauge(
                        "slave_collecting_distributing",
                        if carries_traffic(s.actor_port_state) {
                            1.0
                        } else {
                            0.0
                        },
                        "1 while the slave's actor port state is collecting and distributing.",
                    )
                    .label("bond", bond)
                    .label("slave", slave),
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOND0: &str = include_str!("../../../tests/fixtures/roots/bond/proc/net/bonding/bond0");

    fn with_state(text: &str, slave: &str, actor: u8) -> String {
        // Rewrites the first actor `port state` after `Slave Interface: <slave>`.
        let at = text
            .find(&format!("Slave Interface: {slave}"))
            .expect("slave");
        let actor_at = at + text[at..].find("details actor lacp pdu:").expect("actor");
        let state_at = actor_at + text[actor_at..].find("port state: ").expect("state") + 12;
        let end = state_at + text[state_at..].find('\n').expect("eol");
        format!("{}{actor}{}", &text[..state_at], &text[end..])
    }

    fn plugin(files: &[(String, String)]) -> Lacp {
        Lacp {
            interval: Duration::from_secs(1),
            bonds: lacp_bonds(files),
            saved: 0,
            left: BTreeMap::new(),
            read_errors: 0,
        }
    }

    #[test]
    fn parses_the_recorded_bond() {
        let bond = parse_bond(BOND0);
        assert_eq!(bond.mode, MODE_8023AD);
        assert_eq!(bond.slaves.len(), 2);
        let eth1 = &bond.slaves["eth1"];
        assert_eq!(eth1.mii_status, "up");
        assert_eq!(eth1.aggregator_id, Some(1));
        assert_eq!(eth1.actor_port_state, Some(61));
        assert_eq!(eth1.partner_port_state, Some(61));
        assert_eq!(eth1.actor_churn_state, "none");
        assert_eq!(
            state_bits(Some(61)),
            [
                "activity",
                "aggregation",
                "synchronization",
                "collecting",
                "distributing"
            ]
        );
    }

    #[test]
    fn a_slave_leaving_collecting_distributing_is_one_document() {
        let files = vec![("bond0".to_owned(), BOND0.to_owned())];
        let mut p = plugin(&files);
        assert!(p.compare(&files).is_empty(), "no change, no document");
        let changed = vec![("bond0".to_owned(), with_state(BOND0, "eth1", 71))];
        let docs = p.compare(&changed);
        assert_eq!(docs.len(), 1);
        let doc = &docs[0];
        assert_eq!((doc.bond.as_str(), doc.slave.as_str()), ("bond0", "eth1"));
        assert_eq!(doc.left_collecting_distributing, Some(true));
        assert_eq!(
            doc.before.as_ref().expect("before").actor_port_state,
            Some(61)
        );
        assert_eq!(
            doc.after.as_ref().expect("after").actor_port_state,
            Some(71)
        );
        assert_eq!(
            doc.actor_port_state_bits,
            ["activity", "timeout", "aggregation", "defaulted"]
        );
        assert!(doc.content.contains("==> /proc/net/bonding/bond0 <=="));
        assert_eq!(p.left["bond0"], 1);
        // Back: a document that says it rejoined.
        let docs = p.compare(&files);
        assert_eq!(docs[0].left_collecting_distributing, Some(false));
        assert_eq!(p.left["bond0"], 1);
    }

    #[test]
    fn other_modes_and_garbage_are_not_lacp_bonds() {
        let files = vec![
            (
                "bond1".to_owned(),
                "Bonding Mode: fault-tolerance (active-backup)\n\nSlave Interface: eth3\n"
                    .to_owned(),
            ),
            (
                "bond2".to_owned(),
                "\u{0}\u{1}garbage: :\n::\nSlave Interface:\n".to_owned(),
            ),
        ];
        assert!(lacp_bonds(&files).is_empty());
        let bond = parse_bond("Slave Interface: x\ndetails actor lacp pdu:\nport state: 999\n");
        assert_eq!(
            bond.slaves["x"].actor_port_state, None,
            "out of range is unset"
        );
    }

    #[test]
    fn a_removed_bond_reports_its_slaves_gone() {
        let files = vec![("bond0".to_owned(), BOND0.to_owned())];
        let mut p = plugin(&files);
        let docs = p.compare(&[]);
        assert_eq!(docs.len(), 2);
        assert!(docs.iter().all(|d| d.after.is_none()));
        assert_eq!(p.left["bond0"], 2, "both slaves stopped carrying traffic");
    }
}
