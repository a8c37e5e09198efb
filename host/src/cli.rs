//! Command line: `kpulse run`, `kpulse plugins inspect|validate|load|record|replay`,
//! `kpulse config check`, and the commands for a running agent (`kpulse status`, `kpulse
//! events`, in [`crate::remote`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::config::{Config, PolicyConfig, StorageConfig};
use crate::fsaccess::FsAccess;
use crate::host_api::Services;
use crate::hostinfo::HostInfo;
use crate::plugins::{describe_with, validate};
use crate::runtime::Runtime;
use crate::storage::Store;

/// kpulse: kernel observability with sandboxed WebAssembly collectors.
#[derive(Debug, Parser)]
#[command(name = "kpulse", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default when no command is given).
    Run(RunArgs),
    /// Work with plugin files without running the agent.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show a running agent's plugins as a table (GET /plugins).
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the /plugins JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Print a running agent's stored event documents, oldest first, or with --follow the
    /// new ones as they are saved (GET /events, GET /events/watch).
    Events {
        #[command(flatten)]
        api: ApiArgs,
        /// Keep printing documents as the agent saves them (Server-Sent Events).
        #[arg(long, short)]
        follow: bool,
        /// Only this tracer's documents (exact name).
        #[arg(long)]
        tracer: Option<String>,
        /// Only documents of containers whose id starts with this.
        #[arg(long)]
        container: Option<String>,
        /// Only documents since this time (RFC 3339 or Unix seconds); not with --follow.
        #[arg(long)]
        since: Option<String>,
        /// At most this many stored documents (1 to 10000) [default: 100]; not with --follow.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON document a line (NDJSON) instead of the pretty lines.
        #[arg(long)]
        json: bool,
    },
    /// List the HTTP API's routes (method and path template), one a line.
    Routes,
}

/// Where the running agent's API is.
#[derive(Debug, Clone, clap::Args)]
struct ApiArgs {
    /// The agent's API base URL [default: KPULSE_API, else the config's [http] listen, else
    /// http://127.0.0.1:19704]. A bearer token for mutating routes comes from KPULSE_TOKEN or
    /// the config.
    #[arg(long)]
    api: Option<String>,
    /// The agent's config file, for its listen address and bearer token.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ApiArgs {
    fn resolve(&self) -> anyhow::Result<crate::remote::Api> {
        crate::remote::Api::resolve(self.api.as_deref(), self.config.as_deref())
    }
}

