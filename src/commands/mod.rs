//! One thin function per command: load, build, print or apply.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::config::Config;

mod check;
mod conflicts;
mod demo;
mod down;
mod plan;
mod repair;
mod run;
mod status;
mod up;
mod version;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Demo(args) = &cli.command {
        return demo::run(args.keep).await;
    }
    if let Command::Completions(a) = &cli.command {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        clap_complete::generate(a.shell, &mut cmd, "pgtwin", &mut std::io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    // The binary's version needs no config; the nodes' versions need one.
    if let Command::Version(a) = &cli.command {
        let cfg = Config::load(&cli.config).ok();
        return version::run(cfg.as_ref(), a.json).await;
    }
    let cfg = Config::load(&cli.config)?;
    match cli.command {
        Command::Plan(a) => plan::run(&cfg, a.json).await,
        Command::Up(a) => match &a.prefer {
            None => up::run(&cfg, a.json, a.dry_run).await,
            Some(prefer) => up::run(&cfg.preferring(prefer)?, a.json, a.dry_run).await,
        },
        Command::Down(a) => down::run(&cfg, &a).await,
        Command::Conflicts(a) => conflicts::run(&cfg, &a).await,
        Command::Version(_) => unreachable!("handled above"),
        Command::Run(a) => run::run(&cfg, &a).await,
        Command::Status(a) => status::run(&cfg, a.json).await,
        Command::Check(a) => check::run(&cfg, a.json).await,
        Command::Repair(a) => repair::run(&cfg, &a).await,
        Command::Demo(_) | Command::Completions(_) => unreachable!("handled above"),
    }
}

/// One line per merged or repaired table, with the conflicting rows side by side.
fn print_merge(report: &crate::data::merge::MergeReport, nodes: [&str; 2], dry_run: bool) {
    let verb = if dry_run { "would copy" } else { "copied" };
    let r = report;
    if r.copied_to == [0, 0] && r.deleted_on == [0, 0] {
        println!("  {}: same rows on both nodes", r.table);
        return;
    }
    println!(
        "  {}: {verb} {} row(s) to {}, {} to {}{}; {} key(s) with different rows",
        r.table,
        r.copied_to[0],
        nodes[0],
        r.copied_to[1],
        nodes[1],
        if r.deleted_on != [0, 0] {
            format!(
                "; deletes {} on {}, {} on {}",
                r.deleted_on[0], nodes[0], r.deleted_on[1], nodes[1]
            )
        } else {
            String::new()
        },
        r.conflicts
    );
    for c in &r.conflict_rows {
        println!(
            "    key {}: {} {} | {} {}  -> {} wins",
            c.key,
            nodes[0],
            c.rows[0].as_deref().unwrap_or("(none)"),
            nodes[1],
            c.rows[1].as_deref().unwrap_or("(none)"),
            c.winner
        );
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

/// Printed under schema drift by `status` and `check`: what holds, and what to run.
pub const DRIFT_ADVICE: &str = "the columns both nodes share keep syncing; a one-sided column stays on its node. To sync a column, add it on the other node too (same type), then run pgtwin up";
