//! HUATUO's on-demand tasks: `POST /tasks` starts a CPU profile now, `GET /tasks` and
//! `GET /tasks/{id}` follow it, `DELETE /tasks/{id}` cancels a running one or forgets a
//! finished one. A finished profile is saved as an `autotracing` document (tracer name =
//! the task's) whose flame graph `/profiles/{tracer_id}.svg` renders.
//!
//! HUATUO runs `bin/<tracer_name> <trace_args>`; kpulse has no subprocess tools, so the
//! tracer names are the profiler's modes (`cpu_profile`, HUATUO's `perf`, `offcpu_profile`)
//! and the arguments are JSON fields. Bounds: the profiler's (sessions at once, duration,
//! frequency), at most [`MAX_TASKS`] tasks kept, finished ones for [`KEEP_FINISHED`].
//! Mutating calls answer the clients `PUT /plugins/...` answers (loopback or bearer token).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::{AppState, authorized, error_reply, json_reply};
use crate::containers::Registry;
use crate::profiler::{
    DEFAULT_DURATION_MS, DEFAULT_FREQUENCY_HZ, Mode, Profile, ProfileError, Profiler, Request,
    Session, Target,
};
use crate::storage::{RunType, SaveRequest, Store};

/// The shared flame-graph formats (one definition for plugins and host).
#[path = "../../../guest-sdk/src/flame.rs"]
#[allow(dead_code, reason = "the host uses part of the plugins' module")]
mod flame;

/// Tasks kept (running and finished); a new one evicts the oldest finished one.
const MAX_TASKS: usize = 64;
/// How long a finished task's status stays readable (HUATUO's 10 minutes).
const KEEP_FINISHED: Duration = Duration::from_secs(600);
/// Bytes of JSON the folded text and the flame rows may take in the document, under the
/// store's default 1 MiB document limit with room for the rest.
const FLAME_BUDGET_BYTES: usize = 900 * 1024;
/// Largest `POST /tasks` body.
const MAX_BODY_BYTES: u64 = 16 * 1024;

/// Tracer names and the profile each takes.
const TRACERS: [(&str, Mode); 3] = [
    ("cpu_profile", Mode::OnCpu),
    // HUATUO's on-CPU tool.
    ("perf", Mode::OnCpu),
    ("offcpu_profile", Mode::OffCpu),
];

/// `POST /tasks` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskRequest {
    tracer_name: String,
    #[serde(default)]
    container_id: Option<String>,
    #[serde(default)]
    pid: Option<u32>,
    /// Seconds (fractions allowed); HUATUO calls it `timeout`.
    #[serde(default, alias = "timeout")]
    duration: Option<f64>,
    #[serde(default)]
    frequency_hz: Option<u32>,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Running,
    Done,
    Failed,
    Cancelled,
}

#[derive(Debug)]
struct Task {
    id: String,
    tracer_name: String,
    container_id: String,
    request: Request,
    created: DateTime<Utc>,
    status: Status,
    /// When it stopped running (for [`KEEP_FINISHED`]).
    finished: Option<(Instant, DateTime<Utc>)>,
    /// On done: the saved document and its links.
    result: Option<Value>,
    error: Option<String>,
    /// Aborting drops the task's [`Session`], which stops the sampling.
    abort: Option<tokio::task::AbortHandle>,
}

impl Task {
    fn finish(&mut self, status: Status) {
        self.status = status;
        self.finished = Some((Instant::now(), Utc::now()));
        self.abort = None;
    }

    fn summary(&self) -> Value {
        json!({
            "task_id": self.id,
            "tracer_name": self.tracer_name,
            "status": self.status,
            "created": rfc3339(self.created),
        })
    }

