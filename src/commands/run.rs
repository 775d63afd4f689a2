use std::process::ExitCode;

use anyhow::Result;

use crate::cli::RunArgs;
use crate::config::Config;
use crate::runner;

pub async fn run(cfg: &Config, args: &RunArgs) -> Result<ExitCode> {
    if !args.once {
        if let Some(addr) = &args.metrics {
            crate::metrics::serve(std::sync::Arc::new(cfg.clone()), addr).await?;
        }
        runner::run_forever(cfg).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let drained = runner::run_once(cfg).await?;
    let directions: Vec<Direction> = drained
        .iter()
        .enumerate()
        .map(|(i, d)| Direction {
            from: &cfg.nodes[i].name,
            to: &cfg.nodes[1 - i].name,
            entries: d.entries,
            rows: d.rows,
        })
        .collect();
    if args.json {
        super::print_json(&directions);
    } else {
        for d in &directions {
            println!(
                "{} -> {}: {} queued change(s) applied",
                d.from, d.to, d.rows
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `run --once` replayed in one direction.
#[derive(serde::Serialize)]
struct Direction<'a> {
    from: &'a str,
    to: &'a str,
    /// Chunks applied on `to` (queue entries, some joined).
    entries: u64,
    rows: u64,
}
