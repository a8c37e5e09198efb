//! What a cgroup path says about its workload, for paths no runtime source claimed: the
//! kubelet's layouts (cgroupfs and systemd drivers), Docker, CRI-O, podman, systemd units.
//! Plain `ctr` containers (`/<namespace>/<id>`, any id) cannot be told from a path; the
//! containerd sources name them.

use super::model::{Qos, Runtime};

/// A container recognised in a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathContainer<'a> {
    /// The path up to and including the container's own cgroup; deeper cgroups belong to it.
    pub prefix: &'a str,
    pub id: &'a str,
    pub runtime: Runtime,
    /// The kubelet's pod uid (dashes restored for the systemd driver's underscores).
    pub pod_uid: Option<String>,
    pub qos: Qos,
}

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathClass<'a> {
    Container(PathContainer<'a>),
    /// A systemd unit: the path up to the unit; deeper cgroups belong to it.
    Unit {
        prefix: &'a str,
    },
    /// Anything else.
    Other,
}

/// Classifies `path` (relative to a hierarchy root, starting with `/`).
pub fn classify(path: &str) -> PathClass<'_> {
    // Each non-empty component with the offset where it ends.
    let mut components = Vec::new();
    let mut offset = 0;
    for component in path.split('/') {
        let end = offset + component.len();
        offset = end + 1;
        if !component.is_empty() {
            components.push((component, end));
        }
    }
    let mut qos = Qos::None;
    let mut pod_uid: Option<String> = None;
    let mut in_kubepods = false;
    for (index, &(component, end)) in components.iter().enumerate() {
        let prefix = &path[..end];
        // kubelet, cgroupfs driver: /kubepods[/<qos>]/pod<uid>/<id>
        // kubelet, systemd driver: /kubepods.slice/kubepods-<qos>.slice/
        //                           kubepods-<qos>-pod<uid_>.slice/<runtime>-<id>.scope
        if component == "kubepods" || component == "kubepods.slice" {
            in_kubepods = true;
            qos = Qos::Guaranteed;
            continue;
        }
        if in_kubepods {
            if let Some(level) = kube_qos(component) {
                qos = level;
                continue;
            }
            if let Some(uid) = pod_uid_of(component) {
                pod_uid = Some(uid);
                continue;
            }
        }
        if let Some((runtime, id)) = scoped_container(component) {
            return PathClass::Container(PathContainer {
                prefix,
                id,
                runtime,
                pod_uid,
                qos,
            });
        }
        if pod_uid.is_some() && is_hex_id(component) {
            // cgroupfs driver: the runtime is not in the path; containerd is the common one,
            // and a runtime source corrects it when it knows the container.
            return PathClass::Container(PathContainer {
                prefix,
                id: component,
                runtime: Runtime::Containerd,
                pod_uid,
                qos,
            });
        }
        // `/docker/<id>`, `/crio/<id>`, `/libpod_parent/libpod-<id>`: the next component.
        if index == 0
            && let Some(runtime) = runtime_dir(component)
            && let Some(&(next, next_end)) = components.get(1)
            && is_hex_id(next)
        {
            return PathClass::Container(PathContainer {
                prefix: &path[..next_end],
                id: next,
                runtime,
                pod_uid: None,
                qos: Qos::None,
            });
        }
        if component.ends_with(".service") || component.ends_with(".scope") {
            return PathClass::Unit { prefix };
        }
    }
    PathClass::Other
}

