//! Test guest: loads and attaches a BPF program the kernel's verifier rejects (a map value
//! used without a NULL check, `bpf/rejected.bpf.c`). `start` fails with the host's error,
//! which carries the verifier's log, so the plugin must end failed, then quarantined, with
//! that reason, while every other plugin runs on and no map of the object stays behind.

use kpulse_sdk::bpf::{self, Attach};
use kpulse_sdk::prelude::*;

const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rejected.bpf.o"));

struct Rejected {
    _object: Option<bpf::Object>,
}

kpulse_sdk::register!(Rejected {
    name: "rejected",
    version: "0.1.0",
    interval: 1,
    kinds: [tracing, metric],
    capabilities: ["bpf"],
    summary: "Test guest: a BPF program the verifier rejects",
});

impl Plugin for Rejected {
    fn init(_config: Config) -> Result<Self> {
        Ok(Rejected { _object: None })
    }
}

impl Tracing for Rejected {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(OBJECT, &[])?;
        object.attach(
            "rejected",
            Attach::tracepoint("syscalls", "sys_enter_getpid"),
        )?;
        self._object = Some(object);
        Ok(())
    }
}

impl Collector for Rejected {
    fn update(&mut self) -> Result<Vec<Metric>> {
        Ok(vec![metric::gauge(
            "attached",
            f64::from(u8::from(self._object.is_some())),
            "The rejected program attached (it must not).",
        )])
    }
}
