//! Peer outages against real servers stopped for real: writes keep succeeding, changes queue locally, and
//! `pgtwin run` replays them in order, exactly once; conflicts resolve the same way on both nodes.
//! These tests stop node b, so they run one at a time.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Pair, Runner};
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v text, n int)";

fn server_b() -> &'static pgtwin::localpg::LocalServer {
    &common::servers().nodes[1]
}

/// Waits (at most 10 s) until `pgtwin run`'s session on node i waits for a row lock.
async fn wait_for_a_replay_waiting_on_a_row(p: &Pair, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = p.admin[i]
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgtwin' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replay never reached the row"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Points node i's foreign server at another port (a closed one cuts the link; the real one restores it).
async fn set_peer_port(p: &Pair, i: usize, port: u16) {
    p.owner[i]
        .batch_execute(&format!(
            "ALTER SERVER pgtwin_peer OPTIONS (SET port '{port}')"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn writes_survive_a_stopped_peer_and_replay_in_order() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut p = Pair::new().await;
    p.both(ITEMS).await;
    p.both("INSERT INTO items SELECT g, 'seed', g FROM generate_series(1, 10) g")
        .await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();

    server_b().stop(true).unwrap();
    let a = &p.owner[0];
    // Inserts, updates, deletes and key changes of the same keys, one transaction each.
    let started = Instant::now();
    a.batch_execute("INSERT INTO items VALUES (11, 'new', 0)")
        .await
        .unwrap();
    let first = started.elapsed();
    assert_eq!(p.queued(0).await, 1);
    let started = Instant::now();
    for n in 0..50 {
        a.execute("UPDATE items SET n = $1 WHERE id = 11", &[&n])
            .await
            .unwrap();
    }
    a.batch_execute("UPDATE items SET id = 111 WHERE id = 11")
        .await
        .unwrap();
    a.batch_execute("DELETE FROM items WHERE id IN (1, 2)")
        .await
        .unwrap();
    a.batch_execute("UPDATE items SET v = 'changed' WHERE id > 5")
        .await
        .unwrap();
    a.batch_execute("INSERT INTO items VALUES (1, 'back', 1)")
        .await
        .unwrap();
    a.batch_execute("TRUNCATE items; INSERT INTO items SELECT g, 'after truncate', g FROM generate_series(1, 20) g").await.unwrap();
    a.batch_execute("UPDATE items SET id = id + 100 WHERE id <= 10")
        .await
        .unwrap();
    // The node knows its peer is down: later writes go straight to the queue, paying no connection attempt.
    let rest = started.elapsed();
    assert!(
        rest < Duration::from_secs(3),
        "56 queued writes took {rest:?} (first {first:?})"
    );
    assert!(p.queued(0).await > 50);
    // A node unreachable is "down": exit 2, with the verdict in the JSON too.
    let status = p.pgtwin(&["status", "--json"]);
    assert_eq!(status.code, 2, "{}", status.stdout);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["problems"][0]["severity"], "down", "{status}");
    assert!(status["nodes"][0]["queue"]["entries"].as_i64().unwrap() > 50);
    assert!(
        status["nodes"][0]["queue"]["oldest_age_s"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert_eq!(status["nodes"][1]["reachable"], false);
    let once = p.pgtwin(&["run", "--once"]);
    assert_eq!(
        once.code, 2,
        "run --once with the peer down: {}",
        once.stderr
    );

    server_b().start_again().unwrap();
    p.reconnect(1).await;
    let a = &p.owner[0];
    let run = p.pgtwin(&["run", "--once"]).ok();
    assert!(run.stdout.contains("a -> b"), "{}", run.stdout);
    assert_eq!(p.queued(0).await, 0);
    let rows = p.assert_same("items").await;
    assert_eq!(rows.len(), 20);
    let status: serde_json::Value =
        serde_json::from_str(&p.pgtwin(&["status", "--json"]).ok().stdout).unwrap();
    assert!(
        status["nodes"][0]["queue"]["oldest_age_s"].is_null(),
        "{status}"
    );
    assert!(
        status["nodes"][1]["queue"]["last_replay_from_peer"].is_string(),
        "{status}"
    );
    // Back to direct sync: a new write arrives at once, with no runner.
    a.batch_execute("INSERT INTO items VALUES (999, 'direct', 0)")
        .await
        .unwrap();
    assert_eq!(p.queued(0).await, 0);
    assert_eq!(p.assert_same("items").await.len(), 21);
}

/// `run` started while the peer is down keeps trying, and replays by itself once the peer is back.
#[tokio::test]
async fn run_reconnects_by_itself_when_the_peer_comes_back() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    server_b().stop(true).unwrap();
    p.owner[0]
        .batch_execute(
            "INSERT INTO items SELECT g, 'while b was down', g FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
    let runner = Runner::start(&p, &["run"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server_b().start_again().unwrap();
    p.reconnect(1).await;
    let deadline = Instant::now() + Duration::from_secs(45);
    while p.queued(0).await > 0 {
        assert!(
            Instant::now() < deadline,
            "run did not resume after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(runner);
    assert_eq!(p.assert_same("items").await.len(), 100);
}

#[tokio::test]
async fn a_silent_peer_costs_one_connect_timeout_then_queues() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nconnect_timeout_s = 2");
    p.pgtwin(&["up"]).ok();
    // Accepts TCP connections (the kernel does, from the backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    set_peer_port(&p, 0, silent.local_addr().unwrap().port()).await;
    let a = &p.owner[0];
    let started = Instant::now();
    a.batch_execute("INSERT INTO items VALUES (1, 'x', 1)")
        .await
        .unwrap();
    let first = started.elapsed();
    assert!(first < Duration::from_secs(5), "first write took {first:?}");
    let started = Instant::now();
    for i in 2..20 {
        a.execute("INSERT INTO items VALUES ($1, 'y', 1)", &[&i])
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "queued writes took {:?}",
        started.elapsed()
    );
    assert_eq!(p.queued(0).await, 19);
    drop(silent);
    set_peer_port(&p, 0, server_b().port).await;
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(p.assert_same("items").await.len(), 19);
}

/// A bulk statement queued on one node (a chunk of more than 64 rows records no keys for the index)
/// is still weighed against a change of one of its rows arriving from the peer: the later change of
/// that row wins on both nodes.
#[tokio::test]
async fn a_queued_bulk_change_is_weighed_like_a_small_one() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.both("INSERT INTO items SELECT g, 'seed', g FROM generate_series(1, 100) g")
        .await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    let closed = pgtwin::localpg::free_port().unwrap();
    set_peer_port(&p, 0, closed).await;
    set_peer_port(&p, 1, closed).await;
    p.owner[1]
        .batch_execute("UPDATE items SET v = 'bulk on b'")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    p.owner[0]
        .batch_execute("UPDATE items SET v = 'a later, wins' WHERE id = 5")
        .await
        .unwrap();
    set_peer_port(&p, 0, common::servers().nodes[1].port).await;
    set_peer_port(&p, 1, common::servers().nodes[0].port).await;
    p.pgtwin(&["run", "--once"]).ok();
    let rows = p.assert_same("items").await;
    assert!(
        rows.contains(&"(5,\"a later, wins\",5)".to_string()),
        "{rows:?}"
    );
    assert_eq!(rows.iter().filter(|r| r.contains("bulk on b")).count(), 99);
}

#[tokio::test]
async fn conflicts_resolve_the_same_way_on_both_nodes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.both("INSERT INTO items SELECT g, 'seed', g FROM generate_series(1, 6) g")
        .await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    let closed = pgtwin::localpg::free_port().unwrap();
    set_peer_port(&p, 0, closed).await;
    set_peer_port(&p, 1, closed).await;
    let (a, b) = (&p.owner[0], &p.owner[1]);
    let later = || tokio::time::sleep(Duration::from_millis(30));
    a.batch_execute("UPDATE items SET v = 'a first' WHERE id = 1")
        .await
        .unwrap();
    later().await;
    b.batch_execute("UPDATE items SET v = 'b later, wins' WHERE id = 1")
        .await
        .unwrap();
    b.batch_execute("UPDATE items SET v = 'b first' WHERE id = 2")
        .await
        .unwrap();
    later().await;
    a.batch_execute("UPDATE items SET v = 'a later, wins' WHERE id = 2")
        .await
        .unwrap();
    a.batch_execute("DELETE FROM items WHERE id = 3")
        .await
        .unwrap();
    later().await;
    b.batch_execute("UPDATE items SET v = 'b updates after a deleted, wins' WHERE id = 3")
        .await
        .unwrap();
    b.batch_execute("DELETE FROM items WHERE id = 4")
        .await
        .unwrap();
    later().await;
    a.batch_execute("UPDATE items SET v = 'a updates after b deleted, wins' WHERE id = 4")
        .await
        .unwrap();
    a.batch_execute("INSERT INTO items VALUES (7, 'only a', 0)")
        .await
        .unwrap();
    b.batch_execute("INSERT INTO items VALUES (8, 'only b', 0)")
        .await
        .unwrap();
    a.batch_execute("INSERT INTO items VALUES (9, 'a inserts first', 0)")
        .await
        .unwrap();
    later().await;
    b.batch_execute("INSERT INTO items VALUES (9, 'b inserts later, wins', 0)")
        .await
        .unwrap();
    assert!(p.queued(0).await > 0 && p.queued(1).await > 0);

    set_peer_port(&p, 0, common::servers().nodes[1].port).await;
    set_peer_port(&p, 1, common::servers().nodes[0].port).await;
    p.pgtwin(&["run", "--once"]).ok();
    let rows = p.assert_same("items").await;
    let v = |id: i32| {
        rows.iter()
            .find(|r| r.starts_with(&format!("({id},")))
            .cloned()
    };
    assert!(v(1).unwrap().contains("b later, wins"), "{rows:?}");
    assert!(v(2).unwrap().contains("a later, wins"), "{rows:?}");
    assert!(
        v(3).unwrap().contains("b updates after a deleted, wins"),
        "{rows:?}"
    );
    assert!(
        v(4).unwrap().contains("a updates after b deleted, wins"),
        "{rows:?}"
    );
    assert!(v(7).is_some() && v(8).is_some());
    assert!(v(9).unwrap().contains("b inserts later, wins"), "{rows:?}");
    let mut recorded = 0;
    for admin in &p.admin {
        recorded += admin
            .query_one("SELECT count(*) FROM pgtwin.conflicts", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
    }
    assert_eq!(recorded, 5, "each conflicting key recorded once");
    // Recorded conflicts make the pair "degraded" until someone has looked at them.
    let status = p.pgtwin(&["status", "--json"]);
    assert_eq!(status.code, 1, "{}", status.stdout);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let total = status["nodes"][0]["queue"]["conflicts"].as_i64().unwrap()
        + status["nodes"][1]["queue"]["conflicts"].as_i64().unwrap();
    assert_eq!(total, 5);
    assert_eq!(p.queued(0).await + p.queued(1).await, 0);
    // Both versions side by side, with column names; --ack clears what was listed.
    let listed: serde_json::Value =
        serde_json::from_str(&p.pgtwin(&["conflicts", "--json"]).ok().stdout).unwrap();
    let conflicts = listed["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 5, "{listed}");
    let key1 = conflicts
        .iter()
        .find(|c| c["key"] == serde_json::json!([1]))
        .unwrap_or_else(|| panic!("{listed}"));
    let versions = [&key1["this_node"], &key1["peer"]];
    assert!(
        versions.iter().any(|v| v["row"]["v"] == "a first")
            && versions.iter().any(|v| v["row"]["v"] == "b later, wins"),
        "{key1}"
    );
    assert_eq!(key1["winner"], "b");
    let text = p.pgtwin(&["conflicts", "--ack"]).ok().stdout;
    assert!(text.contains("5 conflict(s) cleared"), "{text}");
    p.pgtwin(&["status"]).ok();
    assert!(p
        .pgtwin(&["conflicts"])
        .ok()
        .stdout
        .contains("no conflicts recorded"));
}

#[tokio::test]
async fn killing_the_runner_mid_drain_loses_and_repeats_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"\nbatch_size = 10");
    p.pgtwin(&["up"]).ok();
    // Many transactions: a replay never splits one, so one transaction would be one batch.
    for t in 0..120 {
        p.owner[0]
            .batch_execute(&format!(
                "INSERT INTO items SELECT g, 'queued', g FROM generate_series({} + 1, {} + 100) g",
                t * 100,
                t * 100
            ))
            .await
            .unwrap();
    }
    p.owner[0]
        .batch_execute("UPDATE items SET n = n + 1 WHERE id % 2 = 0")
        .await
        .unwrap();
    assert_eq!(p.queued(0).await, 18000);
    let runner = Runner::start(&p, &["run"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let on_b: i64 = p.admin[1]
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        if on_b > 0 {
            assert!(
                on_b < 12000,
                "the drain finished before the kill: make it longer"
            );
            break;
        }
        assert!(Instant::now() < deadline, "runner applied nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    runner.kill();
    // SIGTERM mid-drain: the runner ends the batch in hand and stops at once (a runner once ignored
    // it for over 20 s in a long replay).
    let count = || async {
        p.admin[1]
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let at_kill = count().await;
    let runner = Runner::start(&p, &["run"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count().await == at_kill {
        assert!(
            Instant::now() < deadline,
            "the second runner applied nothing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = runner.terminate(Duration::from_secs(5));
    assert!(status.success(), "run did not stop on SIGTERM: {status:?}");
    assert!(
        p.queued(0).await > 0,
        "the drain finished before SIGTERM: make it longer"
    );
    p.pgtwin(&["run", "--once"]).ok();
    let rows = p.assert_same("items").await;
    assert_eq!(rows.len(), 12000);
    assert_eq!(p.queued(0).await, 0);
}

#[tokio::test]
async fn async_mode_applies_while_run_runs_and_loses_nothing_when_stopped() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    let runner = Runner::start(&p, &["run"]);
    p.owner[0]
        .batch_execute("INSERT INTO items VALUES (1, 'from a', 1)")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("INSERT INTO items VALUES (2, 'from b', 2)")
        .await
        .unwrap();
    // Writes are local only; the runner, woken by NOTIFY, brings them across.
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.rows(0, "items").await.len() < 2 || p.rows(1, "items").await.len() < 2 {
        assert!(Instant::now() < deadline, "run did not apply async changes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.assert_same("items").await;
    // SIGTERM: the runner stops cleanly.
    let status = runner.terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "run did not stop cleanly on SIGTERM: {status:?}"
    );
    p.owner[0]
        .batch_execute("UPDATE items SET v = 'while stopped'")
        .await
        .unwrap();
    assert!(p.queued(0).await > 0);
    let once: serde_json::Value =
        serde_json::from_str(&p.pgtwin(&["run", "--once", "--json"]).ok().stdout).unwrap();
    assert_eq!(once[0]["from"], "a");
    assert_eq!(once[0]["rows"], 2, "{once}");
    assert_eq!(once[1]["rows"], 0, "{once}");
    assert!(p
        .assert_same("items")
        .await
        .iter()
        .all(|r| r.contains("while stopped")));
}

#[tokio::test]
async fn fail_mode_fails_the_write_and_a_full_queue_asks_for_repair() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\non_peer_down = \"fail\"");
    p.pgtwin(&["up"]).ok();
    let closed = pgtwin::localpg::free_port().unwrap();
    set_peer_port(&p, 0, closed).await;
    let err = p.owner[0]
        .batch_execute("INSERT INTO items VALUES (1, 'x', 1)")
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("could not connect"), "{err:?}");
    assert!(p.rows(0, "items").await.is_empty());
    p.pgtwin(&["down"]).ok();

    p.config("[[tables]]\nname = \"items\"\n[options]\nmax_queue_age_s = 1");
    p.pgtwin(&["up"]).ok();
    set_peer_port(&p, 0, closed).await;
    p.owner[0]
        .batch_execute("INSERT INTO items VALUES (1, 'queued', 1)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.owner[0]
        .batch_execute("INSERT INTO items VALUES (2, 'not recorded', 1)")
        .await
        .unwrap();
    let status = p.pgtwin(&["status", "--json"]);
    assert_ne!(status.code, 0, "{}", status.stdout);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let q = &status["nodes"][0]["queue"];
    assert!(q["needs_repair_since"].is_string(), "{status}");
    assert_eq!(q["rows"], 1);
    assert_eq!(status["nodes"][0]["link"]["ok"], false);
    let text = p.pgtwin(&["status"]).stdout;
    assert!(
        text.contains("NEEDS REPAIR") && text.contains("link to peer: DOWN"),
        "{text}"
    );
    // Link back: the queue drains, and repair brings over what was not recorded and clears the mark.
    set_peer_port(&p, 0, common::servers().nodes[1].port).await;
    p.pgtwin(&["run", "--once"]).ok();
    p.pgtwin(&["repair", "--prefer", "a"]).ok();
    assert_eq!(p.assert_same("items").await.len(), 2);
    let status: serde_json::Value =
        serde_json::from_str(&p.pgtwin(&["status", "--json"]).ok().stdout).unwrap();
    assert!(
        status["nodes"][0]["queue"]["needs_repair_since"].is_null(),
        "{status}"
    );
    // Changes are recorded again: one made while the link is cut arrives after it is back.
    set_peer_port(&p, 0, closed).await;
    p.owner[0]
        .batch_execute("INSERT INTO items VALUES (3, 'queued again', 1)")
        .await
        .unwrap();
    assert_eq!(p.queued(0).await, 1);
    set_peer_port(&p, 0, common::servers().nodes[1].port).await;
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(p.assert_same("items").await.len(), 3);
}

#[tokio::test]
async fn a_queued_truncate_counts_and_blocks_up_repair_and_down() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.both("INSERT INTO items VALUES (1, 'seed', 1), (2, 'seed', 2), (3, 'seed', 3)")
        .await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    let closed = pgtwin::localpg::free_port().unwrap();
    set_peer_port(&p, 0, closed).await;
    // The first write to find the peer gone: the truncate is queued key by key all the same.
    p.owner[0].batch_execute("TRUNCATE items").await.unwrap();
    assert_eq!(
        p.queued(0).await,
        3,
        "the truncate queued as one deletion per row"
    );
    // The queue is the only record of the truncate: nothing may repair, merge or drop it away.
    p.pgtwin(&["up"])
        .fails_with(&["node a", "run pgtwin run --once"]);
    p.pgtwin(&["repair", "--prefer", "b"])
        .fails_with(&["node a", "run pgtwin run --once"]);
    p.pgtwin(&["down"]).fails_with(&["node a", "--force"]);
    assert_eq!(p.rows(1, "items").await.len(), 3);
    set_peer_port(&p, 0, common::servers().nodes[1].port).await;
    p.pgtwin(&["run", "--once"]).ok();
    assert!(p.assert_same("items").await.is_empty());
}

/// With the peer away, a transaction that updates a row and then truncates the table queues its
/// changes in the order it made them: the replay leaves the row on neither node.
#[tokio::test]
async fn a_truncate_after_other_changes_is_queued_after_them() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.both("INSERT INTO items VALUES (1, 'seed', 1), (2, 'seed', 2)")
        .await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    let closed = pgtwin::localpg::free_port().unwrap();
    set_peer_port(&p, 0, closed).await;
    p.owner[0]
        .batch_execute("BEGIN; UPDATE items SET n = 5 WHERE id = 1; TRUNCATE items; COMMIT")
        .await
        .unwrap();
    set_peer_port(&p, 0, common::servers().nodes[1].port).await;
    p.pgtwin(&["run", "--once"]).ok();
    assert!(p.assert_same("items").await.is_empty());
}

/// A replayed change and a local transaction writing the same row at that moment: the replay waits for
/// the row, then sees the local change in the queue and weighs it (the later one wins on both nodes),
/// instead of overwriting it unseen.
#[tokio::test]
async fn a_local_write_in_flight_during_replay_is_weighed_not_overwritten() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.both("INSERT INTO items VALUES (1, 'seed', 1)").await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    p.owner[1]
        .batch_execute("UPDATE items SET v = 'b, earlier' WHERE id = 1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a = &p.owner[0];
    a.batch_execute("BEGIN; UPDATE items SET v = 'a, later, in flight' WHERE id = 1")
        .await
        .unwrap();
    let runner = Runner::start(&p, &["run", "--once"]);
    // The replay of b's change reaches the row a's open transaction holds, and waits.
    wait_for_a_replay_waiting_on_a_row(&p, 0).await;
    a.batch_execute("COMMIT").await.unwrap();
    assert!(runner.wait(Duration::from_secs(20)).success());
    // a's change, queued by the transaction that was in flight, goes across on the next drain.
    p.pgtwin(&["run", "--once"]).ok();
    let rows = p.assert_same("items").await;
    assert_eq!(rows, vec!["(1,\"a, later, in flight\",1)"]);
    let conflicts: i64 = p.admin[0]
        .query_one(
            "SELECT count(*) FROM pgtwin.conflicts WHERE winner = 'a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(conflicts, 1);
}

/// A chunk `pgtwin run` joined from several entries has one time for all: where the node it reaches
/// holds queued changes of that table, the apply refuses it (SQLSTATE PT409) so the runner sends the
/// entries one by one.
#[tokio::test]
async fn a_joined_chunk_meeting_queued_changes_is_refused_for_a_retry() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    p.owner[1]
        .batch_execute("INSERT INTO items VALUES (5, 'queued on b', 1)")
        .await
        .unwrap();
    let inbox: String = p.admin[1]
        .query_one(
            "SELECT format('%I.%I', schemaname, viewname) FROM pg_views WHERE schemaname = 'pgtwin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let batch: String = p.admin[1]
        .query_one("SELECT batch FROM pgtwin.queue", &[])
        .await
        .unwrap()
        .get(0);
    let replay =
        |joined: &'static str| {
            format!(
            "BEGIN; SET LOCAL pgtwin.origin = 'a'; SET LOCAL pgtwin.replay_at = '2000-01-01 UTC'; \
             SET LOCAL pgtwin.replay_joined = '{joined}'; UPDATE {inbox} SET pgtwin_batch = '{}'",
            batch.replace("queued on b", "older, from a").replace('\'', "''")
        )
        };
    let err = p.owner[1].batch_execute(&replay("on")).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("PT409"), "{err:?}");
    p.owner[1].batch_execute("ROLLBACK").await.unwrap();
    // Unjoined, the same chunk is weighed against the queue: b's own change is later, and stays.
    p.owner[1].batch_execute(&replay("off")).await.unwrap();
    p.owner[1].batch_execute("COMMIT").await.unwrap();
    assert_eq!(p.rows(1, "items").await, vec!["(5,\"queued on b\",1)"]);
}

/// A transaction's changes travel when it commits: a peer lost in the middle of a transaction costs
/// it nothing. At COMMIT the peer is found away, and the transaction's changes, with every later one,
/// are queued for `pgtwin run`.
#[tokio::test]
async fn a_peer_lost_mid_transaction_queues_that_transaction_at_commit() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    {
        let a = &p.owner[0];
        // This session has reached the peer before: its connection there is cached.
        a.batch_execute("INSERT INTO items VALUES (1, 'shipped', 1)")
            .await
            .unwrap();
        a.batch_execute("BEGIN; UPDATE items SET n = 2 WHERE id = 1")
            .await
            .unwrap();
        server_b().stop(true).unwrap();
        a.batch_execute("INSERT INTO items VALUES (2, 'after the peer died', 1); COMMIT")
            .await
            .unwrap();
        assert_eq!(p.queued(0).await, 2);
        a.batch_execute("INSERT INTO items VALUES (3, 'queued', 1)")
            .await
            .unwrap();
        assert_eq!(p.queued(0).await, 3);
    }
    server_b().start_again().unwrap();
    p.reconnect(1).await;
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(
        p.assert_same("items").await,
        vec![
            "(1,shipped,2)",
            "(2,\"after the peer died\",1)",
            "(3,queued,1)"
        ]
    );
}

/// pgtwin's own connections and the foreign servers speak TLS as the URLs' sslmode says, and a
/// certificate that does not pass the check the URL asks for is a clear error.
#[tokio::test]
async fn tls_as_the_urls_sslmode_says() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    let cert = common::servers().tls_cert.display().to_string();
    let config = |mode: &str| {
        let url = |i| format!("{}?sslmode={mode}&sslrootcert={cert}", p.url(i));
        p.config_text(&format!(
            "[nodes.a]\nurl = \"{}\"\n[nodes.b]\nurl = \"{}\"\n[[tables]]\nname = \"items\"\n",
            url(0),
            url(1)
        ));
    };
    // The certificate names localhost; the URLs say 127.0.0.1: verify-full refuses, verify-ca passes.
    config("verify-full");
    // Both nodes' refusals in one run.
    p.pgtwin(&["plan"]).fails_with_each(&[
        &["node a", "certificate", "127.0.0.1"],
        &["node b", "certificate", "127.0.0.1"],
    ]);
    // require with a root certificate at hand verifies the chain, as libpq does: a CA that did not
    // sign the servers' certificate is refused.
    let other = common::servers().other_ca.display().to_string();
    let url = |i| format!("{}?sslmode=require&sslrootcert={other}", p.url(i));
    p.config_text(&format!(
        "[nodes.a]\nurl = \"{}\"\n[nodes.b]\nurl = \"{}\"\n[[tables]]\nname = \"items\"\n",
        url(0),
        url(1)
    ));
    p.pgtwin(&["plan"])
        .fails_with_each(&[&["node a", "certificate"], &["node b", "certificate"]]);
    config("verify-ca");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("INSERT INTO items VALUES (1, 'over TLS', 1)")
        .await
        .unwrap();
    p.assert_same("items").await;
    let encrypted = |app: &'static str| {
        let admin = &p.admin[1];
        async move {
            let row = admin
                .query_one(
                    "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s \
                     JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
                    &[&app],
                )
                .await
                .unwrap();
            (row.get::<_, i64>(0), row.get::<_, i64>(1))
        }
    };
    let (tls, all) = encrypted("pgtwin from a").await;
    assert!(
        all > 0 && tls == all,
        "foreign server sessions: {tls} of {all} over TLS"
    );
    let runner = Runner::start(&p, &["run"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (tls, all) = encrypted("pgtwin").await;
        if all > 0 {
            assert_eq!(tls, all, "pgtwin's own sessions over TLS");
            break;
        }
        assert!(Instant::now() < deadline, "pgtwin run never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(runner);
}

/// A writer that queues while a drain is busy sends no NOTIFY (it found entries), and may commit after
/// the runner's last look: `run` still picks its change up within its idle poll, not seconds later.
#[tokio::test]
async fn a_change_committed_after_the_runners_last_look_still_arrives_promptly() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("INSERT INTO items VALUES (1, 'first', 1)")
        .await
        .unwrap();
    // Hold the first entry, so that the runner waits on it and the writer below finds it queued.
    let holder = p.owner_connection(0).await;
    holder
        .batch_execute("BEGIN; SELECT FROM pgtwin.queue FOR UPDATE")
        .await
        .unwrap();
    let _runner = Runner::start(&p, &["run"]);
    let late = p.owner_connection(0).await;
    late.batch_execute("BEGIN; INSERT INTO items VALUES (2, 'committed late', 2)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.rows(1, "items").await.is_empty() {
        assert!(Instant::now() < deadline, "the first change never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    late.batch_execute("COMMIT").await.unwrap();
    let committed = Instant::now();
    while p.rows(1, "items").await.len() < 2 {
        assert!(
            committed.elapsed() < Duration::from_millis(2500),
            "a change committed after the runner's last look waited for the idle poll too long"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.assert_same("items").await;
}

/// The runner joins queue entries into larger chunks; a joined chunk carries one time. When the peer
/// turns out to hold a change of the same table queued in between (here: committed while the replay
/// waited for its row), the apply refuses the joined chunk and the runner sends the entries one by one,
/// so each is weighed with its own time: the change made between them wins over the earlier one.
#[tokio::test]
async fn a_joined_replay_meeting_a_change_queued_meanwhile_goes_entry_by_entry() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.both("INSERT INTO items VALUES (1, 'seed', 1), (2, 'seed', 2)")
        .await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    let later = || tokio::time::sleep(Duration::from_millis(20));
    p.owner[0]
        .batch_execute("UPDATE items SET v = 'a, first' WHERE id = 1")
        .await
        .unwrap();
    later().await;
    let b = p.owner_connection(1).await;
    b.batch_execute("BEGIN; UPDATE items SET v = 'b, in between' WHERE id = 1")
        .await
        .unwrap();
    later().await;
    p.owner[0]
        .batch_execute("UPDATE items SET v = 'a, last' WHERE id = 2")
        .await
        .unwrap();
    let runner = Runner::start(&p, &["run", "--once"]);
    // The replay of a's two entries, joined, reaches row 1 on b, which b's open transaction holds.
    wait_for_a_replay_waiting_on_a_row(&p, 1).await;
    b.batch_execute("COMMIT").await.unwrap();
    assert!(runner.wait(Duration::from_secs(20)).success());
    p.pgtwin(&["run", "--once"]).ok();
    let rows = p.assert_same("items").await;
    assert_eq!(
        rows,
        vec!["(1,\"b, in between\",1)", "(2,\"a, last\",2)"],
        "b's change is later than a's change of row 1, though earlier than a's last entry"
    );
}

/// While changes queue, a TRUNCATE is recorded as the deletion of the keys it removed, so the replay
/// weighs it key by key: a row the other node changed after the truncate survives it on both nodes.
#[tokio::test]
async fn a_truncate_while_apart_is_weighed_key_by_key() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.both("INSERT INTO items VALUES (1, 'seed', 1), (2, 'seed', 2), (3, 'seed', 3)")
        .await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0].batch_execute("TRUNCATE items").await.unwrap();
    assert_eq!(p.queued(0).await, 3, "one deletion per key");
    tokio::time::sleep(Duration::from_millis(20)).await;
    p.owner[1]
        .batch_execute("UPDATE items SET v = 'b, after the truncate' WHERE id = 2")
        .await
        .unwrap();
    p.pgtwin(&["run", "--once"]).ok();
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(
        p.assert_same("items").await,
        vec!["(2,\"b, after the truncate\",2)"]
    );
    // With the peer reachable in sync mode, a truncate still travels as one TRUNCATE.
    p.pgtwin(&["down"]).ok();
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0].batch_execute("TRUNCATE items").await.unwrap();
    assert_eq!(p.queued(0).await, 0);
    assert!(p.assert_same("items").await.is_empty());
}

/// Runs `pgtwin --log-format json run` for `time`, then SIGTERM; returns what it logged.
async fn json_run_for(p: &Pair, time: Duration) -> String {
    let child = Command::new(env!("CARGO_BIN_EXE_pgtwin"))
        .arg("-c")
        .arg(p.dir.path().join("pgtwin.toml"))
        .args(["--log-format", "json", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(time).await;
    let pid = child.id().to_string();
    assert!(Command::new("kill").arg(pid).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `run` as a service: while a node is unreachable it backs off and logs that state once (here as
/// JSON lines, for a log shipper), and once pgtwin is removed from both nodes it exits with a clear
/// message instead of retrying forever.
#[tokio::test]
async fn run_backs_off_logs_each_state_once_and_exits_once_removed() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    let good = std::fs::read_to_string(p.dir.path().join("pgtwin.toml")).unwrap();
    let closed = pgtwin::localpg::free_port().unwrap();
    let unreachable = good.replace(
        &format!(":{}/", common::servers().nodes[1].port),
        &format!(":{closed}/"),
    );
    p.config_text(&unreachable);
    let stderr = json_run_for(&p, Duration::from_secs(4)).await;
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    // Four seconds of retries (0.5 + 1 + 2 s) are one line, not one per try.
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a log that is not a terminal"
    );

    p.config_text(&good);
    // Connected, the state change is a JSON line too.
    let stderr = json_run_for(&p, Duration::from_millis(1500)).await;
    assert!(
        stderr.contains("replaying queues between a and b"),
        "{stderr}"
    );
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    p.pgtwin(&["down"]).ok();
    let started = Instant::now();
    let run = p.pgtwin(&["run"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("pgtwin is not installed on node a nor on node b"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A change the peer always refuses (its own CHECK constraint) is set aside with its reason, every
/// later change still arrives, `status` and `pgtwin conflicts` show it, and `repair` settles it.
#[tokio::test]
async fn a_change_the_peer_refuses_is_set_aside_and_never_blocks_the_others() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.owner[0].batch_execute(ITEMS).await.unwrap();
    // b's own trigger refuses two values with errors of its own kind: a failed ASSERT (P0004), and a
    // table it names that b lacks (42P01, which outside the apply means "pgtwin not installed").
    p.owner[1]
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text, n int CHECK (n >= 0));
             CREATE FUNCTION b_rules() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 ASSERT NEW.v <> 'asserted', 'no asserted rows here';
                 IF NEW.v = 'audited' THEN
                     INSERT INTO audit_log VALUES (NEW.id);
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER b_rules BEFORE INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION b_rules()",
        )
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    for sql in [
        "INSERT INTO items VALUES (1, 'fine', 1)",
        "INSERT INTO items VALUES (2, 'poison', -1)",
        "INSERT INTO items VALUES (4, 'asserted', 4)",
        "INSERT INTO items VALUES (5, 'audited', 5)",
        "INSERT INTO items VALUES (3, 'after', 3)",
        "UPDATE items SET v = 'later' WHERE id = 1",
    ] {
        p.owner[0].batch_execute(sql).await.unwrap();
    }
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(p.rows(1, "items").await, vec!["(1,later,1)", "(3,after,3)"]);
    assert_eq!(p.queued(0).await, 0);
    let status = p.pgtwin(&["status"]);
    assert_eq!(status.code, 1, "{}", status.stdout);
    assert!(
        status.stdout.contains("node a: 3 change(s) set aside"),
        "{}",
        status.stdout
    );
    let listed: serde_json::Value =
        serde_json::from_str(&p.pgtwin(&["conflicts", "--json"]).ok().stdout).unwrap();
    let entry = &listed["set_aside"][0];
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("node b refused it")
            && entry["reason"].as_str().unwrap().contains("items_n_check"),
        "{listed}"
    );
    assert_eq!(entry["change"]["rows"][0]["v"], "poison", "{listed}");
    let (_, reasons) = p.set_aside();
    assert!(
        reasons[1].contains("no asserted rows here")
            && reasons[2].contains("relation \"audit_log\" does not exist"),
        "{listed}"
    );
    // The nodes differ in that row until a repair settles it (b's table is the one to keep).
    p.pgtwin(&["repair", "--mirror", "b"]).ok();
    p.assert_same("items").await;
    p.pgtwin(&["status"]).ok();
}

/// Sync mode after an outage of both links, with four writers at full speed on each node all along:
/// while a queue holds anything, every write of its node queues (a change must not overtake an older
/// one), so a queue drained batch by batch keeps a few entries as long as the writers write. `pgtwin
/// run` replays the last batch with the queue closed to new entries: both queues empty and stay empty
/// while the writers go on, which ship directly again.
#[tokio::test]
async fn sync_mode_ships_directly_again_once_the_queues_drain_under_load() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both("CREATE TABLE items (id bigserial PRIMARY KEY, v text)")
        .await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    let closed = pgtwin::localpg::free_port().unwrap();
    for i in 0..2 {
        set_peer_port(&p, i, closed).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..2 {
        for _ in 0..4 {
            let c = p.owner_connection(i).await;
            let stop = stop.clone();
            writers.push(tokio::spawn(async move {
                let mut written = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    c.execute("INSERT INTO items (v) VALUES ('busy')", &[])
                        .await
                        .expect("a write failed");
                    written += 1;
                }
                written
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        p.queued(0).await > 100 && p.queued(1).await > 100,
        "the outage queued little"
    );
    for i in 0..2 {
        set_peer_port(&p, i, common::servers().nodes[1 - i].port).await;
    }
    let runner = Runner::start(&p, &["run"]);
    // Both empty, and empty again a second later, with the writers still writing: direct shipping.
    let started = Instant::now();
    let mut empty_since: Option<Instant> = None;
    loop {
        let queued = [p.queued(0).await, p.queued(1).await];
        match (queued, empty_since) {
            ([0, 0], None) => empty_since = Some(Instant::now()),
            ([0, 0], Some(t)) if t.elapsed() >= Duration::from_secs(1) => break,
            ([0, 0], Some(_)) => {}
            _ => empty_since = None,
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the queues never stayed empty under load ({queued:?} queued)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let count = |i: usize| {
        let c = &p.admin[i];
        async move {
            c.query_one("SELECT count(*) FROM items", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let before = [count(0).await, count(1).await];
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        count(0).await > before[0] && count(1).await > before[1],
        "the writers stopped"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        assert!(w.await.unwrap() > 0);
    }
    assert_eq!([p.queued(0).await, p.queued(1).await], [0, 0]);
    p.assert_same("items").await;
    runner.kill();
}

/// What node i's records of each key's newest queued change (pgtwin.queue_latest) get wrong, before
/// any deletion from the queue: every key a queued chunk records has a record naming the newest entry
/// holding it, and saying whether an insert of it waits.
async fn queue_latest_is_exact(p: &Pair, i: usize) -> Vec<String> {
    p.admin[i]
        .query(
            "WITH derived AS (SELECT table_tag, k AS key, max(seq) AS seq, bool_or(left(batch, 1) = 'I') AS inserts
                              FROM pgtwin.queue, unnest(keys) k GROUP BY 1, 2),
                  recorded AS (SELECT table_tag, key, seq, inserts FROM pgtwin.queue_latest)
             SELECT format('%s %s %s', 'not recorded', key, seq) FROM (SELECT * FROM derived EXCEPT SELECT * FROM recorded) d
             UNION ALL
             SELECT format('%s %s %s', 'recorded wrongly', key, seq) FROM (SELECT * FROM recorded EXCEPT SELECT * FROM derived) r",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A story of an outage: both applications keep hammering the same few rows (a stock counter, a
/// status) while the link is down, each node queueing hundreds of versions of each. Every arriving
/// version is weighed against the newest queued one of its key (pgtwin.queue_latest, kept by the
/// enqueue and by every deletion), and the last writer wins on both nodes. The nodes' tables differ
/// in column order.
#[tokio::test]
async fn a_hot_row_hammered_on_both_nodes_while_apart_ends_with_its_last_writer() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.owner[0].batch_execute(ITEMS).await.unwrap();
    p.owner[1]
        .batch_execute("CREATE TABLE items (n int, v text, id int PRIMARY KEY)")
        .await
        .unwrap();
    p.both("INSERT INTO items (id, v, n) SELECT g, 'seed', g FROM generate_series(1, 200) g")
        .await;
    // Chunks of 80 rows: the bulk statement below travels as one of 80 and one of 20.
    p.config("[[tables]]\nname = \"items\"\n[options]\nbatch_size = 80");
    p.pgtwin(&["up"]).ok();
    let closed = pgtwin::localpg::free_port().unwrap();
    set_peer_port(&p, 0, closed).await;
    set_peer_port(&p, 1, closed).await;
    let (a, b) = (&p.owner[0], &p.owner[1]);
    // Rows 1 and 2 are hot: each node writes them 150 times, turn about; b writes row 1 last, a row 2.
    for i in 0..150 {
        a.batch_execute(&format!(
            "UPDATE items SET v = 'a {i}', n = n + 1 WHERE id = 1; UPDATE items SET v = 'a {i}' WHERE id = 2"
        ))
        .await
        .unwrap();
        b.batch_execute(&format!(
            "UPDATE items SET v = 'b {i}', n = n + 1 WHERE id = 1"
        ))
        .await
        .unwrap();
        if i < 149 {
            b.batch_execute(&format!("UPDATE items SET v = 'b {i}' WHERE id = 2"))
                .await
                .unwrap();
        }
    }
    a.batch_execute("UPDATE items SET v = 'a last, wins' WHERE id = 2")
        .await
        .unwrap();
    // Key 0: both insert it while apart, a first; b's, later, then updated, wins. a's insert reaches
    // b first and loses there, so b's queued insert of it (older than b's newest change of it) must
    // overwrite on a, not be refused there as a key handed out twice.
    a.batch_execute("INSERT INTO items VALUES (0, 'a first', 0)")
        .await
        .unwrap();
    b.batch_execute(
        "INSERT INTO items (id, v, n) VALUES (0, 'b later', 0); UPDATE items SET v = 'b later, wins' WHERE id = 0",
    )
    .await
    .unwrap();
    // A bulk statement on b (its chunks, even the short last one, record no keys) meets later changes
    // of its rows on a, and a multi-row insert on a meets nothing.
    b.batch_execute("UPDATE items SET v = 'bulk on b' WHERE id > 100")
        .await
        .unwrap();
    a.batch_execute("UPDATE items SET v = 'a after the bulk, wins' WHERE id IN (150, 190)")
        .await
        .unwrap();
    a.batch_execute(
        "INSERT INTO items (id, v, n) SELECT g, 'many on a', 0 FROM generate_series(1000, 1009) g",
    )
    .await
    .unwrap();
    assert!(p.queued(0).await > 300 && p.queued(1).await > 300);
    for i in 0..2 {
        assert_eq!(queue_latest_is_exact(&p, i).await, Vec::<String>::new());
    }
    // The bulk statement's short last chunk is queued on b, and records no keys (no NULL ones).
    let (short_bulk, null_keys): (i64, i64) = {
        let r = p.admin[1]
            .query_one(
                "SELECT count(*) FILTER (WHERE keys IS NULL AND rows < 64),
                        count(*) FILTER (WHERE array_position(keys, NULL) IS NOT NULL)
                 FROM pgtwin.queue",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((short_bulk, null_keys), (1, 0));

    set_peer_port(&p, 0, common::servers().nodes[1].port).await;
    set_peer_port(&p, 1, common::servers().nodes[0].port).await;
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!((p.queued(0).await, p.queued(1).await), (0, 0));
    let rows = p.assert_same("(SELECT id, v, n FROM items)").await;
    let v = |id: i32| {
        rows.iter()
            .find(|r| r.starts_with(&format!("({id},")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(v(1).contains("b 149"), "{rows:?}");
    assert!(v(2).contains("a last, wins"), "{rows:?}");
    assert!(v(0).contains("b later, wins"), "{rows:?}");
    assert!(v(150).contains("a after the bulk, wins"), "{rows:?}");
    assert!(v(190).contains("a after the bulk, wins"), "{rows:?}");
    assert!(v(101).contains("bulk on b"), "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r.contains("many on a")).count(), 10);
    for admin in &p.admin {
        let (left, set_aside): (i64, i64) = {
            let r = admin
                .query_one(
                    "SELECT (SELECT count(*) FROM pgtwin.queue_latest), (SELECT count(*) FROM pgtwin.set_aside)",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!(
            (left, set_aside),
            (0, 0),
            "an empty queue has no newest change; nothing set aside"
        );
    }
}

/// The newest queue entry holding `key` on node b, as pgtwin.queue_latest records it.
async fn newest_queued(p: &Pair, key: &str) -> Option<i64> {
    p.admin[1]
        .query_opt(
            "SELECT seq FROM pgtwin.queue_latest WHERE key = $1",
            &[&key],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// A key's record goes with its newest queued entry (replayed, or set aside because the peer refused
/// it) even where an older entry of the key still waits: that one is still weighed, found through the
/// index on the queue's keys.
#[tokio::test]
async fn a_key_whose_newest_queued_change_left_is_still_weighed_against_its_older_ones() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.owner[0].batch_execute(ITEMS).await.unwrap();
    p.owner[1]
        .batch_execute("CREATE TABLE items (n int, note text, v text, id int PRIMARY KEY)")
        .await
        .unwrap();
    p.both("INSERT INTO items (id, v, n) SELECT g, 'seed', g FROM generate_series(1, 3) g")
        .await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    let closed = pgtwin::localpg::free_port().unwrap();
    set_peer_port(&p, 0, closed).await;
    set_peer_port(&p, 1, closed).await;
    p.owner[0]
        .batch_execute("UPDATE items SET v = 'a early' WHERE id = 1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let b = &p.owner[1];
    b.batch_execute("UPDATE items SET v = 'b later, wins' WHERE id = 1")
        .await
        .unwrap();
    b.batch_execute("UPDATE items SET v = 'b newest, set aside' WHERE id = 1")
        .await
        .unwrap();
    let newest: i64 = p.admin[1]
        .query_one("SELECT max(seq) FROM pgtwin.queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(newest_queued(&p, "[1]").await, Some(newest));
    // b's newest change of key 1 leaves its queue, as a change the peer refused would.
    p.admin[1]
        .batch_execute(&format!("DELETE FROM pgtwin.queue WHERE seq = {newest}"))
        .await
        .unwrap();
    assert_eq!(newest_queued(&p, "[1]").await, None);
    assert_eq!(p.queued(1).await, 1);

    set_peer_port(&p, 0, common::servers().nodes[1].port).await;
    set_peer_port(&p, 1, common::servers().nodes[0].port).await;
    p.pgtwin(&["run", "--once"]).ok();
    // a's early change reached b and lost there to b's older queued one, which then reached a. (b keeps
    // the change that left its queue, as after any set-aside, until a repair.)
    let row = |i: usize| {
        let c = &p.admin[i];
        async move {
            c.query_one("SELECT v FROM items WHERE id = 1", &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(row(0).await, "b later, wins");
    assert_eq!(row(1).await, "b newest, set aside");
    let winner: String = p.admin[1]
        .query_one("SELECT winner FROM pgtwin.conflicts WHERE key = '[1]'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(winner, "b");
}

/// The peer's records of replayed entries go once the origin has deleted those entries, also after a
/// drain's last batch (which has no next one to take them along): a month of `run` must not pile
/// them up on either node, nor send them all back with every drain.
#[tokio::test]
async fn replay_records_do_not_pile_up() {
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    for round in 1..=3 {
        for (i, owner) in p.owner.iter().enumerate() {
            owner
                .batch_execute(&format!(
                    "INSERT INTO items VALUES ({}, 'round {round}', {round})",
                    round * 10 + i
                ))
                .await
                .unwrap();
        }
        p.pgtwin(&["run", "--once"]).ok();
        assert_eq!(p.assert_same("items").await.len(), round * 2);
        for admin in &p.admin {
            let records: i64 = admin
                .query_one("SELECT count(*) FROM pgtwin.replayed", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(records, 0, "round {round}");
        }
    }
}

/// A long replay vacuums what it deletes: the origin's queue and the peer's records of it. Autovacuum
/// looks at most once a minute, and until a vacuum every scan from the queue's head walks each entry
/// deleted since (runner.rs, Listener::tidy).
#[tokio::test]
async fn the_runner_vacuums_the_queue_tables_it_drains() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    // Autovacuum holding a table when the runner's turn comes would have it passed (SKIP_LOCKED).
    for admin in &p.admin {
        admin
            .batch_execute(
                "ALTER TABLE pgtwin.queue SET (autovacuum_enabled = off); \
                 ALTER TABLE pgtwin.replayed SET (autovacuum_enabled = off)",
            )
            .await
            .unwrap();
    }
    // 12,000 single-row transactions in one round trip: 12,000 queue entries.
    let writes: String = (1..=12_000)
        .map(|i| format!("BEGIN; INSERT INTO items VALUES ({i}, 'bulk', {i}); COMMIT;"))
        .collect();
    p.owner[0]
        .batch_execute(&format!("SET synchronous_commit = off; {writes}"))
        .await
        .unwrap();
    let vacuums = |i: usize, table: &'static str| {
        let admin = &p.admin[i];
        async move {
            admin
                .query_one(
                    "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = $1::text::regclass",
                    &[&format!("pgtwin.{table}")],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let before = [vacuums(0, "queue").await, vacuums(1, "replayed").await];
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(p.assert_same("items").await.len(), 12_000);
    assert!(
        vacuums(0, "queue").await > before[0],
        "a's queue was not vacuumed"
    );
    assert!(
        vacuums(1, "replayed").await > before[1],
        "b's replay records were not vacuumed"
    );
}

/// The planner's plan for `sql`, as EXPLAIN prints it.
async fn plan_of(db: &tokio_postgres::Client, sql: &str) -> String {
    db.query(&format!("EXPLAIN {sql}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0) + "\n")
        .collect()
}

/// The runner reads each batch from the queue's head through its key, however long the queue: with a
/// bound the planner guessed at a third of the queue, a backlog of a few hundred thousand entries was
/// scanned and sorted whole for every batch of 100, and replay fell to the writers' pace. And whether
/// a table has changes queued is one index probe, whatever the other tables queued.
#[tokio::test]
async fn a_batch_is_read_from_the_head_of_a_long_queue() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    let admin = &p.admin[0];
    admin
        .batch_execute(
            // A backlog of single-row writes (one writer's transaction each) that was three times
            // as long: its entries lie on disk in no order of their own (freed space is reused
            // wherever it is), among the space of those replayed.
            "INSERT INTO pgtwin.queue (seq, table_tag, rows, batch, xid) OVERRIDING SYSTEM VALUE \
             SELECT g, 't', 1, 'I{\"columns\":[],\"rows\":[]}', g::text::xid8 \
             FROM generate_series(1, 300000) g ORDER BY random(); \
             DELETE FROM pgtwin.queue WHERE seq % 3 <> 0",
        )
        .await
        .unwrap();
    admin
        .batch_execute("VACUUM ANALYZE pgtwin.queue")
        .await
        .unwrap();
    let plan = plan_of(admin, &pgtwin::state::read_entries_sql(i64::MAX, 100)).await;
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(plan.contains("queue_pkey"), "{plan}");
    // A change arriving for another table asks whether any of its own is queued: one probe of the
    // queue's index by table, not a walk through the 100,000 entries of table t.
    let plan = plan_of(admin, &pgtwin::state::first_queued_of_table_sql("u")).await;
    assert!(plan.contains("queue_by_table"), "{plan}");
}

/// A replay that waits on a row lock held on the peer ends with its lock timeout, a transient error:
/// the change is kept in the queue, not set aside, and arrives once the lock is gone.
#[tokio::test]
async fn a_lock_held_on_the_peer_delays_the_replay_and_sets_nothing_aside() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.owner[0]
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("CREATE TABLE items (v text, id int PRIMARY KEY)")
        .await
        .unwrap();
    p.both("INSERT INTO items (id, v) VALUES (1, 'old')").await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("UPDATE items SET v = 'new' WHERE id = 1")
        .await
        .unwrap();
    let holder = p.owner_connection(1).await;
    holder
        .batch_execute("BEGIN; SELECT FROM items WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    let run = p.pgtwin(&["run", "--once"]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("lock timeout"), "{}", run.stderr);
    assert_eq!(p.queued(0).await, 1);
    assert!(p.set_aside().1.is_empty());
    holder.batch_execute("ROLLBACK").await.unwrap();
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(p.rows(1, "items").await, vec!["(new,1)"]);
    assert_eq!(p.queued(0).await, 0);
}

/// Sync mode through an outage: a transaction that inserts an order before its customer, under a key
/// it deferred with SET CONSTRAINTS (DEFERRABLE INITIALLY IMMEDIATE on both nodes, declared in another
/// column order on b), queues whole while the peer is away and replays whole: the peer's key holds
/// only because the replay defers it too. Nothing is set aside.
#[tokio::test]
async fn a_deferred_key_holds_through_an_outage_in_sync_mode() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.owner[0]
        .batch_execute(
            "CREATE TABLE customers (id int PRIMARY KEY, name text);
             CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers DEFERRABLE INITIALLY IMMEDIATE, total int)",
        )
        .await
        .unwrap();
    p.owner[1]
        .batch_execute(
            "CREATE TABLE customers (name text, id int PRIMARY KEY);
             CREATE TABLE orders (total int, customer_id int REFERENCES customers DEFERRABLE INITIALLY IMMEDIATE, id int PRIMARY KEY)",
        )
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"customers\"\n[[tables]]\nname = \"orders\"");
    p.pgtwin(&["up"]).ok();
    let closed = pgtwin::localpg::free_port().unwrap();
    set_peer_port(&p, 0, closed).await;
    p.owner[0]
        .batch_execute(
            "BEGIN; SET CONSTRAINTS ALL DEFERRED;
             INSERT INTO orders VALUES (1, 1, 10);
             INSERT INTO customers VALUES (1, 'kim');
             COMMIT",
        )
        .await
        .unwrap();
    assert_eq!(p.queued(0).await, 2);
    set_peer_port(&p, 0, common::servers().nodes[1].port).await;
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(p.queued(0).await, 0);
    assert!(p.set_aside().1.is_empty());
    assert_eq!(
        p.assert_same_rows_of(
            "SELECT o.id, c.name, o.total FROM orders o JOIN customers c ON c.id = o.customer_id"
        )
        .await,
        ["(1,kim,10)"]
    );
}
