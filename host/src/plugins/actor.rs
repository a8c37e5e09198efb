//! One plugin as an actor.
//!
//! An *incarnation* is one wasm instance living on its own thread: it instantiates, runs
//! `init` and `start`, then serves calls from its mailbox one at a time, each under the
//! plugin's deadline, until it is stopped or traps. The *supervisor* is an async task that
//! starts incarnations, restarts failed ones with exponential back-off, quarantines a plugin
//! that keeps failing, and obeys start/stop/shutdown commands.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use wasmtime::Store;

use crate::backoff::Backoff;
use crate::bpf::{Batch, Deliver};
use crate::host_api::{HostState, Identity, Services};
use crate::plugins::PluginSpec;
use crate::plugins::stats::{PluginState, PluginStats, PluginStatus};
use crate::runtime::{Runtime, deadline_ticks};
use crate::wit::{InitError, Metric};

/// A message to a plugin's current incarnation.
#[derive(Debug)]
pub enum Call {
    /// Collect metrics for a scrape.
    Update {
        reply: oneshot::Sender<Result<Vec<Metric>, String>>,
    },
    /// A timer armed by incarnation `incarnation` fired.
    Timer {
        incarnation: u64,
        id: u64,
        pending: Arc<AtomicBool>,
    },
    /// A batch of ring-buffer records for subscription `subscription` of incarnation
    /// `incarnation`; `done` gets the buffer back once the guest has processed it.
    Events {
        incarnation: u64,
        subscription: u64,
        records: Batch,
        done: oneshot::Sender<Batch>,
    },
    /// Finish the call in flight, then drop the instance.
    Stop,
}

/// BPF batches into an incarnation's mailbox: what the `bpf` layer delivers through.
pub struct EventMailbox {
    pub mailbox: UnboundedSender<Call>,
    pub incarnation: u64,
}

impl Deliver for EventMailbox {
    fn deliver(&self, subscription: u64, records: Batch) -> Option<oneshot::Receiver<Batch>> {
        let (done, finished) = oneshot::channel();
        self.mailbox
            .send(Call::Events {
                incarnation: self.incarnation,
                subscription,
                records,
                done,
            })
            .ok()?;
        Some(finished)
    }
}

/// Operator and loader commands to the supervisor.
#[derive(Debug)]
pub enum Control {
    /// Start a stopped, failed, inactive or quarantined plugin now.
    Start,
    /// Stop the instance and stay stopped.
    Stop,
    /// Stop the instance and end the supervisor (unload or replacement).
    Shutdown,
}

/// Handshake for a replacement: the new version reports whether `init` succeeded, then
/// waits for the old version to be gone before it calls `start`.
#[derive(Debug)]
pub struct Gate {
    pub ready: oneshot::Sender<Result<(), String>>,
    pub go: oneshot::Receiver<()>,
}

/// How an incarnation ended.
#[derive(Debug)]
enum Exit {
    Stopped,
    Inactive(String),
    Failed {
        error: String,
        retry: bool,
    },
    /// A gated replacement failed before it was ready; the supervisor just ends.
    Abandoned,
}

/// Everything a supervisor needs.
pub struct Supervisor {
    pub runtime: Runtime,
    pub services: Arc<Services>,
    pub spec: Arc<PluginSpec>,
    pub stats: Arc<PluginStats>,
    pub status: Arc<Mutex<PluginStatus>>,
    pub mailbox: UnboundedSender<Call>,
    pub quarantine_after: u32,
    pub max_backoff: Duration,
}

impl Supervisor {
    fn set_status(&self, state: PluginState, error: Option<String>) {
        if let Ok(mut status) = self.status.lock() {
            status.state = state;
            if error.is_some() {
                status.last_error = error;
            }
        }
    }

