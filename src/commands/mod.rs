//! One thin function per command: load, build, print or apply.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::data::merge::MergeReport;

mod check;
mod conflicts;
mod demo;
mod down;
mod init;
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
    if let Command::Init(a) = &cli.command {
        return init::run(&cli.config, a).await;
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
        Command::Up(a) => match (&a.prefer, &a.mirror) {
            (Some(prefer), _) => up::run(&cfg.preferring(prefer)?, a.json, a.dry_run).await,
            (_, Some(mirror)) => up::run(&cfg.mirroring(mirror)?, a.json, a.dry_run).await,
            (None, None) => up::run(&cfg, a.json, a.dry_run).await,
        },
        Command::Down(a) => down::run(&cfg, &a).await,
        Command::Conflicts(a) => conflicts::run(&cfg, &a).await,
        Command::Version(_) => unreachable!("handled above"),
        Command::Run(a) => run::run(&cfg, &a).await,
        Command::Status(a) => status::run(&cfg, a.json).await,
        Command::Check(a) => check::run(&cfg, a.json).await,
        Command::Repair(a) => repair::run(&cfg, &a).await,
        Command::Demo(_) | Command::Completions(_) | Command::Init(_) => {
            unreachable!("handled above")
        }
    }
}

/// Per merged or repaired table: the counts, then which keys go where and each differing row's values
/// side by side with its column names (the first `SHOWN` of each kind).
fn print_merge(r: &MergeReport, nodes: [&str; 2], dry_run: bool) {
    let (copy, overwritten, deleted) = match dry_run {
        true => (
            "would copy",
            "would be overwritten",
            "would be deleted there",
        ),
        false => ("copied", "overwritten", "deleted there"),
    };
    if r.only_on == [0, 0] && r.conflicts == 0 {
        println!("  {}: same rows on both nodes", r.table);
        return;
    }
    let deletes = match r.deleted_on {
        [0, 0] => String::new(),
        [a, b] => format!("; deletes {a} on {}, {b} on {}", nodes[0], nodes[1]),
    };
    println!(
        "  {}: {copy} {} row(s) to {}, {} to {}{deletes}; {} key(s) with different rows",
        r.table, r.copied_to[0], nodes[0], r.copied_to[1], nodes[1], r.conflicts
    );
    for i in 0..2 {
        if r.only_on[i] == 0 {
            continue;
        }
        let fate = match r.deleted_on[i] {
            0 => format!("to be copied to {}", nodes[1 - i]),
            _ => deleted.to_string(),
        };
        println!(
            "    only on {} ({fate}): {}{}",
            nodes[i],
            r.only_on_keys[i].join(" "),
            and_more(r.only_on[i], r.only_on_keys[i].len())
        );
    }
    for c in &r.conflict_rows {
        match &c.winner {
            Some(w) => {
                let loser = if w == nodes[0] { nodes[1] } else { nodes[0] };
                println!("    key {}: {w} wins, {loser}'s row {overwritten}", c.key);
            }
            None => println!("    key {}: no policy says which row wins", c.key),
        }
        let width = c.columns.iter().map(|v| v.column.len()).max().unwrap_or(0);
        for v in c.columns.iter().filter(|v| v.differs()) {
            println!(
                "      {:<width$}  {}: {}  |  {}: {}",
                v.column,
                nodes[0],
                shown_value(&v.values[0]),
                nodes[1],
                shown_value(&v.values[1])
            );
        }
    }
    let more = r.conflicts.saturating_sub(r.conflict_rows.len() as u64);
    if more > 0 {
        println!("    ... and {more} more key(s) with different rows");
    }
}

fn and_more(total: u64, shown: usize) -> String {
    match total.saturating_sub(shown as u64) {
        0 => String::new(),
        n => format!(" ... and {n} more"),
    }
}

/// A value as a person reads it in one line: NULL, or its text cut at 60 characters.
fn shown_value(v: &Option<String>) -> String {
    match v {
        None => "NULL".to_string(),
        Some(t) if t.chars().count() > 60 => {
            format!("{}...", t.chars().take(60).collect::<String>())
        }
        Some(t) => t.clone(),
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
