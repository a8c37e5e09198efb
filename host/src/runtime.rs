//! The wasm runtime: one `Engine` and one `Linker` for the whole agent, a compile cache on
//! disk, and the epoch ticker that enforces per-call deadlines.
//!
//! Guests get WASI with no ambient authority (no preopened directories, environment,
//! arguments or sockets); everything else they can do goes through the `kpulse:plugin`
//! imports implemented in [`crate::host_api`]. The bindings are in [`crate::wit`].
//!
//! The epoch ticker only runs while some guest call is in progress ([`Runtime::deadline`]
//! hands out a guard per call), so an idle agent does not wake 100 times a second.

pub mod compiler;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::Digest;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use crate::host_api::HostState;
use crate::wit::{Plugin, PluginPre, WIT_PACKAGE};

/// Length of one epoch tick. Deadlines are rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a component could not be compiled or prepared.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
    #[error("{file}: not a valid kpulse plugin component: {message}")]
    Compile { file: String, message: String },
    #[error("{file}: does not satisfy the {WIT_PACKAGE} world: {message}")]
    Link { file: String, message: String },
    #[error(
        "{file}: built for {theirs}, but this host implements {WIT_PACKAGE}: rebuild the plugin against a kpulse-sdk for {WIT_PACKAGE}"
    )]
    Version { file: String, theirs: String },
}

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    Compiled,
    Cached,
}

/// A compiled plugin, ready to instantiate many times cheaply.
#[derive(Clone)]
pub struct Prepared {
    pub pre: PluginPre<HostState>,
    pub sha256: String,
    pub source: CompileSource,
    pub compile_time: Duration,
}

/// The shared engine and linker.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache_dir: Option<PathBuf>,
    engine_hash: String,
    ticker: Arc<EpochTicker>,
    /// The executable to compile in (see [`compiler`]); `None` compiles in process.
    compiler: Option<PathBuf>,
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while at least one guest call runs,
/// and sleeps (parked) otherwise.
struct EpochTicker {
    calls_in_flight: AtomicUsize,
    thread: std::thread::Thread,
}

