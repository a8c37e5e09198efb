//! `netdev_hw`: per-device counters of sysfs `/sys/class/net/<dev>/statistics/*` and the
//! hardware rx drops under HUATUO's name (`huatuo_bamai_netdev_hw_rx_dropped_total{device,driver}`
//! with `prefix = "huatuo_bamai"`), filtered by HUATUO's `DeviceIncluded`/`DeviceExcluded`
//! regexes.
//!
//! - `rx_dropped_total{device,driver}`: the device's `rx_missed_errors` (drops in the NIC,
//!   which mlx5_core, i40e, ixgbe and bnxt_en count there), for devices with a driver
//!   (`device/driver` link; virtual devices such as `lo` have none). HUATUO subtracts software
//!   drops from `rx_dropped` for other drivers (virtio_net) with a BPF kprobe on
//!   `carrier_down_count_show`; this plugin has no BPF and always reports `rx_missed_errors`.
//! - `statistics_<file>_total{device}`: every file of `statistics/` (`rx_bytes`,
//!   `rx_missed_errors`, `tx_carrier_errors`, ...), for every kept device.
//!
//! ```toml
//! [plugins.netdev_hw]
//! # Regexes searched anywhere in the device name; empty = no rule (the default: all devices).
//! device_included = ""
//! device_excluded = '^(lo)|(docker\w*)|(veth\w*)$'
//! ```
//!
//! Statistics files whose content is not a number are skipped and counted in
//! `malformed_lines_total`; a device that disappears while it is read is skipped.
//! HUATUO blacklists this collector by default; here it runs only when configured.

use kpulse_sdk::prelude::*;
use serde::Deserialize;

#[path = "../../memory_vmstat/src/filter.rs"]
mod filter;
use filter::Filter;

const NET: &str = "/sys/class/net";

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    device_included: String,
    device_excluded: String,
}

struct NetdevHw {
    filter: Filter,
    malformed: u64,
}

kpulse_sdk::register!(NetdevHw {
    name: "netdev_hw",
    kinds: [metric],
    capabilities: ["read:/sys/class/net"],
    summary: "Per-device sysfs statistics and hardware rx drops, HUATUO's netdev_hw",
});

impl Plugin for NetdevHw {
    fn init(config: Config) -> Result<Self> {
        let s: Settings = config.parse()?;
        Ok(NetdevHw {
            filter: Filter::new(
                ("device_included", &s.device_included),
                ("device_excluded", &s.device_excluded),
            )?,
            malformed: 0,
        })
    }
}

/// One device as read from sysfs.
#[derive(Debug, Default)]
struct Device {
    name: String,
    /// Basename of the `device/driver` link.
    driver: Option<String>,
    /// `(statistics file, content)`.
    stats: Vec<(String, String)>,
}

/// The driver's name from a `device/driver` link target (`../../../bus/pci/drivers/ixgbe`).
fn driver_name(target: &str) -> Option<String> {
    let name = target.trim_end_matches('/').rsplit('/').next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

impl NetdevHw {
    fn collect(&mut self, devices: &[Device]) -> Vec<Metric> {
        let mut out = Vec::new();
        for dev in devices.iter().filter(|d| self.filter.keeps(&d.name)) {
            for (file, content) in &dev.stats {
                let Ok(value) = content.trim().parse::<u64>() else {
                    self.malformed += 1;
                    continue;
                };
                if file == "rx_missed_errors"
                    && let Some(driver) = &dev.driver
                {
                    out.push(
                        metric::counter(
                            "rx_dropped",
                            value as f64,
                            "Packets dropped by the network device's hardware (rx_missed_errors).",
                        )
                        .label("device", &dev.name)
                        .label("driver", driver),
                    );
                }
                let help = format!("Network device statistic {file} (sysfs).");
                out.push(
                    metric::counter(&format!("statistics_{file}"), value as f64, &help)
                        .label("device", &dev.name),
                );
            }
        }
        out.push(metric::counter(
            "malformed_lines",
            self.malformed as f64,
            "Statistics files under /sys/class/net that did not parse and were skipped.",
        ));
        out
    }
}

/// Reads one device; `None` when it went away or is not a device directory.
fn read_device(name: &str) -> Result<Option<Device>> {
    let dir = format!("{NET}/{name}/statistics");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.is_not_found() => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut stats = Vec::new();
    for entry in entries {
        match fs::read_to_string(&format!("{dir}/{}", entry.name)) {
            Ok(text) => stats.push((entry.name, text)),
            Err(err) if err.is_not_found() => {}
            Err(err) => return Err(err),
        }
    }
    stats.sort();
    let driver = fs::read_link(&format!("{NET}/{name}/device/driver"))
        .ok()
        .and_then(|target| driver_name(&target));
    Ok(Some(Device {
        name: name.to_owned(),
        driver,
        stats,
    }))
}

impl Collector for NetdevHw {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut names: Vec<String> = fs::read_dir(NET)?.into_iter().map(|e| e.name).collect();
        names.sort();
        let mut devices = Vec::new();
        for name in names.iter().filter(|n| self.filter.keeps(n)) {
            if let Some(dev) = read_device(name)? {
                devices.push(dev);
            }
        }
        Ok(self.collect(&devices))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, driver: Option<&str>, stats: &[(&str, &str)]) -> Device {
        Device {
            name: name.to_owned(),
            driver: driver.map(str::to_owned),
            stats: stats
                .iter()
                .map(|(f, c)| ((*f).to_owned(), (*c).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn huatuo_rx_dropped_and_statistics() {
        let mut p = NetdevHw {
            filter: Filter::new(("i", ""), ("e", r"^(lo)|(docker\w*)|(veth\w*)$")).expect("valid"),
            malformed: 0,
        };
        let devices = [
            device("lo", None, &[("rx_bytes", "100\n")]),
            device(
                "eth0",
                Some("ixgbe"),
                &[
                    ("rx_bytes", "1234\n"),
                    ("rx_dropped", "9\n"),
                    ("rx_missed_errors", "7\n"),
                    ("tx_bytes", "garbage\n"),
                ],
            ),
            device("ifb0", None, &[("rx_missed_errors", "3\n")]),
        ];
        let out = p.collect(&devices);
        type Sample<'a> = (&'a str, Vec<(String, String)>, f64);
        let got: Vec<Sample<'_>> = out
            .iter()
            .map(|m| (m.name(), m.labels().to_vec(), m.value()))
            .collect();
        let l = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            got,
            [
                ("statistics_rx_bytes", l(&[("device", "eth0")]), 1234.0),
                ("statistics_rx_dropped", l(&[("device", "eth0")]), 9.0),
                (
                    "rx_dropped",
                    l(&[("device", "eth0"), ("driver", "ixgbe")]),
                    7.0
                ),
                ("statistics_rx_missed_errors", l(&[("device", "eth0")]), 7.0),
                ("statistics_rx_missed_errors", l(&[("device", "ifb0")]), 3.0),
                ("malformed_lines", vec![], 1.0),
            ]
        );
    }

    #[test]
    fn driver_from_link() {
        assert_eq!(
            driver_name("../../../bus/virtio/drivers/virtio_net").as_deref(),
            Some("virtio_net")
        );
        assert_eq!(driver_name("").as_deref(), None);
        assert_eq!(driver_name("ixgbe/").as_deref(), Some("ixgbe"));
    }
}
