//! `status` for monitors, against real servers: no false alarm in normal operation, and an exit code
//! and a named problem for what needs a person (a sequence moved by hand, changes with nobody to
//! replay them).

mod common;

use std::time::{Duration, Instant};

use common::Pair;

const ITEMS: &str = "CREATE TABLE items (id bigserial PRIMARY KEY, v text)";

fn status(p: &Pair) -> (i32, String) {
    let run = p.pgtwin(&["status"]);
    (run.code, run.stdout)
}

#[tokio::test]
async fn no_false_alarm_when_one_node_inserts_more_and_a_setval_is_named() {
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("INSERT INTO items (v) SELECT 'a' FROM generate_series(1, 1000)")
        .await
        .unwrap();
    let (code, text) = status(&p);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("healthy\n"), "{text}");
    // An application's setval(max(id)) puts b's sequence on a's ids.
    p.owner[1]
        .batch_execute("SELECT setval('items_id_seq', (SELECT max(id) FROM items))")
        .await
        .unwrap();
    let (code, text) = status(&p);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.starts_with("DEGRADED: sequence \"public\".\"items_id_seq\" of table \"public\".\"items\" on node b hands out ids outside node b's residue"),
        "{text}"
    );
    p.pgtwin(&["up"]).ok();
    assert_eq!(status(&p).0, 0);
}

/// A sequence that would hand out ids again or another node's ids later, though its next id is in its
/// node's residue today, is named with what to run: set back below the largest id (a RESTART), made
/// CYCLE, or given a START outside the residue.
#[tokio::test]
async fn sequences_that_would_collide_later_are_named() {
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("INSERT INTO items (v) SELECT 'a' FROM generate_series(1, 10)")
        .await
        .unwrap();
    let seq = "sequence \"public\".\"items_id_seq\" of table \"public\".\"items\" on node a";
    let cases = [
        (
            "ALTER SEQUENCE items_id_seq RESTART",
            "is behind the largest id it handed out",
            "run pgtwin up",
        ),
        (
            "ALTER SEQUENCE items_id_seq CYCLE",
            "is CYCLE",
            "run ALTER SEQUENCE \"public\".\"items_id_seq\" NO CYCLE; then pgtwin up",
        ),
        (
            "ALTER SEQUENCE items_id_seq START WITH 1000000",
            "restarts outside node a's residue (START 1000000)",
            "run pgtwin up",
        ),
    ];
    for (change, problem, advice) in cases {
        let undo = p.pgtwin(&["status"]);
        assert_eq!(undo.code, 0, "before {change}: {}", undo.stdout);
        p.owner[0].batch_execute(change).await.unwrap();
        let (code, text) = status(&p);
        assert_eq!(code, 1, "{change}: {text}");
        assert!(
            text.contains(&format!("{seq} {problem}")) && text.contains(advice),
            "{change}: {text}"
        );
        p.owner[0]
            .batch_execute("ALTER SEQUENCE items_id_seq NO CYCLE")
            .await
            .unwrap();
        p.pgtwin(&["up"]).ok();
    }
    assert_eq!(status(&p).0, 0, "up put every sequence right");
}

#[tokio::test]
async fn changes_queued_with_no_runner_are_named_and_a_runner_clears_it() {
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("INSERT INTO items (v) VALUES ('queued')")
        .await
        .unwrap();
    // As if it had waited a minute.
    p.admin[0]
        .batch_execute("UPDATE pgtwin.queue SET changed_at = now() - interval '1 minute'")
        .await
        .unwrap();
    let (code, text) = status(&p);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("node a: 1 change(s) queued for 60 s and no pgtwin run seen (last: never): start pgtwin run"),
        "{text}"
    );
    let mut runner = std::process::Command::new(env!("CARGO_BIN_EXE_pgtwin"))
        .arg("-c")
        .arg(p.dir.path().join("pgtwin.toml"))
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let healthy = loop {
        let (code, text) = status(&p);
        if code == 0 || started.elapsed() > Duration::from_secs(15) {
            break (code, text);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let _ = runner.kill();
    let _ = runner.wait();
    assert_eq!(healthy.0, 0, "{}", healthy.1);
    let json: serde_json::Value =
        serde_json::from_str(&p.pgtwin(&["status", "--json"]).stdout).unwrap();
    assert!(
        json["nodes"][0]["queue"]["runner_seen_s_ago"]
            .as_f64()
            .unwrap()
            < 15.0,
        "{json}"
    );
    p.assert_same("items").await;
}
