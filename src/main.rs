//! The `rekey` binary: parse arguments, set up logging, run the command,
//! map the outcome to an exit code (documented in the README).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    rekey::daemon::harden::tune_malloc();
    let cli = rekey::cli::Cli::parse();
    rekey::logging::init(cli.log_format, cli.log_level.as_deref());
    match rekey::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rekey: {e:#}");
            ExitCode::from(1)
        }
    }
}