    fn detail(&self) -> Value {
        let mut view = json!({
            "task_id": self.id,
            "tracer_name": self.tracer_name,
            "status": self.status,
            "created": rfc3339(self.created),
            "target": self.request.target,
            "mode": self.request.mode,
            "duration_ms": self.request.duration_ms,
            "frequency_hz": self.request.frequency_hz,
        });
        if let Some((_, at)) = self.finished {
            view["finished"] = json!(rfc3339(at));
        }
        if let Some(result) = &self.result {
            view["data"] = result.clone();
        }
        if let Some(error) = &self.error {
            view["error"] = json!(error);
        }
        view
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The task table; one per server.
#[derive(Debug, Default)]
struct Tasks {
    table: Mutex<HashMap<String, Task>>,
}

impl Tasks {
    /// The table with expired tasks forgotten.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Task>> {
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table.retain(|_, task| {
            task.finished
                .is_none_or(|(at, _)| at.elapsed() < KEEP_FINISHED)
        });
        table
    }
}

/// What a refused call answers.
type Refusal = (StatusCode, &'static str, String);

fn refused((status, code, message): Refusal) -> Response {
    error_reply(status, code, &message)
}

pub(super) fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let tasks = Arc::new(Tasks::default());
    let with = {
        let state = state.clone();
        let tasks = tasks.clone();
        warp::any().map(move || (state.clone(), tasks.clone()))
    };
    let authorized_client = super::server::client_addr()
        .and(warp::header::optional::<String>("authorization"))
        .and(with.clone())
        .and_then(
            |remote: Option<SocketAddr>,
             auth: Option<String>,
             (state, tasks): (Arc<AppState>, Arc<Tasks>)| async move {
                if authorized(&state, remote, auth.as_deref()) {
                    Ok((state, tasks))
                } else {
                    Err(warp::reject::custom(Forbidden))
                }
            },
        );

    let create = warp::path!("tasks")
        .and(warp::post())
        .and(authorized_client.clone())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .map(
            |(state, tasks): (Arc<AppState>, Arc<Tasks>), body: bytes::Bytes| match create(
                &state, &tasks, &body,
            ) {
                Ok(id) => json_reply(
                    StatusCode::ACCEPTED,
                    &json!({"id": id, "data": {"task_id": id}}),
                ),
                Err(refusal) => refused(refusal),
            },
        );
    let list = warp::path!("tasks").and(warp::get()).and(with.clone()).map(
        |(_, tasks): (Arc<AppState>, Arc<Tasks>)| {
            let table = tasks.lock();
            let mut listed: Vec<&Task> = table.values().collect();
            listed.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
            let listed: Vec<Value> = listed.iter().map(|t| t.summary()).collect();
            json_reply(StatusCode::OK, &json!({"data": {"tasks": listed}}))
        },
    );
    let one = warp::path!("tasks" / String)
        .and(warp::get())
        .and(with)
        .map(
            |id: String, (_, tasks): (Arc<AppState>, Arc<Tasks>)| match tasks.lock().get(&id) {
                Some(task) => json_reply(StatusCode::OK, &json!({"data": task.detail()})),
                None => unknown_task(&id),
            },
        );
    let delete = warp::path!("tasks" / String)
        .and(warp::delete())
        .and(authorized_client)
        .map(|id: String, (_, tasks): (Arc<AppState>, Arc<Tasks>)| {
            let mut table = tasks.lock();
            let Some(task) = table.get_mut(&id) else {
                return unknown_task(&id);
            };
            if task.status == Status::Running {
                // Kept, so that its status says cancelled until it expires.
                if let Some(abort) = task.abort.take() {
                    abort.abort();
                }
                task.finish(Status::Cancelled);
            } else {
                table.remove(&id);
            }
            StatusCode::NO_CONTENT.into_response()
        });
    create
        .or(list)
        .unify()
        .or(one)
        .unify()
        .or(delete)
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            if rejection.find::<Forbidden>().is_some() {
                return Ok(error_reply(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "mutating endpoints answer loopback clients, or clients with the configured bearer token",
                ));
            }
            if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
                return Ok(error_reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "bad_request",
                    &format!("the body is over {MAX_BODY_BYTES} bytes"),
                ));
            }
            Err(rejection)
        })
        .unify()
}

#[derive(Debug)]
struct Forbidden;

impl warp::reject::Reject for Forbidden {}

fn unknown_task(id: &str) -> Response {
    error_reply(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no task {id:?} (finished tasks are kept for 10 minutes)"),
    )
}

