//! BPF perf event arrays (`bpf_perf_event_output`), for programs written for kernels before
//! ring buffers (5.8) or ported from tools that use them. One buffer per online CPU, each
//! read by its own task into batches of the same length-prefixed format as ring buffers.
//! Samples the kernel could not store are reported as lost records and counted per plugin
//! (`kpulse_plugin_bpf_perf_lost_total`).

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use aya::maps::perf::PerfEvent as PerfRecord;
use aya::maps::{MapData, PerfEventArray, perf::PerfEventArrayBuffer};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::batch::{Batch, push_record};
use super::ring::deliver;
use super::{Delivery, MAX_BATCH_BYTES, MAX_BATCH_RECORDS};

/// Opens the buffer of every online CPU (`pages` data pages each, a power of two) and spawns
/// one reader task per CPU; returns their abort handles.
pub fn subscribe(
    map: MapData,
    pages: usize,
    subscription: u64,
    delivery: &Delivery,
) -> Result<Vec<tokio::task::AbortHandle>, String> {
    if !pages.is_power_of_two() || pages > 1024 {
        return Err(format!(
            "pages per CPU must be a power of two up to 1024, not {pages}"
        ));
    }
    let mut array = PerfEventArray::try_from(aya::maps::Map::PerfEventArray(map))
        .map_err(|err| format!("not a perf event array: {err}"))?;
    let _guard = delivery.runtime.enter();
    let mut readers = Vec::new();
    for cpu in super::online_cpus() {
        let buffer = array
            .open(cpu, Some(pages))
            .map_err(|err| format!("open the perf buffer of CPU {cpu}: {err}"))?;
        // SAFETY: the buffer owns its perf event fd and the AsyncFd owns the buffer, so the
        // fd outlives its registration.
        #[allow(unsafe_code, reason = "registering an owned fd with tokio")]
        let fd = unsafe { AsyncFd::register_with_interest(buffer, Interest::READABLE) }
            .map_err(|err| format!("poll the perf buffer of CPU {cpu}: {}", err.into_parts().1))?;
        let task = delivery
            .runtime
            .spawn(read_perf(fd, subscription, delivery.clone()));
        readers.push(task.abort_handle());
    }
    Ok(readers)
}

async fn read_perf(
    mut fd: AsyncFd<PerfEventArrayBuffer<MapData>>,
    subscription: u64,
    delivery: Delivery,
) {
    let mut buffer: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut joined: Vec<u8> = Vec::new();
    loop {
        // aya opens each buffer with a wake-up per sample, so readiness alone suffices: no
        // drain timer.
        if let Ok(mut guard) = fd.readable_mut().await {
            guard.clear_ready();
        }
        loop {
            buffer.clear();
            let mut lost = 0u64;
            let flow = fd.get_mut().try_fold(0usize, |count, record| {
                match record {
                    PerfRecord::Sample { head, tail } => {
                        if tail.is_empty() {
                            push_record(&mut buffer, head);
                        } else {
                            // Wrapped at the end of the perf ring: join the two pieces.
                            joined.clear();
                            joined.extend_from_slice(head);
                            joined.extend_from_slice(tail);
                            push_record(&mut buffer, &joined);
                        }
                        let count = count + 1;
                        if count >= MAX_BATCH_RECORDS || buffer.len() >= MAX_BATCH_BYTES {
                            return ControlFlow::Break(count);
                        }
                        ControlFlow::Continue(count)
                    }
                    PerfRecord::Lost { count: dropped } => {
                        lost += dropped;
                        ControlFlow::Continue(count)
                    }
                }
            });
            if lost > 0 {
                delivery
                    .counters
                    .perf_lost
                    .fetch_add(lost, Ordering::Relaxed);
            }
            let (count, full) = match flow {
                ControlFlow::Break(count) => (count, true),
                ControlFlow::Continue(count) => (count, false),
            };
            if count == 0 {
                break;
            }
            let batch = Batch::Owned(std::mem::take(&mut buffer));
            match deliver(&delivery, subscription, count, batch).await {
                Some(Batch::Owned(returned)) => buffer = returned,
                Some(Batch::Ring { .. }) => {}
                None => return,
            }
            if !full {
                break;
            }
        }
    }
}
