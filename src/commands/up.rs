use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::install;

pub async fn run(cfg: &Config, json: bool) -> Result<ExitCode> {
    let report = install::up(cfg).await?;
    if json {
        super::print_json(&report);
        return Ok(ExitCode::SUCCESS);
    }
    for n in &report.nodes {
        if n.up_to_date {
            println!("node {}: up to date", n.node);
        } else {
            println!("node {}: installed ({} steps)", n.node, n.steps.len());
        }
    }
    println!(
        "syncing {} table(s) between {} and {}",
        report.tables.len(),
        report.nodes[0].node,
        report.nodes[1].node
    );
    Ok(ExitCode::SUCCESS)
}
