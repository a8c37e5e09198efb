//! Saving documents: HUATUO's `storage.Save(name, containerID, time, data)`.
//!
//! The host adds hostname, region, container fields, a `tracer_id` and timestamps, then
//! writes the document to the local store (and remote stores) asynchronously.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::bindings::kpulse::plugin::storage as raw;
use crate::bindings::kpulse::plugin::types::RunType;
use crate::error::{Error, Result};

/// Saves an event document (`tracer_type = "event"`); `data` must serialize to a JSON
/// object. Returns the document's `tracer_id`.
pub fn save<T: Serialize + ?Sized>(
    name: &str,
    container_id: &str,
    time: SystemTime,
    data: &T,
) -> Result<String> {
    save_as(name, container_id, time, data, RunType::Event)
}

/// Saves an autotracing document (`tracer_type = "autotracing"`): context captured because
/// a threshold tripped.
pub fn save_autotracing<T: Serialize + ?Sized>(
    name: &str,
    container_id: &str,
    time: SystemTime,
    data: &T,
) -> Result<String> {
    save_as(name, container_id, time, data, RunType::Autotracing)
}

fn save_as<T: Serialize + ?Sized>(
    name: &str,
    container_id: &str,
    time: SystemTime,
    data: &T,
    run_type: RunType,
) -> Result<String> {
    let json = serde_json::to_string(data)?;
    let time_ns = time
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    raw::save(name, container_id, time_ns, &json, run_type)
        .map_err(|code| Error::host(code, format!("save {name} document")))
}

/// The current wall-clock time from the host.
pub fn now() -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_nanos(crate::bindings::kpulse::plugin::clock::now_ns())
}
