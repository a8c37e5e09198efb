//! containerd: the native gRPC API over its unix socket (namespaces, containers, tasks, events).
//!
//! A small client with hand-written prost messages ([`proto`]) over h2 ([`grpc`]), so the
//! build needs neither protoc nor tonic. One connection per call: the calls are rare
//! (resyncs), and a fresh connection cannot be left in a bad state by an earlier one.

mod error;
mod grpc;
mod proto;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

pub use error::ApiError;
use grpc::{Call, Target};

const NAMESPACES_LIST: &str = "/containerd.services.namespaces.v1.Namespaces/List";
const CONTAINERS_LIST: &str = "/containerd.services.containers.v1.Containers/List";
const CONTAINERS_LIST_STREAM: &str = "/containerd.services.containers.v1.Containers/ListStream";
const TASKS_LIST: &str = "/containerd.services.tasks.v1.Tasks/List";
const EVENTS_SUBSCRIBE: &str = "/containerd.services.events.v1.Events/Subscribe";

/// The event topics [`Client::subscribe`] asks for (containerd filter syntax; the filters
/// are or-ed).
const SUBSCRIBE_FILTERS: [&str; 2] = [r#"topic~="^/tasks/""#, r#"topic~="^/containers/""#];

/// A containerd API client for one socket. Cheap to clone; every call opens its own
/// connection.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// A container's metadata record (`containers.v1.Container`).
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    pub namespace: String,
    pub id: String,
    /// The image reference; empty for a container made from a plain rootfs.
    pub image: String,
    /// e.g. `io.containerd.runc.v2`.
    pub runtime: String,
    pub labels: BTreeMap<String, String>,
    /// The OCI runtime spec (the `Any`'s value is JSON); `None` if absent or not JSON.
    pub spec: Option<serde_json::Value>,
    /// Creation time, nanoseconds since the epoch (0 if unset).
    pub created_at_ns: u64,
}

impl ContainerRecord {
    /// The spec's `hostname`, if it has one.
    #[must_use]
    pub fn hostname(&self) -> Option<&str> {
        self.spec.as_ref()?.get("hostname")?.as_str()
    }
}

/// A task's state (`containerd.v1.types.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Unknown,
    Created,
    Running,
    Stopped,
    Paused,
    Pausing,
}

impl TaskStatus {
    fn from_wire(value: i32) -> Self {
        match value {
            1 => Self::Created,
            2 => Self::Running,
            3 => Self::Stopped,
            4 => Self::Paused,
            5 => Self::Pausing,
            _ => Self::Unknown,
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Created => "created",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Paused => "paused",
            Self::Pausing => "pausing",
        }
    }
}

/// A task (the container's init process) from `tasks.v1 Tasks/List`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// The container id.
    pub id: String,
    /// The init process's pid in the host's pid namespace (0 once stopped).
    pub pid: u32,
    pub status: TaskStatus,
    pub exit_status: u32,
}

/// A containerd event, decoded from its envelope. Only the init process's exit and delete
/// become `TaskExit`/`TaskDelete`; those of `exec`ed processes come as `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    TaskStart {
        namespace: String,
        id: String,
        pid: u32,
    },
    TaskExit {
        namespace: String,
        id: String,
        pid: u32,
        exit_status: u32,
    },
    TaskDelete {
        namespace: String,
        id: String,
        pid: u32,
        exit_status: u32,
    },
    ContainerCreate {
        namespace: String,
        id: String,
        image: String,
    },
    ContainerDelete {
        namespace: String,
        id: String,
    },
    /// Any other topic (`/tasks/create`, `/tasks/oom`, `/tasks/exec-started`,
    /// `/containers/update`, …).
    Other {
        namespace: String,
        topic: String,
    },
}

impl Event {
    #[must_use]
    pub fn namespace(&self) -> &str {
        match self {
            Self::TaskStart { namespace, .. }
            | Self::TaskExit { namespace, .. }
            | Self::TaskDelete { namespace, .. }
            | Self::ContainerCreate { namespace, .. }
            | Self::ContainerDelete { namespace, .. }
            | Self::Other { namespace, .. } => namespace,
        }
    }
}

impl Client {
    /// A client for the containerd socket at `socket` (usually
    /// `/run/containerd/containerd.sock`); `timeout` bounds every call.
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