/// Validates the body, starts the session and registers the task; its id.
fn create(state: &AppState, tasks: &Arc<Tasks>, body: &[u8]) -> Result<String, Refusal> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, "bad_request", message);
    let asked: TaskRequest = serde_json::from_slice(body).map_err(|err| {
        bad(format!(
            "body must be JSON {{tracer_name, container_id | pid, duration, frequency_hz, mode}}: {err}"
        ))
    })?;
    let profiler = &state.profiler;
    let request = request_of(&asked, profiler).map_err(bad)?;
    let container_id = asked.container_id.clone().unwrap_or_default();

    // Room first, so a full table does not start (and then throw away) a session.
    let mut table = tasks.lock();
    if table.len() >= MAX_TASKS {
        let oldest = table
            .values()
            .filter(|t| t.status != Status::Running)
            .min_by_key(|t| t.created)
            .map(|t| t.id.clone());
        match oldest {
            Some(id) => {
                table.remove(&id);
            }
            None => {
                return Err((
                    StatusCode::TOO_MANY_REQUESTS,
                    "busy",
                    format!("{MAX_TASKS} tasks are running"),
                ));
            }
        }
    }
    let session = profiler
        .start(request.clone())
        .map_err(|err| refusal_of(&err))?;
    let id = loop {
        let id = format!("{:016x}", fastrand::u64(..));
        if !table.contains_key(&id) {
            break id;
        }
    };
    let created = Utc::now();
    let run = tokio::spawn(run(
        tasks.clone(),
        state.store.clone(),
        state.containers.clone(),
        id.clone(),
        session,
    ));
    // The run cannot finish before this: it needs the lock held here.
    table.insert(
        id.clone(),
        Task {
            id: id.clone(),
            tracer_name: asked.tracer_name,
            container_id,
            request,
            created,
            status: Status::Running,
            finished: None,
            result: None,
            error: None,
            abort: Some(run.abort_handle()),
        },
    );
    Ok(id)
}

/// The profiler request a body asks for, or why it is refused.
fn request_of(asked: &TaskRequest, profiler: &Profiler) -> Result<Request, String> {
    let Some((_, tracer_mode)) = TRACERS.iter().find(|(name, _)| *name == asked.tracer_name) else {
        let known: Vec<&str> = TRACERS.iter().map(|(name, _)| *name).collect();
        return Err(format!(
            "unknown tracer {:?}: known: {}",
            asked.tracer_name,
            known.join(", ")
        ));
    };
    let mode = match asked.mode.as_deref() {
        None => *tracer_mode,
        Some("on_cpu") => Mode::OnCpu,
        Some("off_cpu") => Mode::OffCpu,
        Some(other) => return Err(format!("mode must be on_cpu or off_cpu, got {other:?}")),
    };
    if mode != *tracer_mode {
        return Err(format!(
            "tracer {} profiles {}; use {} for the other",
            asked.tracer_name,
            mode_name(*tracer_mode),
            if mode == Mode::OnCpu {
                "cpu_profile"
            } else {
                "offcpu_profile"
            }
        ));
    }
    let container = asked.container_id.as_deref().filter(|c| !c.is_empty());
    let target = match (container, asked.pid) {
        (Some(_), Some(_)) => return Err("give container_id or pid, not both".to_owned()),
        (Some(id), None) => Target::Container(id.to_owned()),
        (None, Some(0)) => return Err("pid must be positive".to_owned()),
        (None, Some(pid)) => Target::Pid(pid),
        (None, None) => Target::Host,
    };
    let max_ms = profiler.limits().max_duration_ms;
    let duration_ms = match asked.duration {
        None => DEFAULT_DURATION_MS,
        Some(secs) if secs.is_finite() && secs > 0.0 => {
            let ms = (secs * 1000.0).round();
            if ms > f64::from(max_ms) {
                return Err(format!(
                    "duration {secs} s is over the limit of {} s ([profiler] max_duration_ms)",
                    f64::from(max_ms) / 1000.0
                ));
            }
            (ms as u32).max(1)
        }
        Some(secs) => return Err(format!("duration must be positive seconds, got {secs}")),
    };
    Ok(Request {
        target,
        mode,
        frequency_hz: asked.frequency_hz.unwrap_or(DEFAULT_FREQUENCY_HZ),
        duration_ms,
        kernel_stacks: true,
        user_stacks: true,
    })
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::OnCpu => "on_cpu",
        Mode::OffCpu => "off_cpu",
    }
}