/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`,
/// with or without `.scope` (`crio-<id>`, `libpod-<id>` under a parent).
fn scoped_container(component: &str) -> Option<(Runtime, &str)> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    for (prefix, runtime) in [
        ("cri-containerd-", Runtime::Containerd),
        ("docker-", Runtime::Docker),
        ("crio-", Runtime::Crio),
        ("libpod-", Runtime::Podman),
    ] {
        if let Some(id) = name.strip_prefix(prefix)
            && is_hex_id(id)
        {
            return Some((runtime, id));
        }
    }
    None
}

/// Top-level directories whose children are container ids.
fn runtime_dir(component: &str) -> Option<Runtime> {
    match component {
        "docker" => Some(Runtime::Docker),
        "crio" => Some(Runtime::Crio),
        "libpod_parent" | "machine.slice" => Some(Runtime::Podman),
        _ => None,
    }
}

fn kube_qos(component: &str) -> Option<Qos> {
    match component {
        "burstable" | "kubepods-burstable.slice" => Some(Qos::Burstable),
        "besteffort" | "kubepods-besteffort.slice" => Some(Qos::BestEffort),
        _ => None,
    }
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(component: &str) -> Option<String> {
    if let Some(uid) = component.strip_prefix("pod")
        && !uid.is_empty()
    {
        return Some(uid.to_owned());
    }
    let slice = component.strip_suffix(".slice")?;
    let (_, uid) = slice.rsplit_once("-pod")?;
    (!uid.is_empty()).then(|| uid.replace('_', "-"))
}

/// A full container id: 64 lowercase hex digits.
pub fn is_hex_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1b2d3c4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";

    fn container(path: &str) -> PathContainer<'_> {
        match classify(path) {
            PathClass::Container(c) => c,
            other => panic!("{path}: expected a container, got {other:?}"),
        }
    }

    /// Real-world layouts, including those this machine cannot produce (systemd driver,
    /// CRI-O, podman): (path, runtime, pod uid, qos, the container's own prefix).
    #[test]
    fn container_paths_of_every_runtime_and_driver() {
        let uid = "0b8c6a5e-1f2d-4c3b-9a8e-7d6c5b4a3f21";
        let uid_ = uid.replace('-', "_");
        let cases: Vec<(String, Runtime, Option<&str>, Qos, String)> = vec![
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                Runtime::Containerd,
                Some(uid),
                Qos::Burstable,
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/docker-{ID}.scope"
                ),
                Runtime::Docker,
                Some(uid),
                Qos::BestEffort,
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/docker-{ID}.scope"
                ),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"),
                Runtime::Crio,
                Some(uid),
                Qos::Guaranteed,
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"),
            ),
            (
                format!("/kubepods/besteffort/pod{uid}/{ID}"),
                Runtime::Containerd,
                Some(uid),
                Qos::BestEffort,
                format!("/kubepods/besteffort/pod{uid}/{ID}"),
            ),
            (
                format!("/kubepods/pod{uid}/{ID}/nested/child"),
                Runtime::Containerd,
                Some(uid),
                Qos::Guaranteed,
                format!("/kubepods/pod{uid}/{ID}"),
            ),
            (
                format!("/system.slice/docker-{ID}.scope"),
                Runtime::Docker,
                None,
                Qos::None,
                format!("/system.slice/docker-{ID}.scope"),
            ),
            (
                format!("/docker/{ID}"),
                Runtime::Docker,
                None,
                Qos::None,
                format!("/docker/{ID}"),
            ),
            (
                format!("/docker/{ID}/init.scope"),
                Runtime::Docker,
                None,
                Qos::None,
                format!("/docker/{ID}"),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                Runtime::Podman,
                None,
                Qos::None,
                format!("/machine.slice/libpod-{ID}.scope"),
            ),
            (
                format!("/libpod_parent/libpod-{ID}"),
                Runtime::Podman,
                None,
                Qos::None,
                format!("/libpod_parent/libpod-{ID}"),
            ),
            (
                format!("/crio-{ID}"),
                Runtime::Crio,
                None,
                Qos::None,
                format!("/crio-{ID}"),
            ),
        ];
        for (path, runtime, pod, qos, prefix) in &cases {
            let c = container(path);
            assert_eq!(c.id, ID, "{path}");
            assert_eq!(c.runtime, *runtime, "{path}");
            assert_eq!(c.pod_uid.as_deref(), *pod, "{path}");
            assert_eq!(c.qos, *qos, "{path}");
            assert_eq!(c.prefix, prefix.as_str(), "{path}");
        }
    }

    #[test]
    fn units_other_cgroups_and_what_a_path_cannot_tell() {
        assert_eq!(
            classify("/system.slice/cron.service"),
            PathClass::Unit {
                prefix: "/system.slice/cron.service"
            }
        );
        assert_eq!(
            classify("/system.slice/ssh.service/child"),
            PathClass::Unit {
                prefix: "/system.slice/ssh.service"
            }
        );
        assert_eq!(
            classify("/user.slice/user-0.slice/session-1.scope"),
            PathClass::Unit {
                prefix: "/user.slice/user-0.slice/session-1.scope"
            }
        );
        // A plain `ctr` container: namespace and id, nothing to recognise.
        assert_eq!(classify("/default/c1"), PathClass::Other);
        assert_eq!(classify("/kptest/4f1b"), PathClass::Other);
        // Not 64 hex: not a Docker id.
        assert_eq!(classify("/docker/abc"), PathClass::Other);
        assert_eq!(classify("/docker"), PathClass::Other);
        assert_eq!(classify("/"), PathClass::Other);
        assert_eq!(classify(""), PathClass::Other);
        assert_eq!(classify("/kubepods/burstable"), PathClass::Other);
        assert_eq!(classify("/kubepods/burstable/podabc"), PathClass::Other);
        assert_eq!(classify("//docker//x"), PathClass::Other);
    }

    #[test]
    fn hex_ids() {
        assert!(is_hex_id(ID));
        assert!(!is_hex_id(&ID.to_uppercase()));
        assert!(!is_hex_id(&ID[1..]));
    }
}
