//! `GET /containers/json` in HUATUO's shape (`internal/pod` container object), for tools
//! and scripts written against HUATUO. Only containers (not host workloads or sandboxes).

use serde::Serialize;

use super::model::{Container, State, kind};

/// One HUATUO container object.
#[derive(Debug, Serialize)]
pub struct HuatuoContainer<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub hostname: &'a str,
    #[serde(rename = "type")]
    pub container_type: &'a str,
    pub qos: &'a str,
    /// kpulse does not know pod IPs without the kubelet: empty.
    pub net_ip_address: &'a str,
    pub net_namespace_inum: u32,
    /// Not computed yet (it needs `setns` + `SO_NETNS_COOKIE` per netns): 0.
    pub net_namespace_cookie: u64,
    pub init_pid: u32,
    pub cgroup_path: &'a str,
    /// HUATUO's css addresses are kernel pointers (a KASLR leak); kpulse gives the cgroup
    /// ids BPF sees instead.
    pub cgroup_css: CgroupIds,
    pub started_at: String,
    pub synced_at: String,
    pub labels: HuatuoLabels<'a>,
}

#[derive(Debug, Serialize)]
pub struct CgroupIds {
    pub cgroup_id: u64,
    pub memcg_id: u64,
}

#[derive(Debug, Serialize)]
pub struct HuatuoLabels<'a> {
    #[serde(rename = "HostNamespace")]
    pub host_namespace: &'a str,
}

/// Whether `/containers/json` lists it.
pub fn listed(c: &Container) -> bool {
    c.runtime.is_container() && c.container_type != kind::SANDBOX && c.state == State::Running
}

pub fn of<'a>(c: &'a Container, synced_at: &str) -> HuatuoContainer<'a> {
    HuatuoContainer {
        id: &c.id,
        name: &c.name,
        hostname: c.display_hostname(),
        container_type: c.container_type,
        qos: c.qos.as_str(),
        net_ip_address: "",
        net_namespace_inum: c.netns_inum,
        net_namespace_cookie: 0,
        init_pid: c.init_pid,
        cgroup_path: &c.cgroup_path,
        cgroup_css: CgroupIds {
            cgroup_id: c.cgroup_id,
            memcg_id: c.memcg_id,
        },
        started_at: rfc3339(c.started_at_ns),
        synced_at: synced_at.to_owned(),
        labels: HuatuoLabels {
            host_namespace: c.host_namespace(),
        },
    }
}

pub fn rfc3339(ns: u64) -> String {
    let secs = i64::try_from(ns / 1_000_000_000).unwrap_or(0);
    let nanos = u32::try_from(ns % 1_000_000_000).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
