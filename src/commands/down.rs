use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::DownArgs;
use crate::config::Config;
use crate::install;
use crate::plan::render;

pub async fn run(cfg: &Config, args: &DownArgs) -> Result<ExitCode> {
    let outcomes = install::down(cfg, args.dry_run, args.force).await?;
    if args.json {
        super::print_json(&outcomes);
    }
    let mut failed = Vec::new();
    for o in &outcomes {
        match &o.error {
            // Each error names its node already.
            Some(e) => failed.push(e.as_str()),
            None if args.json => {}
            None if args.dry_run => {
                println!("-- ===== node {} =====\n", o.node);
                print!("{}", render(&o.steps));
            }
            None if o.dropped_changes > 0 => println!(
                "node {}: pgtwin removed, with {} queued change(s) that never reached the peer (--force)",
                o.node, o.dropped_changes
            ),
            None => println!("node {}: pgtwin removed", o.node),
        }
    }
    if !failed.is_empty() {
        // One line, as every error: what failed on each node, and what to do.
        bail!(
            "down incomplete: {}; run down again once that is fixed",
            failed.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