    /// Runs until shut down. `stopped` starts the plugin in the stopped state (denylist).
    pub async fn run(
        self,
        mut mailbox: UnboundedReceiver<Call>,
        mut control: UnboundedReceiver<Control>,
        mut gate: Option<Gate>,
        stopped: bool,
    ) {
        let name = self.spec.info.name.clone();
        let mut incarnation = 0u64;
        let mut want_running = !stopped;
        if stopped {
            self.set_status(PluginState::Stopped, None);
        }
        loop {
            if !want_running {
                // Idle: refuse calls until told to start.
                match idle(&mut mailbox, &mut control, None).await {
                    Some(Control::Start) => {
                        if let Ok(mut status) = self.status.lock() {
                            status.consecutive_failures = 0;
                        }
                        want_running = true;
                    }
                    Some(Control::Stop) => {}
                    Some(Control::Shutdown) | None => return,
                }
                continue;
            }

            incarnation += 1;
            self.set_status(PluginState::Starting, None);
            let (done_tx, done_rx) = oneshot::channel();
            let context = IncarnationContext {
                runtime: self.runtime.clone(),
                services: self.services.clone(),
                spec: self.spec.clone(),
                stats: self.stats.clone(),
                status: self.status.clone(),
                mailbox: self.mailbox.clone(),
                incarnation,
            };
            let gate_now = gate.take();
            let spawned = std::thread::Builder::new()
                .name(format!("plugin-{name}"))
                .stack_size(4 * 1024 * 1024)
                .spawn(move || {
                    let exit = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        context.run(&mut mailbox, gate_now)
                    }))
                    .unwrap_or_else(|_| Exit::Failed {
                        error: "host thread panicked".to_owned(),
                        retry: true,
                    });
                    let _ = done_tx.send((exit, mailbox));
                });
            if let Err(err) = spawned {
                tracing::error!(plugin = %name, %err, "cannot spawn plugin thread");
                self.set_status(
                    PluginState::Failed,
                    Some(format!("cannot spawn thread: {err}")),
                );
                return;
            }

            // Wait for the incarnation, forwarding operator commands to it.
            let mut done_rx = done_rx;
            let mut after_stop = None;
            let (exit, returned_mailbox) = loop {
                tokio::select! {
                    done = &mut done_rx => match done {
                        Ok(done) => break done,
                        Err(_) => return,
                    },
                    command = control.recv() => {
                        match command {
                            Some(Control::Start) => continue,
                            Some(Control::Stop) => after_stop = Some(Control::Stop),
                            Some(Control::Shutdown) | None => after_stop = Some(Control::Shutdown),
                        }
                        let _ = self.mailbox.send(Call::Stop);
                    }
                }
            };
            mailbox = returned_mailbox;
            // The instance and everything it held (memory, BPF objects) is gone.
            self.stats.memory_bytes.store(0, Ordering::Relaxed);
            self.stats.bpf_objects.store(0, Ordering::Relaxed);
            self.stats.bpf.subscriptions.store(0, Ordering::Relaxed);

            match after_stop {
                Some(Control::Shutdown) => {
                    self.set_status(PluginState::Stopped, None);
                    return;
                }
                Some(_) => {
                    self.set_status(PluginState::Stopped, None);
                    want_running = false;
                    continue;
                }
                None => {}
            }

            match exit {
                Exit::Abandoned => return,
                Exit::Stopped => {
                    self.set_status(PluginState::Stopped, None);
                    want_running = false;
                }
                Exit::Inactive(reason) => {
                    tracing::info!(plugin = %name, %reason, "plugin is inactive on this host");
                    self.set_status(PluginState::Inactive, Some(reason));
                    want_running = false;
                }
                Exit::Failed { error, retry } => {
                    let failures = match self.status.lock() {
                        Ok(mut status) => {
                            status.consecutive_failures += 1;
                            status.consecutive_failures
                        }
                        Err(_) => u32::MAX,
                    };
                    if !retry || failures >= self.quarantine_after {
                        tracing::error!(plugin = %name, %error, failures, "plugin quarantined");
                        self.set_status(PluginState::Quarantined, Some(error));
                        want_running = false;
                        continue;
                    }
                    let backoff = backoff(
                        self.spec.info.restart_interval_secs,
                        failures,
                        self.max_backoff,
                    );
                    tracing::warn!(plugin = %name, %error, failures, ?backoff, "plugin failed; restarting after back-off");
                    self.set_status(PluginState::Failed, Some(error));
                    match idle(&mut mailbox, &mut control, Some(backoff)).await {
                        None => {}
                        Some(Control::Start) => {}
                        Some(Control::Stop) => {
                            self.set_status(PluginState::Stopped, None);
                            want_running = false;
                            continue;
                        }
                        Some(Control::Shutdown) => {
                            self.set_status(PluginState::Stopped, None);
                            return;
                        }
                    }
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Exponential back-off from the plugin's restart interval (at least a second):
/// interval × 2^(failures−1), at most `max`.
pub fn backoff(interval_secs: u32, failures: u32, max: Duration) -> Duration {
    let base = Duration::from_secs(u64::from(interval_secs.max(1)));
    Backoff::new(base, max).delay(failures.saturating_sub(1))
}

/// Waits for a command (or for `timeout`), answering calls that arrive meanwhile: updates
/// get an error, stale timer firings are dropped. Returns `None` on timeout.
async fn idle(
    mailbox: &mut UnboundedReceiver<Call>,
    control: &mut UnboundedReceiver<Control>,
    timeout: Option<Duration>,
) -> Option<Control> {
    let sleep = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return None,
            command = control.recv() => return Some(command.unwrap_or(Control::Shutdown)),
            call = mailbox.recv() => {
                if let Some(Call::Update { reply }) = call {
                    let _ = reply.send(Err("plugin is not running".to_owned()));
                }
            }
        }
    }
}