/// Held for the duration of one guest call; keeps the epoch ticker going.
#[must_use = "the deadline is only enforced while the guard lives"]
pub struct CallGuard {
    ticker: Arc<EpochTicker>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.ticker.calls_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Runtime {
    /// Creates the engine, links WASI (without grants) and the kpulse imports, and starts
    /// the epoch ticker thread.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, RuntimeError> {
        let engine = Engine::new(&compiler::engine_config())
            .map_err(|err| RuntimeError::Engine(err.to_string()))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|err| RuntimeError::Engine(err.to_string()))?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|err| RuntimeError::Engine(err.to_string()))?;

        let engine_hash = {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        };
        // Not fatal (a read-only or full data directory): without its cache the agent
        // compiles every component at start, which is slower and otherwise the same.
        let cache_dir = cache_dir.filter(|dir| match create_private_dir(dir) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(dir = %dir.display(), %err, "compile cache unusable; compiling without it");
                false
            }
        });

        let ticking = engine.clone();
        let (thread_tx, thread_rx) = std::sync::mpsc::channel::<Arc<EpochTicker>>();
        let thread = std::thread::Builder::new()
            .name("kpulse-epoch".to_owned())
            .spawn(move || {
                let Ok(ticker) = thread_rx.recv() else {
                    return;
                };
                loop {
                    if ticker.calls_in_flight.load(Ordering::Acquire) == 0 {
                        // Woken by the next call's guard (or spuriously: then look again).
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|err| RuntimeError::Engine(format!("cannot start epoch ticker: {err}")))?;
        let ticker = Arc::new(EpochTicker {
            calls_in_flight: AtomicUsize::new(0),
            thread: thread.thread().clone(),
        });
        thread_tx
            .send(ticker.clone())
            .map_err(|_| RuntimeError::Engine("epoch ticker exited".to_owned()))?;

        Ok(Self {
            engine,
            linker: Arc::new(linker),
            cache_dir,
            engine_hash,
            ticker,
            compiler: None,
        })
    }

    /// Compiles in child processes running `exe` (`kpulse __compile`) rather than in this
    /// one, so a long-lived agent keeps none of Cranelift's code or working memory resident.
    /// Falls back to compiling in process when the child cannot be run.
    pub fn compile_in_child(mut self, exe: PathBuf) -> Self {
        self.compiler = Some(exe);
        self
    }

    /// Sets the deadline of the next guest call on `store` and keeps the epoch ticking
    /// until the returned guard is dropped, which must be after the call.
    pub fn deadline<T>(&self, store: &mut Store<T>, ticks: u64) -> CallGuard {
        store.set_epoch_deadline(ticks);
        if self.ticker.calls_in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.ticker.thread.unpark();
        }
        CallGuard {
            ticker: self.ticker.clone(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The `kpulse:plugin@<version>` a component imports, when it is not this host's.
    fn other_contract(&self, component: &Component) -> Option<String> {
        let ours = WIT_PACKAGE.split_once('@').map(|(_, v)| v)?;
        component
            .component_type()
            .imports(&self.engine)
            .find_map(|(name, _)| {
                let rest = name.strip_prefix("kpulse:plugin/")?;
                let (_, version) = rest.split_once('@')?;
                (version != ours).then(|| format!("kpulse:plugin@{version}"))
            })
    }

    /// Compiles (or loads from the cache) and links a component.
    pub fn prepare(&self, file: &Path, wasm: &[u8]) -> Result<Prepared, RuntimeError> {
        let started = Instant::now();
        let sha256 = hex::encode(sha2::Sha256::digest(wasm));
        let file_name = file.display().to_string();
        let (component, source) = self.compile_cached(&file_name, &sha256, wasm)?;
        if let Some(theirs) = self.other_contract(&component) {
            return Err(RuntimeError::Version {
                file: file_name,
                theirs,
            });
        }
        let instance_pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|err| RuntimeError::Link {
                    file: file_name.clone(),
                    message: format!("{err:#}"),
                })?;
        let pre = PluginPre::new(instance_pre).map_err(|err| RuntimeError::Link {
            file: file_name,
            message: format!("{err:#}"),
        })?;
        release_load_only_pages(&component);
        Ok(Prepared {
            pre,
            sha256,
            source,
            compile_time: started.elapsed(),
        })
    }

    fn compile_cached(
        &self,
        file: &str,
        sha256: &str,
        wasm: &[u8],
    ) -> Result<(Component, CompileSource), RuntimeError> {
        let compile_error = |err: wasmtime::Error| RuntimeError::Compile {
            file: file.to_owned(),
            message: format!("{err:#}"),
        };
        let Some(dir) = &self.cache_dir else {
            if self.compiler.is_some() {
                let bytes = self.precompile(file, wasm)?;
                // SAFETY: `bytes` was produced just now by `precompile` for this engine's
                // configuration.
                #[allow(unsafe_code, reason = "deserializing bytes compiled for this engine")]
                let component = unsafe { Component::deserialize(&self.engine, &bytes) }
                    .map_err(compile_error)?;
                return Ok((component, CompileSource::Compiled));
            }
            let component = Component::new(&self.engine, wasm).map_err(compile_error);
            crate::heap::release_free_heap();
            let component = component?;
            return Ok((component, CompileSource::Compiled));
        };
        let artifact = dir.join(format!("{sha256}-{}.cwasm", self.engine_hash));
        if is_own_artifact(&artifact) {
            // SAFETY: the artifact is in the host's private cache directory, owned by this
            // user and not writable by others: only this host's `precompile_component` wrote
            // it, for this engine configuration (its hash is in the name).
            #[allow(unsafe_code, reason = "deserializing artifacts this host compiled")]
            let loaded = unsafe { Component::deserialize_file(&self.engine, &artifact) };
            match loaded {
                Ok(component) => return Ok((component, CompileSource::Cached)),
                Err(err) => {
                    tracing::warn!(artifact = %artifact.display(), %err, "discarding unusable cache entry");
                    let _ = std::fs::remove_file(&artifact);
                }
            }
        }
        let bytes = self.precompile(file, wasm)?;
        // The cache directory deleted while the agent runs (a cleaner, an operator's
        // `rm -rf` of the data directory): made again, private as at start.
        let written = match write_private(&artifact, &bytes) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                create_private_dir(dir).and_then(|()| write_private(&artifact, &bytes))
            }
            written => written,
        };
        match written {
            Ok(()) => {
                // Map the artifact just written, as a cached load does: the code pages are
                // then the page cache's, not a private anonymous copy per component.
                // SAFETY: as for a cached artifact above; this host wrote it just now.
                #[allow(
                    unsafe_code,
                    reason = "deserializing the artifact this host just wrote"
                )]
                if let Ok(component) =
                    unsafe { Component::deserialize_file(&self.engine, &artifact) }
                {
                    return Ok((component, CompileSource::Compiled));
                }
            }
            Err(err) => {
                tracing::warn!(artifact = %artifact.display(), %err, "cannot write compile cache");
            }
        }
        // SAFETY: `bytes` was produced just now by `precompile` for this engine's
        // configuration.
        #[allow(unsafe_code, reason = "deserializing bytes compiled for this engine")]
        let component =
            unsafe { Component::deserialize(&self.engine, &bytes) }.map_err(compile_error)?;
        Ok((component, CompileSource::Compiled))
    }

    /// The serialized artifact of `wasm`: from a compiler process when there is one, else
    /// compiled here.
    fn precompile(&self, file: &str, wasm: &[u8]) -> Result<Vec<u8>, RuntimeError> {
        let compile_error = |message: String| RuntimeError::Compile {
            file: file.to_owned(),
            message,
        };
        if let Some(exe) = &self.compiler {
            match compiler::compile_in_child(exe, wasm) {
                Ok(bytes) => return Ok(bytes),
                Err(compiler::ChildError::Invalid(message)) => {
                    return Err(compile_error(message));
                }
                Err(err @ compiler::ChildError::Failed(_)) => {
                    return Err(compile_error(err.to_string()));
                }
                Err(err @ compiler::ChildError::Unavailable(_)) => {
                    tracing::warn!(%file, %err, "compiling in the agent instead");
                }
            }
        }
        let bytes = self
            .engine
            .precompile_component(wasm)
            .map_err(|err| compile_error(format!("{err:#}")));
        // Cranelift's working memory is freed by now; give it back rather than keep tens of
        // MiB resident after start-up.
        crate::heap::release_free_heap();
        bytes
    }

    /// A store for one plugin instance.
    pub fn store(&self, state: HostState) -> Store<HostState> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store
    }
}

