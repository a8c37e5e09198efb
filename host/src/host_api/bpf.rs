//! `kpulse:plugin/bpf`: BPF objects through the WIT-free [`crate::bpf`] layer, behind the
//! plugin's grant. Objects live in the instance's resource table; a handle the table does
//! not hold traps the guest.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use wasmtime::component::Resource;

use crate::bpf::{AttachPoint, BpfErrorKind, BpfObject, Delivery, MapEntry, UprobeTarget};
use crate::plugins::actor::EventMailbox;
use crate::wit::{ErrorCode, bpf};

use super::HostState;

/// Largest `symbolize` request.
const MAX_SYMBOLIZE: usize = 65_536;

type BpfResult<T> = wasmtime::Result<Result<T, bpf::BpfError>>;

fn to_wit(err: crate::bpf::BpfError) -> bpf::BpfError {
    let code = match err.kind() {
        BpfErrorKind::InvalidArgument => ErrorCode::InvalidArgument,
        BpfErrorKind::NotSupported => ErrorCode::NotSupported,
        BpfErrorKind::Io => ErrorCode::Io,
        BpfErrorKind::TooLarge => ErrorCode::TooLarge,
    };
    bpf::BpfError {
        code,
        message: err.message().to_owned(),
    }
}

fn attach_point(point: bpf::AttachPoint) -> AttachPoint {
    let uprobe = |t: bpf::UprobeTarget| UprobeTarget {
        binary: t.binary,
        symbol: t.symbol,
        offset: t.offset,
        pid: t.pid,
    };
    match point {
        bpf::AttachPoint::Tracepoint((category, name)) => {
            AttachPoint::Tracepoint { category, name }
        }
        bpf::AttachPoint::RawTracepoint(name) => AttachPoint::RawTracepoint(name),
        bpf::AttachPoint::TpBtf(name) => AttachPoint::TpBtf(name),
        bpf::AttachPoint::Kprobe(f) => AttachPoint::Kprobe(f),
        bpf::AttachPoint::Kretprobe(f) => AttachPoint::Kretprobe(f),
        bpf::AttachPoint::Fentry(f) => AttachPoint::Fentry(f),
        bpf::AttachPoint::Fexit(f) => AttachPoint::Fexit(f),
        bpf::AttachPoint::PerfCpuClock(hz) => AttachPoint::PerfCpuClock(hz),
        bpf::AttachPoint::Uprobe(t) => AttachPoint::Uprobe(uprobe(t)),
        bpf::AttachPoint::Uretprobe(t) => AttachPoint::Uretprobe(uprobe(t)),
    }
}

impl HostState {
    /// The policy decision for this plugin, counted when it refuses.
    fn bpf_allowed(&self) -> Result<(), bpf::BpfError> {
        self.identity.bpf.clone().map_err(|reason| {
            self.identity
                .stats
                .bpf_denied
                .fetch_add(1, Ordering::Relaxed);
            bpf::BpfError {
                code: ErrorCode::AccessDenied,
                message: format!("BPF denied: {reason}"),
            }
        })
    }

    /// Starts a ring-buffer or perf-array reader that delivers to this instance's mailbox.
    fn subscribe(
        &mut self,
        handle: &Resource<BpfObject>,
        start: impl FnOnce(&mut BpfObject, u64, Delivery) -> Result<(), crate::bpf::BpfError>,
    ) -> BpfResult<u64> {
        if let Err(err) = self.bpf_allowed() {
            return Ok(Err(err));
        }
        let Some((mailbox, incarnation)) = self.timers.mailbox().cloned() else {
            return Ok(Err(bpf::BpfError {
                code: ErrorCode::NotSupported,
                message: "this instance cannot receive events".to_owned(),
            }));
        };
        let delivery = Delivery {
            sink: Arc::new(EventMailbox {
                mailbox,
                incarnation,
            }),
            runtime: self.services.runtime.clone(),
            counters: self.identity.stats.bpf.clone(),
        };
        let subscription = self.next_subscription;
        let object = self.table.get_mut(handle)?;
        if let Err(err) = start(object, subscription, delivery) {
            return Ok(Err(to_wit(err)));
        }
        self.next_subscription += 1;
        Ok(Ok(subscription))
    }
}

impl bpf::Host for HostState {
    fn possible_cpus(&mut self) -> wasmtime::Result<u32> {
        Ok(crate::bpf::possible_cpus())
    }

    fn symbolize(
        &mut self,
        addresses: Vec<u64>,
    ) -> wasmtime::Result<Result<Vec<String>, ErrorCode>> {
        if !self.identity.kallsyms {
            self.identity
                .stats
                .denied_reads
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Err(ErrorCode::AccessDenied));
        }
        if addresses.len() > MAX_SYMBOLIZE {
            return Ok(Err(ErrorCode::TooLarge));
        }
        Ok(Ok(crate::bpf::symbolize(&addresses)))
    }
}

