use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::RepairArgs;
use crate::config::Config;
use crate::data::merge::{Policy, Winner};
use crate::install;

pub async fn run(cfg: &Config, args: &RepairArgs) -> Result<ExitCode> {
    let (node, mirror) = match (&args.prefer, &args.mirror) {
        (Some(n), _) => (n, false),
        (None, Some(n)) => (n, true),
        (None, None) => unreachable!("clap requires one"),
    };
    cfg.node(node)?;
    let winner = cfg
        .nodes
        .iter()
        .position(|n| &n.name == node)
        .expect("checked above");
    let policy = Policy {
        winner: Winner::Node(winner),
        mirror,
    };
    let report = install::repair(cfg, &policy, args.dry_run, !args.json).await?;
    if args.json {
        super::print_json(&report);
    } else {
        let names = [cfg.nodes[0].name.as_str(), cfg.nodes[1].name.as_str()];
        for m in &report.tables {
            super::print_merge(m, names, args.dry_run);
        }
    }
    if !args.dry_run && !report.equal_after {
        bail!("repair copied the rows, but a check afterwards still finds differences (writes in flight?): run pgtwin check");
    }
    if !args.json && !args.dry_run {
        println!("check: both nodes equal");
    }
    Ok(ExitCode::SUCCESS)
}
