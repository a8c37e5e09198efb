//! BPF ring buffers read straight from their memory mapping, in batches, without copying
//! in the host.
//!
//! aya's `RingBuf` yields one record at a time and publishes the consumer position after
//! each. Here a tokio task only rings the plugin's doorbell (on a wake-up from the kernel,
//! or from the agent-wide drain ticker when a quiet ring holds records); the plugin's actor
//! thread then finds the run of committed records, passes that
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

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, Weak};

use aya::maps::MapData;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::batch::{Batch, RECORD_HEADER as HEADER_SIZE};
use super::{
    BpfCounters, DRAIN_INTERVAL, Delivery, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, add_growth,
};

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

/// What the drain ticker knows of one ring: how to see that it holds records, whom to wake,
/// and the object's drop counters to copy into self-metrics.
struct Watched {
    ring: Arc<Mutex<RingConsumer>>,
    wake: Notify,
    /// The object's per-CPU `stats` map and what was last seen of slots 1 and 2.
    stats: Option<(OwnedFd, Mutex<(u64, u64)>)>,
    counters: Arc<BpfCounters>,
}

impl Watched {
    /// Adds what the kernel counters grew by since the last look, so several objects (or a
    /// reloaded one) accumulate instead of overwriting each other.
    fn refresh_drops(&self) {
        let Some((fd, seen)) = &self.stats else {
            return;
        };
        let Ok(mut seen) = seen.lock() else { return };
        let (ring_full, rate_limited) = &mut *seen;
        add_growth(
            &self.counters.ring_full,
            ring_full,
            super::sum_percpu_u64(fd.as_fd(), 1),
        );
        add_growth(
            &self.counters.rate_limited,
            rate_limited,
            super::sum_percpu_u64(fd.as_fd(), 2),
        );
    }
}

/// One ticker for every ring of the agent: every [`DRAIN_INTERVAL`] it wakes the readers
/// of rings that hold records, and once a second it copies the drop counters. An idle agent
/// thus costs a few wake-ups a second in total, not a 100 Hz timer per subscription.
#[derive(Default)]
struct Drainer {
    rings: Mutex<Vec<Weak<Watched>>>,
    running: std::sync::atomic::AtomicBool,
}

fn drainer() -> &'static Drainer {
    static DRAINER: std::sync::OnceLock<Drainer> = std::sync::OnceLock::new();
    DRAINER.get_or_init(Drainer::default)
}

impl Drainer {
    fn watch(&'static self, watched: &Arc<Watched>, runtime: &tokio::runtime::Handle) {
        if let Ok(mut rings) = self.rings.lock() {
            rings.push(Arc::downgrade(watched));
        }
        if !self.running.swap(true, Ordering::AcqRel) {
            runtime.spawn(self.tick());
        }
    }

    async fn tick(&'static self) {
        let mut ticks = tokio::time::interval(DRAIN_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let per_second = (1000 / DRAIN_INTERVAL.as_millis().max(1)).max(1) as u64;
        let mut count = 0u64;
        loop {
            ticks.tick().await;
            count += 1;
            let live: Vec<Arc<Watched>> = {
                let Ok(mut rings) = self.rings.lock() else {
                    return;
                };
                rings.retain(|w| w.strong_count() > 0);
                if rings.is_empty() {
                    // Nothing to watch: stop; the next subscription starts a new ticker.
                    self.running.store(false, Ordering::Release);
                    return;
                }
                rings.iter().filter_map(Weak::upgrade).collect()
            };
            for watched in &live {
                // A ring the actor is consuming right now needs no nudge.
                let has_data = watched.ring.try_lock().is_ok_and(|ring| ring.has_data());
                if has_data {
                    watched.wake.notify_one();
                }
                if count.is_multiple_of(per_second) {
                    watched.refresh_drops();
                }
            }
        }
    }
}

/// Drains a ring buffer into batches of length-prefixed records, one batch in flight at a
/// time: while the guest works on a batch, new records wait in the kernel's ring (whose
/// overflow the BPF side counts), so a slow guest costs drops, never host memory.
pub async fn read_ring(
    mut fd: AsyncFd<RingDoorbell>,
    subscription: u64,
    delivery: Delivery,
    stats_fd: Option<OwnedFd>,
) {
    let watched = Arc::new(Watched {
        ring: fd.get_ref().ring.clone(),
        wake: Notify::new(),
        stats: stats_fd.map(|fd| (fd, Mutex::new((0, 0)))),
        counters: delivery.counters.clone(),
    });
    drainer().watch(&watched, &delivery.runtime);
    loop {
        tokio::select! {
            ready = fd.readable_mut() => {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
            }
            () = watched.wake.notified() => {}
        }
        while fd.get_ref().lock().has_data() {
            let batch = Batch::Ring {
                ring: fd.get_ref().ring.clone(),
                counters: delivery.counters.clone(),
            };
            if deliver(&delivery, subscription, 0, batch).await.is_none() {
                watched.refresh_drops();
                return;
            }
            // Records that arrived during the guest call wait for the next wake-up or
            // tick, so batches stay large; only a batch cut at a limit goes on at once.
            if !fd.get_ref().lock().last_full {
                break;
            }
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
        .counters
        .records
        .fetch_add(count as u64, Ordering::Relaxed);
    delivery.sink.deliver(subscription, records)?.await.ok()
}