fn refusal_of(err: &ProfileError) -> Refusal {
    let (status, code) = match err {
        ProfileError::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "busy"),
        ProfileError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        ProfileError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        ProfileError::NotSupported(_) => (StatusCode::NOT_IMPLEMENTED, "not_supported"),
        ProfileError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "io"),
    };
    (status, code, err.to_string())
}

/// Waits for the session, saves its document and records the outcome. Aborted (by
/// `DELETE`) at any await, which drops the session.
async fn run(tasks: Arc<Tasks>, store: Store, containers: Registry, id: String, session: Session) {
    let outcome = session.finish().await;
    let (tracer_name, container_id, target, created) = {
        let table = tasks.lock();
        match table.get(&id) {
            Some(task) if task.status == Status::Running => (
                task.tracer_name.clone(),
                task.container_id.clone(),
                task.request.target.clone(),
                task.created,
            ),
            _ => return,
        }
    };
    let built = match outcome {
        Ok(profile) => {
            let task_id = id.clone();
            // Merging and encoding a large profile is CPU work: off the async threads.
            tokio::task::spawn_blocking(move || {
                let data = tracer_data(&task_id, &profile, &target);
                (data, profile.samples, profile.lost)
            })
            .await
            .map_err(|err| format!("building the document failed: {err}"))
        }
        Err(err) => Err(err.to_string()),
    };
    let mut table = tasks.lock();
    let Some(task) = table.get_mut(&id) else {
        return;
    };
    if task.status != Status::Running {
        return;
    }
    let saved = built.and_then(|(data, samples, lost)| {
        let attribution = containers.attribute(&container_id);
        let time_ns = created
            .timestamp_nanos_opt()
            .and_then(|ns| u64::try_from(ns).ok())
            .unwrap_or(0);
        let request = SaveRequest {
            tracer_name: &tracer_name,
            container: attribution.fields(&container_id),
            time_ns,
            data_json: &data,
            run_type: RunType::Autotracing,
        };
        let tracer_id = store
            .save(&request)
            .map_err(|err| format!("the profile was taken but not saved: {err}"))?;
        Ok(json!({
            "tracer_id": tracer_id,
            "samples": samples,
            "lost": lost,
            "svg": format!("/profiles/{tracer_id}.svg"),
            "pprof": format!("/profiles/{tracer_id}.pb.gz"),
            "folded": format!("/profiles/{tracer_id}.folded"),
        }))
    });
    match saved {
        Ok(result) => {
            task.result = Some(result);
            task.finish(Status::Done);
        }
        Err(error) => {
            task.error = Some(error);
            task.finish(Status::Failed);
        }
    }
}

