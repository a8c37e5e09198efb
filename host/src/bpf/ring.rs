//! BPF ring buffers read straight from their memory mapping, in batches, without copying
//! in the host.
//!
//! aya's `RingBuf` yields one record at a time and publishes the consumer position after
//! each. Here a tokio task only rings the plugin's doorbell (on a wake-up or the drain
//! tick); the plugin's actor thread then finds the run of committed records, passes that
//! region of the mapping to `on-events` as is (the batch layout is the ring's own, see
//! `batch.rs`), and publishes the consumer position once, after the call. Each record is
//! read once, by the component model's copy into guest memory, on the CPU that decodes it.
//!
//! Layout (kernel/bpf/ringbuf.c): page 0 is the consumer position (read-write); page 1 the
//! producer position; then the data pages, mapped twice in a row so that a run of records
//! never wraps. Each record starts with an 8-byte header: a u32 length with the BUSY (not
//! yet committed) and DISCARD bits, and a u32 page offset; records are 8-byte aligned.
#![allow(
    unsafe_code,
    reason = "reading a kernel ring buffer through its shared memory mapping"
)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::MapData;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use super::batch::{Batch, RECORD_HEADER as HEADER_SIZE};
use super::{DRAIN_INTERVAL, Delivery, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, add_growth};
use crate::plugins::actor::Call;

const BUSY_BIT: u32 = 1 << 31;
/// How far ahead of the header walk to prefetch (32 cache lines).
const PREFETCH_AHEAD: usize = 2048;
const DISCARD_BIT: u32 = 1 << 30;

/// One `mmap`ed region of the ring, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map_shared` mapped; no slice into it outlives the
        // consumer that owns it.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

fn map_shared(
    fd: BorrowedFd<'_>,
    len: usize,
    prot: libc::c_int,
    offset: usize,
) -> std::io::Result<Mapping> {
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a fresh shared mapping of a ring-buffer map fd; the kernel validates the
    // length, protection and offset against the map.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Mapping {
        ptr: ptr.cast(),
        len,
    })
}

/// A run of committed records found by [`RingConsumer::next_region`].
struct Region {
    /// Offset from the start of the data pages.
    offset: usize,
    len: usize,
    records: usize,
    /// Consumer position once the region is consumed.
    end: usize,
    /// Stopped at a batch limit, so more records are probably waiting.
    full: bool,
}

/// A consumer of one BPF ring buffer.
pub struct RingConsumer {
    /// Keeps the map (and so the fd the mappings belong to) alive.
    map: MapData,
    consumer: Mapping,
    producer: Mapping,
    page_size: usize,
    mask: usize,
    /// Our consumer position; published to the kernel after each batch.
    position: usize,
    /// The last batch stopped at a limit.
    last_full: bool,
}

// SAFETY: the mappings are owned and only accessed through `&mut self`, or through atomics
// for the positions the kernel shares.
unsafe impl Send for RingConsumer {}

impl RingConsumer {
    pub fn new(map: MapData) -> std::io::Result<Self> {
        let size = map
            .info()
            .map_err(|err| std::io::Error::other(err.to_string()))?
            .max_entries() as usize;
        if !size.is_power_of_two() {
            return Err(std::io::Error::other(format!(
                "ring buffer size {size} is not a power of two"
            )));
        }
        // SAFETY: sysconf has no preconditions.
        let page_size =
            usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let fd = map.fd().as_fd();
        let consumer = map_shared(fd, page_size, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = map_shared(fd, page_size + 2 * size, libc::PROT_READ, page_size)?;
        let position = Self::consumer_pos_of(&consumer).load(Ordering::Acquire);
        Ok(Self {
            map,
            consumer,
            producer,
            page_size,
            mask: size - 1,
            position,
            last_full: false,
        })
    }

    fn consumer_pos_of(consumer: &Mapping) -> &AtomicUsize {
        // SAFETY: the first word of the consumer page is the kernel's consumer position,
        // page-aligned and valid for the mapping's lifetime.
        unsafe { &*consumer.ptr.cast::<AtomicUsize>() }
    }

    fn producer_pos(&self) -> usize {
        // SAFETY: as above, for the producer page.
        unsafe { &*self.producer.ptr.cast::<AtomicUsize>() }.load(Ordering::Acquire)
    }

    /// Finds the run of committed records from the consumer position, up to the limits.
    /// Nothing is released to the producers until [`Self::release`].
    fn next_region(&self, max_records: usize, max_bytes: usize) -> Option<Region> {
        let data = self.producer.ptr.wrapping_add(self.page_size);
        let size = self.mask + 1;
        let produced = self.producer_pos();
        let mut position = self.position;
        let mut records = 0;
        let mut full = false;
        while position < produced {
            if records >= max_records {
                full = true;
                break;
            }
            let offset = position & self.mask;
            // Walking the headers is a chain of dependent loads, each a cache miss on a line
            // the producer CPU wrote: ask for the lines ahead early, so the misses overlap.
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch never faults; the address is inside the double mapping.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T0>(data.add(offset + PREFETCH_AHEAD).cast());
            }
            // SAFETY: `offset` < size, so the header lies in the first copy of the data.
            let header = unsafe { &*data.add(offset).cast::<AtomicU32>() }.load(Ordering::Acquire);
            if header & BUSY_BIT != 0 {
                break;
            }
            let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
            let step = (len + HEADER_SIZE).next_multiple_of(8);
            if step > size {
                // Cannot happen with a sane kernel; stop rather than read out of bounds.
                tracing::error!(len, size, "corrupt ring buffer record header");
                break;
            }
            if position - self.position + step > max_bytes && position > self.position {
                full = true;
                break;
            }
            if header & DISCARD_BIT == 0 {
                records += 1;
            }
            position += step;
        }
        let len = position - self.position;
        // A region is at most one ring long, and the data is mapped twice, so it is
        // contiguous and inside the mapping.
        (len > 0 && len <= size).then_some(Region {
            offset: self.position & self.mask,
            len,
            records,
            end: position,
            full,
        })
    }

