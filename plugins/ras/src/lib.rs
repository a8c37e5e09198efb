//! `ras`: hardware errors the kernel reports through tracepoints (HUATUO's `ras`): x86
//! machine checks (`mce/mce_record`), EDAC memory-controller errors (`ras/mc_event`), ACPI
//! GHES non-standard sections (`ras/non_standard_event`), PCIe AER (`ras/aer_event`), MCE
//! threshold interrupts (`irq_vectors/threshold_apic_entry`, at most one document per
//! `mce_thr_backoff_secs`) and ARM processor errors (`ras/arm_event`). Each tracepoint that
//! this kernel has is attached; the others are reported once in the log and as
//! `supported{type} 0`, and the plugin keeps running. Without any of them it is inactive
//! (HUATUO: `ErrNotSupported`). Metric: HUATUO's `ras_hw_err_total{type}`, counted in the
//! kernel for every error.

use kpulse_sdk::bpf::{self, Attach, Record};
use kpulse_sdk::prelude::*;
use kpulse_sdk::records::{
    self, KP_EV_RAS_AER, KP_EV_RAS_ARM, KP_EV_RAS_EDAC, KP_EV_RAS_MCE, KP_EV_RAS_NON_STANDARD,
    KP_EV_RAS_THR, RasAerEvent, RasArmEvent, RasMcEvent, RasMceEvent, RasNonStandardEvent,
    RasThrEvent,
};
use kpulse_sdk::serde_json;
use serde::{Deserialize, Serialize};

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../ebpf/build/ras.bpf.o"
));
const TRACEFS_EVENTS: &str = "/sys/kernel/tracing/events";

/// One error source: its program in ras.bpf.o, its tracepoint, and HUATUO's `type` label
/// (the index is `enum kp_ras_source`, the key of the `hw_errors` map).
struct Source {
    index: u32,
    label: &'static str,
    program: &'static str,
    category: &'static str,
    event: &'static str,
}

const SOURCES: [Source; 6] = [
    Source {
        index: records::KP_RAS_MCE,
        label: "mce",
        program: "ras_mce",
        category: "mce",
        event: "mce_record",
    },
    Source {
        index: records::KP_RAS_EDAC,
        label: "edac",
        program: "ras_edac",
        category: "ras",
        event: "mc_event",
    },
    Source {
        index: records::KP_RAS_ACPI,
        label: "acpi",
        program: "ras_non_standard",
        category: "ras",
        event: "non_standard_event",
    },
    Source {
        index: records::KP_RAS_AER,
        label: "aer",
        program: "ras_aer",
        category: "ras",
        event: "aer_event",
    },
    Source {
        index: records::KP_RAS_THR,
        label: "thr",
        program: "ras_thr",
        category: "irq_vectors",
        event: "threshold_apic_entry",
    },
    Source {
        index: records::KP_RAS_ARM,
        label: "arm_ghes",
        program: "ras_arm",
        category: "ras",
        event: "arm_event",
    },
];

/// `[plugins.ras]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// At most one MCE threshold-interrupt document per this many seconds (HUATUO
    /// `Ras.MceThrBackoff`: 1800); every interrupt is still counted.
    mce_thr_backoff_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mce_thr_backoff_secs: 1800,
        }
    }
}

struct Ras {
    settings: Settings,
    object: Option<bpf::Object>,
    /// Per source (by `enum kp_ras_source`): its tracepoint exists on this kernel.
    present: [bool; 6],
    /// Per source: attached (present and the attach worked).
    attached: [bool; 6],
    /// Per source: records decoded (the metric's fallback when the map cannot be read).
    decoded: [u64; 6],
    /// Monotonic ns before which a threshold-interrupt record saves no document.
    next_thr_ns: u64,
    events: u64,
}

/// HUATUO's `RasTracingData`: `info` is the decoded record as a JSON string.
#[derive(Debug, Serialize, PartialEq)]
struct Document {
    dev: String,
    event: &'static str,
    #[serde(rename = "type")]
    err_type: &'static str,
    info: String,
}

kpulse_sdk::register!(Ras {
    name: "ras",
    version: "0.1.0",
    interval: 60,
    kinds: [tracing, metric],
    capabilities: [
        "bpf",
        "read:/sys/kernel/tracing/events/ras",
        "read:/sys/kernel/tracing/events/mce",
        "read:/sys/kernel/tracing/events/irq_vectors/threshold_apic_entry"
    ],
    summary: "Hardware errors: MCE, EDAC, ACPI GHES, PCIe AER, MCE threshold, ARM (ras, mce, irq_vectors tracepoints)",
});

