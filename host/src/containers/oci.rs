//! The few fields of an OCI runtime spec (`config.json` in a bundle, or the spec containerd
//! stores) that the registry uses. Parsed loosely: a field that is missing or of another
//! type is simply unknown.

use std::collections::BTreeMap;

use serde_json::Value;

/// What a spec tells about its container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecFacts {
    pub hostname: String,
    pub annotations: BTreeMap<String, String>,
    /// `linux.cgroupsPath`, normalised to a path (the systemd form expanded).
    pub cgroup_path: String,
    /// `Some(true)` when the spec asks for no network namespace of its own.
    pub host_network: Option<bool>,
}

impl SpecFacts {
    pub fn from_json(spec: &Value) -> Self {
        let hostname = spec
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let annotations = spec
            .get("annotations")
            .and_then(Value::as_object)
            .map(|map| {
                map.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let linux = spec.get("linux");
        let cgroup_path = linux
            .and_then(|l| l.get("cgroupsPath"))
            .and_then(Value::as_str)
            .map(normalise_cgroups_path)
            .unwrap_or_default();
        let host_network = linux
            .and_then(|l| l.get("namespaces"))
            .and_then(Value::as_array)
            // No network entry: the container stays in the runtime's (the host's) netns.
            .map(|namespaces| {
                !namespaces
                    .iter()
                    .any(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))
            });
        Self {
            hostname,
            annotations,
            cgroup_path,
            host_network,
        }
    }
}

/// `linux.cgroupsPath` as a path: absolute paths as they are; the systemd driver's
/// `slice:prefix:name` becomes `/<expanded slice>/<prefix>-<name>.scope`.
pub fn normalise_cgroups_path(raw: &str) -> String {
    if raw.starts_with('/') || raw.is_empty() {
        return raw.to_owned();
    }
    let mut parts = raw.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(slice), Some(prefix), Some(name)) => {
            let unit = if name.ends_with(".slice") {
                name.to_owned()
            } else {
                format!("{prefix}-{name}.scope")
            };
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            format!("{}/{unit}", expand_slice(slice))
        }
        _ => format!("/{raw}"),
    }
}

/// systemd nests `a-b-c.slice` as `/a.slice/a-b.slice/a-b-c.slice`.
fn expand_slice(slice: &str) -> String {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return format!("/{slice}");
    };
    if stem == "-" || stem.is_empty() {
        return String::new();
    }
    let mut path = String::new();
    let mut so_far = String::new();
    for part in stem.split('-') {
        if !so_far.is_empty() {
            so_far.push('-');
        }
        so_far.push_str(part);
        path.push('/');
        path.push_str(&so_far);
        path.push_str(".slice");
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_path_forms() {
        assert_eq!(normalise_cgroups_path("/kptest/c1"), "/kptest/c1");
        assert_eq!(
            normalise_cgroups_path("system.slice:docker:abc"),
            "/system.slice/docker-abc.scope"
        );
        assert_eq!(
            normalise_cgroups_path("kubepods-burstable-pod12_34.slice:cri-containerd:abc"),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice/cri-containerd-abc.scope"
        );
        assert_eq!(normalise_cgroups_path(""), "");
    }

    #[test]
    fn spec_facts() {
        let spec: Value = serde_json::json!({
            "hostname": "web-0",
            "annotations": {"io.kubernetes.cri.sandbox-name": "web-0", "n": 1},
            "linux": {
                "cgroupsPath": "/kubepods/burstable/podu/abc",
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]
            }
        });
        let facts = SpecFacts::from_json(&spec);
        assert_eq!(facts.hostname, "web-0");
        assert_eq!(facts.annotations.len(), 1);
        assert_eq!(facts.cgroup_path, "/kubepods/burstable/podu/abc");
        assert_eq!(facts.host_network, Some(false));
        let host = serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}});
        assert_eq!(SpecFacts::from_json(&host).host_network, Some(true));
        assert_eq!(
            SpecFacts::from_json(&serde_json::json!([1])),
            SpecFacts::default()
        );
    }
}
