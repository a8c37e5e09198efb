//! The profiling half of `cpusys` and `cpuidle` (`#[path]`-included by `cpuidle`): start a
//! host profile when a trigger fires, poll it from a timer, save the autotracing document.
//!
//! A trigger that cannot start at once (the host runs its limit of sessions, another error,
//! or this plugin's own session still running) stays pending and is retried at the next
//! ticks for [`PENDING_MAX_AGE`]; a newer trigger replaces it. Errors are
//! counted by reason and logged at most once a minute; none of them stops the plugin.
//!
//! The document is the trigger's fields plus `flamedata` (HUATUO's Grafana nested set),
//! `folded` and `profile {samples, lost, frequency_hz, duration_ms, mode, target}`, within
//! `max_flame_kib` for the two flame formats (the host refuses documents over
//! `storage.max_document_kib`, 1024 KiB by default), and `capped: true` when the lightest
//! nodes had to be merged into `[other]` to fit (the host's task documents do the same).

use std::time::{Duration, Instant};

use kpulse_sdk::prelude::*;
use kpulse_sdk::profiler::{Request, Session};
use serde_json::{Map, Value};

/// How long a trigger that could not start yet is retried.
pub const PENDING_MAX_AGE: Duration = Duration::from_secs(60);
/// Poll period once the sampling time is over (symbolizing takes the host a moment).
const POLL_EVERY: Duration = Duration::from_millis(200);
/// A session without a result this long after its sampling time is given up.
const RESULT_TIMEOUT: Duration = Duration::from_secs(60);
/// At most one log line per reason in this time.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Why a profile was not saved (the `reason` label of `profile_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The host runs its limit of sessions.
    Busy,
    /// Any other refusal to start (capability, policy, unknown container, kernel).
    Start,
    /// The session failed.
    Poll,
    /// No result in time.
    Timeout,
    /// The document could not be saved.
    Save,
}

const REASONS: [(Reason, &str); 5] = [
    (Reason::Busy, "busy"),
    (Reason::Start, "start"),
    (Reason::Poll, "poll"),
    (Reason::Timeout, "timeout"),
    (Reason::Save, "save"),
];

/// What fired: the profile to take and the document fields it explains.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// Which cooldown it belongs to (`""` for the host, else the container id).
    pub key: String,
    /// The document's `container_id` (`""`: host-level).
    pub container_id: String,
    pub request: Request,
    pub fields: Map<String, Value>,
}

struct Running {
    trigger: Trigger,
    session: Session,
    /// When sampling should be over.
    sampled_at: Instant,
    timer: TimerId,
    polling: bool,
}

/// One error reason's counter and log limiter.
#[derive(Debug, Default, Clone, Copy)]
struct Errors {
    count: u64,
    logged: Option<Instant>,
    suppressed: u64,
}

/// The profiling state machine of one plugin.
pub struct Tracer {
    name: &'static str,
    max_flame_bytes: usize,
    running: Option<Running>,
    pending: Option<(Trigger, Instant)>,
    errors: [Errors; REASONS.len()],
    /// Documents saved, samples they had and lost.
    saved: u64,
    samples: u64,
    lost: u64,
}

impl Tracer {
    pub fn new(name: &'static str, max_flame_kib: usize) -> Self {
        Tracer {
            name,
            max_flame_bytes: max_flame_kib.saturating_mul(1024),
            running: None,
            pending: None,
            errors: [Errors::default(); REASONS.len()],
            saved: 0,
            samples: 0,
            lost: 0,
        }
    }

    /// The key of the trigger waiting to start, if any.
    pub fn pending_key(&self) -> Option<&str> {
        self.pending.as_ref().map(|(t, _)| t.key.as_str())
    }

    /// Starts `trigger`'s profile, or keeps it pending when that is not possible now.
    /// Returns whether the profile started (the caller's cooldown begins then).
    pub fn fire(&mut self, ctx: &mut Context, trigger: Trigger) -> bool {
        self.pending = Some((trigger, Instant::now()));
        self.retry(ctx).is_some()
    }

    /// Tries the pending trigger again (call on every tick); returns its key once it
    /// started. Drops it after [`PENDING_MAX_AGE`].
    pub fn retry(&mut self, ctx: &mut Context) -> Option<String> {
        let (trigger, since) = self.pending.take()?;
        if since.elapsed() > PENDING_MAX_AGE {
            self.error(
                Reason::Start,
                &format!("a profile of {:?} never started: dropped", trigger.key),
            );
            return None;
        }
        if self.running.is_some() {
            self.pending = Some((trigger, since));
            return None;
        }
        let session = match Session::start(&trigger.request) {
            Ok(session) => session,
            Err(err) => {
                let reason = if profiler::is_busy(&err) {
                    Reason::Busy
                } else {
                    Reason::Start
                };
                self.error(reason, &format!("cannot start a profile (retried): {err}"));
                self.pending = Some((trigger, since));
                return None;
            }
        };
        let sampling = trigger.request.duration_asked();
        let timer = match ctx.after(sampling) {
            Ok(timer) => timer,
            Err(err) => {
                self.error(Reason::Start, &format!("cannot arm the poll timer: {err}"));
                return None;
            }
        };
        let key = trigger.key.clone();
        self.running = Some(Running {
            trigger,
            session,
            sampled_at: Instant::now() + sampling,
            timer,
            polling: false,
        });
        Some(key)
    }

