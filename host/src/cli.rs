//! Command line: `kpulse run`, `kpulse plugins inspect|validate`, `kpulse config check`.

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
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// Print what a plugin describes and which capabilities it requests, without starting it.
    Inspect { file: PathBuf },
    /// Check that a file is a loadable kpulse plugin; exit code 0 if it is.
    Validate { file: PathBuf },
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
            Command::Config(ConfigCommand::Check { file }) => {
                Config::load(&file)?;
                println!("{}: ok", file.display());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
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
    let policy = FsAccess::open(&PolicyConfig::default());
    let granted = policy.grant(&info.read_prefixes());
    let capabilities: Vec<_> = info
        .capabilities
        .iter()
        .map(|cap| {
            let status = match cap.strip_prefix("read:") {
                Some(prefix) if granted.covers(prefix) => "granted by the default policy",
                Some(_) => "denied by the default policy",
                None => "unknown to this host: never granted",
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
        "valid": validate(&info).err().map_or_else(|| json!(true), |e| json!(e)),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn validate_file(file: &Path) -> anyhow::Result<()> {
    let (info, _, _) = describe_file(file).await?;
    validate(&info)
        .map_err(|message| anyhow::anyhow!("{}: invalid description: {message}", file.display()))?;
    println!(
        "{}: ok: plugin {} {} ({})",
        file.display(),
        info.name,
        info.version,
        info.kinds.names().join("+")
    );
    Ok(())
}