impl bpf::HostObject for HostState {
    fn load(&mut self, elf: Vec<u8>, globals: Vec<bpf::Global>) -> BpfResult<Resource<BpfObject>> {
        if let Err(err) = self.bpf_allowed() {
            return Ok(Err(err));
        }
        let globals: Vec<(String, Vec<u8>)> =
            globals.into_iter().map(|g| (g.name, g.value)).collect();
        let object = if self.services.replay {
            BpfObject::replay_stub()
        } else {
            match BpfObject::load(&elf, &globals) {
                Ok(object) => object,
                Err(err) => return Ok(Err(to_wit(err))),
            }
        };
        tracing::info!(plugin = %self.identity.name, bytes = elf.len(), "BPF object loaded");
        match self.table.push(object) {
            Ok(handle) => {
                self.identity
                    .stats
                    .bpf_objects
                    .fetch_add(1, Ordering::Relaxed);
                self.bpf_objects += 1;
                if self.identity.rx_timestamps
                    && self.rx_timestamps.is_none()
                    && !self.services.replay
                {
                    self.rx_timestamps = crate::rxstamp::acquire();
                }
                Ok(Ok(handle))
            }
            Err(err) => Ok(Err(bpf::BpfError {
                code: ErrorCode::TooLarge,
                message: err.to_string(),
            })),
        }
    }

    fn attach(
        &mut self,
        handle: Resource<BpfObject>,
        program: String,
        point: bpf::AttachPoint,
    ) -> BpfResult<()> {
        if let Err(err) = self.bpf_allowed() {
            return Ok(Err(err));
        }
        let point = attach_point(point);
        let name = self.identity.name.clone();
        let object = self.table.get_mut(&handle)?;
        let attached = object.attach(&program, &point).map_err(|err| {
            tracing::warn!(plugin = %name, %program, ?point, error = %err, "BPF attach failed");
            to_wit(err)
        });
        if attached.is_ok()
            && let Some(id) = object.program_id(&program)
        {
            self.identity.stats.bpf.programs.add(id);
        }
        Ok(attached)
    }

    fn subscribe_ring_buffer(
        &mut self,
        handle: Resource<BpfObject>,
        map: String,
    ) -> BpfResult<u64> {
        self.subscribe(&handle, |object, subscription, delivery| {
            object.subscribe(&map, subscription, delivery)
        })
    }

    fn subscribe_perf_event_array(
        &mut self,
        handle: Resource<BpfObject>,
        map: String,
        pages_per_cpu: u32,
    ) -> BpfResult<u64> {
        self.subscribe(&handle, |object, subscription, delivery| {
            object.subscribe_perf(&map, pages_per_cpu, subscription, delivery)
        })
    }

    fn detach(&mut self, handle: Resource<BpfObject>, program: String) -> BpfResult<()> {
        if let Err(err) = self.bpf_allowed() {
            return Ok(Err(err));
        }
        Ok(self
            .table
            .get_mut(&handle)?
            .detach(&program)
            .map_err(to_wit))
    }

    fn lookup(
        &mut self,
        handle: Resource<BpfObject>,
        map: String,
        key: Vec<u8>,
    ) -> BpfResult<Option<Vec<u8>>> {
        Ok(self.table.get(&handle)?.lookup(&map, &key).map_err(to_wit))
    }

    fn entries(&mut self, handle: Resource<BpfObject>, map: String) -> BpfResult<Vec<MapEntry>> {
        Ok(self.table.get(&handle)?.entries(&map).map_err(to_wit))
    }

    fn update(
        &mut self,
        handle: Resource<BpfObject>,
        map: String,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> BpfResult<()> {
        Ok(self
            .table
            .get(&handle)?
            .update(&map, &key, &value)
            .map_err(to_wit))
    }

    fn delete(&mut self, handle: Resource<BpfObject>, map: String, key: Vec<u8>) -> BpfResult<()> {
        Ok(self.table.get(&handle)?.delete(&map, &key).map_err(to_wit))
    }

    fn drop(&mut self, handle: Resource<BpfObject>) -> wasmtime::Result<()> {
        // Dropping the aya object detaches its links and closes its maps; the readers are
        // aborted by `BpfObject::drop`.
        self.table.delete(handle)?;
        self.identity
            .stats
            .bpf_objects
            .fetch_sub(1, Ordering::Relaxed);
        self.bpf_objects = self.bpf_objects.saturating_sub(1);
        if self.bpf_objects == 0 {
            // The last object is gone: this instance no longer needs packets timestamped.
            self.rx_timestamps = None;
        }
        Ok(())
    }
}
