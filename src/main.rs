//! `switchyard`: one binary, subcommands. See `switchyard --help`.

/// mimalloc: with thousands of jobs in flight across threads, glibc malloc's per-thread
/// arenas fragment and hold memory; mimalloc keeps RSS close to what is live.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
