//! `netdev_txqueue_timeout`: TX watchdog timeouts (`net/net_dev_xmit_timeout`): a device's
//! transmit queue made no progress for the driver's watchdog period and the kernel is about
//! to reset it (HUATUO's `netdev_txqueue_timeout`: device, driver and queue). Through the BTF
//! tracepoint the device's network namespace is known too, so documents of a device inside a
//! container carry the container. Metric: timeouts per device and driver.

use std::collections::BTreeMap;

use kpulse_sdk::bpf::{self, Attach, Record};
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::TxqueueTimeoutEvent;
use serde::{Deserialize, Serialize};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/netdev_txqueue_timeout.bpf.o"
));
const FORMAT: &str = "/sys/kernel/tracing/events/net/net_dev_xmit_timeout/format";

/// Distinct (device, driver) pairs in the `timeouts` metric; later ones count as "other".
const MAX_DEVICES: usize = 256;

/// `[plugins.netdev_txqueue_timeout]`: no settings of its own (HUATUO has none either);
/// a key in the table is an `InvalidConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {}

#[derive(Default)]
struct NetdevTxqueueTimeout {
    object: Option<bpf::Object>,
    events: u64,
    /// Saved timeouts per (device, driver).
    timeouts: BTreeMap<(String, String), u64>,
}

/// HUATUO's `txqueueTracingData` plus what the BTF tracepoint adds.
#[derive(Debug, Serialize, PartialEq)]
struct Timeout {
    queue_index: i32,
    device_name: String,
    driver_name: String,
    /// 0 when only the classic tracepoint could be attached.
    netdev_ifindex: u32,
    /// 0 when only the classic tracepoint could be attached.
    net_namespace_inum: u32,
    cpu: u32,
}

kpulse_sdk::register!(NetdevTxqueueTimeout {
    name: "netdev_txqueue_timeout",
    version: "0.1.0",
    interval: 10,
    kinds: [tracing, metric],
    capabilities: [
        "bpf",
        "containers",
        "read:/sys/kernel/tracing/events/net/net_dev_xmit_timeout/format"
    ],
    summary: "TX queue watchdog timeouts with device, driver and queue (net/net_dev_xmit_timeout)",
});

impl Plugin for NetdevTxqueueTimeout {
    fn init(config: Config) -> Result<Self> {
        let Settings {} = config.parse()?;
        match fs::read_to_string(FORMAT) {
            Ok(_) => Ok(Self::default()),
            Err(err) if err.is_access_denied() => Err(err),
            Err(err) => Err(Error::NotSupported(format!(
                "no net/net_dev_xmit_timeout tracepoint: {err}"
            ))),
        }
    }
}

impl Tracing for NetdevTxqueueTimeout {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(OBJECT, &[])?;
        // The BTF tracepoint gives the device itself (netns, ifindex); kernels without
        // BTF tracepoints still have the classic one.
        if let Err(err) = object.attach(
            "txq_timeout_btf",
            Attach::TpBtf("net_dev_xmit_timeout".to_owned()),
        ) {
            log::info(&format!(
                "tp_btf net_dev_xmit_timeout unavailable, using the tracepoint (no netns): {err}"
            ));
            object.attach(
                "txq_timeout_tp",
                Attach::tracepoint("net", "net_dev_xmit_timeout"),
            )?;
        }
        object.subscribe("events")?;
        self.object = Some(object);
        Ok(())
    }

    fn on_events(
        &mut self,
        _ctx: &mut Context,
        _subscription: u64,
        records: bpf::Records<'_>,
    ) -> Result<()> {
        let timeouts: Vec<Timeout> = records.map(decode).collect();
        let keys: Vec<containers::Key> = timeouts
            .iter()
            .map(|t| containers::Key::NetnsInum(t.net_namespace_inum))
            .collect();
        let owners = containers::attribute(&keys);
        for (timeout, owner) in timeouts.iter().zip(&owners) {
            storage::save("netdev_txqueue_timeout", owner, storage::now(), timeout)?;
            self.events += 1;
            let mut key = (timeout.device_name.clone(), timeout.driver_name.clone());
            if !self.timeouts.contains_key(&key) && self.timeouts.len() >= MAX_DEVICES {
                key = ("other".to_owned(), "other".to_owned());
            }
            *self.timeouts.entry(key).or_default() += 1;
        }
        Ok(())
    }
}

impl Collector for NetdevTxqueueTimeout {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut metrics = vec![metric::counter(
            "events",
            self.events as f64,
            "TX queue timeout events saved.",
        )];
        for ((device, driver), count) in &self.timeouts {
            metrics.push(
                metric::counter(
                    "timeouts",
                    *count as f64,
                    "TX queue watchdog timeouts by device and driver.",
                )
                .label("device", device.clone())
                .label("driver", driver.clone()),
            );
        }
        if let Some(object) = &self.object {
            metrics.push(metric::counter(
                "lost",
                object.stat(bpf::Stat::RingFull)? as f64,
                "Timeout events lost in the kernel (ring buffer full).",
            ));
        }
        Ok(metrics)
    }
}

