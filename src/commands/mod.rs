//! One thin function per command: load, build, print or apply.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::config::Config;

mod check;
mod demo;
mod down;
mod plan;
mod run;
mod status;
mod up;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Demo(args) = &cli.command {
        return demo::run(args.keep).await;
    }
    let cfg = Config::load(&cli.config)?;
    match cli.command {
        Command::Plan(a) => plan::run(&cfg, a.json).await,
        Command::Up(a) => up::run(&cfg, a.json).await,
        Command::Down(a) => down::run(&cfg, a.dry_run, a.force).await,
        Command::Run(a) => run::run(&cfg, a.once).await,
        Command::Status(a) => status::run(&cfg, a.json).await,
        Command::Check(a) => check::run(&cfg, a.json).await,
        Command::Demo(_) => unreachable!("handled above"),
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}
