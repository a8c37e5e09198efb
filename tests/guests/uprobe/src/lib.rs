//! Test guest: attaches a uprobe to a user-space function (config `binary`, `symbol`, and
//! optionally `pid`), reads the samples through a perf event array, and detaches the
//! program once it has seen `detach_after` samples, so the tests can show that calls stop
//! being counted. With `panic_after` it panics (traps) once it has seen that many samples
//! instead, so the tests can show that a trapped instance leaves nothing in the kernel.

use kpulse_sdk::bpf::{self, Attach, UprobeTarget};
use kpulse_sdk::prelude::*;

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../ebpf/build/getsid_probe.bpf.o"
));
const MAGIC: u32 = 0x6c75_706b;

struct Uprobe {
    target: UprobeTarget,
    detach_after: u64,
    panic_after: u64,
    samples: u64,
    bad_samples: u64,
    last_argument: u64,
    detached: bool,
    object: Option<bpf::Object>,
}

kpulse_sdk::register!(Uprobe {
    name: "uprobe",
    version: "0.1.0",
    interval: 1,
    kinds: [tracing, metric],
    capabilities: ["bpf"],
    summary: "Test guest: uprobe + perf event array + detach",
});

impl Plugin for Uprobe {
    fn init(config: Config) -> Result<Self> {
        Ok(Uprobe {
            target: UprobeTarget {
                binary: config.get_or("binary", String::new())?,
                symbol: config.get_or("symbol", String::new())?,
                offset: 0,
                pid: config.get("pid")?,
            },
            detach_after: config.get_or("detach_after", u64::MAX)?,
            panic_after: config.get_or("panic_after", u64::MAX)?,
            samples: 0,
            bad_samples: 0,
            last_argument: 0,
            detached: false,
            object: None,
        })
    }
}

impl Tracing for Uprobe {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(OBJECT, &[])?;
        object.attach("on_getsid", Attach::Uprobe(self.target.clone()))?;
        object.subscribe_perf_event_array("samples", 8)?;
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
            if record.u32_at(0) == MAGIC {
                self.samples += 1;
                self.last_argument = record.u64_at(8);
            } else {
                self.bad_samples += 1;
            }
        }
        assert!(
            self.samples < self.panic_after,
            "planned trap after {} samples",
            self.samples
        );
        if self.samples >= self.detach_after
            && !self.detached
            && let Some(object) = &self.object
        {
            object.detach("on_getsid")?;
            self.detached = true;
        }
        Ok(())
    }
}

impl Collector for Uprobe {
    fn update(&mut self) -> Result<Vec<Metric>> {
        Ok(vec![
            metric::counter("samples", self.samples as f64, "Calls seen."),
            metric::counter("bad_samples", self.bad_samples as f64, "Malformed samples."),
            metric::gauge(
                "last_argument",
                self.last_argument as f64,
                "First argument of the last call seen.",
            ),
            metric::gauge(
                "detached",
                f64::from(u8::from(self.detached)),
                "The program was detached.",
            ),
        ])
    }
}
