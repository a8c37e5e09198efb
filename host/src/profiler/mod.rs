//! The host's CPU profiler: a trusted, built-in BPF sampler (`ebpf/src/profile.bpf.c`) that
//! guests (the `profiler` WIT interface, `host_api/profiler.rs`) and operators (the tasks API,
//! `http/tasks.rs`) start as bounded sessions. A session runs on a thread of its own: load,
//! attach on every online CPU, wait out the window, detach, read the maps, symbolize while the
//! processes still run. Callers never wait on it: they poll, or await [`Session::finish`].
//!
//! Bounds: `max_sessions` at once (perf events and kernel map memory are per-host resources),
//! a longest duration and highest frequency, and `max_stacks` distinct stacks per session,
//! which also bounds the host memory a profile holds. What did not fit is reported as lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::containers::Registry;

pub mod config;
mod metrics;
pub mod model;
pub mod render;
mod sampler;
mod symbolize;
mod target;

pub use config::ProfilerConfig;
pub use metrics::ProfilerMetrics;
pub use model::{
    DEFAULT_DURATION_MS, DEFAULT_FREQUENCY_HZ, Frame, FrameKind, Mode, Profile, ProfileError,
    Request, Stack, Target,
};

/// What a caller may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_duration_ms: u32,
    pub max_frequency_hz: u32,
}

/// The profiler service; cheap to clone.
#[derive(Clone, Debug)]
pub struct Profiler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ProfilerConfig,
    registry: Registry,
    metrics: ProfilerMetrics,
    running: AtomicUsize,
    /// Sessions started, refused busy, failed; for `/metrics`.
    started: AtomicUsize,
}

fn clamp_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

impl Profiler {
    pub fn new(config: ProfilerConfig, registry: Registry, metrics: ProfilerMetrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                registry,
                metrics,
                running: AtomicUsize::new(0),
                started: AtomicUsize::new(0),
            }),
        }
    }

    /// A profiler that refuses every session (`kpulse plugins inspect`, record, replay).
    pub fn disabled() -> Self {
        let config = ProfilerConfig {
            enabled: false,
            ..ProfilerConfig::default()
        };
        Self::new(
            config,
            Registry::empty(Default::default()),
            ProfilerMetrics::default(),
        )
    }

    pub fn limits(&self) -> Limits {
        let c = &self.inner.config;
        Limits {
            max_sessions: usize::try_from(c.max_sessions).unwrap_or(usize::MAX),
            max_duration_ms: clamp_u32(c.max_duration_ms),
            max_frequency_hz: clamp_u32(c.max_frequency_hz),
        }
    }

    /// Sessions running now.
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::Relaxed)
    }

    /// Sessions started since the agent started.
    pub fn started_total(&self) -> usize {
        self.inner.started.load(Ordering::Relaxed)
    }

    /// Starts a session now.
    pub fn start(&self, request: Request) -> Result<Session, ProfileError> {
        let mode = request.mode;
        let started = self.try_start(request);
        match &started {
            Ok(_) => self.inner.metrics.started(mode),
            Err(err) => self.inner.metrics.refused(err),
        }
        started
    }

    fn try_start(&self, request: Request) -> Result<Session, ProfileError> {
        if !self.inner.config.enabled {
            return Err(ProfileError::NotSupported(
                "the profiler is off ([profiler] enabled = false)".to_owned(),
            ));
        }
        let limits = self.limits();
        let duration_ms = match request.duration_ms {
            0 => DEFAULT_DURATION_MS,
            ms => ms,
        };
        if duration_ms > limits.max_duration_ms {
            return Err(ProfileError::Invalid(format!(
                "duration {duration_ms} ms is over the limit of {} ms ([profiler] max_duration_ms)",
                limits.max_duration_ms
            )));
        }
        let frequency_hz = match request.frequency_hz {
            0 => DEFAULT_FREQUENCY_HZ,
            hz => hz,
        };
        if frequency_hz > limits.max_frequency_hz {
            return Err(ProfileError::Invalid(format!(
                "frequency {frequency_hz} Hz is over the limit of {} Hz ([profiler] max_frequency_hz)",
                limits.max_frequency_hz
            )));
        }
        if !request.kernel_stacks && !request.user_stacks {
            return Err(ProfileError::Invalid(
                "neither kernel nor user stacks asked for".to_owned(),
            ));
        }
        let filter = target::resolve(&request.target, &self.inner.registry)?;
        // Reserve a slot, or answer busy.
        let running = &self.inner.running;
        let mut current = running.load(Ordering::Relaxed);
        loop {
            if current >= limits.max_sessions {
                return Err(ProfileError::Busy {
                    running: current,
                    limit: limits.max_sessions,
                });
            }
            match running.compare_exchange(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        let slot = Slot(self.inner.clone());
        self.inner.started.fetch_add(1, Ordering::Relaxed);
        let window = sampler::Window {
            filter,
            mode: request.mode,
            frequency_hz,
            duration: Duration::from_millis(u64::from(duration_ms)),
            kernel_stacks: request.kernel_stacks,
            user_stacks: request.user_stacks,
            max_stacks: clamp_u32(self.inner.config.max_stacks),
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = oneshot::channel();
        let thread_cancel = cancel.clone();
        let spawned = std::thread::Builder::new()
            .name("kpulse-profile".to_owned())
            .spawn(move || {
                let result = sampler::run(&window, &thread_cancel)
                    .map(|raw| symbolize::profile(raw, window.mode, window.frequency_hz));
                // The heap the symbolizer used (ELF symbol tables) goes back to the system.
                crate::heap::release_free_heap();
                slot.0
                    .metrics
                    .ended(result.as_ref().map(|p| (p.samples, p.lost)).map_err(|_| ()));
                drop(slot);
                let _ = tx.send(result);
            });
        if let Err(err) = spawned {
            return Err(ProfileError::Io(format!(
                "cannot start a profile thread: {err}"
            )));
        }
        Ok(Session {
            rx: Some(rx),
            cancel,
        })
    }
}

/// A reserved session slot, released when the session's thread ends.
struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.released();
    }
}

/// One running session. Dropping it stops the sampling early.
#[derive(Debug)]
pub struct Session {
    rx: Option<oneshot::Receiver<Result<Profile, ProfileError>>>,
    cancel: Arc<AtomicBool>,
}

impl Session {
    /// Never blocks: `None` while sampling or symbolizing, then the result once (and `None`
    /// after that).
    pub fn poll(&mut self) -> Option<Result<Profile, ProfileError>> {
        let rx = self.rx.as_mut()?;
        match rx.try_recv() {
            Ok(result) => {
                self.rx = None;
                Some(result)
            }
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => {
                self.rx = None;
                Some(Err(ProfileError::Io(
                    "the profile thread ended without a result".to_owned(),
                )))
            }
        }
    }

    /// Waits for the result.
    pub async fn finish(mut self) -> Result<Profile, ProfileError> {
        match self.rx.take() {
            Some(rx) => rx.await.unwrap_or_else(|_| {
                Err(ProfileError::Io(
                    "the profile thread ended without a result".to_owned(),
                ))
            }),
            None => Err(ProfileError::Invalid(
                "the session's result was already taken".to_owned(),
            )),
        }
    }

    /// Stops sampling now; the result (of the shorter window) still arrives.
    pub fn stop(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
