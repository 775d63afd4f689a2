//! `pgtwin run` as a service: a second runner stands by and takes over when the first dies, and
//! `--metrics` serves what a monitor needs, scraped here over HTTP as Prometheus would.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Pair, Runner};
use tokio::sync::Mutex;

/// The metrics test stops node b: tests here run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v text)";

/// Polls node i's rows of `table` until they are `want`.
async fn eventually_rows(p: &Pair, i: usize, table: &str, want: &[&str]) {
    p.rows_until(i, table, |rows| rows == want).await;
}

/// Two runners started for the same pair: one replays, the other stands by (logging it once) and
/// takes over when the first is killed with SIGKILL, losing nothing queued meanwhile.
#[tokio::test]
async fn a_second_runner_stands_by_and_takes_over_when_the_first_is_killed() {
    let _serial = ONE_AT_A_TIME.lock().await;
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

/// GET over plain HTTP/1.1, as a scraper would: (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// Polls `path` until its (code, body) satisfies `want`, at most 30 s (the figures are refreshed in
/// the background every few seconds); returns them.
fn get_until(addr: &str, path: &str, want: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let started = Instant::now();
    loop {
        let (code, body) = get(addr, path);
        if want(code, &body) {
            return (code, body);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{path}: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of one sample (`name{labels}`) in a scrape; None when absent.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// Polls the scrape until `series` has `want`, at most 30 s; returns that scrape.
fn scrape_until(addr: &str, series: &str, want: f64) -> String {
    get_until(addr, "/metrics", |code, body| {
        // Until the nodes were first read, the endpoint says so.
        assert!(
            code == 200 || (code == 503 && body.starts_with("starting")),
            "{body}"
        );
        sample(body, series) == Some(want)
    })
    .1
}

/// `run --metrics` before, during and after an outage of node b: what it replayed per table, the
/// queue growing on a while b is down, b down, the verdict on /healthz, and all of it back to normal
/// once b returns.
#[tokio::test]
async fn metrics_follow_an_outage_and_the_replay_after_it() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    let addr = format!("127.0.0.1:{}", pgtwin::localpg::free_port().unwrap());
    let runner = Runner::start(&p, &["run", "--metrics", &addr]);
    runner.wait_for_log("replaying queues between a and b", Duration::from_secs(15));

    p.owner[0]
        .batch_execute("INSERT INTO items SELECT g, 'before' FROM generate_series(1, 3) g")
        .await
        .unwrap();
    let replayed = r#"pgtwin_replayed_changes_total{from="a",to="b",table="public.items"}"#;
    let before = scrape_until(&addr, replayed, 3.0);
    for (series, want) in [
        (r#"pgtwin_node_up{node="b"}"#, 1.0),
        (r#"pgtwin_link_up{node="a"}"#, 1.0),
        (
            r#"pgtwin_queue_changes{node="a",table="public.items"}"#,
            0.0,
        ),
        ("pgtwin_runner_up", 1.0),
        ("pgtwin_runner_active", 1.0),
        ("pgtwin_errors_total", 0.0),
    ] {
        // The nodes' figures are read in the background: the next reading shows them.
        scrape_until(&addr, series, want);
    }
    assert!(before.contains("# TYPE pgtwin_replayed_changes_total counter"));
    let rate = r#"pgtwin_replay_rate_changes_per_second{from="a",to="b"}"#;
    assert!(sample(&before, rate).unwrap() > 0.0, "{before}");
    scrape_until(&addr, r#"pgtwin_replay_lag_seconds{from="a",to="b"}"#, 0.0);
    assert!(sample(&before, "pgtwin_report_age_seconds").unwrap() < 10.0);
    // A conflict recorded as the resolution records it (the table's SQL name) is labelled by table.
    p.owner[0]
        .batch_execute(
            "INSERT INTO pgtwin.conflicts (table_name, key, local_change, remote_change, winner)
             VALUES ('\"public\".\"items\"', '[1]', NULL, NULL, 'a')",
        )
        .await
        .unwrap();
    scrape_until(
        &addr,
        r#"pgtwin_conflicts{node="a",table="public.items"}"#,
        1.0,
    );
    p.pgtwin(&["conflicts", "--ack"]).ok();
    get_until(&addr, "/healthz", |code, body| {
        code == 200 && body == "healthy\n"
    });

    common::servers().nodes[1].stop(true).unwrap();
    p.owner[0]
        .batch_execute("INSERT INTO items VALUES (4, 'during'), (5, 'during')")
        .await
        .unwrap();
    let during = scrape_until(&addr, r#"pgtwin_node_up{node="b"}"#, 0.0);
    let during = if sample(
        &during,
        r#"pgtwin_queue_changes{node="a",table="public.items"}"#,
    ) == Some(2.0)
    {
        during
    } else {
        scrape_until(
            &addr,
            r#"pgtwin_queue_changes{node="a",table="public.items"}"#,
            2.0,
        )
    };
    assert_eq!(sample(&during, "pgtwin_status"), Some(2.0), "{during}");
    assert!(
        sample(&during, r#"pgtwin_replay_lag_seconds{from="a",to="b"}"#).unwrap() > 0.0,
        "{during}"
    );
    assert!(
        sample(&during, "pgtwin_last_error_timestamp_seconds").is_some(),
        "{during}"
    );
    let (_, body) = get_until(&addr, "/healthz", |code, _| code == 503);
    assert!(sample(&get(&addr, "/metrics").1, "pgtwin_report_age_seconds").unwrap() < 10.0);
    assert!(
        body.starts_with("DOWN") && body.contains("node b"),
        "{body}"
    );

    common::servers().nodes[1].start_again().unwrap();
    p.reconnect(1).await;
    scrape_until(&addr, replayed, 5.0);
    scrape_until(&addr, r#"pgtwin_node_up{node="b"}"#, 1.0);
    scrape_until(
        &addr,
        r#"pgtwin_queue_changes{node="a",table="public.items"}"#,
        0.0,
    );
    p.assert_same("items").await;
    assert!(runner.terminate(Duration::from_secs(10)).success());
}

/// An address `run` cannot listen on is an error at once, not a runner without metrics.
#[tokio::test]
async fn a_metrics_address_that_cannot_be_listened_on_is_refused() {
    let p = Pair::new().await;
    p.config("[[tables]]\nname = \"items\"");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    p.pgtwin(&["run", "--metrics", &addr])
        .fails_with(&["--metrics", &addr, "cannot listen"]);
}

/// The command line of the shipped systemd unit (or the container's), with the binary, the config
/// and the metrics address made this test's: run as written, it replays and serves /healthz.
fn deployed_command(p: &Pair, file: &str, metrics: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(format!("{}/deploy/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let args: Vec<String> = if let Some(line) = text.lines().find(|l| l.starts_with("ExecStart=")) {
        line["ExecStart=".len()..]
            .split_whitespace()
            .map(str::to_string)
            .collect()
    } else {
        let entry = text.lines().find(|l| l.starts_with("ENTRYPOINT ")).unwrap();
        let cmd = text.lines().find(|l| l.starts_with("CMD ")).unwrap();
        let list = |l: &str| -> Vec<String> {
            serde_json::from_str(l.split_once(' ').unwrap().1).unwrap()
        };
        [list(entry), list(cmd)].concat()
    };
    assert_eq!(args[0], "/usr/local/bin/pgtwin", "{file}");
    let config = p.dir.path().join("pgtwin.toml");
    args[1..]
        .iter()
        .map(|a| match a.as_str() {
            "/etc/pgtwin/pgtwin.toml" => config.display().to_string(),
            "127.0.0.1:9187" | "0.0.0.0:9187" => metrics.to_string(),
            _ => a.clone(),
        })
        .collect()
}

#[tokio::test]
async fn the_shipped_service_commands_replay_and_serve_health() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let p = Pair::new().await;
    p.both(ITEMS).await;
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    for (i, file) in ["pgtwin-run.service", "Containerfile"]
        .into_iter()
        .enumerate()
    {
        let addr = format!("127.0.0.1:{}", pgtwin::localpg::free_port().unwrap());
        let args = deployed_command(&p, file, &addr);
        assert!(args.contains(&"--metrics".to_string()), "{file}: {args:?}");
        let child = common::scrubbed_pgtwin()
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let runner = Runner::adopt(child);
        let id = i as i32 + 1;
        p.owner[0]
            .execute("INSERT INTO items VALUES ($1, $2)", &[&id, &file])
            .await
            .unwrap();
        p.rows_until(1, "items", |rows| rows.len() == id as usize)
            .await;
        get_until(&addr, "/healthz", |code, _| code == 200);
        assert!(
            runner.terminate(Duration::from_secs(10)).success(),
            "{file}"
        );
    }
}

/// pgtwin's sessions carry TCP keepalives on the server's side too: a runner whose host vanished
/// (no reset ever arrives) has its sessions, and so its locks, ended by the server within seconds,
/// for a standby to take over.
#[tokio::test]
async fn pgtwins_sessions_set_server_side_keepalives() {
    let p = Pair::new().await;
    let conn = pgtwin::db::ConnInfo::parse(&p.url(0)).unwrap();
    let db = pgtwin::db::connect("a", &conn, Duration::from_secs(5))
        .await
        .unwrap();
    for (setting, want) in [
        ("tcp_keepalives_idle", "10"),
        ("tcp_keepalives_interval", "5"),
        ("tcp_keepalives_count", "3"),
        ("tcp_user_timeout", "30000"),
    ] {
        let got: String = db
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, want, "{setting}");
    }
}
