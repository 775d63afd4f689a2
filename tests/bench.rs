//! The benchmark command's quick mode: every variant runs, and pgtwin leaves both nodes identical.
//! (Correctness only: timings on a shared CI machine are not asserted.)

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn quick_benchmark_runs_and_syncs() {
    let mut bench = Command::new(env!("CARGO_BIN_EXE_pgtwin-bench"));
    bench.args(["--quick", "--reps", "2", "--rows", "500", "--singles", "40"]);
    let out = common::run_with_timeout(bench, Duration::from_secs(400));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let identical = stdout
        .lines()
        .find(|l| l.starts_with("both nodes identical"))
        .expect("identical row");
    assert!(identical.trim_end().ends_with("yes"), "{identical}");
    // Every workload row carries a measured figure, "(1930/s)" or "(2.52 ms)", for each variant.
    for w in ["W1", "W2", "W3", "W4", "W5", "W6"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(w))
            .unwrap_or_else(|| panic!("{w} missing:\n{stdout}"));
        assert_eq!(row.matches("s)").count(), 5, "{w} lacks a figure: {row}");
    }
    assert!(stdout.contains("all 100 found: yes"), "{stdout}");
    // The spread behind each median: a min-max row per workload.
    let ranges = stdout
        .split("min-max over the 2 repetitions")
        .nth(1)
        .unwrap_or_else(|| panic!("no min-max block:\n{stdout}"));
    let w3 = ranges
        .lines()
        .find(|l| l.starts_with("W3"))
        .unwrap_or_else(|| panic!("W3 missing from the min-max block:\n{ranges}"));
    assert_eq!(w3.matches("x-").count(), 5, "{w3}");
    // The async lag's reference: measured where pglogical is installed, a note where it is not.
    let reference = stdout
        .lines()
        .find(|l| l.starts_with("two-way pglogical"))
        .unwrap_or_else(|| panic!("pglogical line missing:\n{stdout}"));
    assert!(
        reference.contains("not installed") || reference.contains(" ms; pgtwin async's p99 is"),
        "{reference}"
    );
    // The load section, in both modes: the backlog of an outage drains while the writers go on.
    for mode in ["async", "sync"] {
        let section = stdout
            .split(&format!("load, {mode} mode"))
            .nth(1)
            .unwrap_or_else(|| panic!("load, {mode} mode missing:\n{stdout}"));
        assert!(section.contains("backlog drained in"), "{mode}: {section}");
        assert!(
            section.contains("the oldest queued change had waited at most"),
            "{mode}: {section}"
        );
        assert!(
            section.contains("both nodes identical: yes"),
            "{mode}: {section}"
        );
    }
}

/// Ctrl-C stops the benchmark at once, in the middle of a section whose runner (started in-process,
/// and catching SIGINT to stop between two transactions) is replaying, and its servers' temporary
/// directory goes with it.
#[test]
fn ctrl_c_stops_the_benchmark_while_its_runner_replays() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgtwin-bench"))
        .args(["--only", "load", "--quick", "--load-mode", "async"])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("replaying queues") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        let _ = child.kill();
        panic!("the load section's runner never started");
    }
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let stopped = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if stopped.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the benchmark went on after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
