//! Wires the subsystems together and runs the agent until SIGINT or SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;

use crate::config::Config;
use crate::fsaccess::FsAccess;
use crate::host_api::Services;
use crate::hostinfo::HostInfo;
use crate::http::AppState;
use crate::metrics::{AgentMetrics, Exposition};
use crate::plugins::PluginManager;
use crate::runtime::Runtime;
use crate::sinks::Sink;
use crate::sinks::opensearch::OpenSearchSink;
use crate::storage::Store;

/// Runs the agent with `config` until a termination signal.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.plugin_dir).with_context(|| {
        format!(
            "cannot create the plugin directory {}",
            config.plugin_dir.display()
        )
    })?;
    // The watcher reports absolute paths; the table must use the same ones.
    config.plugin_dir = std::fs::canonicalize(&config.plugin_dir).with_context(|| {
        format!(
            "cannot resolve the plugin directory {}",
            config.plugin_dir.display()
        )
    })?;
    let config = Arc::new(config);
    let host = HostInfo::detect(&config.region);
    let opensearch = match config.storage.opensearch.as_ref().filter(|o| o.enabled) {
        Some(opensearch) => Some(
            OpenSearchSink::start(
                opensearch,
                &config.data_dir,
                &tokio::runtime::Handle::current(),
            )
            .context("cannot start the OpenSearch sink")?,
        ),
        None => None,
    };
    let store = Store::start_with_sink(
        &config.storage,
        &config.data_dir,
        host.clone(),
        opensearch.clone().map(|sink| sink as Arc<dyn Sink>),
    )
    .with_context(|| {
        format!(
            "cannot open the local store in {}",
            config.data_dir.display()
        )
    })?;
    let cache = config
        .runtime
        .compile_cache
        .then(|| config.data_dir.join("cache"));
    let runtime = Runtime::new(cache)?.compile_in_child(crate::runtime::compiler::current_exe());
    let metrics = AgentMetrics::new(&config.metrics.prefix);
    crate::metrics::spawn_bpf_cost_sampler(&config.metrics, metrics.clone());
    let containers =
        crate::containers::Registry::start(config.containers.clone(), metrics.containers.clone())
            .await;
    let profiler = crate::profiler::Profiler::new(
        config.profiler.clone(),
        containers.clone(),
        metrics.profiler.clone(),
    );
    let services = Arc::new(Services {
        fs: FsAccess::open(&config.policy),
        store: store.clone(),
        host: host.clone(),
        runtime: tokio::runtime::Handle::current(),
        recorder: None,
        replay: false,
        metrics: metrics.clone(),
        containers: containers.clone(),
        profiler: profiler.clone(),
    });
    let manager = Arc::new(PluginManager::new(runtime, services, config.clone()));

    // Watch before scanning so that a file dropped in during the scan is not missed.
    let _watcher = crate::plugins::watcher::watch(
        manager.clone(),
        config.plugin_dir.clone(),
        std::time::Duration::from_millis(config.runtime.reload_debounce_ms),
    )
    .with_context(|| format!("cannot watch {}", config.plugin_dir.display()))?;

    let watch_dropped = metrics.watch_dropped.clone();
    let http_metrics = metrics.http.clone();
    let state = Arc::new(AppState {
        manager: manager.clone(),
        store,
        opensearch,
        exposition: Exposition::new(
            config.metrics.clone(),
            host.clone(),
            metrics,
            containers.clone(),
        ),
        bearer_token: config.http.bearer_token.clone(),
        ready: AtomicBool::new(false),
        containers: containers.clone(),
        watch_dropped,
        http_metrics,
        profiler,
    });
    // Before binding: a bad web config stops the agent with the file and key in the message.
    let security = match &config.http.web_config_file {
        Some(path) => crate::http::web_config::load(path)?,
        None => crate::http::web_config::WebSecurity::default(),
    };
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let server = tokio::spawn(crate::http::serve(
        state.clone(),
        listener,
        security,
        crate::http::server::Limits::of(&config.http),
        async {
            let _ = http_stopped.await;
        },
    ));

    tracing::info!(
        hostname = %host.hostname,
        region = %host.region,
        plugin_dir = %config.plugin_dir.display(),
        data_dir = %config.data_dir.display(),
        "kpulse started"
    );
    // The signal handlers are in place before the first scan: loading every plugin can take
    // a while on a cold compile cache, and a SIGTERM meanwhile must still stop the agent in
    // order (the default action would kill it without stopping what it loaded).
    let signal = wait_for_signal();
    tokio::pin!(signal);
    tokio::select! {
        () = manager.scan() => {
            state.ready.store(true, Ordering::Release);
            signal.await;
        }
        () = &mut signal => tracing::info!("stop requested while loading the plugins"),
    }
    tracing::info!("shutting down");
    manager.shutdown().await;
    let _ = stop_http.send(());
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err).context("HTTP server failed"),
        Err(err) => Err(err).context("HTTP server task failed"),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