/// Epoch ticks for a deadline, rounded up, plus one for the tick already under way.
pub fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_millis().max(1);
    u64::try_from(deadline.as_millis().div_ceil(tick)).unwrap_or(u64::MAX) + 1
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // Already private (a restart, or a read-only disk where it cannot be changed): as is.
    if std::fs::metadata(dir)?.permissions().mode() & 0o777 == 0o700 {
        return Ok(());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Only files this user owns and nobody else can write are trusted as artifacts.
fn is_own_artifact(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code, reason = "geteuid is always safe")]
    let euid = unsafe { libc::geteuid() };
    meta.is_file() && meta.uid() == euid && meta.mode() & 0o022 == 0
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // In small writes: the page cache then holds the artifact in small folios, and a page
    // fault in the mapped code maps only the pages around it. One large write makes large
    // folios (ext4 on recent kernels), and the first call into a component would map its
    // whole code into the agent's RSS, executed or not.
    for chunk in bytes.chunks(ARTIFACT_WRITE_CHUNK) {
        file.write_all(chunk)?;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Bytes per write of a compiled artifact (see [`write_private`]): the kernel's fault-around
/// window, so smaller writes would gain nothing.
const ARTIFACT_WRITE_CHUNK: usize = 64 * 1024;

/// Gives back the pages of a component's image outside its code: the metadata that
/// deserializing and linking read once (type and function tables, names, address maps for
/// traps). Read at load and mapped around by the kernel's fault-around, they stayed resident
/// for the agent's life, about 7 MiB for 40 plugins; a trap that needs them reads them back
/// from the artifact. The code itself stays as it is.
fn release_load_only_pages(component: &Component) {
    let image = component.image_range();
    let text = component.text().as_ptr_range();
    if image.start <= text.start && text.end <= image.end {
        crate::heap::page_out(image.start, text.start);
        crate::heap::page_out(text.end, image.end);
    }
}
