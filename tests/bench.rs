//! The benchmark command's quick mode: every variant runs, and pgtwin leaves both nodes identical.
//! (Correctness only: timings on a shared CI machine are not asserted.)

use std::process::Command;

#[test]
fn quick_benchmark_runs_and_syncs() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgtwin-bench"))
        .args(["--quick", "--rows", "500", "--singles", "40"])
        .output()
        .unwrap();
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
    for w in ["W1", "W2", "W3", "W4", "W5", "W6"] {
        assert!(stdout.contains(w), "{w} missing:\n{stdout}");
    }
}
