//! What the registry knows of one workload: the record the `containers` interface, the
//! documents, the metrics and `/containers` all read. Shared from this one definition.

use serde::Serialize;

/// Who runs a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    Docker,
    Crio,
    Podman,
    /// A systemd unit (`*.service`, or a `*.scope` no runtime claims).
    Systemd,
    /// Any other cgroup; its id is its path.
    Cgroup,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::Docker => "docker",
            Self::Crio => "crio",
            Self::Podman => "podman",
            Self::Systemd => "systemd",
            Self::Cgroup => "cgroup",
        }
    }

    /// Every value, for self-metrics that report each runtime (zero included).
    pub const ALL: [Self; 6] = [
        Self::Containerd,
        Self::Docker,
        Self::Crio,
        Self::Podman,
        Self::Systemd,
        Self::Cgroup,
    ];

    /// A container runtime, as opposed to a host workload (systemd unit, plain cgroup).
    pub fn is_container(self) -> bool {
        !matches!(self, Self::Systemd | Self::Cgroup)
    }
}

/// Kubernetes QoS class, as the kubelet encodes it in the cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    #[default]
    None,
    Guaranteed,
    Burstable,
    #[serde(rename = "besteffort")]
    BestEffort,
}

impl Qos {
    /// HUATUO's spelling (`container_qos`, `container_level`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }
}

/// Running, or gone and kept for the grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Stopped,
}

/// The pod a container belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: Vec<(String, String)>,
}

/// HUATUO's container `type`, and kpulse's values for what HUATUO does not list.
pub mod kind {
    pub const NORMAL: &str = "normal";
    pub const SIDECAR: &str = "sidecar";
    pub const DAEMONSET: &str = "daemonSet";
    /// A pod's sandbox (pause) container.
    pub const SANDBOX: &str = "sandbox";
    /// A host workload (systemd unit, plain cgroup).
    pub const CGROUP: &str = "cgroup";
    /// A document or sample named a container the registry does not know.
    pub const UNKNOWN: &str = "unknown";
}

/// One workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub runtime: Runtime,
    pub runtime_namespace: String,
    pub image: String,
    /// Every label the runtime has (the allow-list applies where they leave the host).
    pub labels: Vec<(String, String)>,
    pub pod: Option<Pod>,
    pub qos: Qos,
    pub container_type: &'static str,
    pub hostname: String,
    pub init_pid: u32,
    pub cgroup_path: String,
    pub cgroup_id: u64,
    pub memcg_id: u64,
    pub netns_inum: u32,
    pub mntns_inum: u32,
    pub host_network: bool,
    pub started_at_ns: u64,
    pub state: State,
    /// Which sources reported it (`cgroupfs`, `containerd`, `bundle`, `docker`).
    pub sources: Vec<&'static str>,
}

impl Container {
    /// The labels an operator allowed out of the host (`containers.label_allow`).
    pub fn allowed_labels<'a>(
        &'a self,
        allow: &'a [String],
    ) -> impl Iterator<Item = &'a (String, String)> + 'a {
        self.labels
            .iter()
            .filter(move |(key, _)| label_allowed(allow, key))
    }

    /// The pod's hostname for HUATUO's `container_hostname`/`container_host`: the OCI
    /// hostname, else the pod name, else the container name.
    pub fn display_hostname(&self) -> &str {
        if !self.hostname.is_empty() {
            &self.hostname
        } else if let Some(pod) = &self.pod {
            &pod.name
        } else {
            &self.name
        }
    }

    /// The Kubernetes namespace, HUATUO's `container_host_namespace`.
    pub fn host_namespace(&self) -> &str {
        self.pod.as_ref().map_or("", |pod| pod.namespace.as_str())
    }
}

/// `allow` entries are exact names, or prefixes ending in `*`.
pub fn label_allowed(allow: &[String], key: &str) -> bool {
    allow.iter().any(|pattern| match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => pattern == key,
    })
}

/// What names a workload in an event or a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    CgroupId(u64),
    MemcgId(u64),
    NetnsInum(u32),
    MntnsInum(u32),
    Pid(u32),
}

impl Key {
    /// The `<kind>:<number>` form `storage.save` accepts in place of a container id.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, number) = text.split_once(':')?;
        Some(match kind {
            "cgroup" => Self::CgroupId(number.parse().ok()?),
            "memcg" => Self::MemcgId(number.parse().ok()?),
            "netns" => Self::NetnsInum(number.parse().ok()?),
            "mntns" => Self::MntnsInum(number.parse().ok()?),
            "pid" => Self::Pid(number.parse().ok()?),
            _ => return None,
        })
    }
}

/// What happened to a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Started,
    Updated,
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_from_their_text_form_and_ids_do_not() {
        assert_eq!(Key::parse("cgroup:42"), Some(Key::CgroupId(42)));
        assert_eq!(Key::parse("memcg:7"), Some(Key::MemcgId(7)));
        assert_eq!(
            Key::parse("netns:4026531840"),
            Some(Key::NetnsInum(4026531840))
        );
        assert_eq!(Key::parse("pid:1"), Some(Key::Pid(1)));
        // containerd ids cannot hold ':', Docker ids are hex, workload ids are paths.
        assert_eq!(Key::parse("c1"), None);
        assert_eq!(Key::parse("/system.slice/cron.service"), None);
        assert_eq!(Key::parse("cgroup:x"), None);
        assert_eq!(Key::parse("netns:99999999999"), None);
    }

    #[test]
    fn label_allow_list_takes_names_and_prefixes() {
        let allow = vec!["app".to_owned(), "team.example.com/*".to_owned()];
        assert!(label_allowed(&allow, "app"));
        assert!(!label_allowed(&allow, "application"));
        assert!(label_allowed(&allow, "team.example.com/owner"));
        assert!(!label_allowed(&[], "app"));
    }
}