/// The document's `tracer_data`: `task_id`, `folded`, `flamedata` and `profile`, the
/// shape the profile plugins (cpusys, cpuidle) save.
fn tracer_data(task_id: &str, profile: &Profile, target: &Target) -> String {
    let labels: Vec<String> = profile
        .frames
        .iter()
        .map(|f| flame::frame_label(&f.name, f.kind == crate::profiler::FrameKind::Kernel))
        .collect();
    let stacks: Vec<flame::FoldedStack<'_>> = profile
        .stacks
        .iter()
        .map(|s| flame::FoldedStack {
            frames: flame::stack_path(&s.comm, &labels, &s.frames, s.user_truncated),
            value: s.value,
        })
        .collect();
    let flame = flame::within(&stacks, FLAME_BUDGET_BYTES);
    let mut data = json!({
        "task_id": task_id,
        "folded": flame.folded,
        "flamedata": flame.flamedata,
        "profile": {
            "samples": profile.samples,
            "lost": profile.lost,
            "frequency_hz": profile.frequency_hz,
            "duration_ms": profile.duration_ns / 1_000_000,
            "mode": profile.mode,
            "target": target,
        },
    });
    if flame.capped {
        data["capped"] = json!(true);
    }
    data.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiler::{Frame, FrameKind, ProfilerConfig, Stack};

    fn asked(json: &str) -> Result<TaskRequest, serde_json::Error> {
        serde_json::from_str(json)
    }

    fn profiler() -> Profiler {
        Profiler::new(
            ProfilerConfig {
                max_duration_ms: 5_000,
                ..ProfilerConfig::default()
            },
            Registry::empty(Default::default()),
            Default::default(),
        )
    }

    #[test]
    fn requests_are_validated_with_reasons() {
        let p = profiler();
        let ok = request_of(
            &asked(r#"{"tracer_name": "perf", "pid": 42, "duration": 2}"#).expect("JSON"),
            &p,
        )
        .expect("valid");
        assert_eq!(ok.target, Target::Pid(42));
        assert_eq!(ok.mode, Mode::OnCpu);
        assert_eq!(ok.duration_ms, 2_000);
        let off = request_of(
            &asked(r#"{"tracer_name": "offcpu_profile", "container_id": "abc", "timeout": 0.5}"#)
                .expect("JSON"),
            &p,
        )
        .expect("valid");
        assert_eq!(off.target, Target::Container("abc".to_owned()));
        assert_eq!((off.mode, off.duration_ms), (Mode::OffCpu, 500));
        let err = |body: &str| request_of(&asked(body).expect("JSON"), &p).expect_err(body);
        assert_eq!(
            err(r#"{"tracer_name": "x"}"#),
            "unknown tracer \"x\": known: cpu_profile, perf, offcpu_profile"
        );
        assert!(err(r#"{"tracer_name": "perf", "duration": 6}"#).contains("over the limit of 5 s"));
        assert!(err(r#"{"tracer_name": "perf", "duration": -1}"#).contains("positive"));
        assert!(
            err(r#"{"tracer_name": "perf", "pid": 1, "container_id": "a"}"#).contains("not both")
        );
        assert!(
            err(r#"{"tracer_name": "cpu_profile", "mode": "off_cpu"}"#).contains("offcpu_profile")
        );
        assert!(asked(r#"{"tracer_name": "perf", "trace_args": []}"#).is_err());
    }

    #[test]
    fn documents_carry_folded_flamedata_and_profile() {
        let frame = |name: &str, kind| Frame {
            name: name.to_owned(),
            module: String::new(),
            kind,
            address: 0,
        };
        let profile = Profile {
            frames: vec![
                frame("main", FrameKind::User),
                frame("burn", FrameKind::User),
                frame("do_syscall_64", FrameKind::Kernel),
            ],
            stacks: vec![
                Stack {
                    frames: vec![0, 1],
                    value: 30,
                    pid: 7,
                    comm: "perl".to_owned(),
                    cgroup_id: 1,
                    user_truncated: false,
                },
                Stack {
                    frames: vec![0, 2],
                    value: 5,
                    pid: 7,
                    comm: "perl".to_owned(),
                    cgroup_id: 1,
                    user_truncated: false,
                },
            ],
            samples: 36,
            lost: 1,
            mode: Mode::OnCpu,
            frequency_hz: 99,
            duration_ns: 2_000_000_000,
        };
        let data: Value =
            serde_json::from_str(&tracer_data("t1", &profile, &Target::Pid(7))).expect("JSON");
        assert_eq!(data["task_id"], "t1");
        assert_eq!(
            data["folded"],
            "perl;main;burn 30\nperl;main;do_syscall_64_[k] 5\n"
        );
        assert_eq!(data["flamedata"][0]["label"], "total");
        assert_eq!(data["flamedata"][0]["value"], 35);
        assert_eq!(data["profile"]["samples"], 36);
        assert_eq!(data["profile"]["lost"], 1);
        assert_eq!(data["profile"]["mode"], "on_cpu");
        assert_eq!(data["profile"]["duration_ms"], 2000);
        let folded = data["folded"].as_str().unwrap_or_default();
        let parsed = crate::profiler::render::parse_folded(folded);
        assert_eq!((parsed.total(), parsed.skipped), (35, 0));
    }
}