impl Plugin for Ras {
    fn init(config: Config) -> Result<Self> {
        let settings: Settings = config.parse()?;
        let mut present = [false; 6];
        for (slot, source) in present.iter_mut().zip(&SOURCES) {
            let format = format!(
                "{TRACEFS_EVENTS}/{}/{}/format",
                source.category, source.event
            );
            *slot = match fs::read_to_string(&format) {
                Ok(_) => true,
                Err(err) if err.is_access_denied() => return Err(err),
                Err(_) => false,
            };
        }
        if !present.contains(&true) {
            return Err(Error::NotSupported(
                "none of the mce, ras and irq_vectors hardware-error tracepoints exists".to_owned(),
            ));
        }
        Ok(Ras {
            settings,
            object: None,
            present,
            attached: [false; 6],
            decoded: [0; 6],
            next_thr_ns: 0,
            events: 0,
        })
    }
}

impl Tracing for Ras {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(OBJECT, &[])?;
        let mut missing = Vec::new();
        for (i, source) in SOURCES.iter().enumerate() {
            let point = format!("{}/{}", source.category, source.event);
            if !self.present[i] {
                missing.push(point);
                continue;
            }
            match object.attach(
                source.program,
                Attach::tracepoint(source.category, source.event),
            ) {
                Ok(()) => self.attached[i] = true,
                Err(err) => {
                    log::warn(&format!("{point} exists but cannot be attached: {err}"));
                    missing.push(point);
                }
            }
        }
        if !missing.is_empty() {
            log::info(&format!(
                "not supported on this kernel, not watched: {}",
                missing.join(", ")
            ));
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
        for record in records {
            let header = record.header();
            let Some(source) = source_of(header.kind) else {
                log::debug(&format!("record of unknown kind {}", header.kind));
                continue;
            };
            self.decoded[source as usize] += 1;
            if source == records::KP_RAS_THR {
                // HUATUO's back-off against threshold-interrupt storms, on the record's
                // own clock so that a replay behaves the same.
                if header.ts_ns < self.next_thr_ns {
                    continue;
                }
                self.next_thr_ns = header
                    .ts_ns
                    .saturating_add(self.settings.mce_thr_backoff_secs * 1_000_000_000);
            }
            let document = decode(record)?;
            storage::save("ras", "", storage::now(), &document)?;
            self.events += 1;
        }
        Ok(())
    }
}

impl Collector for Ras {
    fn update(&mut self) -> Result<Vec<Metric>> {
        let mut metrics = vec![metric::counter(
            "events",
            self.events as f64,
            "Hardware error documents saved.",
        )];
        for (i, source) in SOURCES.iter().enumerate() {
            let counted = match &self.object {
                Some(object) => object
                    .lookup("hw_errors", &source.index.to_le_bytes())
                    .ok()
                    .flatten()
                    .map(|v| bpf::sum_percpu_u64(&v)),
                None => None,
            };
            metrics.push(
                metric::counter(
                    "hw_err",
                    counted.unwrap_or(self.decoded[i]) as f64,
                    "Hardware error events by source type, every one counted in the kernel.",
                )
                .label("type", source.label),
            );
            metrics.push(
                metric::gauge(
                    "supported",
                    f64::from(u8::from(self.attached[i])),
                    "1 if this kernel has the source's tracepoint and it is watched.",
                )
                .label("type", source.label),
            );
        }
        Ok(metrics)
    }
}

/// `enum kp_ras_source` of a record kind.
fn source_of(kind: u32) -> Option<u32> {
    Some(match kind {
        KP_EV_RAS_MCE => records::KP_RAS_MCE,
        KP_EV_RAS_EDAC => records::KP_RAS_EDAC,
        KP_EV_RAS_NON_STANDARD => records::KP_RAS_ACPI,
        KP_EV_RAS_AER => records::KP_RAS_AER,
        KP_EV_RAS_THR => records::KP_RAS_THR,
        KP_EV_RAS_ARM => records::KP_RAS_ARM,
        _ => return None,
    })
}

const CORRECTED: &str = "Corrected";
const UNCORRECTED_RECOVERABLE: &str = "UncorrectedRecoverable";
const UNCORRECTED_DEFERRED: &str = "UncorrectedDeferred";
const UNCORRECTED_FATAL: &str = "UncorrectedFatal";
const INFO: &str = "Info";
const UNKNOWN: &str = "unknown";