struct IncarnationContext {
    runtime: Runtime,
    services: Arc<Services>,
    spec: Arc<PluginSpec>,
    stats: Arc<PluginStats>,
    status: Arc<Mutex<PluginStatus>>,
    mailbox: UnboundedSender<Call>,
    incarnation: u64,
}

impl IncarnationContext {
    fn run(&self, mailbox: &mut UnboundedReceiver<Call>, gate: Option<Gate>) -> Exit {
        let spec = &*self.spec;
        let ticks = deadline_ticks(spec.deadline);
        let identity = Identity {
            name: spec.info.name.clone(),
            stats: self.stats.clone(),
            grant: spec.grant.clone(),
            bpf: spec.bpf.clone(),
            kallsyms: spec.kallsyms,
            containers: spec.containers,
            profile: spec.profile,
            net: spec.net,
            statfs: spec.statfs,
            rx_timestamps: spec.info.capabilities.iter().any(|c| c == "rx-timestamps"),
        };
        let state = HostState::new(
            identity,
            self.services.clone(),
            spec.memory_bytes,
            Some((self.mailbox.clone(), self.incarnation)),
        );
        let mut store = self.runtime.store(state);

        // Until the gate opens, a failure abandons the replacement instead of retrying.
        let fail_early = |gate: Option<Gate>, error: String, retry: bool| match gate {
            Some(gate) => {
                let _ = gate.ready.send(Err(error));
                Exit::Abandoned
            }
            None => Exit::Failed { error, retry },
        };

        let call = self.runtime.deadline(&mut store, ticks);
        let instantiated = spec.prepared.pre.instantiate(&mut store);
        drop(call);
        let plugin = match instantiated {
            Ok(plugin) => plugin,
            Err(err) => {
                let error = self.trap_message(&store, "instantiate", &err);
                return fail_early(gate, error, true);
            }
        };

        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let call = self.runtime.deadline(&mut store, ticks);
        let initialised = plugin.call_init(&mut store, &spec.config_json);
        drop(call);
        match initialised {
            Ok(Ok(())) => {}
            Ok(Err(InitError::NotSupported(reason))) => {
                return match gate {
                    Some(gate) => {
                        let _ = gate.ready.send(Err(format!("not supported: {reason}")));
                        Exit::Abandoned
                    }
                    None => Exit::Inactive(reason),
                };
            }
            Ok(Err(InitError::InvalidConfig(reason))) => {
                return fail_early(gate, format!("invalid config: {reason}"), false);
            }
            Ok(Err(InitError::Failed(reason))) => {
                return fail_early(gate, format!("init failed: {reason}"), true);
            }
            Err(err) => {
                let error = self.trap_message(&store, "init", &err);
                return fail_early(gate, error, true);
            }
        }

        if let Some(gate) = gate {
            let _ = gate.ready.send(Ok(()));
            if gate.go.blocking_recv().is_err() {
                return Exit::Abandoned;
            }
        }

        if spec.info.kinds.tracing {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            self.stats.calls.fetch_add(1, Ordering::Relaxed);
            let call = self.runtime.deadline(&mut store, ticks);
            let started = plugin.call_start(&mut store);
            drop(call);
            match started {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    self.stats.call_errors.fetch_add(1, Ordering::Relaxed);
                    return Exit::Failed {
                        error: format!("start failed: {reason}"),
                        retry: true,
                    };
                }
                Err(err) => {
                    return Exit::Failed {
                        error: self.trap_message(&store, "start", &err),
                        retry: true,
                    };
                }
            }
        }
        if let Ok(mut status) = self.status.lock() {
            status.state = PluginState::Running;
        }

