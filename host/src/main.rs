//! The `kpulse` binary: parse the command line and hand over to [`kpulse::cli`].

fn main() -> std::process::ExitCode {
    kpulse::cli::main()
}