/// One record (any `KP_EV_RAS_*` kind) as HUATUO's document.
fn decode(r: Record<'_>) -> Result<Document> {
    let (dev, event, err_type, info) = match r.header().kind {
        KP_EV_RAS_MCE => mce(&RasMceEvent::parse_padded(r.0)),
        KP_EV_RAS_EDAC => edac(&RasMcEvent::parse_padded(r.0)),
        KP_EV_RAS_NON_STANDARD => non_standard(&RasNonStandardEvent::parse_padded(r.0)),
        KP_EV_RAS_AER => aer(&RasAerEvent::parse_padded(r.0)),
        KP_EV_RAS_THR => thr(&RasThrEvent::parse_padded(r.0)),
        KP_EV_RAS_ARM => arm(&RasArmEvent::parse_padded(r.0)),
        kind => return Err(Error::msg(format!("not a ras record: kind {kind}"))),
    };
    Ok(Document {
        dev,
        event,
        err_type,
        info: info.to_string(),
    })
}

type Decoded = (String, &'static str, &'static str, serde_json::Value);

/// MCi_STATUS bits: deferred (AMD) and uncorrected.
const MCI_STATUS_DEFERRED: u64 = 1 << 44;
const MCI_STATUS_UC: u64 = 1 << 61;

fn mce(e: &RasMceEvent) -> Decoded {
    let err_type = if e.status & MCI_STATUS_DEFERRED != 0 {
        UNCORRECTED_DEFERRED
    } else if e.status & MCI_STATUS_UC != 0 {
        UNCORRECTED_RECOVERABLE
    } else {
        CORRECTED
    };
    let info = serde_json::json!({
        "mcg_cpu_cap": e.mcgcap,
        "mcg_msr_status": e.mcgstatus,
        "banks_msr_status": e.status,
        "banks_msr_addr": e.addr,
        "banks_msr_misc": e.misc,
        "mca_synd_msr": e.synd,
        "mca_ipid_msr": e.ipid,
        "instr_pointer": e.ip,
        "tsc_timestamp": e.tsc,
        "walltime": e.walltime,
        "ppin": e.ppin,
        "microcode": e.microcode,
        "cpu": e.cpu,
        "cpuid": e.cpuid,
        "apicid": e.apicid,
        "socketid": e.socketid,
        "code_seg": e.cs,
        "bank": e.bank,
        "cpuvendor": e.cpuvendor,
    });
    ("CPU/MEM".to_owned(), "MCE", err_type, info)
}

/// `enum hw_event_mc_err_type` (include/linux/edac.h).
fn edac_type(error_type: u32) -> &'static str {
    match error_type {
        0 => CORRECTED,
        1 => UNCORRECTED_RECOVERABLE,
        2 => UNCORRECTED_DEFERRED,
        3 => UNCORRECTED_FATAL,
        4 => INFO,
        _ => UNKNOWN,
    }
}

fn edac(e: &RasMcEvent) -> Decoded {
    let err_type = edac_type(e.error_type);
    let info = serde_json::json!({
        "err_count": e.error_count,
        "err_type": err_type,
        "err_msg": e.msg_str(),
        "label": e.label_str(),
        "mc_index": e.mc_index,
        "top_layer": e.top_layer,
        "mid_layer": e.middle_layer,
        "low_layer": e.lower_layer,
        "addr": e.address as u64,
        "grain": 1u64.checked_shl(u32::from(e.grain_bits)).unwrap_or(0),
        "syndrome": e.syndrome as u64,
        "driver": e.driver_detail_str(),
    });
    ("MEM".to_owned(), "EDAC", err_type, info)
}