        let mut healthy = false;
        while let Some(call) = mailbox.blocking_recv() {
            let (what, result) = match call {
                Call::Stop => return Exit::Stopped,
                Call::Update { reply } => {
                    if !spec.info.kinds.metric {
                        let _ = reply.send(Err("not a metric plugin".to_owned()));
                        continue;
                    }
                    let call = self.runtime.deadline(&mut store, ticks);
                    let started = std::time::Instant::now();
                    let result = plugin.call_update(&mut store);
                    drop(call);
                    self.stats.last_update_ns.store(
                        u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                    let answer = match &result {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(reason)) => Err(reason.clone()),
                        Err(_) => Err("plugin trapped during update".to_owned()),
                    };
                    self.stats
                        .last_update_ok
                        .store(answer.is_ok(), Ordering::Relaxed);
                    match result {
                        Ok(Ok(metrics)) => {
                            let _ = reply.send(Ok(metrics));
                            ("update", Ok(Ok(())))
                        }
                        Ok(Err(reason)) => {
                            let _ = reply.send(Err(reason.clone()));
                            ("update", Ok(Err(reason)))
                        }
                        Err(err) => {
                            let _ = reply.send(answer.map(|()| Vec::new()));
                            ("update", Err(err))
                        }
                    }
                }
                Call::Timer {
                    incarnation,
                    id,
                    pending,
                } => {
                    if incarnation != self.incarnation {
                        continue;
                    }
                    pending.store(false, Ordering::Release);
                    let _call = self.runtime.deadline(&mut store, ticks);
                    ("on-timer", plugin.call_on_timer(&mut store, id))
                }
                Call::Events {
                    incarnation,
                    subscription,
                    records,
                    done,
                } => {
                    // Incarnation 0 is "whoever runs now" (replayed batches).
                    if incarnation != self.incarnation && incarnation != 0 {
                        continue;
                    }
                    let recorder = self.services.recorder.as_ref();
                    let outcome = records.with_bytes(|bytes| {
                        if let Some(recorder) = recorder {
                            recorder.write(subscription, bytes);
                        }
                        let _call = self.runtime.deadline(&mut store, ticks);
                        plugin.call_on_events(&mut store, subscription, bytes)
                    });
                    let mut records = records;
                    if let Batch::Owned(buffer) = &mut records {
                        buffer.clear();
                    }
                    let _ = done.send(records);
                    let Some(result) = outcome else {
                        continue; // nothing committed in the ring yet
                    };
                    ("on-events", result)
                }
            };
            self.stats.calls.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(Ok(())) => {
                    if !healthy {
                        healthy = true;
                        if let Ok(mut status) = self.status.lock() {
                            status.consecutive_failures = 0;
                        }
                    }
                }
                Ok(Err(reason)) => {
                    self.stats.call_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(plugin = %spec.info.name, call = what, %reason, "plugin call returned an error");
                }
                Err(err) => {
                    return Exit::Failed {
                        error: self.trap_message(&store, what, &err),
                        retry: true,
                    };
                }
            }
        }
        Exit::Stopped
    }

    /// Classifies a trap and counts it: deadline, memory cap, or a guest fault (with the
    /// guest's last stderr lines, where a Rust panic message lands).
    fn trap_message(&self, store: &Store<HostState>, call: &str, err: &wasmtime::Error) -> String {
        self.stats.traps.fetch_add(1, Ordering::Relaxed);
        let state = store.data();
        let reason = if matches!(
            err.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            format!("deadline of {} ms exceeded", self.spec.deadline.as_millis())
        } else if state.limiter.exceeded {
            format!("memory limit of {} bytes exceeded", self.spec.memory_bytes)
        } else {
            let root = err.root_cause().to_string();
            let stderr = state.stderr_tail();
            if stderr.is_empty() {
                format!("trap: {root}")
            } else {
                format!("trap: {root}; guest stderr: {stderr}")
            }
        };
        format!("{call}: {reason}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let max = Duration::from_secs(60);
        assert_eq!(backoff(10, 1, max), Duration::from_secs(10));
        assert_eq!(backoff(10, 2, max), Duration::from_secs(20));
        assert_eq!(backoff(10, 3, max), Duration::from_secs(40));
        assert_eq!(backoff(10, 9, max), max);
        assert_eq!(backoff(0, 1, max), Duration::from_secs(1));
    }
}