#[derive(Debug, Default, clap::Args)]
struct RunArgs {
    /// Agent config file (TOML); every key is documented in kpulse.example.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Plugin directory, scanned and watched for *.wasm [default: target/plugins].
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Data directory for the local event store and compile cache [default: kpulse-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 0.0.0.0:19704].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Region written into documents and metrics.
    #[arg(long)]
    region: Option<String>,
    /// node_exporter-style web config (TLS, basic auth); overrides [http] web_config_file.
    #[arg(long = "web.config.file")]
    web_config_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// Print what a plugin describes and which capabilities it requests, without starting it.
    Inspect { file: PathBuf },
    /// Check that a file is a loadable kpulse plugin; exit code 0 if it is.
    Validate { file: PathBuf },
    /// Validate a plugin, then install it into the plugin directory as <name>.wasm (written
    /// under a hidden name, then renamed), where a running agent picks it up.
    Load {
        file: PathBuf,
        /// The plugin directory [default: the config's plugin_dir, else target/plugins].
        #[arg(long)]
        plugin_dir: Option<PathBuf>,
        /// The agent's config file, for its plugin_dir.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run one plugin against the live kernel and record the ring-buffer batches it receives.
    Record {
        /// A plugin name (looked up as `<plugin-dir>/<name>.wasm`) or a .wasm path.
        plugin: String,
        /// How long to record, e.g. 10s, 500ms, 2m.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Duration,
        /// The recording file to write.
        out: PathBuf,
        /// Agent config whose `[plugins.<name>]` table applies.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        plugin_dir: Option<PathBuf>,
    },
    /// Feed a recording to a plugin offline (BPF faked: no kernel objects, no root); prints
    /// the documents it saves as NDJSON, oldest first.
    Replay {
        /// A plugin name (looked up as `<plugin-dir>/<name>.wasm`) or a .wasm path.
        plugin: String,
        /// A file written by `kpulse plugins record`.
        recording: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        plugin_dir: Option<PathBuf>,
    },
}

/// `10s`, `500ms`, `2m`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |at| text.split_at(at));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
        return Err(format!("{text:?} must be between 1ms and 24h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a config file; exit code 0 if it is valid.
    Check { file: PathBuf },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: `run.sh > file` and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kpulse: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
            Command::Run(args) => run(args).await,
            Command::Plugins(PluginsCommand::Inspect { file }) => inspect(&file).await,
            Command::Plugins(PluginsCommand::Validate { file }) => validate_file(&file).await,
            Command::Plugins(PluginsCommand::Load {
                file,
                plugin_dir,
                config,
            }) => load(&file, plugin_dir, config.as_deref()).await,
            Command::Status { api, json } => crate::remote::status(&api.resolve()?, json).await,
            Command::Events {
                api,
                follow,
                tracer,
                container,
                since,
                limit,
                json,
            } => {
                let args = crate::remote::EventsArgs {
                    follow,
                    tracer,
                    container,
                    since,
                    limit,
                    json,
                };
                crate::remote::events(&api.resolve()?, &args).await
            }
            Command::Routes => crate::remote::routes(),
            Command::Plugins(PluginsCommand::Record {
                plugin,
                duration,
                out,
                config,
                plugin_dir,
            }) => record(&plugin, duration, &out, config.as_deref(), plugin_dir).await,
            Command::Plugins(PluginsCommand::Replay {
                plugin,
                recording,
                config,
                plugin_dir,
            }) => replay(&plugin, &recording, config.as_deref(), plugin_dir).await,
            Command::Config(ConfigCommand::Check { file }) => {
                Config::load(&file)?;
                print_line(&format!("{}: ok", file.display()))
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `kpulse ... | head -1`: the reader has what it wanted; nothing to report.
        Err(err) if crate::remote::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kpulse: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = args.plugin_dir {
        config.plugin_dir = dir;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.http.listen = listen;
    }
    if let Some(region) = args.region {
        config.region = region;
    }
    if let Some(file) = args.web_config_file {
        config.http.web_config_file = Some(file);
    }
    crate::agent::run(config).await
}

/// Compiles and describes a plugin with default limits and no writes anywhere.
async fn describe_file(
    file: &Path,
) -> anyhow::Result<(
    crate::plugins::Description,
    crate::runtime::Prepared,
    Vec<String>,
)> {
    let wasm = std::fs::read(file)
        .map_err(|err| anyhow::anyhow!("{}: cannot read: {err}", file.display()))?;
    let runtime = Runtime::new(None)?;
    let prepared = runtime.prepare(file, &wasm)?;
    let imports = {
        let component = prepared.pre.instance_pre().component();
        let ty = component.component_type();
        ty.imports(runtime.engine())
            .map(|(name, _)| name.to_owned())
            .collect()
    };
    let host = HostInfo::detect("inspect");
    let store = Store::start(
        &StorageConfig {
            local: false,
            ..StorageConfig::default()
        },
        Path::new("/nonexistent"),
        host.clone(),
    )?;
    let services = Arc::new(Services {
        fs: FsAccess::open(&PolicyConfig::default()),
        store,
        host,
        runtime: tokio::runtime::Handle::current(),
        recorder: None,
        replay: false,
        containers: crate::containers::Registry::empty(Default::default()),
        // Describing, recording and replaying never profile.
        profiler: crate::profiler::Profiler::disabled(),
        metrics: crate::metrics::AgentMetrics::new("kpulse"),
    });
    let pre = prepared.pre.clone();
    let described = tokio::task::spawn_blocking(move || {
        describe_with(
            &runtime,
            services,
            &pre,
            Duration::from_secs(1),
            64 * 1024 * 1024,
        )
    })
    .await?
    .map_err(|message| anyhow::anyhow!("{}: describe failed: {message}", file.display()))?;
    Ok((described, prepared, imports))
}

async fn inspect(file: &Path) -> anyhow::Result<()> {
    let (info, prepared, imports) = describe_file(file).await?;
    let defaults = PolicyConfig::default();
    let policy = FsAccess::open(&defaults);
    let granted = policy.grant(&info.read_prefixes());
    let capabilities: Vec<_> = info
        .capabilities
        .iter()
        .map(|cap| {
            let by_policy = |allow: &[String]| {
                if crate::bpf::policy_allows(allow, &info.name, &prepared.sha256, true).is_ok() {
                    "granted by the default policy"
                } else {
                    "denied by the default policy (add the name or sha256 to the allow list)"
                }
            };
            let status = match (cap.as_str(), cap.strip_prefix("read:")) {
                (_, Some(prefix)) if granted.covers(prefix) => "granted by the default policy",
                (_, Some(_)) => "denied by the default policy",
                ("bpf", None) => by_policy(&defaults.bpf_allow),
                ("kallsyms", None) => by_policy(&defaults.kallsyms_allow),
                ("rx-timestamps", None) => "granted",
                ("statfs", None) => {
                    if crate::containers::policy_allows(
                        &defaults.statfs_allow,
                        &info.name,
                        &prepared.sha256,
                    ) {
                        "granted by the default policy"
                    } else {
                        "denied by the default policy"
                    }
                }
                ("containers", None) => {
                    if crate::containers::policy_allows(
                        &defaults.containers_allow,
                        &info.name,
                        &prepared.sha256,
                    ) {
                        "granted by the default policy"
                    } else {
                        "denied by the default policy"
                    }
                }
                _ => "unknown to this host: never granted",
            };
            json!({"capability": cap, "status": status})
        })
        .collect();
    let report = json!({
        "file": file.display().to_string(),
        "sha256": prepared.sha256,
        "name": info.name,
        "version": info.version,
        "kinds": info.kinds.names(),
        "restart_interval_secs": info.restart_interval_secs,
        "summary": info.summary,
        "capabilities": capabilities,
        "imports": imports,
        "bpf_objects": crate::bpf::embedded_objects(&std::fs::read(file)?),
        "valid": validate(&info).err().map_or_else(|| json!(true), |e| json!(e)),
    });
    print_line(&serde_json::to_string_pretty(&report)?)
}

/// Prints `text` and a newline; a closed stdout is an error (see [`crate::remote::Out`]),
/// not a `println!` panic.
fn print_line(text: &str) -> anyhow::Result<()> {
    let mut out = crate::remote::Out::new();
    out.line(text)?;
    out.flush()?;
    Ok(())
}

/// Describes and validates `file` as `kpulse plugins validate` does; its description.
async fn validated(file: &Path) -> anyhow::Result<crate::plugins::Description> {
    let (info, _, _) = describe_file(file).await?;
    validate(&info)
        .map_err(|message| anyhow::anyhow!("{}: invalid description: {message}", file.display()))?;
    Ok(info)
}

/// The name of a valid plugin file (for `kpulse plugins load`).
pub(crate) async fn validated_name(file: &Path) -> anyhow::Result<String> {
    Ok(validated(file).await?.name)
}

async fn validate_file(file: &Path) -> anyhow::Result<()> {
    let info = validated(file).await?;
    print_line(&format!(
        "{}: ok: plugin {} {} ({})",
        file.display(),
        info.name,
        info.version,
        info.kinds.names().join("+")
    ))
}

async fn load(
    file: &Path,
    plugin_dir: Option<PathBuf>,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    let plugin_dir = match plugin_dir {
        Some(dir) => dir,
        None => match config {
            Some(path) => Config::load(path)?.plugin_dir,
            None => Config::default().plugin_dir,
        },
    };
    let installed = crate::remote::load(file, &plugin_dir).await?;
    print_line(&format!(
        "{}: valid; installed as {}",
        file.display(),
        installed.display()
    ))
}

/// A one-plugin agent without HTTP or watcher, for record and replay.
struct MiniAgent {
    manager: Arc<crate::plugins::PluginManager>,
    store: Store,
    file: PathBuf,
    data_dir: PathBuf,
}

impl MiniAgent {
    async fn start(
        plugin: &str,
        config: Option<&Path>,
        plugin_dir: Option<PathBuf>,
        recorder: Option<Arc<crate::record::Recorder>>,
        replay: bool,
    ) -> anyhow::Result<Self> {
        let mut config = match config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let file = if plugin.ends_with(".wasm") || plugin.contains('/') {
            PathBuf::from(plugin)
        } else {
            plugin_dir
                .unwrap_or_else(|| config.plugin_dir.clone())
                .join(format!("{plugin}.wasm"))
        };
        let file = std::fs::canonicalize(&file)
            .map_err(|err| anyhow::anyhow!("{}: {err}", file.display()))?;
        let data_dir = std::env::temp_dir().join(format!("kpulse-mini-{}", std::process::id()));
        config.data_dir = data_dir.clone();
        config.runtime.compile_cache = false;
        let config = Arc::new(config);
        let host = HostInfo::detect(&config.region);
        let store = Store::start(&config.storage, &data_dir, host.clone())?;
        let services = Arc::new(Services {
            fs: FsAccess::open(&config.policy),
            store: store.clone(),
            host,
            runtime: tokio::runtime::Handle::current(),
            recorder,
            replay,
            containers: crate::containers::Registry::empty(Default::default()),
            // Describing, recording and replaying never profile.
            profiler: crate::profiler::Profiler::disabled(),
            metrics: crate::metrics::AgentMetrics::new(&config.metrics.prefix),
        });
        let manager = Arc::new(crate::plugins::PluginManager::new(
            Runtime::new(None)?,
            services,
            config,
        ));
        manager.load_file(&file).await?;
        let handle = manager
            .handles()
            .await
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("{}: not loaded", file.display()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let state = handle.state();
            if state == crate::plugins::stats::PluginState::Running {
                break;
            }
            if state != crate::plugins::stats::PluginState::Starting
                || tokio::time::Instant::now() > deadline
            {
                let error = handle.status.lock().ok().and_then(|s| s.last_error.clone());
                anyhow::bail!(
                    "{}: plugin is {} ({})",
                    file.display(),
                    state.as_str(),
                    error.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self {
            manager,
            store,
            file,
            data_dir,
        })
    }

    async fn stop(self) {
        self.manager.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

async fn record(
    plugin: &str,
    duration: Duration,
    out: &Path,
    config: Option<&Path>,
    plugin_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let host = HostInfo::detect("record");
    let metadata = json!({
        "plugin": plugin,
        "hostname": host.hostname,
        "kernel": host.kernel_release,
        "recorded_at": chrono::Utc::now().to_rfc3339(),
        "seconds": duration.as_secs_f64(),
    });
    let recorder = Arc::new(
        crate::record::Recorder::create(out, &metadata)
            .map_err(|err| anyhow::anyhow!("{}: {err}", out.display()))?,
    );
    let agent = MiniAgent::start(plugin, config, plugin_dir, Some(recorder.clone()), false).await?;
    eprintln!("recording {} for {:?} ...", agent.file.display(), duration);
    tokio::time::sleep(duration).await;
    agent.stop().await;
    recorder.finish()?;
    eprintln!(
        "wrote {} batches to {}",
        recorder.batches.load(std::sync::atomic::Ordering::Relaxed),
        out.display()
    );
    Ok(())
}

async fn replay(
    plugin: &str,
    recording: &Path,
    config: Option<&Path>,
    plugin_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (_, frames) = crate::record::read(recording).map_err(anyhow::Error::msg)?;
    let agent = MiniAgent::start(plugin, config, plugin_dir, None, true).await?;
    let handle = agent
        .manager
        .handles()
        .await
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("plugin vanished"))?;
    let mut records = 0usize;
    for frame in &frames {
        records += crate::record::count_records(&frame.records);
        handle
            .deliver(frame.subscription, frame.records.clone())
            .await
            .map_err(anyhow::Error::msg)?;
    }
    // Let the writer drain, then print what the plugin saved.
    let stats = agent.store.stats();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stats.queued.load(std::sync::atomic::Ordering::Relaxed) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut documents = agent.store.query(&crate::storage::EventQuery {
        tracer: None,
        container: None,
        since: None,
        until: None,
        limit: 100_000,
    })?;
    documents.reverse();
    let mut out = crate::remote::Out::new();
    for document in &documents {
        out.line(&document.to_string())?;
    }
    out.flush()?;
    let traps = handle
        .stats
        .traps
        .load(std::sync::atomic::Ordering::Relaxed);
    let errors = handle
        .stats
        .call_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "replayed {} batches ({records} records) into {}: {} documents, {errors} call errors, {traps} traps",
        frames.len(),
        agent.file.display(),
        documents.len()
    );
    agent.stop().await;
    if traps > 0 {
        anyhow::bail!("the plugin trapped during replay");
    }
    Ok(())
}
