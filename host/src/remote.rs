//! The command line's view of a running agent: `kpulse status`, `kpulse events` and
//! `kpulse plugins load`, over the agent's own HTTP API (the same routes an operator would
//! `curl`), plus `kpulse routes`. Output goes through [`Out`], so that a closed pipe
//! (`kpulse events --follow | head -1`) ends the command quietly instead of panicking.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use crate::config::Config;

/// The default API address when neither `--api`, `KPULSE_API` nor a config says otherwise.
pub const DEFAULT_API: &str = "http://127.0.0.1:19704";

/// Where the agent's API is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://host:port` or `https://host:port`, without a trailing slash.
    pub base: String,
    /// The `[http] bearer_token` for mutating routes, when one is configured.
    pub token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// `--api` (or `KPULSE_API`) wins; otherwise the config's `[http] listen` (an unspecified
    /// address like 0.0.0.0 is asked on loopback); otherwise [`DEFAULT_API`]. The bearer
    /// token comes from `KPULSE_TOKEN`, else the config.
    pub fn resolve(api: Option<&str>, config: Option<&Path>) -> anyhow::Result<Self> {
        let config = config.map(Config::load).transpose()?;
        let from_env = std::env::var("KPULSE_API").ok().filter(|a| !a.is_empty());
        let base = match api.map(str::to_owned).or(from_env).as_deref() {
            Some(api) => api.trim_end_matches('/').to_owned(),
            None => match &config {
                Some(config) => {
                    let mut addr = config.http.listen;
                    if addr.ip().is_unspecified() {
                        addr.set_ip(if addr.is_ipv6() {
                            std::net::Ipv6Addr::LOCALHOST.into()
                        } else {
                            std::net::Ipv4Addr::LOCALHOST.into()
                        });
                    }
                    let scheme = if config.http.web_config_file.is_some() {
                        // Only a guess: the web config may enable TLS; --api says for sure.
                        "https"
                    } else {
                        "http"
                    };
                    format!("{scheme}://{addr}")
                }
                None => DEFAULT_API.to_owned(),
            },
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--api must be an http:// or https:// URL, got {base:?}");
        }
        let token = std::env::var("KPULSE_TOKEN").ok().or_else(|| {
            config
                .as_ref()
                .and_then(|c| c.http.bearer_token.as_ref())
                .map(|t| t.expose().to_owned())
        });
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { base, token, http })
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    /// GETs a JSON reply; an error envelope or a non-2xx status becomes the error.
    async fn get_json(&self, path_and_query: &str) -> anyhow::Result<Value> {
        let url = self.url(path_and_query);
        let response = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("cannot reach the agent at {url} (is it running? --api)"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("{url}: reading the reply"))?;
        let value: Value = serde_json::from_slice(&body).with_context(|| {
            format!(
                "{url}: HTTP {status}, not JSON: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )
        })?;
        if !status.is_success() {
            bail!("{url}: HTTP {status}: {}", error_message(&value));
        }
        Ok(value)
    }
}

