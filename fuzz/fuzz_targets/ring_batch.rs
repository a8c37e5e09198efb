//! The ring-buffer batch layout handed to `on-events`: the host's reader
//! (`kpulse::bpf::count_records`, which counts what the agent reports as delivered) and the
//! guest SDK's `bpf::Records` iterator must agree on every byte string, and decoding each
//! record with the SDK's accessors and generated layouts must never panic.
#![no_main]

use kpulse_sdk::bpf::Records;
use kpulse_sdk::records;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut count = 0;
    for record in Records::new(data) {
        count += 1;
        let _ = record.header();
        // Offsets a plugin could use, also past the end (zeros, not a panic).
        for offset in [0, 1, 7, 8, 47, 48, record.len(), record.len() + 3] {
            let _ = record.u8_at(offset);
            let _ = record.u16_at(offset);
            let _ = record.i32_at(offset);
            let _ = record.u64_at(offset);
            let _ = record.str_at(offset, 16);
            let _ = record.u64s_at(offset, 4);
        }
        let _ = records::DropEvent::parse(record.0).map(|d| d.ifname_str());
        let _ = records::OomEvent::parse_padded(record.0).victim_comm_str();
        let _ = records::HungtaskEvent::parse_padded(record.0).hung_comm_str();
        let _ = records::NetRxLatencyEvent::parse(record.0);
        let _ = records::TcpRetransmitEvent::parse(record.0);
        let _ = records::RasMceEvent::parse(record.0);
        let _ = records::IotPath::parse_padded(record.0);
        if let Some(event) = records::SoftirqEvent::parse(record.0) {
            assert_eq!(
                records::SoftirqEvent::parse(&event.to_bytes()),
                Some(event),
                "a generated layout round-trips"
            );
        }
    }
    assert_eq!(
        count,
        kpulse::bpf::count_records(data),
        "the host and the guest SDK read a batch alike"
    );
});
