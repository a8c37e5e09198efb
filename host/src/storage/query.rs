//! Reading documents back for `GET /events`: newest first, across rotated files, skipping
//! torn lines.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Store;
use super::document::is_tracer_name;
use super::writer::rotated_path;

/// Filters of `GET /events`.
#[derive(Debug, Clone)]
pub struct EventQuery {
    pub tracer: Option<String>,
    pub container: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: usize,
}

impl Store {
    /// Documents matching `query`, newest first.
    pub fn query(&self, query: &EventQuery) -> std::io::Result<Vec<Value>> {
        let tracers: Vec<String> = match &query.tracer {
            Some(tracer) if is_tracer_name(tracer) => vec![tracer.clone()],
            Some(_) => return Ok(Vec::new()),
            None => self.tracers()?,
        };
        let mut found: Vec<(DateTime<Utc>, Value)> = Vec::new();
        for tracer in tracers {
            for path in self.files_newest_first(&tracer) {
                let matched = scan_file(&path, query)?;
                let enough = matched.len() >= query.limit;
                found.extend(matched);
                // Files are in time order, so a file that filled the limit is the last one
                // this tracer needs.
                if enough {
                    break;
                }
            }
        }
        found.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        found.truncate(query.limit);
        Ok(found.into_iter().map(|(_, doc)| doc).collect())
    }

    fn tracers(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(&self.inner.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(tracer) = name.strip_suffix(".ndjson") {
                names.push(tracer.to_owned());
            }
        }
        Ok(names)
    }

    fn files_newest_first(&self, tracer: &str) -> Vec<PathBuf> {
        let current = self.inner.dir.join(format!("{tracer}.ndjson"));
        let mut files = vec![current.clone()];
        for n in 1.. {
            let rotated = rotated_path(&current, n);
            if !rotated.exists() {
                break;
            }
            files.push(rotated);
        }
        files
    }
}

/// Matches of one file, newest first, at most `query.limit`. Unparseable lines (a torn
/// write) are skipped.
fn scan_file(path: &Path, query: &EventQuery) -> std::io::Result<Vec<(DateTime<Utc>, Value)>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut matched = Vec::new();
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { continue };
        let Ok(doc) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(at) = doc
            .get("@timestamp")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
        else {
            continue;
        };
        if query.since.is_some_and(|since| at < since)
            || query.until.is_some_and(|until| at > until)
        {
            continue;
        }
        if let Some(container) = &query.container {
            let id = doc
                .get("container_id")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !id.starts_with(container.as_str()) || container.is_empty() {
                continue;
            }
        }
        matched.push((at, doc));
    }
    matched.reverse();
    matched.truncate(query.limit);
    Ok(matched)
}