fn error_message(value: &Value) -> String {
    value["error"]["message"]
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// Buffered stdout whose write errors propagate (no `println!` panic on a closed pipe).
pub struct Out(std::io::BufWriter<std::io::Stdout>);

impl Out {
    pub fn new() -> Self {
        Self(std::io::BufWriter::new(std::io::stdout()))
    }

    pub fn line(&mut self, text: &str) -> std::io::Result<()> {
        self.0.write_all(text.as_bytes())?;
        self.0.write_all(b"\n")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Default for Out {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `err` is, somewhere in its chain, a write to a pipe whose reader has gone.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `kpulse routes`: every route of the HTTP API as `METHOD TEMPLATE`.
pub fn routes() -> anyhow::Result<()> {
    let mut out = Out::new();
    for route in crate::http::ROUTES {
        out.line(&format!("{} {}", route.method, route.template))?;
    }
    out.flush()?;
    Ok(())
}

/// `kpulse status`: the agent's plugins as a table (or the `/plugins` JSON with `--json`).
pub async fn status(api: &Api, json: bool) -> anyhow::Result<()> {
    let plugins = api.get_json("/plugins").await?;
    let mut out = Out::new();
    if json {
        out.line(&serde_json::to_string_pretty(&plugins)?)?;
        return Ok(out.flush()?);
    }
    let rows = plugins
        .as_array()
        .ok_or_else(|| anyhow!("/plugins: expected a JSON array, got {plugins}"))?;
    out.line(&status_table(rows))?;
    Ok(out.flush()?)
}

/// The plugins table: one line per plugin, columns padded to their widest cell.
fn status_table(rows: &[Value]) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join("+"),
        other => other.to_string(),
    };
    let mut table: Vec<[String; 7]> = vec![[
        "NAME".into(),
        "STATE".into(),
        "VERSION".into(),
        "KINDS".into(),
        "CALLS".into(),
        "RESTARTS".into(),
        "LAST ERROR".into(),
    ]];
    let mut sorted: Vec<&Value> = rows.iter().collect();
    sorted.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    for row in sorted {
        let mut error = text(&row["last_error"]).replace('\n', " ");
        if error.chars().count() > 60 {
            error = error.chars().take(59).collect::<String>() + "…";
        }
        table.push([
            text(&row["name"]),
            text(&row["state"]),
            text(&row["version"]),
            text(&row["kinds"]),
            text(&row["hits"]),
            text(&row["restarts"]),
            error,
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut lines = Vec::with_capacity(table.len() + 1);
    for row in &table {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        lines.push(line.trim_end().to_owned());
    }
    let running = rows.iter().filter(|r| r["state"] == "running").count();
    lines.push(format!("{} plugins, {running} running", rows.len()));
    lines.join("\n")
}

/// What `kpulse events` asks for.
#[derive(Debug, Clone, Default)]
pub struct EventsArgs {
    pub follow: bool,
    pub tracer: Option<String>,
    pub container: Option<String>,
    pub since: Option<String>,
    pub limit: Option<usize>,
    pub json: bool,
}

/// `kpulse events`: stored documents oldest first (`/events`), or with `--follow` the new
/// ones as they are saved (`/events/watch`, Server-Sent Events); one line each, pretty or
/// NDJSON (`--json`).
pub async fn events(api: &Api, args: &EventsArgs) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(tracer) = &args.tracer {
        query.push(("tracer", tracer.clone()));
    }
    if let Some(container) = &args.container {
        query.push(("container", container.clone()));
    }
    let mut out = Out::new();
    if args.follow {
        if args.since.is_some() || args.limit.is_some() {
            bail!("--since and --limit apply to stored events, not to --follow");
        }
        return follow(api, &query, args.json, &mut out).await;
    }
    if let Some(since) = &args.since {
        query.push(("since", since.clone()));
    }
    query.push(("limit", args.limit.unwrap_or(100).to_string()));
    let documents = api
        .get_json(&format!("/events?{}", encode_query(&query)))
        .await?;
    let documents = documents
        .as_array()
        .ok_or_else(|| anyhow!("/events: expected a JSON array, got {documents}"))?;
    // The API answers newest first; a terminal reads oldest first, like `--follow` goes on.
    for document in documents.iter().rev() {
        out.line(&render(document, args.json))?;
    }
    Ok(out.flush()?)
}

async fn follow(
    api: &Api,
    query: &[(&str, String)],
    json: bool,
    out: &mut Out,
) -> anyhow::Result<()> {
    let url = api.url(&format!("/events/watch?{}", encode_query(query)));
    let mut response = api
        .http
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .with_context(|| format!("cannot reach the agent at {url} (is it running? --api)"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&body)
            .map(|v| error_message(&v))
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        bail!("{url}: HTTP {status}: {message}");
    }
    let mut parser = SseParser::default();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("{url}: the stream broke"))?
    {
        for event in parser.push(&chunk) {
            match event.name.as_str() {
                "document" => match serde_json::from_str::<Value>(&event.data) {
                    Ok(document) => out.line(&render(&document, json))?,
                    Err(err) => eprintln!("kpulse: skipping an undecodable document: {err}"),
                },
                "dropped" => eprintln!(
                    "kpulse: the agent dropped {} documents this client was too slow for",
                    event.data.trim()
                ),
                _ => {}
            }
        }
        // Each document as it comes: a follower is read by a person or a pipe, not batched.
        out.flush()?;
    }
    bail!("{url}: the agent closed the stream")
}

fn encode_query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// One document as a line: NDJSON, or `time tracer container-or-host data`.
fn render(document: &Value, json: bool) -> String {
    if json {
        return document.to_string();
    }
    let field = |key: &str| document[key].as_str().unwrap_or("");
    let origin = [
        field("container_name"),
        field("container_id"),
        field("hostname"),
    ]
    .into_iter()
    .find(|s| !s.is_empty())
    .unwrap_or("-");
    format!(
        "{} {:<20} {:<20} {}",
        field("tracer_time"),
        field("tracer_name"),
        origin,
        document["tracer_data"]
    )
}

/// A Server-Sent Event: its `event:` name (`message` when absent) and joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: String,
    pub data: String,
}

/// Incremental SSE parser (the WHATWG event-stream format): bytes in, complete events out,
/// chunks split anywhere, comments (`: ping`) ignored.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    name: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw[..raw.len() - 1]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(SseEvent {
                        name: self.name.take().unwrap_or_else(|| "message".to_owned()),
                        data: self.data.join("\n"),
                    });
                }
                self.name = None;
                self.data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.name = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        events
    }
}

