use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::install;
use crate::plan::render;

pub async fn run(cfg: &Config, json: bool) -> Result<ExitCode> {
    let p = install::prepare(cfg).await?;
    let tables = install::diffs(&p, false, false).await?;
    let plans = install::build(cfg, &p).await?;
    if json {
        super::print_json(&serde_json::json!({ "nodes": plans, "tables": tables }));
        return Ok(ExitCode::SUCCESS);
    }
    for (d, table) in tables.iter().zip(&cfg.tables) {
        let state = if d.is_equal() {
            "equal".to_string()
        } else {
            let policy = if d.different == 0 {
                "up copies the missing rows"
            } else if cfg.merge_policy(table).is_some() {
                "up merges them by [options] prefer"
            } else {
                "up will refuse: run pgtwin up --prefer NODE, or set prefer in pgtwin.toml"
            };
            format!(
                "DIFFERENT: {} only on {}, {} only on {}, {} different; {policy} (pgtwin up --dry-run shows the rows)",
                d.only_on[0], plans[0].node, d.only_on[1], plans[1].node, d.different
            )
        };
        println!(
            "-- table {}: {} / {} rows, {state}",
            d.table, d.rows[0], d.rows[1]
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
