//! The `cab` command: see `cab --help`, and `src/cli/` for each subcommand.

fn main() -> std::process::ExitCode {
    cab::cli::main()
}