/// `kpulse plugins load FILE.wasm`: validates the component as `kpulse plugins validate`
/// does, then installs it into the plugin directory as `<plugin name>.wasm`, written under a
/// hidden temporary name and renamed into place, so that the agent's directory watcher never
/// sees a half-written file. Returns the installed path.
pub async fn load(file: &Path, plugin_dir: &Path) -> anyhow::Result<PathBuf> {
    let name = crate::cli::validated_name(file).await?;
    let meta = std::fs::metadata(plugin_dir)
        .with_context(|| format!("plugin directory {}", plugin_dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", plugin_dir.display());
    }
    let target = plugin_dir.join(format!("{name}.wasm"));
    let tmp = plugin_dir.join(format!(".{name}.wasm.tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut source = std::fs::File::open(file)?;
        let mut dest = std::fs::File::create(&tmp)?;
        std::io::copy(&mut source, &mut dest)?;
        // On disk before the rename makes it visible: a crash leaves the old file or the new.
        dest.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow!(
            "installing {} as {}: {err}",
            file.display(),
            target.display()
        ));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_survive_any_chunking() {
        let stream =
            b": ping\n\nevent: document\ndata: {\"a\":1}\n\nevent: dropped\r\ndata: 3\r\n\r\n";
        for split in 0..stream.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&stream[..split]);
            events.extend(parser.push(&stream[split..]));
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        name: "document".into(),
                        data: "{\"a\":1}".into()
                    },
                    SseEvent {
                        name: "dropped".into(),
                        data: "3".into()
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            encode_query(&[("tracer", "a b&c".into()), ("limit", "5".into())]),
            "tracer=a%20b%26c&limit=5"
        );
    }

    #[test]
    fn table_lists_plugins_sorted_with_a_total() {
        let rows: Vec<Value> = serde_json::from_str(
            r#"[{"name":"oom","state":"running","version":"0.1.0","kinds":["event"],"hits":3,"restarts":0,"last_error":null},
                {"name":"dcb","state":"inactive","version":"0.1.0","kinds":["metric"],"hits":0,"restarts":0,"last_error":"no DCB\nhardware"}]"#,
        )
        .expect("rows");
        let table = status_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{table}");
        assert!(lines[1].starts_with("dcb "), "{table}");
        assert!(lines[1].ends_with("no DCB hardware"), "{table}");
        assert!(lines[2].starts_with("oom "), "{table}");
        assert_eq!(lines[3], "2 plugins, 1 running");
    }

    #[test]
    fn a_closed_pipe_is_recognised_through_context() {
        let err = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow!("other")));
    }
}
