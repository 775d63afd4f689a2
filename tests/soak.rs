//! The chaos soak, short: writers at full speed on both nodes while each server is killed and
//! restarted, frozen, and `pgtwin run` is killed -9, in sync and in async mode; then both nodes are
//! compared in plain SQL with what every writer saw acknowledged (rules in src/soak.rs). The long
//! version is `pgtwin-soak`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn writers_through_kills_freezes_and_runner_crashes_lose_nothing() {
    for mode in ["sync", "async"] {
        let dir = tempfile::Builder::new()
            .prefix("pgtwin-soak-test-")
            .tempdir()
            .unwrap();
        let report = pgtwin::soak::run(pgtwin::soak::Options {
            mode: mode.to_string(),
            duration: Duration::from_secs(24),
            writers_per_node: 2,
            // About 100 transactions/s per node: CI's machine is shared. The full-speed run is
            // `pgtwin-soak` (its figures in the README).
            pace: Some(Duration::from_millis(15)),
            fault_every: Duration::from_secs(3),
            drain_limit: Duration::from_secs(120),
            dir: dir.path().to_path_buf(),
            runner: Box::new(|config: &Path| {
                let mut c = Command::new(env!("CARGO_BIN_EXE_pgtwin"));
                c.arg("-c").arg(config).arg("run");
                c
            }),
        })
        .await
        .unwrap();
        let text = serde_json::to_string_pretty(&report).unwrap();
        println!("{text}");
        assert!(report.faults.len() >= 4, "{mode}: {text}");
        assert!(
            report.acknowledged.iter().all(|&n| n > 50),
            "{mode}: writers barely wrote: {text}"
        );
        assert!(report.clean(), "{mode}: {text}");
    }
}
