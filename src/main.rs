//! `switchyard`: one binary, subcommands. See `switchyard --help`.

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