    /// Handles the poll timer; returns `false` for a timer that is not this tracer's.
    pub fn on_timer(&mut self, ctx: &mut Context, timer: TimerId) -> bool {
        let Some(running) = self.running.as_mut() else {
            return false;
        };
        if running.timer != timer {
            return false;
        }
        if !running.polling {
            // The one-shot wait for the sampling time is over: poll from now on.
            running.polling = true;
            match ctx.every(POLL_EVERY) {
                Ok(every) => running.timer = every,
                Err(err) => {
                    self.running = None;
                    self.error(Reason::Poll, &format!("cannot arm the poll timer: {err}"));
                    return true;
                }
            }
        }
        let polled = running.session.poll();
        let timed_out = running.sampled_at.elapsed() > RESULT_TIMEOUT;
        match polled {
            Ok(None) if !timed_out => {}
            Ok(None) => {
                self.finish(ctx);
                self.error(Reason::Timeout, "no profile in time: given up");
            }
            Err(err) => {
                self.finish(ctx);
                self.error(Reason::Poll, &format!("profile failed: {err}"));
            }
            Ok(Some(profile)) => {
                if let Some(running) = self.finish(ctx) {
                    self.save(running.trigger, &profile);
                }
            }
        }
        true
    }

    fn finish(&mut self, ctx: &mut Context) -> Option<Running> {
        let running = self.running.take()?;
        ctx.cancel(running.timer);
        Some(running)
    }

    fn save(&mut self, trigger: Trigger, profile: &profiler::Profile) {
        self.samples += profile.samples;
        self.lost += profile.lost;
        let flame = profile.flame(self.max_flame_bytes);
        let mut doc = trigger.fields;
        doc.insert("flamedata".to_owned(), serde_json::json!(flame.flamedata));
        doc.insert("folded".to_owned(), Value::String(flame.folded));
        doc.insert(
            "profile".to_owned(),
            serde_json::json!(profile.summary(trigger.request.target())),
        );
        if flame.capped {
            // As the host's task documents mark it.
            doc.insert("capped".to_owned(), Value::Bool(true));
            log::info(&format!(
                "profile larger than max_flame_kib: the lightest nodes merged into [other] \
                 ({} stacks)",
                profile.stacks.len()
            ));
        }
        match storage::save_autotracing(self.name, &trigger.container_id, storage::now(), &doc) {
            Ok(_) => self.saved += 1,
            Err(err) => self.error(Reason::Save, &format!("cannot save the profile: {err}")),
        }
    }

    /// Counts an error and logs it, at most once per [`LOG_EVERY`] per reason.
    fn error(&mut self, reason: Reason, message: &str) {
        let Some(index) = REASONS.iter().position(|(r, _)| *r == reason) else {
            return;
        };
        let e = &mut self.errors[index];
        e.count += 1;
        if e.logged.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            e.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut e.suppressed);
        e.logged = Some(Instant::now());
        if suppressed > 0 {
            log::warn(&format!(
                "{message} ({suppressed} similar since the last line)"
            ));
        } else {
            log::warn(message);
        }
    }

    /// `profiles_total`, `profile_samples_total`, `profile_samples_lost_total`,
    /// `profile_errors_total{reason}` and `profiling`.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut out = vec![
            metric::counter("profiles", self.saved as f64, "Profile documents saved."),
            metric::counter(
                "profile_samples",
                self.samples as f64,
                "Stack samples in the profiles taken.",
            ),
            metric::counter(
                "profile_samples_lost",
                self.lost as f64,
                "Stack samples the host's sampler lost in the profiles taken (stack map full, \
                 collisions).",
            ),
            metric::gauge(
                "profiling",
                f64::from(u8::from(self.running.is_some())),
                "1 while a profile of this plugin is being taken.",
            ),
        ];
        for ((_, label), e) in REASONS.iter().zip(&self.errors) {
            out.push(
                metric::counter(
                    "profile_errors",
                    e.count as f64,
                    "Profiles not taken or not saved, by reason (busy: the host ran its limit \
                     of sessions; retried at the next ticks).",
                )
                .label("reason", *label),
            );
        }
        out
    }
}
