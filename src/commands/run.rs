use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::runner;

pub async fn run(cfg: &Config, once: bool) -> Result<ExitCode> {
    if !once {
        runner::run_forever(cfg).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let drained = runner::run_once(cfg).await?;
    for (i, d) in drained.iter().enumerate() {
        println!(
            "{} -> {}: {} queued change(s) applied",
            cfg.nodes[i].name,
            cfg.nodes[1 - i].name,
            d.rows
        );
    }
    Ok(ExitCode::SUCCESS)
}