/// `struct kp_txqueue_timeout_event` (ebpf/include/kpulse_events.h) as a document.
fn decode(r: Record<'_>) -> Timeout {
    let e = TxqueueTimeoutEvent::parse_padded(r.0);
    Timeout {
        queue_index: e.queue_index,
        device_name: e.name_str(),
        driver_name: e.driver_str(),
        netdev_ifindex: e.ifindex,
        net_namespace_inum: e.netns_inum,
        cpu: e.hdr.cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpulse_sdk::records::{EventHeader, KP_EV_TXQUEUE_TIMEOUT};

    fn text<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0; N];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }

    #[test]
    fn decodes_device_driver_and_queue() {
        let e = TxqueueTimeoutEvent {
            hdr: EventHeader {
                kind: KP_EV_TXQUEUE_TIMEOUT,
                cpu: 1,
                ..Default::default()
            },
            queue_index: 3,
            ifindex: 2,
            netns_inum: 4026531840,
            name: text("eth0"),
            driver: text("virtio_net"),
            ..Default::default()
        };
        let bytes = e.to_bytes();
        assert_eq!(
            decode(Record(&bytes)),
            Timeout {
                queue_index: 3,
                device_name: "eth0".to_owned(),
                driver_name: "virtio_net".to_owned(),
                netdev_ifindex: 2,
                net_namespace_inum: 4026531840,
                cpu: 1,
            }
        );
    }

    #[test]
    fn short_record_decodes_to_zeros() {
        let t = decode(Record(&[1, 2, 3]));
        assert_eq!(t.queue_index, 0);
        assert_eq!(t.device_name, "");
    }

    /// `KPREC002` (host/src/record.rs): magic, u32 metadata length, JSON metadata, then
    /// frames of u64 offset ns, u64 subscription, u32 length, batch bytes.
    fn kprec(batches: &[Vec<Vec<u8>>]) -> Vec<u8> {
        let meta = kpulse_sdk::serde_json::json!({
            "plugin": "netdev_txqueue_timeout",
            "synthesized": "plugins/netdev_txqueue_timeout unit test replay_fixture_is_current",
        })
        .to_string();
        let mut out = b"KPREC002".to_vec();
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(meta.as_bytes());
        for (i, batch) in batches.iter().enumerate() {
            let mut bytes = Vec::new();
            for record in batch {
                bpf::Records::push(&mut bytes, record);
            }
            out.extend_from_slice(&(i as u64 * 1_000_000).to_le_bytes());
            out.extend_from_slice(&1u64.to_le_bytes()); // the plugin's one subscription
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// `tests/fixtures/replay/netdev_txqueue_timeout.kprec`, synthesized from the generated
    /// record type (this kernel's devices never time out on demand): a timeout of queue 3
    /// of a host `eth0` (tp_btf: netns and ifindex known), then one of queue 0 of a device
    /// seen through the classic tracepoint (no netns). With `KPULSE_WRITE_FIXTURES=1` the
    /// test rewrites the file instead of checking it.
    #[test]
    fn replay_fixture_is_current() {
        let first = TxqueueTimeoutEvent {
            hdr: EventHeader {
                kind: KP_EV_TXQUEUE_TIMEOUT,
                cpu: 1,
                ts_ns: 5_000_000_000,
                ..Default::default()
            },
            queue_index: 3,
            ifindex: 2,
            netns_inum: 4026531840,
            name: text("eth0"),
            driver: text("virtio_net"),
            ..Default::default()
        };
        let second = TxqueueTimeoutEvent {
            hdr: EventHeader {
                kind: KP_EV_TXQUEUE_TIMEOUT,
                cpu: 0,
                ts_ns: 9_000_000_000,
                ..Default::default()
            },
            queue_index: 0,
            name: text("enp3s0f1"),
            driver: text("ixgbe"),
            ..Default::default()
        };
        let bytes = kprec(&[
            vec![first.to_bytes().to_vec()],
            vec![second.to_bytes().to_vec()],
        ]);
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/replay/netdev_txqueue_timeout.kprec"
        );
        if std::env::var_os("KPULSE_WRITE_FIXTURES").is_some() {
            std::fs::write(path, &bytes).expect("write fixture");
        }
        let committed = std::fs::read(path).expect("read fixture (KPULSE_WRITE_FIXTURES=1)");
        assert!(
            committed == bytes,
            "{path} is stale: KPULSE_WRITE_FIXTURES=1 cargo test -p kpulse-plugin-netdev-txqueue-timeout"
        );
    }
}
