//! `pgtwin run` as a service: a second runner stands by and takes over when the first dies, and
//! `--metrics` serves what a monitor needs, scraped here over HTTP as Prometheus would.

mod common;

use std::time::{Duration, Instant};

use common::{Pair, Runner};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v text)";

/// Polls `rows` of node i's table until they are `want`, at most 15 s.
async fn eventually_rows(p: &Pair, i: usize, table: &str, want: &[&str]) {
    let started = Instant::now();
    loop {
        let rows = p.rows(i, table).await;
        if rows == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "node {i} {table}: {rows:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two runners started for the same pair: one replays, the other stands by (logging it once) and
/// takes over when the first is killed with SIGKILL, losing nothing queued meanwhile.
#[tokio::test]
async fn a_second_runner_stands_by_and_takes_over_when_the_first_is_killed() {
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    let first = Runner::start(&p, &["run"]);
    first.wait_for_log("replaying queues between a and b", Duration::from_secs(15));
    let second = Runner::start(&p, &["run"]);
    second.wait_for_log("standing by", Duration::from_secs(15));
    p.owner[0]
        .batch_execute("INSERT INTO items VALUES (1, 'by the first')")
        .await
        .unwrap();
    eventually_rows(&p, 1, "items", &["(1,\"by the first\")"]).await;
    assert!(
        !second.log().contains("replaying queues"),
        "{}",
        second.log()
    );

    first.kill();
    p.owner[1]
        .batch_execute("INSERT INTO items VALUES (2, 'after the crash')")
        .await
        .unwrap();
    eventually_rows(
        &p,
        0,
        "items",
        &["(1,\"by the first\")", "(2,\"after the crash\")"],
    )
    .await;
    let log = second.log();
    assert_eq!(log.matches("standing by").count(), 1, "{log}");
    let order = [
        "standing by",
        "taking over",
        "replaying queues between a and b",
    ]
    .map(|s| log.find(s).unwrap_or_else(|| panic!("no {s:?} in {log}")));
    assert!(order.is_sorted(), "{log}");
    assert!(second.terminate(Duration::from_secs(10)).success());
    assert_eq!(p.queued(0).await + p.queued(1).await, 0);
}
