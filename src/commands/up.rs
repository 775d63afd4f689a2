use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::install;
use crate::problems::Problems;

pub async fn run(cfg: &Config, json: bool, dry_run: bool) -> Result<ExitCode> {
    let report = install::up(cfg, dry_run, !json).await?;
    // A dry run shows the rows of a table `up` would refuse, then says why it would.
    let refused = Problems(
        report
            .merges
            .iter()
            .filter_map(|m| m.refused.clone())
            .collect(),
    );
    if json {
        super::print_json(&report);
        refused.into_result()?;
        return Ok(ExitCode::SUCCESS);
    }
    let names = [report.nodes[0].node.as_str(), report.nodes[1].node.as_str()];
    println!(
        "{}:",
        if dry_run {
            "merge (dry run, nothing changed)"
        } else {
            "merge"
        }
    );
    for m in &report.merges {
        super::print_merge(m, names, dry_run);
    }
    for n in &report.nodes {
        if n.up_to_date {
            println!("node {}: up to date", n.node);
        } else if dry_run {
            println!(
                "node {}: would install ({} steps; pgtwin plan shows them)",
                n.node,
                n.steps.len()
            );
        } else {
            println!("node {}: installed ({} steps)", n.node, n.steps.len());
        }
    }
    refused.into_result()?;
    if !dry_run {
        println!(
            "syncing {} table(s) between {} and {}",
            report.merges.len(),
            names[0],
            names[1]
        );
    }
    Ok(ExitCode::SUCCESS)
}
