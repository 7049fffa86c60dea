//! `switchyard`: one binary, subcommands. See `switchyard --help`.

/// mimalloc, not glibc's malloc: a worker makes ~165 allocations per job, and glibc's
/// malloc + free cost ~43,000 of its ~294,000 instructions per job (callgrind,
/// BENCHMARKS.md "The allocator"). It is built to commit memory as it is used
/// (`.cargo/config.toml`), and gives free pages back after bursts through
/// [`switchyard::alloc::trim`].
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
