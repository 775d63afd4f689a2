use std::process::ExitCode;

use std::io::IsTerminal;

use clap::Parser;
use pgtwin::cli::{Cli, LogFormat};
use pgtwin::problems::Problems;

#[tokio::main]
async fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("pgtwin={default}")));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        // Colour only for a person at a terminal, never into a file or a journal.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    match pgtwin::commands::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            // Several problems found in one run: one line each.
            if let Some(list) = e.downcast_ref::<Problems>() {
                for problem in &list.0 {
                    eprintln!("error: {problem}");
                }
                return ExitCode::from(2);
            }
            // One line, as the contract says: the chain of contexts joined by ": ".
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

/// A reader that stops early (`pgtwin check | head -1`) closes the pipe; the output then ends quietly,
/// with the exit status of a process ended by SIGPIPE, instead of a panic and a backtrace. (Rust ignores
/// SIGPIPE so that sockets report errors instead; `println!` then panics on the closed stdout.)
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
