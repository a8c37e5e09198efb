//! Hand-written prost messages: the few containerd API types the client needs, with the
//! field tags of containerd 1.6's `.proto` files (`api/services/{namespaces,containers,
//! tasks,events}/v1`, `api/types/task/task.proto`, `api/events/{task,container}.proto`).
//! Fields the client does not read are left out; prost skips unknown fields.

use std::collections::BTreeMap;

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// Nanoseconds since the epoch; 0 for times before it.
    pub fn unix_ns(&self) -> u64 {
        let ns = i128::from(self.seconds) * 1_000_000_000 + i128::from(self.nanos);
        u64::try_from(ns).unwrap_or(if ns < 0 { 0 } else { u64::MAX })
    }
}

// --- namespaces.v1 ------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListNamespacesRequest {
    #[prost(string, tag = "1")]
    pub filter: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Namespace {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(btree_map = "string, string", tag = "2")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListNamespacesResponse {
    #[prost(message, repeated, tag = "1")]
    pub namespaces: Vec<Namespace>,
}

// --- containers.v1 ------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerRuntime {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(btree_map = "string, string", tag = "2")]
    pub labels: BTreeMap<String, String>,
    #[prost(string, tag = "3")]
    pub image: String,
    #[prost(message, optional, tag = "4")]
    pub runtime: Option<ContainerRuntime>,
    #[prost(message, optional, tag = "5")]
    pub spec: Option<Any>,
    #[prost(string, tag = "6")]
    pub snapshotter: String,
    #[prost(message, optional, tag = "8")]
    pub created_at: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersRequest {
    #[prost(string, repeated, tag = "1")]
    pub filters: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersResponse {
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<Container>,
}

/// One message of the `Containers/ListStream` server stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainerMessage {
    #[prost(message, optional, tag = "1")]
    pub container: Option<Container>,
}

// --- tasks.v1 -----------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListTasksRequest {
    #[prost(string, tag = "1")]
    pub filter: String,
}

/// `containerd.v1.types.Process`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Process {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub id: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    /// `containerd.v1.types.Status`: 0 unknown, 1 created, 2 running, 3 stopped,
    /// 4 paused, 5 pausing.
    #[prost(int32, tag = "4")]
    pub status: i32,
    #[prost(uint32, tag = "9")]
    pub exit_status: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListTasksResponse {
    #[prost(message, repeated, tag = "1")]
    pub tasks: Vec<Process>,
}

// --- events.v1 ----------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeRequest {
    #[prost(string, repeated, tag = "1")]
    pub filters: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "3")]
    pub topic: String,
    #[prost(message, optional, tag = "4")]
    pub event: Option<Any>,
}

// --- containerd.events (the payloads) -----------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskStart {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskExit {
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// The process id: equal to `container_id` for the init process, the exec id otherwise.
    #[prost(string, tag = "2")]
    pub id: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    #[prost(uint32, tag = "4")]
    pub exit_status: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskDelete {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
    #[prost(uint32, tag = "3")]
    pub exit_status: u32,
    /// The exec id; empty (or `container_id`) for the init process.
    #[prost(string, tag = "5")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerCreate {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerDelete {
    #[prost(string, tag = "1")]
    pub id: String,
}