    fn context(&self, path: &str) -> String {
        let method = path.rsplit_once('.').map_or(path, |(_, m)| m);
        format!("{} {method}", self.socket.display())
    }

    fn target<'a>(&'a self, context: &'a str, path: &'a str, ns: Option<&'a str>) -> Target<'a> {
        Target {
            socket: &self.socket,
            context,
            path,
            namespace: ns,
            deadline: Some(self.timeout),
        }
    }

    /// Runs `f` under the client's timeout.
    async fn bounded<T>(
        &self,
        context: &str,
        f: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .unwrap_or_else(|_| Err(ApiError::timeout(context, self.timeout)))
    }

    /// Every message of a call's response, decoded.
    async fn collect<Resp: prost::Message + Default>(
        &self,
        target: &Target<'_>,
        request: &impl prost::Message,
    ) -> Result<Vec<Resp>, ApiError> {
        let ctx = target.context;
        let request = grpc::encode(request).map_err(|e| ApiError::protocol(ctx, e))?;
        let mut call = Call::start(target, request, false).await?;
        let mut out = Vec::new();
        while let Some(message) = call.message().await? {
            out.push(decode::<Resp>(ctx, message)?);
        }
        Ok(out)
    }

    /// A unary call: exactly one response message.
    async fn unary<Resp: prost::Message + Default>(
        &self,
        target: &Target<'_>,
        request: &impl prost::Message,
    ) -> Result<Resp, ApiError> {
        let mut messages = self.collect::<Resp>(target, request).await?;
        match messages.len() {
            1 => Ok(messages.remove(0)),
            n => Err(ApiError::protocol(
                target.context,
                format!("unary call answered with {n} messages"),
            )),
        }
    }

    /// The names of all namespaces.
    pub async fn namespaces(&self) -> Result<Vec<String>, ApiError> {
        let ctx = self.context(NAMESPACES_LIST);
        let target = self.target(&ctx, NAMESPACES_LIST, None);
        let request = proto::ListNamespacesRequest::default();
        let resp: proto::ListNamespacesResponse =
            self.bounded(&ctx, self.unary(&target, &request)).await?;
        Ok(resp.namespaces.into_iter().map(|n| n.name).collect())
    }

    /// Every container record in `namespace`. Uses the `ListStream` method (one message per
    /// container, so no size limit on the whole list) and falls back to `List` where it is
    /// unimplemented.
    pub async fn containers(&self, namespace: &str) -> Result<Vec<ContainerRecord>, ApiError> {
        let ctx = self.context(CONTAINERS_LIST_STREAM);
        let request = proto::ListContainersRequest::default();
        let work = async {
            let target = self.target(&ctx, CONTAINERS_LIST_STREAM, Some(namespace));
            match self
                .collect::<proto::ListContainerMessage>(&target, &request)
                .await
            {
                Ok(messages) => Ok(messages.into_iter().filter_map(|m| m.container).collect()),
                Err(ApiError::Status { code, .. }) if code == grpc::UNIMPLEMENTED => {
                    let ctx = self.context(CONTAINERS_LIST);
                    let target = self.target(&ctx, CONTAINERS_LIST, Some(namespace));
                    let resp: proto::ListContainersResponse = self.unary(&target, &request).await?;
                    Ok(resp.containers)
                }
                Err(e) => Err(e),
            }
        };
        let containers: Vec<proto::Container> = self.bounded(&ctx, work).await?;
        Ok(containers
            .into_iter()
            .map(|c| container_record(namespace, c))
            .collect())
    }

    /// Every task in `namespace`.
    pub async fn tasks(&self, namespace: &str) -> Result<Vec<TaskRecord>, ApiError> {
        let ctx = self.context(TASKS_LIST);
        let target = self.target(&ctx, TASKS_LIST, Some(namespace));
        let request = proto::ListTasksRequest::default();
        let resp: proto::ListTasksResponse =
            self.bounded(&ctx, self.unary(&target, &request)).await?;
        Ok(resp
            .tasks
            .into_iter()
            .map(|p| TaskRecord {
                // containerd fills `id` with the container id for the init process and may
                // leave `container_id` empty.
                id: if p.container_id.is_empty() {
                    p.id
                } else {
                    p.container_id
                },
                pid: p.pid,
                status: TaskStatus::from_wire(p.status),
                exit_status: p.exit_status,
            })
            .collect())
    }