    /// Gives the space up to `end` back to the producers.
    fn release(&mut self, end: usize) {
        Self::consumer_pos_of(&self.consumer).store(end, Ordering::Release);
        self.position = end;
        // Producers that submit without an explicit wakeup flag wake us only when they see
        // us caught up: order the store before the next look at the producer position.
        fence(Ordering::SeqCst);
    }

    /// Whether records (possibly uncommitted) wait past our position.
    fn has_data(&self) -> bool {
        self.producer_pos() != self.position
    }

    /// Runs `call` on the next run of committed records (skipping runs that are all
    /// discarded), then releases it; returns the number of records and `call`'s result.
    pub fn with_next_region<R>(&mut self, call: impl FnOnce(&[u8]) -> R) -> Option<(usize, R)> {
        // Nothing committed yet (only reservations in progress) must not look like a full
        // batch, or the doorbell would ring again at once instead of waiting for the tick.
        self.last_full = false;
        loop {
            let region = self.next_region(MAX_BATCH_RECORDS, MAX_BATCH_BYTES)?;
            self.last_full = region.full;
            if region.records == 0 {
                self.release(region.end);
                continue;
            }
            // SAFETY: the region lies in the double-mapped data pages (len ≤ ring size), and
            // the kernel does not reuse it before `release` below.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    self.producer.ptr.add(self.page_size + region.offset),
                    region.len,
                )
            };
            let result = call(bytes);
            self.release(region.end);
            return Some((region.records, result));
        }
    }
}

/// The fd a reader task polls, next to the consumer it shares with the actor thread.
pub struct RingDoorbell {
    fd: RawFd,
    ring: Arc<Mutex<RingConsumer>>,
}

impl RingDoorbell {
    pub fn new(consumer: RingConsumer) -> Self {
        Self {
            fd: consumer.as_raw_fd(),
            ring: Arc::new(Mutex::new(consumer)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RingConsumer> {
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl AsRawFd for RingDoorbell {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl AsRawFd for RingConsumer {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

/// Drains a ring buffer into batches of length-prefixed records, one batch in flight at a
/// time: while the guest works on a batch, new records wait in the kernel's ring (whose
/// overflow the BPF side counts), so a slow guest costs drops, never host memory.
pub async fn read_ring(
    mut fd: AsyncFd<RingDoorbell>,
    subscription: u64,
    delivery: Delivery,
    stats_fd: Option<std::os::fd::OwnedFd>,
) {
    let mut last_stats = tokio::time::Instant::now();
    let (mut seen_ring_full, mut seen_rate_limited) = (0u64, 0u64);
    let mut drain_timer = tokio::time::interval(DRAIN_INTERVAL);
    drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = fd.readable_mut() => {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
            }
            _ = drain_timer.tick() => {}
        }
        while fd.get_ref().lock().has_data() {
            let batch = Batch::Ring {
                ring: fd.get_ref().ring.clone(),
                stats: delivery.stats.clone(),
            };
            if deliver(&delivery, subscription, 0, batch).await.is_none() {
                return;
            }
            // Records that arrived during the guest call wait for the next wake-up or
            // tick, so batches stay large; only a batch cut at a limit goes on at once.
            if !fd.get_ref().lock().last_full {
                break;
            }
        }
        if let Some(stats) = &stats_fd
            && last_stats.elapsed() >= Duration::from_secs(1)
        {
            last_stats = tokio::time::Instant::now();
            // Add what changed since the last look, so several objects (or a reloaded one)
            // accumulate instead of overwriting each other.
            add_growth(
                &delivery.stats.bpf_ring_full,
                &mut seen_ring_full,
                super::sum_percpu_u64(stats.as_fd(), 1),
            );
            add_growth(
                &delivery.stats.bpf_rate_limited,
                &mut seen_rate_limited,
                super::sum_percpu_u64(stats.as_fd(), 2),
            );
        }
    }
}

/// Hands one batch to the plugin's actor and waits until the guest is done with it. The
/// buffer comes back with the acknowledgement, so batches reuse one allocation; `None` means
/// the instance ended (or was replaced) and the reader should stop.
pub async fn deliver(
    delivery: &Delivery,
    subscription: u64,
    count: usize,
    records: Batch,
) -> Option<Batch> {
    delivery
        .stats
        .bpf_records
        .fetch_add(count as u64, Ordering::Relaxed);
    let (done, finished) = oneshot::channel();
    let call = Call::Events {
        incarnation: delivery.incarnation,
        subscription,
        records,
        done,
    };
    delivery.mailbox.send(call).ok()?;
    finished.await.ok()
}
