use std::process::ExitCode;

use clap::Parser;
use pgtwin::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!("pgtwin={default}"))
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match pgtwin::commands::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            // One line, as the contract says: the chain of contexts joined by ": ".
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
