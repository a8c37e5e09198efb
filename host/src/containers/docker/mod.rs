//! Docker Engine: its HTTP API over `/var/run/docker.sock` (containers, inspect, events).
//!
//! HTTP/1.1 with hyper's low-level client connection on a tokio `UnixStream`: one
//! connection per call (`containers` sends its list and inspects over one keep-alive
//! connection). Paths are unversioned, so the daemon answers in its own API version: the
//! few fields read here are the same in every version since 1.24, and Docker 29 refuses
//! versions below 1.44, so pinning one would break on some daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

pub use super::containerd::ApiError;

/// The largest response body read whole (a list or an inspect).
const MAX_BODY: usize = 32 << 20;
/// The longest event line accepted.
const MAX_EVENT_LINE: usize = 1 << 20;
/// The event actions [`Client::events`] reports.
const EVENT_ACTIONS: [&str; 3] = ["start", "die", "destroy"];

/// A Docker Engine API client for one socket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// A container, from `GET /containers/{id}/json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerContainer {
    /// The full id (64 hex digits).
    pub id: String,
    /// The name without its leading `/`.
    pub name: String,
    /// `Config.Image`: the image as the user named it.
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// The init process's pid in the host's pid namespace; 0 when not running.
    pub pid: u32,
    pub hostname: String,
    /// `HostConfig.NetworkMode == "host"`.
    pub host_network: bool,
    /// RFC 3339 (`0001-01-01T00:00:00Z` when never started).
    pub started_at: String,
    pub running: bool,
}

/// A container event: `action` is `start`, `die` or `destroy`; `id` the full container id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerEvent {
    pub action: String,
    pub id: String,
}

/// Aborts the task driving the HTTP connection when the call is dropped.
struct ConnTask(tokio::task::JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One open HTTP/1.1 connection.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    _task: ConnTask,
}

impl Client {
    /// A client for the Docker socket at `socket` (usually `/var/run/docker.sock`);
    /// `timeout` bounds every call.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn context(&self, what: &str) -> String {
        format!("{} {what}", self.socket.display())
    }

    async fn bounded<T>(
        &self,
        context: &str,
        f: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .unwrap_or_else(|_| Err(ApiError::timeout(context, self.timeout)))
    }

    async fn connect(&self, context: &str) -> Result<Conn, ApiError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| ApiError::unavailable(context, e))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| hyper_error(context, &e))?;
        let task = ConnTask(tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%err, "docker connection ended");
            }
        }));
        Ok(Conn {
            sender,
            _task: task,
        })
    }

    /// All running containers, each inspected. Containers that vanish between the list
    /// and their inspect are left out.
    pub async fn containers(&self) -> Result<Vec<DockerContainer>, ApiError> {
        let ctx = self.context("GET /containers/json");
        let work = async {
            let mut conn = self.connect(&ctx).await?;
            let resp = get(&mut conn, &ctx, "/containers/json").await?;
            let (status, body) = read_body(&ctx, resp).await?;
            if status != StatusCode::OK {
                return Err(status_error(&ctx, status, &body));
            }
            let list: Vec<ListEntry> = parse_json(&ctx, &body)?;
            let mut out = Vec::with_capacity(list.len());
            for entry in list {
                if let Some(c) = inspect_on(&mut conn, &self.socket, &entry.id).await? {
                    out.push(c);
                }
            }
            Ok(out)
        };
        self.bounded(&ctx, work).await
    }

    /// One container by id (or name); `None` if Docker does not know it.
    pub async fn inspect(&self, id: &str) -> Result<Option<DockerContainer>, ApiError> {
        let ctx = self.context(&format!("GET /containers/{id}/json"));
        let work = async {
            let mut conn = self.connect(&ctx).await?;
            inspect_on(&mut conn, &self.socket, id).await
        };
        self.bounded(&ctx, work).await
    }

    /// Streams container `start`, `die` and `destroy` events to `tx` until the stream ends
    /// (`Ok`), fails (`Err`), or `tx`'s receiver is dropped (`Ok`). The timeout bounds
    /// connecting and the response headers, not the wait for events.
    pub async fn events(&self, tx: mpsc::Sender<DockerEvent>) -> Result<(), ApiError> {
        let ctx = self.context("GET /events");
        let filters = serde_json::json!({ "type": ["container"], "event": EVENT_ACTIONS });
        let path = format!("/events?filters={}", percent_encode(&filters.to_string()));
        let work = async {
            let mut conn = self.connect(&ctx).await?;
            let resp = get(&mut conn, &ctx, &path).await?;
            Ok((conn, resp))
        };
        let (_conn, resp) = self.bounded(&ctx, work).await?;
        if resp.status() != StatusCode::OK {
            let (status, body) = read_body(&ctx, resp).await?;
            return Err(status_error(&ctx, status, &body));
        }
        let mut body = resp.into_body();
        let mut lines = LineSplitter::default();
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                () = tx.closed() => return Ok(()),
            };
            let Some(frame) = frame else {
                return lines.finish().map_err(|e| ApiError::protocol(&ctx, e));
            };
            let frame = frame.map_err(|e| hyper_error(&ctx, &e))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            lines.push(&data);
            while let Some(line) = lines.next_line().map_err(|e| ApiError::protocol(&ctx, e))? {
                let event = parse_event(&line).map_err(|e| ApiError::protocol(&ctx, e))?;
                if let Some(event) = event
                    && tx.send(event).await.is_err()
                {
                    return Ok(());
                }
            }
        }
    }
}

