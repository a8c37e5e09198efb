//! `kpulse:plugin/storage`: documents into [`crate::storage::Store`], never blocking.

use std::sync::atomic::Ordering;

use crate::logging::{REPEAT_INTERVAL, RateLimitBy};
use crate::storage::{SaveError, SaveRequest};
use crate::wit::{ErrorCode, RunType, storage};

use super::HostState;

/// A guest saving malformed documents in a loop: one line per plugin per interval.
static REJECTED: RateLimitBy<String> = RateLimitBy::new(REPEAT_INTERVAL);

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
            container: attribution.fields(&container_id),
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
                if let Some(suppressed) = REJECTED.check(self.identity.name.as_str()) {
                    tracing::warn!(plugin = %self.identity.name, tracer = %tracer_name, %err, "document rejected{suppressed}");
                }
                Err(ErrorCode::InvalidArgument)
            }
        })
    }
}
