use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::config::Config;
use crate::install;
use crate::plan::render;

pub async fn run(cfg: &Config, dry_run: bool, force: bool) -> Result<ExitCode> {
    let outcomes = install::down(cfg, dry_run, force).await;
    let mut failed = Vec::new();
    for o in &outcomes {
        match &o.error {
            Some(e) => {
                eprintln!("node {}: not cleaned: {e}", o.node);
                failed.push(o.node.as_str());
            }
            None if dry_run => {
                println!("-- ===== node {} =====\n", o.node);
                print!("{}", render(&o.steps));
            }
            None => println!("node {}: pgtwin removed", o.node),
        }
    }
    if !failed.is_empty() {
        bail!(
            "down incomplete: node {} not cleaned; run down again when it is reachable",
            failed.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