async fn get(conn: &mut Conn, ctx: &str, path: &str) -> Result<http::Response<Incoming>, ApiError> {
    let req = Request::get(path)
        .header(http::header::HOST, "docker")
        .header(http::header::USER_AGENT, "kpulse")
        .body(Empty::new())
        .map_err(|e| ApiError::protocol(ctx, format!("request: {e}")))?;
    conn.sender
        .ready()
        .await
        .map_err(|e| hyper_error(ctx, &e))?;
    conn.sender
        .send_request(req)
        .await
        .map_err(|e| hyper_error(ctx, &e))
}

async fn read_body(
    ctx: &str,
    resp: http::Response<Incoming>,
) -> Result<(StatusCode, Bytes), ApiError> {
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(e) => hyper_error(ctx, &e),
            Err(e) => ApiError::protocol(ctx, e.to_string()),
        })?;
    Ok((status, body.to_bytes()))
}

async fn inspect_on(
    conn: &mut Conn,
    socket: &Path,
    id: &str,
) -> Result<Option<DockerContainer>, ApiError> {
    let ctx = format!("{} GET /containers/{id}/json", socket.display());
    let path = format!("/containers/{}/json", percent_encode(id));
    let resp = get(conn, &ctx, &path).await?;
    let (status, body) = read_body(&ctx, resp).await?;
    match status {
        StatusCode::OK => parse_inspect(&ctx, &body).map(Some),
        StatusCode::NOT_FOUND => Ok(None),
        other => Err(status_error(&ctx, other, &body)),
    }
}

/// A hyper error: a failed or cut connection means the daemon went away.
fn hyper_error(ctx: &str, err: &hyper::Error) -> ApiError {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return ApiError::unavailable(ctx, std::io::Error::new(io.kind(), err.to_string()));
        }
        source = s.source();
    }
    if err.is_closed() || err.is_incomplete_message() || err.is_canceled() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, err.to_string());
        return ApiError::unavailable(ctx, io);
    }
    ApiError::protocol(ctx, format!("http: {err}"))
}

/// Docker's errors are `{"message": "..."}`.
fn status_error(ctx: &str, status: StatusCode, body: &[u8]) -> ApiError {
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    let message = serde_json::from_slice::<Message>(body).map_or_else(
        |_| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        |m| m.message,
    );
    ApiError::Status {
        context: ctx.to_owned(),
        code: i32::from(status.as_u16()),
        message,
    }
}

fn parse_json<'a, T: Deserialize<'a>>(ctx: &str, body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::protocol(ctx, format!("bad JSON: {e}")))
}

/// Unreserved characters stay, everything else is `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `null` as the type's default (Docker sends `"Labels": null`).
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct ListEntry {
    #[serde(rename = "Id")]
    id: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Inspect {
    #[serde(deserialize_with = "nullable")]
    id: String,
    #[serde(deserialize_with = "nullable")]
    name: String,
    #[serde(deserialize_with = "nullable")]
    config: InspectConfig,
    #[serde(deserialize_with = "nullable")]
    state: InspectState,
    #[serde(deserialize_with = "nullable")]
    host_config: InspectHostConfig,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct InspectConfig {
    #[serde(deserialize_with = "nullable")]
    image: String,
    #[serde(deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    hostname: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct InspectState {
    running: bool,
    pid: i64,
    #[serde(deserialize_with = "nullable")]
    started_at: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct InspectHostConfig {
    #[serde(deserialize_with = "nullable")]
    network_mode: String,
}

fn parse_inspect(ctx: &str, body: &[u8]) -> Result<DockerContainer, ApiError> {
    let i: Inspect = parse_json(ctx, body)?;
    if i.id.is_empty() {
        return Err(ApiError::protocol(ctx, "inspect without an Id"));
    }
    Ok(DockerContainer {
        id: i.id,
        name: i.name.strip_prefix('/').unwrap_or(&i.name).to_owned(),
        image: i.config.image,
        labels: i.config.labels,
        pid: u32::try_from(i.state.pid).unwrap_or(0),
        hostname: i.config.hostname,
        host_network: i.host_config.network_mode == "host",
        started_at: i.state.started_at,
        running: i.state.running,
    })
}

/// One line of the events stream; `None` for events not reported.
fn parse_event(line: &[u8]) -> Result<Option<DockerEvent>, String> {
    #[derive(Deserialize)]
    struct Actor {
        #[serde(rename = "ID", default)]
        id: String,
    }
    #[derive(Deserialize)]
    struct Message {
        #[serde(rename = "Type", default)]
        kind: String,
        #[serde(rename = "Action", default)]
        action: String,
        #[serde(rename = "Actor")]
        actor: Option<Actor>,
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let m: Message = serde_json::from_slice(line).map_err(|e| format!("bad event: {e}"))?;
    let id = m.actor.map(|a| a.id).unwrap_or_default();
    if m.kind != "container" || id.is_empty() || !EVENT_ACTIONS.contains(&m.action.as_str()) {
        return Ok(None);
    }
    Ok(Some(DockerEvent {
        action: m.action,
        id,
    }))
}

/// Splits a byte stream into `\n`-terminated lines, bounded in length.
#[derive(Default)]
struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn next_line(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_EVENT_LINE => {
                Err(format!("event line longer than {MAX_EVENT_LINE} bytes"))
            }
            None => Ok(None),
        }
    }

    fn finish(&self) -> Result<(), String> {
        if self.buf.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err("events stream ended inside an event".into())
        }
    }
}

#[cfg(test)]
mod tests;