/// GHES severity (include/acpi/ghes.h): none, corrected, recoverable, panic.
fn ghes_type(sev: u8) -> &'static str {
    match sev {
        0 => INFO,
        1 => CORRECTED,
        2 => UNCORRECTED_RECOVERABLE,
        3 => UNCORRECTED_FATAL,
        _ => UNKNOWN,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn non_standard(e: &RasNonStandardEvent) -> Decoded {
    let kept = (e.len as usize).min(e.data.len());
    let raw: Vec<String> = e.data[..kept].iter().map(|b| format!("{b:02x}")).collect();
    let info = serde_json::json!({
        "severity": e.sev,
        "sec_type": hex(&e.sec_type),
        "fru_id": hex(&e.fru_id),
        "fru_text": e.fru_text_str(),
        "data_len": e.len,
        "raw_data": raw.join(" "),
    });
    ("ACPI".to_owned(), "NON_STANDARD", ghes_type(e.sev), info)
}

/// AER severity (include/linux/aer.h): 0 non-fatal, 1 fatal, 2 correctable.
fn aer_type(severity: u8) -> &'static str {
    match severity {
        2 => CORRECTED,
        1 => UNCORRECTED_FATAL,
        0 => UNCORRECTED_RECOVERABLE,
        _ => UNKNOWN,
    }
}

/// Correctable and uncorrectable error status bits (PCIe Base Spec 7.8.4).
const AER_CORRECTABLE: [(u32, &str); 8] = [
    (0x0000_0001, "Receiver Error"),
    (0x0000_0040, "Bad TLP"),
    (0x0000_0080, "Bad DLLP"),
    (0x0000_0100, "REPLAY_NUM Rollover"),
    (0x0000_1000, "Replay Timer Timeout"),
    (0x0000_2000, "Advisory Non-Fatal Error"),
    (0x0000_4000, "Corrected Internal Error"),
    (0x0000_8000, "Header Log Overflow"),
];
const AER_UNCORRECTABLE: [(u32, &str); 17] = [
    (0x0000_0001, "Undefined"),
    (0x0000_0010, "Data Link Protocol Error"),
    (0x0000_0020, "Surprise Down Error"),
    (0x0000_1000, "Poisoned TLP"),
    (0x0000_2000, "Flow Control Protocol Error"),
    (0x0000_4000, "Completion Timeout"),
    (0x0000_8000, "Completer Abort"),
    (0x0001_0000, "Unexpected Completion"),
    (0x0002_0000, "Receiver Overflow"),
    (0x0004_0000, "Malformed TLP"),
    (0x0008_0000, "ECRC Error"),
    (0x0010_0000, "Unsupported Request Error"),
    (0x0020_0000, "ACS Violation"),
    (0x0040_0000, "Uncorrectable Internal Error"),
    (0x0080_0000, "MC Blocked TLP"),
    (0x0100_0000, "AtomicOp Egress Blocked"),
    (0x0200_0000, "TLP Prefix Blocked Error"),
];

/// The names of the status bits set (HUATUO names a single bit; several are joined).
fn aer_reason(status: u32, correctable: bool) -> String {
    let table: &[(u32, &str)] = if correctable {
        &AER_CORRECTABLE
    } else {
        &AER_UNCORRECTABLE
    };
    let names: Vec<&str> = table
        .iter()
        .filter(|(bit, _)| status & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        UNKNOWN.to_owned()
    } else {
        names.join(", ")
    }
}

fn aer(e: &RasAerEvent) -> Decoded {
    let err_type = aer_type(e.severity);
    let tlp_header = if e.tlp_header_valid != 0 {
        let [a, b, c, d] = e.tlp_header;
        format!("{{{a:#x},{b:#x},{c:#x},{d:#x}}}")
    } else {
        "not available".to_owned()
    };
    let dev_name = e.dev_name_str();
    let info = serde_json::json!({
        "dev_name": dev_name,
        "err_type": err_type,
        "err_reason": aer_reason(e.status, e.severity == 2),
        "tlp_header": tlp_header,
    });
    (format!("PCIe {dev_name}"), "AER", err_type, info)
}

fn thr(e: &RasThrEvent) -> Decoded {
    let info = serde_json::json!({ "vector": e.vector, "cpu": e.hdr.cpu });
    ("CPU".to_owned(), "MCE_THRESHOLD", CORRECTED, info)
}

/// CPER section severity (UEFI N.2.2): 0 recoverable, 1 fatal, 2 corrected, 3 info;
/// HUATUO reports ARM errors as `unknown`, which stays the answer when the kernel's
/// tracepoint has no severity.
fn cper_type(sev: u8) -> &'static str {
    match sev {
        0 => UNCORRECTED_RECOVERABLE,
        1 => UNCORRECTED_FATAL,
        2 => CORRECTED,
        3 => INFO,
        _ => UNKNOWN,
    }
}

