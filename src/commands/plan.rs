use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::install;
use crate::plan::render;

pub async fn run(cfg: &Config, json: bool) -> Result<ExitCode> {
    let p = install::prepare(cfg).await?;
    let tables = install::diffs(&p).await?;
    let plans = install::build(cfg, &p).await?;
    if json {
        super::print_json(&serde_json::json!({ "nodes": plans, "tables": tables }));
        return Ok(ExitCode::SUCCESS);
    }
    for d in &tables {
        let state = if d.diff.is_equal() {
            "equal".to_string()
        } else {
            format!(
                "DIFFERENT: {} only on {}, {} only on {}, {} different; up will refuse",
                d.diff.only_on[0],
                plans[0].node,
                d.diff.only_on[1],
                plans[1].node,
                d.diff.different
            )
        };
        println!(
            "-- table {}: {} / {} rows, {state}",
            d.table, d.diff.rows[0], d.diff.rows[1]
        );
    }
    for plan in &plans {
        let note = if plan.up_to_date {
            " (up to date: up changes nothing here)"
        } else {
            ""
        };
        println!("\n-- ===== node {} ({}){note} =====\n", plan.node, plan.url);
        print!("{}", render(&plan.steps));
    }
    Ok(ExitCode::SUCCESS)
}
