//! The `kpulse` binary: parse the command line and hand over to [`kpulse::cli`].

fn main() -> std::process::ExitCode {
    // A compiler process of a running agent: no logging, no async runtime, no arguments of
    // its own (see `kpulse::runtime::compiler`).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == kpulse::runtime::compiler::SUBCOMMAND)
    {
        return kpulse::runtime::compiler::child_main();
    }
    kpulse::heap::tune_allocator();
    kpulse::cli::main()
}
