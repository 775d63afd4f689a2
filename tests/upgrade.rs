//! Upgrading pgtwin itself: an installation made by an older state schema is upgraded in place by
//! `up`, keeping its queued changes and conflicts; a binary older than an installation refuses it.

mod common;

use std::time::{Duration, Instant};

use common::{Pair, Runner};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v text)";

async fn state_version(p: &Pair, i: usize) -> i32 {
    p.admin[i]
        .query_one("SELECT version FROM pgtwin.state_version", &[])
        .await
        .unwrap()
        .get(0)
}

async fn count(p: &Pair, i: usize, table: &str) -> i64 {
    p.admin[i]
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// The state schema as the release before versions were recorded left it (state migration 1 alone):
/// no version table, a heartbeat without pid and version.
const STATE_V1: &str = "DROP TABLE pgtwin.state_version; DROP TABLE pgtwin.locks;
     ALTER TABLE pgtwin.runner DROP COLUMN IF EXISTS pid, DROP COLUMN IF EXISTS version";

#[tokio::test]
async fn an_unversioned_installation_replays_then_up_upgrades_it_in_place() {
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    for i in 0..2 {
        p.owner[i].batch_execute(STATE_V1).await.unwrap();
    }
    // Queued while no runner runs, and a conflict recorded earlier.
    p.owner[0]
        .batch_execute("INSERT INTO items VALUES (1, 'queued'), (2, 'queued')")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute(
            "INSERT INTO pgtwin.conflicts (table_name, key, local_change, remote_change, winner)
             VALUES ('public.items', '(7)', 'l', 'r', 'a');
             INSERT INTO pgtwin.set_aside (seq, table_tag, rows, batch, changed_at, reason)
             VALUES (1, 'public_items', 1, 'D{}', now(), 'refused')",
        )
        .await
        .unwrap();
    assert_eq!(p.queued(0).await, 2);

    // This binary reads the old installation and replays its queue; `up` waits for that (its merge
    // must not take changes in flight for differences), changing nothing meanwhile.
    let status = p.pgtwin(&["status"]);
    assert_eq!(status.code, 1, "{}", status.stdout);
    assert!(
        status.stdout.contains(&format!(
            "node a: pgtwin's state tables there are version 1, this pgtwin's are {}: run pgtwin up",
            pgtwin::state::VERSION
        )),
        "{}",
        status.stdout
    );
    p.pgtwin(&["up"])
        .fails_with(&["node a", "still wait", "pgtwin run --once"]);
    let unversioned: bool = p.admin[0]
        .query_one("SELECT to_regclass('pgtwin.state_version') IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unversioned);
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(p.assert_same("items").await.len(), 2);
    // `up` upgrades it: the migrations it lacks, the version recorded, its conflicts kept.
    p.pgtwin(&["up"]).ok();
    for i in 0..2 {
        assert_eq!(state_version(&p, i).await, pgtwin::state::VERSION);
    }
    assert_eq!(count(&p, 1, "pgtwin.conflicts").await, 1);
    assert_eq!(count(&p, 1, "pgtwin.set_aside").await, 1);

    // The new column is in use: the heartbeat names the runner's process.
    let runner = Runner::start(&p, &["run"]);
    let started = Instant::now();
    loop {
        let json: serde_json::Value =
            serde_json::from_str(&p.pgtwin(&["status", "--json"]).stdout).unwrap();
        let who = json["nodes"][1]["queue"]["runner"].as_str().unwrap_or("");
        if who.contains("pid ") && who.contains(env!("CARGO_PKG_VERSION")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{json}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(runner);
    // Upgrading again is a no-op.
    p.pgtwin(&["up"]).ok();
    assert_eq!(state_version(&p, 0).await, pgtwin::state::VERSION);
}

#[tokio::test]
async fn a_binary_older_than_the_installation_refuses_it_and_changes_nothing() {
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    // As a later pgtwin would leave it.
    p.owner[1]
        .batch_execute("UPDATE pgtwin.state_version SET version = version + 1")
        .await
        .unwrap();
    for args in [
        &["up"][..],
        &["plan"],
        &["check"],
        &["repair", "--prefer", "a"],
        &["down"],
        &["run", "--once"],
    ] {
        p.pgtwin(args)
            .fails_with(&["node b", "newer pgtwin", "use that pgtwin or a later one"]);
    }
    let status = p.pgtwin(&["status"]);
    assert_eq!(status.code, 2, "{}", status.stdout);
    assert!(status.stdout.contains("newer pgtwin"), "{}", status.stdout);
    assert_eq!(state_version(&p, 1).await, pgtwin::state::VERSION + 1);
    assert!(p.installed(0).await && p.installed(1).await);
}
