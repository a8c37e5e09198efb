//! `netdev_dcb`: IEEE 802.1Qbb priority flow control frames per priority, from the host's
//! rtnetlink DCB query (`RTM_GETDCB`, `net` interface), under HUATUO's names
//! (`huatuo_bamai_netdev_dcb_pfc_send_total{device,prio}` and `..._pfc_received_total`
//! with `prefix = "huatuo_bamai"`).
//!
//! Every non-loopback device of the host's network namespace is asked on each scrape (a
//! device added later is picked up); devices without DCB (`not-supported`) are skipped.
//! Where no device has DCB at `init` (virtual NICs, drivers without `dcbnl_ops`, a kernel
//! without `CONFIG_DCB`) the plugin is `inactive` (HUATUO's `ErrNotSupported`).

use kpulse_sdk::net::{self, IFF_LOOPBACK, Pfc};
use kpulse_sdk::prelude::*;

#[derive(Debug)]
struct NetdevDcb;

kpulse_sdk::register!(NetdevDcb {
    name: "netdev_dcb",
    kinds: [metric],
    capabilities: ["net"],
    summary: "IEEE PFC frames sent and received per priority (rtnetlink DCB), HUATUO's netdev_dcb",
});

/// The PFC counters of every device that has DCB; devices without it are left out.
fn pfc_devices() -> Result<Vec<(String, Pfc)>> {
    let mut out = Vec::new();
    for link in net::links()? {
        if link.flags & IFF_LOOPBACK != 0 {
            continue;
        }
        match net::dcb_pfc(&link.name) {
            Ok(pfc) => out.push((link.name, pfc)),
            // No DCB on this device, or it went away since the link dump.
            Err(err) if err.is_not_supported() || err.is_not_found() => {}
            Err(err) => return Err(err),
        }
    }
    Ok(out)
}

impl Plugin for NetdevDcb {
    fn init(config: Config) -> Result<Self> {
        if let Some(key) = config.keys().first() {
            return Err(Error::InvalidConfig(format!(
                "netdev_dcb has no settings (got `{key}`)"
            )));
        }
        if pfc_devices()?.is_empty() {
            return Err(Error::NotSupported(
                "no network device with DCB (IEEE PFC) on this host".to_owned(),
            ));
        }
        Ok(NetdevDcb)
    }
}

/// `pfc_send_total` and `pfc_received_total` per priority of one device.
fn pfc_metrics(device: &str, pfc: &Pfc) -> Vec<Metric> {
    let side = |name: &str, values: &[u64], help: &str| -> Vec<Metric> {
        values
            .iter()
            .enumerate()
            .map(|(prio, value)| {
                metric::counter(name, *value as f64, help)
                    .label("device", device)
                    .label("prio", prio.to_string())
            })
            .collect()
    };
    let mut out = side(
        "pfc_send",
        &pfc.requests,
        "PFC pause frames sent, per priority.",
    );
    out.extend(side(
        "pfc_received",
        &pfc.indications,
        "PFC pause frames received, per priority.",
    ));
    out
}

impl Collector for NetdevDcb {
    fn update(&mut self) -> Result<Vec<Metric>> {
        Ok(pfc_devices()?
            .iter()
            .flat_map(|(device, pfc)| pfc_metrics(device, pfc))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_series_per_priority_and_direction() {
        let pfc = Pfc {
            enabled: 0x08,
            requests: (0..8).collect(),
            indications: (100..108).collect(),
        };
        let out = pfc_metrics("eth0", &pfc);
        assert_eq!(out.len(), 16);
        let sent3 = out
            .iter()
            .find(|m| m.name() == "pfc_send" && m.labels()[1].1 == "3")
            .expect("prio 3");
        assert_eq!(sent3.value(), 3.0);
        let got7 = out
            .iter()
            .find(|m| m.name() == "pfc_received" && m.labels()[1].1 == "7")
            .expect("prio 7");
        assert_eq!(got7.value(), 107.0);
        assert_eq!(got7.labels()[0], ("device".to_owned(), "eth0".to_owned()));
    }
}
