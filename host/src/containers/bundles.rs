//! Discovery source 2, containerd's state on disk: every shim v2 bundle
//! `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/` holds the OCI spec
//! (`config.json`: hostname, annotations, cgroup path, namespaces) and `init.pid`. No API
//! needed, so it works when the socket is absent or refuses, and it covers `ctr`, CRI
//! (`k8s.io`) and Docker (`moby`) containers alike. Labels and images need the API.

use std::path::Path;

use super::model::Runtime;
use super::oci::SpecFacts;
use super::sys::{self, ProcCgroups};
use super::table::RuntimeContainer;

const TASK_DIR: &str = "io.containerd.runtime.v2.task";
/// A spec larger than this is not read (real ones are a few KiB).
const MAX_SPEC_BYTES: u64 = 4 << 20;

/// Why one bundle could not be read (logged, counted, the others still read).
#[derive(Debug, thiserror::Error)]
#[error("bundle {path}: {message}")]
pub struct BundleError {
    pub path: String,
    pub message: String,
}

/// Reads every bundle under `state` (a containerd `state` directory).
pub fn read_all(state: &Path, out: &mut Vec<RuntimeContainer>) -> Vec<BundleError> {
    let mut errors = Vec::new();
    let Ok(namespaces) = std::fs::read_dir(state.join(TASK_DIR)) else {
        return errors; // no containers yet, or not a containerd state dir
    };
    for namespace in namespaces.flatten() {
        let Ok(ids) = std::fs::read_dir(namespace.path()) else {
            continue;
        };
        let ns = namespace.file_name().to_string_lossy().into_owned();
        for bundle in ids.flatten() {
            let id = bundle.file_name().to_string_lossy().into_owned();
            match read_one(&bundle.path(), &ns, &id) {
                Ok(Some(container)) => out.push(container),
                Ok(None) => {}
                Err(message) => errors.push(BundleError {
                    path: bundle.path().display().to_string(),
                    message,
                }),
            }
        }
    }
    errors
}

/// One bundle; `None` while it is being created (no `config.json` yet) or when its task
/// is not running (no live `init.pid`).
fn read_one(dir: &Path, namespace: &str, id: &str) -> Result<Option<RuntimeContainer>, String> {
    let spec_path = dir.join("config.json");
    let meta = match std::fs::metadata(&spec_path) {
        Ok(meta) => meta,
        Err(_) => return Ok(None),
    };
    if meta.len() > MAX_SPEC_BYTES {
        return Err(format!("config.json is {} bytes", meta.len()));
    }
    let text = std::fs::read(&spec_path).map_err(|err| format!("config.json: {err}"))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&text).map_err(|err| format!("config.json: {err}"))?;
    let facts = SpecFacts::from_json(&spec);
    let pid = std::fs::read_to_string(dir.join("init.pid"))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&pid| pid > 0);
    // A task that exited leaves its bundle until it is deleted.
    let Some(pid) = pid.filter(|pid| Path::new(&format!("/proc/{pid}")).exists()) else {
        return Ok(None);
    };
    // The live process says where it is; the spec's path is the fallback (and the only
    // form for the systemd driver before the scope exists).
    let cgroup_path = ProcCgroups::read(pid)
        .and_then(|p| p.workload_path().map(str::to_owned))
        .filter(|p| p != "/")
        .unwrap_or(facts.cgroup_path);
    let (net_ns, mnt_ns) = (
        sys::namespace_inum(pid, "net").unwrap_or(0),
        sys::namespace_inum(pid, "mnt").unwrap_or(0),
    );
    Ok(Some(RuntimeContainer {
        source: "bundle",
        runtime: Some(if namespace == "moby" {
            Runtime::Docker
        } else {
            Runtime::Containerd
        }),
        namespace: namespace.to_owned(),
        id: id.to_owned(),
        hostname: facts.hostname,
        annotations: facts.annotations,
        pid,
        cgroup_path,
        net_ns,
        mnt_ns,
        host_network: facts.host_network,
        started_at_ns: sys::process_start_ns(pid).unwrap_or(0),
        ..RuntimeContainer::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_bundle_and_reports_a_broken_one() {
        let state = std::env::temp_dir().join(format!("kpulse-bundles-{}", std::process::id()));
        let good = state.join(TASK_DIR).join("kptest").join("c1");
        let bad = state.join(TASK_DIR).join("kptest").join("c2");
        let creating = state.join(TASK_DIR).join("kptest").join("c3");
        for dir in [&good, &bad, &creating] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        let spec = serde_json::json!({"hostname": "box", "linux": {"cgroupsPath": "/kptest/c1"}});
        std::fs::write(good.join("config.json"), spec.to_string()).expect("write");
        // Our own pid stands in for the container's init: it is alive.
        std::fs::write(good.join("init.pid"), std::process::id().to_string()).expect("write");
        std::fs::write(bad.join("config.json"), "{not json").expect("write");
        let mut out = Vec::new();
        let errors = read_all(&state, &mut out);
        std::fs::remove_dir_all(&state).ok();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].id, "c1");
        assert_eq!(out[0].namespace, "kptest");
        assert_eq!(out[0].hostname, "box");
        assert_eq!(out[0].host_network, None, "no namespaces listed: unknown");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("c2"), "{}", errors[0]);
    }
}
