//! Compiling components in a short-lived child process.
//!
//! Cranelift's code (several MiB of the binary's text) and its working memory (tens of MiB
//! per component, much of which glibc keeps resident in its arenas even after `malloc_trim`,
//! because it is fragmented by what the agent allocates meanwhile) would otherwise stay part
//! of the long-lived agent for its whole life. The agent runs this same executable as
//! `kpulse __compile` instead: the component on stdin, the precompiled artifact on stdout, the
//! compiler's message on stderr. The agent then only deserializes artifacts (mapping them from
//! the compile cache), which touches none of Cranelift's pages.
//!
//! The executable is `/proc/self/exe`, so a binary replaced on disk while the agent runs still
//! compiles for the engine the agent has. A leaf: it knows the engine configuration, nothing
//! of plugins.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// The hidden first argument that makes `kpulse` a compiler process.
pub const SUBCOMMAND: &str = "__compile";

/// Exit code of a compiler process whose component did not compile (the message is on
/// stderr); any other failure is the process's own.
const EXIT_INVALID: u8 = 2;

/// The one engine configuration, shared by the agent and its compiler processes: an artifact
/// only deserializes into an engine configured the same way.
pub fn engine_config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // Guest stack use is bounded well below the 4 MiB of the actor threads.
    config.max_wasm_stack(512 * 1024);
    config
}

/// The running executable, as the compiler process to start.
pub fn current_exe() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

/// Why a compiler process gave no artifact.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The component is not valid wasm or does not compile: the compiler's own message.
    #[error("{0}")]
    Invalid(String),
    /// The process could not be started (no `/proc`, exec not allowed): compiling in the
    /// agent may still work.
    #[error("cannot start the compiler process: {0}")]
    Unavailable(String),
    /// The process failed for another reason than the component (killed, out of memory):
    /// what would have taken the agent down with it.
    #[error("compiler process failed: {0}")]
    Failed(String),
}

/// Compiles `wasm` in a child process running `exe`; returns the serialized artifact.
pub fn compile_in_child(exe: &Path, wasm: &[u8]) -> Result<Vec<u8>, ChildError> {
    let mut child = Command::new(exe)
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| ChildError::Unavailable(format!("{}: {err}", exe.display())))?;
    let mut stdin = child.stdin.take();
    // The child reads all of stdin before it writes anything, but writing from another thread
    // keeps this free of pipe-buffer deadlocks whatever the child does.
    let (written, output) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || match stdin.as_mut() {
            Some(stdin) => stdin.write_all(wasm),
            None => Ok(()),
        });
        let output = child.wait_with_output();
        (writer.join(), output)
    });
    let output = output.map_err(|err| ChildError::Failed(format!("cannot wait: {err}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if output.status.success() {
        return match written {
            Ok(Ok(())) => Ok(output.stdout),
            Ok(Err(err)) => Err(ChildError::Failed(format!(
                "cannot send the component: {err}"
            ))),
            Err(_) => Err(ChildError::Failed("stdin writer panicked".to_owned())),
        };
    }
    if output.status.code() == Some(i32::from(EXIT_INVALID)) {
        return Err(ChildError::Invalid(stderr));
    }
    Err(ChildError::Failed(format!("{}: {stderr}", output.status)))
}

/// `kpulse __compile`: component on stdin, artifact on stdout.
pub fn child_main() -> ExitCode {
    let mut wasm = Vec::new();
    if let Err(err) = std::io::stdin().lock().read_to_end(&mut wasm) {
        eprintln!("cannot read the component from stdin: {err}");
        return ExitCode::FAILURE;
    }
    let engine = match wasmtime::Engine::new(&engine_config()) {
        Ok(engine) => engine,
        Err(err) => {
            eprintln!("cannot create the wasm engine: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let bytes = match engine.precompile_component(&wasm) {
        Ok(bytes) => bytes,
        Err(err) => {
            eprintln!("{err:#}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout.write_all(&bytes).and_then(|()| stdout.flush()) {
        eprintln!("cannot write the artifact to stdout: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
