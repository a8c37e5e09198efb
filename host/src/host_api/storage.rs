//! `kpulse:plugin/storage`: documents into [`crate::storage::Store`], never blocking.

use std::sync::atomic::Ordering;

use crate::containers::Attribution;
use crate::containers::model::kind;
use crate::storage::{ContainerFields, SaveError, SaveRequest};
use crate::wit::{ErrorCode, RunType, storage};

use super::HostState;

impl storage::Host for HostState {
    fn save(
        &mut self,
        tracer_name: String,
        container_id: String,
        time_ns: u64,
        data_json: String,
        run_type: RunType,
    ) -> wasmtime::Result<Result<String, ErrorCode>> {
        let attribution = self.services.containers.attribute(&container_id);
        let request = SaveRequest {
            tracer_name: &tracer_name,
            container: fields(&attribution, &container_id),
            time_ns,
            data_json: &data_json,
            run_type: match run_type {
                RunType::Event => crate::storage::RunType::Event,
                RunType::Autotracing => crate::storage::RunType::Autotracing,
            },
        };
        let stats = &self.identity.stats;
        Ok(match self.services.store.save(&request) {
            Ok(id) => {
                stats.documents_saved.fetch_add(1, Ordering::Relaxed);
                Ok(id)
            }
            Err(SaveError::QueueFull) => {
                stats.documents_dropped.fetch_add(1, Ordering::Relaxed);
                Err(ErrorCode::QueueFull)
            }
            Err(err @ SaveError::Invalid(_)) => {
                stats.documents_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %self.identity.name, tracer = %tracer_name, %err, "document rejected");
                Err(ErrorCode::InvalidArgument)
            }
        })
    }
}

/// The document's workload fields for what the guest passed as `container-id`.
fn fields<'a>(attribution: &'a Attribution, raw: &'a str) -> ContainerFields<'a> {
    match attribution {
        Attribution::Host => ContainerFields::default(),
        Attribution::Workload(c) if c.runtime.is_container() => ContainerFields {
            id: &c.id,
            hostname: c.display_hostname(),
            host_namespace: c.host_namespace(),
            container_type: c.container_type,
            qos: c.qos.as_str(),
            name: &c.name,
            image: &c.image,
            pod_name: c.pod.as_ref().map_or("", |p| p.name.as_str()),
            cgroup_path: &c.cgroup_path,
        },
        Attribution::Workload(c) => ContainerFields {
            cgroup_path: &c.cgroup_path,
            ..ContainerFields::default()
        },
        // Never dropped: saved with what the guest said, marked unknown.
        Attribution::Unknown => ContainerFields {
            id: raw,
            container_type: kind::UNKNOWN,
            ..ContainerFields::default()
        },
    }
}