fn arm(e: &RasArmEvent) -> Decoded {
    // The kernel sets both states to ~0 when the section does not give them; bit 0 of the
    // running state: 1 = running (the PSCI state is then meaningless).
    let (running, psci) = if e.running_state == u32::MAX {
        ("N/A".to_owned(), "N/A".to_owned())
    } else if e.running_state & 1 == 1 {
        ("running".to_owned(), "N/A".to_owned())
    } else {
        ("stopped".to_owned(), format!("{:#x}", e.psci_state))
    };
    let affinity = if e.affinity == u8::MAX {
        "N/A".to_owned()
    } else {
        e.affinity.to_string()
    };
    let info = serde_json::json!({
        "mpidr": format!("{:#x}", e.mpidr),
        "midr": format!("{:#x}", e.midr),
        "running_state": running,
        "psci_state": psci,
        "affinity_level": affinity,
        "cpu": e.cpu,
        "severity": e.sev,
        "pei_len": e.pei_len,
        "ctx_len": e.ctx_len,
        "oem_len": e.oem_len,
    });
    ("CPU".to_owned(), "ARM_GHES", cper_type(e.sev), info)
}

/// The replay fixture `tests/fixtures/replay/ras.kprec`: one synthesized record of every
/// source (and three threshold interrupts, two inside one back-off window), built from the
/// generated record types so that it follows `kpulse_events.h`.
#[cfg(test)]
pub(crate) fn fixture_records() -> Vec<Vec<u8>> {
    use records::EventHeader;
    fn header(kind: u32, cpu: u32, ts_ns: u64) -> EventHeader {
        EventHeader {
            kind,
            cpu,
            ts_ns,
            ..Default::default()
        }
    }
    fn text<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0; N];
        out[..s.len()].copy_from_slice(s.as_bytes());
        out
    }
    const SEC: u64 = 1_000_000_000;
    let mut data = [0; 64];
    data[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    vec![
        RasMceEvent {
            hdr: header(KP_EV_RAS_MCE, 1, 10 * SEC),
            status: MCI_STATUS_UC | 0x9c,
            addr: 0x1234_5000,
            bank: 4,
            cpu: 1,
            socketid: 0,
            ..Default::default()
        }
        .to_bytes()
        .to_vec(),
        RasMcEvent {
            hdr: header(KP_EV_RAS_EDAC, 0, 11 * SEC),
            address: 0x7f000,
            error_type: 0,
            error_count: 2,
            mc_index: 1,
            grain_bits: 6,
            top_layer: 0,
            middle_layer: 3,
            lower_layer: -1,
            msg: text("memory read error"),
            label: text("DIMM_A1"),
            driver_detail: text("skx_edac"),
            ..Default::default()
        }
        .to_bytes()
        .to_vec(),
        RasNonStandardEvent {
            hdr: header(KP_EV_RAS_NON_STANDARD, 0, 12 * SEC),
            sec_type: [0x11; 16],
            fru_id: [0x22; 16],
            len: 4,
            sev: 3,
            fru_text: text("PSU1"),
            data,
            ..Default::default()
        }
        .to_bytes()
        .to_vec(),
        RasAerEvent {
            hdr: header(KP_EV_RAS_AER, 0, 13 * SEC),
            status: 0x0000_0041,
            severity: 2,
            tlp_header_valid: 1,
            tlp_header: [0x4000_0001, 0x0000_000f, 0xfee0_0000, 0],
            dev_name: text("0000:00:1c.0"),
            ..Default::default()
        }
        .to_bytes()
        .to_vec(),
        RasThrEvent {
            hdr: header(KP_EV_RAS_THR, 1, 20 * SEC),
            vector: 0xf9,
            ..Default::default()
        }
        .to_bytes()
        .to_vec(),
        RasThrEvent {
            hdr: header(KP_EV_RAS_THR, 1, 21 * SEC),
            vector: 0xf9,
            ..Default::default()
        }
        .to_bytes()
        .to_vec(),
        RasArmEvent {
            hdr: header(KP_EV_RAS_ARM, 0, 30 * SEC),
            mpidr: 0x8100_0000,
            midr: 0x410f_d0c1,
            running_state: 1,
            psci_state: 0,
            cpu: 2,
            affinity: 0xff,
            sev: 2,
            ..Default::default()
        }
        .to_bytes()
        .to_vec(),
        RasThrEvent {
            hdr: header(KP_EV_RAS_THR, 0, 1900 * SEC),
            vector: 0xf9,
            ..Default::default()
        }
        .to_bytes()
        .to_vec(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `KPREC002` (host/src/record.rs): magic, u32 metadata length, JSON metadata, then
    /// frames of u64 offset ns, u64 subscription, u32 length, batch bytes.
    fn kprec(plugin: &str, batches: &[Vec<Vec<u8>>]) -> Vec<u8> {
        let meta = serde_json::json!({
            "plugin": plugin,
            "synthesized": "plugins/ras unit test replay_fixture_is_current",
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

    /// The committed fixture is what the current record layouts give; with
    /// `KPULSE_WRITE_FIXTURES=1` the test rewrites it instead.
    #[test]
    fn replay_fixture_is_current() {
        let records = fixture_records();
        // Two batches, as a live ring gives them: the first four sources, then the rest.
        let (first, rest) = records.split_at(4);
        let bytes = kprec("ras", &[first.to_vec(), rest.to_vec()]);
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/replay/ras.kprec"
        );
        if std::env::var_os("KPULSE_WRITE_FIXTURES").is_some() {
            std::fs::write(path, &bytes).expect("write fixture");
        }
        let committed = std::fs::read(path).expect("read fixture (KPULSE_WRITE_FIXTURES=1)");
        assert!(
            committed == bytes,
            "{path} is stale: KPULSE_WRITE_FIXTURES=1 cargo test -p kpulse-plugin-ras"
        );
    }

    fn info(d: &Document) -> serde_json::Value {
        serde_json::from_str(&d.info).expect("info is JSON")
    }

    #[test]
    fn decodes_every_source() {
        let docs: Vec<Document> = fixture_records()
            .iter()
            .map(|r| decode(Record(r)).expect("ras record"))
            .collect();
        assert_eq!(
            (docs[0].dev.as_str(), docs[0].event, docs[0].err_type),
            ("CPU/MEM", "MCE", UNCORRECTED_RECOVERABLE)
        );
        assert_eq!(info(&docs[0])["bank"], 4);
        assert_eq!(info(&docs[0])["banks_msr_addr"], 0x1234_5000);
        assert_eq!((docs[1].event, docs[1].err_type), ("EDAC", CORRECTED));
        let edac = info(&docs[1]);
        assert_eq!(edac["label"], "DIMM_A1");
        assert_eq!(edac["grain"], 64);
        assert_eq!(edac["low_layer"], -1);
        assert_eq!(edac["driver"], "skx_edac");
        assert_eq!(
            (docs[2].event, docs[2].err_type),
            ("NON_STANDARD", UNCORRECTED_FATAL)
        );
        assert_eq!(info(&docs[2])["raw_data"], "de ad be ef");
        assert_eq!(info(&docs[2])["fru_text"], "PSU1");
        assert_eq!(docs[3].dev, "PCIe 0000:00:1c.0");
        assert_eq!((docs[3].event, docs[3].err_type), ("AER", CORRECTED));
        assert_eq!(info(&docs[3])["err_reason"], "Receiver Error, Bad TLP");
        assert_eq!(
            info(&docs[3])["tlp_header"],
            "{0x40000001,0xf,0xfee00000,0x0}"
        );
        assert_eq!(
            (docs[4].event, docs[4].err_type),
            ("MCE_THRESHOLD", CORRECTED)
        );
        assert_eq!(info(&docs[4])["vector"], 0xf9);
        assert_eq!((docs[6].event, docs[6].err_type), ("ARM_GHES", CORRECTED));
        assert_eq!(info(&docs[6])["running_state"], "running");
        assert_eq!(info(&docs[6])["affinity_level"], "N/A");
    }

    #[test]
    fn mce_status_bits_give_the_type() {
        let mut e = RasMceEvent::default();
        assert_eq!(mce(&e).2, CORRECTED);
        e.status = MCI_STATUS_UC | MCI_STATUS_DEFERRED;
        assert_eq!(mce(&e).2, UNCORRECTED_DEFERRED);
    }

    #[test]
    fn foreign_or_short_records() {
        assert!(decode(Record(&[0; 4])).is_err());
        let short = RasAerEvent {
            hdr: records::EventHeader {
                kind: KP_EV_RAS_AER,
                ..Default::default()
            },
            ..Default::default()
        }
        .to_bytes();
        let d = decode(Record(&short[..50])).expect("short AER record");
        assert_eq!(d.err_type, UNCORRECTED_RECOVERABLE);
        assert_eq!(info(&d)["tlp_header"], "not available");
    }
}
