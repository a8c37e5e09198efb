//! Test guest: asks the host to attach a kprobe. On kernels without kprobes the host must
//! answer with a typed `not-supported` error, which the guest reports as a metric and then
//! falls back to the tracepoint, as a real collector would.

use kpulse_sdk::bpf::{self, Attach};
use kpulse_sdk::prelude::*;

const OBJECT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../ebpf/build/dropwatch.bpf.o"
));

struct Kprobe {
    kprobe_error: Option<String>,
    kprobe_not_supported: bool,
    fell_back: bool,
    _object: Option<bpf::Object>,
}

kpulse_sdk::register!(Kprobe {
    name: "kprobe",
    version: "0.1.0",
    interval: 1,
    kinds: [tracing, metric],
    capabilities: ["bpf"],
    summary: "Test guest: kprobe attach with tracepoint fallback",
});

impl Plugin for Kprobe {
    fn init(_config: Config) -> Result<Self> {
        Ok(Kprobe {
            kprobe_error: None,
            kprobe_not_supported: false,
            fell_back: false,
            _object: None,
        })
    }
}

impl Tracing for Kprobe {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let object = bpf::Object::load(OBJECT, &[])?;
        match object.attach("kfree_skb", Attach::Kprobe("kfree_skb_reason".to_owned())) {
            Ok(()) => {}
            Err(err) => {
                self.kprobe_not_supported = err.is_not_supported();
                log::info(&format!("kprobe refused: {err}"));
                self.kprobe_error = Some(err.to_string());
                object.attach("kfree_skb", Attach::tracepoint("skb", "kfree_skb"))?;
                self.fell_back = true;
            }
        }
        self._object = Some(object);
        Ok(())
    }
}

impl Collector for Kprobe {
    fn update(&mut self) -> Result<Vec<Metric>> {
        Ok(vec![
            metric::gauge(
                "not_supported",
                f64::from(u8::from(self.kprobe_not_supported)),
                "kprobe attach answered not-supported.",
            ),
            metric::gauge(
                "fell_back",
                f64::from(u8::from(self.fell_back)),
                "Fell back to the tracepoint.",
            ),
        ])
    }
}