    /// Subscribes to the task and container events of all namespaces and sends them to `tx`
    /// until the stream ends (`Ok`), fails (`Err`), or `tx`'s receiver is dropped (`Ok`).
    /// The timeout bounds connecting and the server's acknowledgement of the request, not
    /// the (open-ended) wait for events. Events that happen before the subscription is
    /// registered are missed: subscribe first, then list, to resync.
    pub async fn subscribe(&self, tx: mpsc::Sender<Event>) -> Result<(), ApiError> {
        let ctx = self.context(EVENTS_SUBSCRIBE);
        let target = Target {
            deadline: None,
            ..self.target(&ctx, EVENTS_SUBSCRIBE, None)
        };
        let request = proto::SubscribeRequest {
            filters: SUBSCRIBE_FILTERS.iter().map(|&f| f.to_owned()).collect(),
        };
        let request = grpc::encode(&request).map_err(|e| ApiError::protocol(&ctx, e))?;
        let mut call = self
            .bounded(&ctx, Call::start(&target, request, true))
            .await?;
        loop {
            let message = tokio::select! {
                m = call.message() => m?,
                () = tx.closed() => return Ok(()),
            };
            let Some(message) = message else {
                return Ok(());
            };
            let envelope: proto::Envelope = decode(&ctx, message)?;
            let event = decode_event(envelope).map_err(|e| ApiError::protocol(&ctx, e))?;
            if tx.send(event).await.is_err() {
                return Ok(());
            }
        }
    }
}

fn decode<M: prost::Message + Default>(context: &str, bytes: bytes::Bytes) -> Result<M, ApiError> {
    M::decode(bytes).map_err(|e| ApiError::protocol(context, format!("bad message: {e}")))
}

fn container_record(namespace: &str, c: proto::Container) -> ContainerRecord {
    let spec = c.spec.and_then(|any| {
        serde_json::from_slice(&any.value)
            .inspect_err(|err| {
                tracing::debug!(id = %c.id, type_url = %any.type_url, %err, "container spec is not JSON");
            })
            .ok()
    });
    ContainerRecord {
        namespace: namespace.to_owned(),
        id: c.id,
        image: c.image,
        runtime: c.runtime.map(|r| r.name).unwrap_or_default(),
        labels: c.labels,
        spec,
        created_at_ns: c.created_at.map_or(0, |t| t.unix_ns()),
    }
}

/// An envelope's event, chosen by topic (the payload's type URL is
/// `containerd.events.<Name>`, but the topic is what containerd documents).
fn decode_event(envelope: proto::Envelope) -> Result<Event, String> {
    use prost::Message;

    let proto::Envelope {
        namespace,
        topic,
        event,
        ..
    } = envelope;
    let payload = event.map(|any| any.value).unwrap_or_default();
    let bad = |e: prost::DecodeError| format!("bad {topic} event: {e}");
    let event = match topic.as_str() {
        "/tasks/start" => {
            let e = proto::TaskStart::decode(payload.as_slice()).map_err(bad)?;
            Event::TaskStart {
                namespace,
                id: e.container_id,
                pid: e.pid,
            }
        }
        "/tasks/exit" => {
            let e = proto::TaskExit::decode(payload.as_slice()).map_err(bad)?;
            if !e.id.is_empty() && e.id != e.container_id {
                return Ok(Event::Other { namespace, topic });
            }
            Event::TaskExit {
                namespace,
                id: e.container_id,
                pid: e.pid,
                exit_status: e.exit_status,
            }
        }
        "/tasks/delete" => {
            let e = proto::TaskDelete::decode(payload.as_slice()).map_err(bad)?;
            if !e.id.is_empty() && e.id != e.container_id {
                return Ok(Event::Other { namespace, topic });
            }
            Event::TaskDelete {
                namespace,
                id: e.container_id,
                pid: e.pid,
                exit_status: e.exit_status,
            }
        }
        "/containers/create" => {
            let e = proto::ContainerCreate::decode(payload.as_slice()).map_err(bad)?;
            Event::ContainerCreate {
                namespace,
                id: e.id,
                image: e.image,
            }
        }
        "/containers/delete" => {
            let e = proto::ContainerDelete::decode(payload.as_slice()).map_err(bad)?;
            Event::ContainerDelete {
                namespace,
                id: e.id,
            }
        }
        _ => Event::Other { namespace, topic },
    };
    Ok(event)
}

#[cfg(test)]
pub(crate) mod tests;
