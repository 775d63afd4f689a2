//! The chaos soak (see src/soak.rs): `pgtwin-soak [--mode sync|async|both] [--seconds N]`.
//! It starts its own two servers; nothing else is touched.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Writers on both nodes through server kills, freezes and runner kills; then both nodes compared"
)]
struct Args {
    /// sync, async, or both (one after the other).
    #[arg(long, default_value = "both")]
    mode: String,
    /// How long the writers and the faults run, per mode.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Writers on each node.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Seconds between two faults.
    #[arg(long, default_value_t = 5)]
    fault_every: u64,
    /// Seconds the queues may take to drain once the faults stop.
    #[arg(long, default_value_t = 600)]
    drain_limit: u64,
    /// Pause after each statement of a writer, in ms (0: full speed).
    #[arg(long, default_value_t = 0)]
    pace_ms: u64,
    /// The report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Internal: be the `pgtwin run` of this config (the soak kills and restarts it).
    #[arg(long, hide = true)]
    runner: Option<std::path::PathBuf>,
}

fn main() -> Result<ExitCode> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    if let Some(config) = &args.runner {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .init();
        let cfg = pgtwin::config::Config::load(config)?;
        rt.block_on(pgtwin::runner::run_forever(&cfg))?;
        return Ok(ExitCode::SUCCESS);
    }
    let modes: Vec<&str> = match args.mode.as_str() {
        "both" => vec!["sync", "async"],
        m @ ("sync" | "async") => vec![m],
        other => anyhow::bail!("--mode {other}: say sync, async or both"),
    };
    let mut clean = true;
    for mode in modes {
        let dir = tempfile::Builder::new().prefix("pgtwin-soak-").tempdir()?;
        let me = std::env::current_exe()?;
        let report = rt.block_on(pgtwin::soak::run(pgtwin::soak::Options {
            mode: mode.to_string(),
            duration: Duration::from_secs(args.seconds),
            writers_per_node: args.writers,
            pace: (args.pace_ms > 0).then(|| Duration::from_millis(args.pace_ms)),
            fault_every: Duration::from_secs(args.fault_every),
            drain_limit: Duration::from_secs(args.drain_limit),
            dir: dir.path().to_path_buf(),
            runner: Box::new(move |config: &Path| {
                let mut c = Command::new(&me);
                c.arg("--runner").arg(config);
                c
            }),
        }))?;
        clean &= report.clean();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
            continue;
        }
        println!(
            "mode {mode}: {:.0} s, {} faults",
            report.seconds,
            report.faults.len()
        );
        println!(
            "  acknowledged transactions: a {} ({:.0}/s), b {} ({:.0}/s); expected errors {}",
            report.acknowledged[0],
            report.tps[0],
            report.acknowledged[1],
            report.tps[1],
            report.expected_errors
        );
        println!(
            "  divergent rows {}, acknowledged writes lost {}, unexpected errors {}, hangs over {} s {} (longest statement {} ms), set aside {}",
            report.divergent_rows,
            report.lost_writes.len(),
            report.unexpected_errors.values().sum::<u64>(),
            pgtwin::soak::HANG.as_secs(),
            report.hangs,
            report.longest_statement_ms,
            report.set_aside
        );
        println!(
            "  queues drained {:.1} s after the faults stopped ({} entries then)",
            report.drain_s, report.queued_when_faults_stopped
        );
        for d in report.in_doubt_rows.iter().take(10) {
            println!("  in doubt (a node died in the commit window): {d}");
        }
        for l in report.lost_writes.iter().take(10) {
            println!("  lost: {l}");
        }
        for (e, n) in &report.unexpected_errors {
            println!("  unexpected ({n}x): {e}");
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
