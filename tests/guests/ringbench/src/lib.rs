//! Benchmark guest: attaches `ebpf/src/sched_switch.bpf.c` (one 56-byte record per context
//! switch) and consumes the ring buffer, touching every record the way a real collector
//! would (header decode), so the host → guest path can be compared with a native reader.

use kpulse_sdk::bpf::{self, Attach};
use kpulse_sdk::prelude::*;

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../ebpf/build/sched_switch.bpf.o"
));

struct RingBench {
    records: u64,
    bytes: u64,
    pid_checksum: u64,
    _object: Option<bpf::Object>,
}

kpulse_sdk::register!(RingBench {
    name: "ringbench",
    version: "0.1.0",
    interval: 1,
    kinds: [tracing, metric],
    capabilities: ["bpf"],
    summary: "Benchmark guest: sched_switch ring-buffer consumer",
});

impl Plugin for RingBench {
    fn init(_config: Config) -> Result<Self> {
        Ok(RingBench {
            records: 0,
            bytes: 0,
            pid_checksum: 0,
            _object: None,
        })
    }
}

impl Tracing for RingBench {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(OBJECT, &[])?;
        object.attach("sched_switch", Attach::TpBtf("sched_switch".to_owned()))?;
        object.subscribe("events")?;
        self._object = Some(object);
        Ok(())
    }

    fn on_events(
        &mut self,
        _ctx: &mut Context,
        _subscription: u64,
        records: bpf::Records<'_>,
    ) -> Result<()> {
        for record in records {
            self.records += 1;
            self.bytes += record.len() as u64;
            // Decode what a collector would: kind, cpu, pid and the next pid.
            let next_pid = record.u32_at(bpf::HEADER_SIZE);
            self.pid_checksum = self.pid_checksum.wrapping_add(
                u64::from(record.u32_at(16)) ^ u64::from(next_pid) ^ u64::from(record.u32_at(4)),
            );
        }
        Ok(())
    }
}

impl Collector for RingBench {
    fn update(&mut self) -> Result<Vec<Metric>> {
        Ok(vec![
            metric::counter("records", self.records as f64, "Records consumed."),
            metric::counter("bytes", self.bytes as f64, "Record bytes consumed."),
            metric::gauge(
                "checksum",
                (self.pid_checksum % 1_000_000) as f64,
                "Keeps the decode from being optimized away.",
            ),
        ])
    }
}
