//! pgtwin-bench: the write-path cost of keeping a table synced, as ratios to the same table unsynced.
//!
//! Starts two throwaway servers (fsync on), and for each repetition runs every variant in turn
//! (unsynced, the article's row triggers, pgtwin sync, pgtwin async, pgtwin sync while the peer is away
//! and changes queue) on fresh databases, interleaved, so machine noise hits all variants alike. Async and
//! queueing variants are drained by the runner afterwards (drain rate against a plain INSERT ... SELECT on
//! the peer), and async also measures the lag from commit on one node to commit on the other at a steady
//! 200 writes/s. Prints medians as ratios to the unsynced table, absolute medians beside them,
//! and whether both nodes ended with identical rows. `--quick` uses small sizes (correctness, not timing).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use pgtwin::config::Config;
use pgtwin::localpg::LocalServer;
use tokio_postgres::{Client, NoTls};

mod load;
mod pglogical;

#[derive(Parser)]
#[command(about = "Benchmark pgtwin's write path against the unsynced table")]
struct Args {
    /// Small sizes, one repetition: checks that every variant runs and syncs, timing means little.
    #[arg(long)]
    quick: bool,
    /// Repetitions (medians are taken over them).
    #[arg(long)]
    reps: Option<usize>,
    /// Rows for the bulk workloads (W3-W5).
    #[arg(long)]
    rows: Option<i64>,
    /// Single-row statements for W1, W2 and W6.
    #[arg(long)]
    singles: Option<usize>,
    /// Rows of the table for the data section (initial copy, check).
    #[arg(long)]
    data_rows: Option<i64>,
    /// Which sections to run.
    #[arg(long, value_enum, default_value = "all")]
    only: Section,
    /// Writers per node in the load section.
    #[arg(long, default_value_t = 4)]
    load_writers: usize,
    /// Seconds of outage in the load section (the issue's scenario: 300).
    #[arg(long)]
    outage_seconds: Option<u64>,
    /// The modes the load section runs: async, sync, or both.
    #[arg(long, default_value = "both")]
    load_mode: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    All,
    Writes,
    Data,
    Load,
    /// Async lag alone (the writes section measures it too, among the rest).
    Lag,
    /// Single-row INSERTs in async mode with `pgtwin run` live, against the unsynced table, alone.
    Live,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    Unsynced,
    Article,
    Sync,
    Async,
    Queueing,
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::Unsynced,
        Variant::Article,
        Variant::Sync,
        Variant::Async,
        Variant::Queueing,
    ];

    fn label(self) -> &'static str {
        match self {
            Variant::Unsynced => "unsynced",
            Variant::Article => "article",
            Variant::Sync => "pgtwin sync",
            Variant::Async => "pgtwin async",
            Variant::Queueing => "sync, peer away",
        }
    }
}

/// One measured figure: throughput (higher is better) or time (lower is better).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    W1InsertTps,
    W1LiveTps,
    W2Insert4Tps,
    W7TransactionTps,
    LongestWait,
    W3BulkInsert,
    W4BulkUpdate,
    W5BulkDelete,
    W6UpdateTps,
    W6UpdateP50,
    W6UpdateP99,
    DrainRate,
    TwoQueuesRate,
    TwoQueuesHotRate,
    TwoQueuesHotLongRate,
    LagP50,
    LagP99,
    QueueDepthMax,
}

impl Workload {
    const ALL: [Workload; 18] = [
        Workload::W1InsertTps,
        Workload::W1LiveTps,
        Workload::W2Insert4Tps,
        Workload::W7TransactionTps,
        Workload::LongestWait,
        Workload::W3BulkInsert,
        Workload::W4BulkUpdate,
        Workload::W5BulkDelete,
        Workload::W6UpdateTps,
        Workload::W6UpdateP50,
        Workload::W6UpdateP99,
        Workload::DrainRate,
        Workload::TwoQueuesRate,
        Workload::TwoQueuesHotRate,
        Workload::TwoQueuesHotLongRate,
        Workload::LagP50,
        Workload::LagP99,
        Workload::QueueDepthMax,
    ];

    fn label(self) -> &'static str {
        match self {
            Workload::W1InsertTps => "W1 single-row INSERT, 1 client (TPS)",
            Workload::W1LiveTps => "W1 with pgtwin run replaying (async; TPS)",
            Workload::W2Insert4Tps => "W2 single-row INSERT, 4 clients (TPS)",
            Workload::W7TransactionTps => "W7 10-INSERT transaction, 1 client (TPS)",
            Workload::LongestWait => "longest statement of W1, W2, W7 (time)",
            Workload::W3BulkInsert => "W3 INSERT ... SELECT of N rows (time)",
            Workload::W4BulkUpdate => "W4 UPDATE of N rows (time)",
            Workload::W5BulkDelete => "W5 DELETE of N rows (time)",
            Workload::W6UpdateTps => "W6 single-row UPDATE by key (TPS)",
            Workload::W6UpdateP50 => "W6 latency p50 (time)",
            Workload::W6UpdateP99 => "W6 latency p99 (time)",
            Workload::DrainRate => "drain by run, vs INSERT..SELECT on peer",
            Workload::TwoQueuesRate => "replay of two queues, 1-row txns, 10% contested",
            Workload::TwoQueuesHotRate => "the same, half of them on 5 hot rows",
            Workload::TwoQueuesHotLongRate => "the same, hot, each queue twice as long",
            Workload::LagP50 => "lag at 200 writes/s, p50",
            Workload::LagP99 => "lag at 200 writes/s, p99",
            Workload::QueueDepthMax => "queue depth, most seen with run live",
        }
    }

    fn is_throughput(self) -> bool {
        matches!(
            self,
            Workload::W1InsertTps
                | Workload::W1LiveTps
                | Workload::W2Insert4Tps
                | Workload::W6UpdateTps
                | Workload::W7TransactionTps
        )
    }

    /// The issues' targets for pgtwin sync and async, printed beside the figures (goals, not asserts).
    fn targets(self) -> &'static str {
        match self {
            Workload::W1InsertTps => ">=0.40 / -",
            Workload::W1LiveTps => "- / >=0.90",
            Workload::W6UpdateTps => ">=0.40 / -",
            Workload::W3BulkInsert | Workload::W4BulkUpdate => "<=2.5x / -",
            Workload::W5BulkDelete => "<=4.0x / -",
            Workload::DrainRate => ">=0.5",
            Workload::LagP99 => "async < pglogical",
            _ => "",
        }
    }

    /// Figures measured in absolute terms only (no unsynced counterpart).
    fn is_absolute(self) -> bool {
        matches!(
            self,
            Workload::LagP50
                | Workload::LagP99
                | Workload::QueueDepthMax
                | Workload::TwoQueuesRate
                | Workload::TwoQueuesHotRate
                | Workload::TwoQueuesHotLongRate
        )
    }

    fn unit(self, v: f64) -> String {
        if self == Workload::QueueDepthMax {
            format!("{v:.0} entries")
        } else if matches!(
            self,
            Workload::TwoQueuesRate | Workload::TwoQueuesHotRate | Workload::TwoQueuesHotLongRate
        ) {
            format!("{v:.0} changes/s")
        } else if self.is_throughput() {
            format!("{v:.0}/s")
        } else if v < 0.1 {
            format!("{:.2} ms", v * 1000.0)
        } else {
            format!("{v:.2} s")
        }
    }
}

const TABLE: &str = "CREATE TABLE items (id bigserial PRIMARY KEY, name text, price int, updated_at timestamp NOT NULL DEFAULT now())";

/// The article's SQL, for one direction (applied on both nodes, as the article says to for two-way sync):
/// row triggers inserting and updating through a foreign table, errors about a missing table swallowed.
fn article_sql(peer_port: u16, db: &str) -> String {
    format!(
        r#"
CREATE EXTENSION IF NOT EXISTS postgres_fdw;
CREATE SERVER legacy_server FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', dbname '{db}', port '{peer_port}');
CREATE USER MAPPING FOR current_user SERVER legacy_server OPTIONS (user 'postgres');
CREATE FOREIGN TABLE legacy_items (id bigint, name text, price int, updated_at timestamp NOT NULL)
    SERVER legacy_server OPTIONS (table_name 'items');
CREATE FUNCTION insert_legacy_items() RETURNS trigger AS $$
BEGIN
  INSERT INTO legacy_items (id, name, price, updated_at) VALUES (NEW.id, NEW.name, NEW.price, clock_timestamp());
  RETURN NEW;
EXCEPTION WHEN undefined_table THEN RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE FUNCTION update_legacy_items() RETURNS trigger AS $$
BEGIN
  UPDATE legacy_items SET name = NEW.name, price = NEW.price, updated_at = NEW.updated_at WHERE id = NEW.id;
  RETURN NEW;
EXCEPTION WHEN undefined_table THEN RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER after_items_insert AFTER INSERT ON items FOR EACH ROW EXECUTE PROCEDURE insert_legacy_items();
CREATE TRIGGER after_items_update AFTER UPDATE ON items FOR EACH ROW EXECUTE PROCEDURE update_legacy_items();
"#
    )
}

struct Bench {
    servers: [LocalServer; 2],
    rows: i64,
    singles: usize,
}

async fn connect(server: &LocalServer, db: &str) -> Result<Client> {
    let (c, conn) = tokio_postgres::connect(&server.url("postgres", None, db), NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

impl Bench {
    /// Points node i's link at `port`: a closed one cuts it (every change of node i queues), the
    /// peer's port restores it.
    async fn set_link(&self, node: usize, db: &str, port: u16) -> Result<()> {
        connect(&self.servers[node], db)
            .await?
            .batch_execute(&format!(
                "ALTER SERVER pgtwin_peer OPTIONS (SET port '{port}')"
            ))
            .await?;
        Ok(())
    }

    /// A new database of this name on both servers, with the table created.
    async fn fresh_databases(&self, db: &str, table: &str) -> Result<()> {
        for s in &self.servers {
            let admin = s.connect("postgres").await?;
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
                .await?;
            admin
                .batch_execute(&format!("CREATE DATABASE {db}"))
                .await?;
            connect(s, db).await?.batch_execute(table).await?;
        }
        Ok(())
    }

    /// Fresh databases with the table on both servers, set up for the variant.
    async fn prepare(&self, variant: Variant, rep: usize) -> Result<String> {
        self.prepare_named(
            variant,
            format!("bench_{}_{rep}", format!("{variant:?}").to_lowercase()),
        )
        .await
    }

    async fn prepare_named(&self, variant: Variant, db: String) -> Result<String> {
        self.fresh_databases(&db, TABLE).await?;
        match variant {
            Variant::Unsynced => {}
            Variant::Article => {
                for i in 0..2 {
                    let c = connect(&self.servers[i], &db).await?;
                    c.batch_execute(&article_sql(self.servers[1 - i].port, &db))
                        .await?;
                }
            }
            Variant::Sync | Variant::Async | Variant::Queueing => {
                pgtwin::install::up(&self.config(&db, variant)?, false, false).await?;
            }
        }
        if variant == Variant::Queueing {
            // The peer is away: node a's link points at a closed port, so every change queues.
            let closed = pgtwin::localpg::free_port()?;
            self.set_link(0, &db, closed).await?;
        }
        Ok(db)
    }

    fn config(&self, db: &str, variant: Variant) -> Result<Config> {
        let mode = if variant == Variant::Async {
            "async"
        } else {
            "sync"
        };
        let text = format!(
            "[nodes.a]\nurl = \"{}\"\n[nodes.b]\nurl = \"{}\"\n[[tables]]\nname = \"items\"\n[options]\nmode = \"{mode}\"\n",
            self.servers[0].url("postgres", None, db),
            self.servers[1].url("postgres", None, db)
        );
        Config::parse(&text, |_: &str| None)
    }

    /// Runs the queue dry; returns the rows applied per second, against a plain INSERT ... SELECT of as
    /// many rows on the peer.
    async fn drain_rate(&self, db: &str, variant: Variant) -> Result<f64> {
        let cfg = self.config(db, variant)?;
        let started = Instant::now();
        let drained = pgtwin::runner::run_once(&cfg).await?;
        let rate = drained[0].rows as f64 / started.elapsed().as_secs_f64();
        let b = connect(&self.servers[1], db).await?;
        b.batch_execute("CREATE TABLE scratch (LIKE items INCLUDING ALL)")
            .await?;
        let started = Instant::now();
        b.batch_execute(&format!(
            "INSERT INTO scratch (id, name, price) SELECT g, 'bulk ' || g, g FROM generate_series(1, {}) g",
            drained[0].rows
        ))
        .await?;
        let baseline = drained[0].rows as f64 / started.elapsed().as_secs_f64();
        b.batch_execute("DROP TABLE scratch").await?;
        Ok(rate / baseline)
    }

    /// Async mode with the runner running: commit on a to commit on b, at a steady 200 writes/s,
    /// measured with the servers' commit timestamps (same machine, same clock).
    async fn lag(&self, db: &str) -> Result<(f64, f64)> {
        let cfg = self.config(db, Variant::Async)?;
        let runner = tokio::spawn(async move { pgtwin::runner::run_forever(&cfg).await });
        let c = connect(&self.servers[0], db).await?;
        let b = connect(&self.servers[1], db).await?;
        let lag = stream_lag(&c, &b, (self.singles / 4).max(50), COMMIT_TIMES).await;
        runner.abort();
        lag
    }

    async fn run(&self, variant: Variant, rep: usize) -> Result<(BTreeMap<Workload, f64>, bool)> {
        let db = self.prepare(variant, rep).await?;
        let a = &self.servers[0];
        let c = connect(a, &db).await?;
        let mut out = BTreeMap::new();
        let (tps, mut longest) = single_inserts(&c, self.singles, "single").await?;
        out.insert(Workload::W1InsertTps, tps);
        // Async mode as users run it: `pgtwin run` replays while the single-row writers write (W1
        // again, W2, W7), and the queue's depth is sampled meanwhile.
        let live = if variant == Variant::Async {
            let cfg = self.config(&db, variant)?;
            let runner = tokio::spawn(async move { pgtwin::runner::run_forever(&cfg).await });
            // The runner first drains what W1 queued: the writers start against an empty queue.
            drained(&c, Duration::from_secs(60)).await?;
            let sampler = connect(a, &db).await?;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stopped = stop.clone();
            let depths = tokio::spawn(async move {
                let mut depths = Vec::new();
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(row) = sampler
                        .query_one("SELECT count(*) FROM pgtwin.queue", &[])
                        .await
                    else {
                        return depths;
                    };
                    depths.push(row.get::<_, i64>(0));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                depths
            });
            Some((runner, depths, stop))
        } else {
            None
        };
        if live.is_some() {
            let (tps, slowest) = single_inserts(&c, self.singles, "live").await?;
            out.insert(Workload::W1LiveTps, tps);
            longest = longest.max(slowest);
        }

        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..4 {
            let c = connect(a, &db).await?;
            let n = self.singles / 4;
            tasks.push(tokio::spawn(async move {
                single_inserts(&c, n, &format!("client {w}")).await
            }));
        }
        for t in tasks {
            longest = longest.max(t.await??.1);
        }
        out.insert(
            Workload::W2Insert4Tps,
            (self.singles / 4 * 4) as f64 / started.elapsed().as_secs_f64(),
        );

        let transactions = self.singles / 10;
        let started = Instant::now();
        for i in 0..transactions {
            let t = Instant::now();
            let inserts: Vec<String> = (0..10)
                .map(|j| format!("INSERT INTO items (name, price) VALUES ('txn {i}', {j})"))
                .collect();
            c.batch_execute(&format!("BEGIN; {}; COMMIT", inserts.join("; ")))
                .await?;
            longest = longest.max(t.elapsed());
        }
        out.insert(
            Workload::W7TransactionTps,
            transactions as f64 / started.elapsed().as_secs_f64(),
        );
        out.insert(Workload::LongestWait, longest.as_secs_f64());
        if let Some((runner, depths, stop)) = live {
            // The runner catches up with what is left, then stops.
            drained(&c, Duration::from_secs(60)).await?;
            runner.abort();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let depths = depths.await.unwrap_or_default();
            out.insert(
                Workload::QueueDepthMax,
                depths.iter().copied().max().unwrap_or(0) as f64,
            );
        }

        let timed = |sql: String| {
            let c = &c;
            async move {
                let started = Instant::now();
                c.batch_execute(&sql).await?;
                Ok::<_, anyhow::Error>(started.elapsed().as_secs_f64())
            }
        };
        out.insert(
            Workload::W3BulkInsert,
            timed(format!(
                "INSERT INTO items (name, price) SELECT 'bulk ' || g, g FROM generate_series(1, {}) g",
                self.rows
            ))
            .await?,
        );
        if matches!(variant, Variant::Async | Variant::Queueing) {
            if variant == Variant::Queueing {
                self.set_link(0, &db, self.servers[1].port).await?;
            }
            out.insert(Workload::DrainRate, self.drain_rate(&db, variant).await?);
            if variant == Variant::Queueing {
                let closed = pgtwin::localpg::free_port()?;
                // Still queueing: the drained queue is empty, so cut the link and queue one change first.
                self.set_link(0, &db, closed).await?;
                c.batch_execute("INSERT INTO items (name) VALUES ('queue again')")
                    .await?;
            }
        }
        c.batch_execute("ANALYZE items").await?;

        let ids: Vec<i64> = c
            .query(
                "SELECT id FROM items ORDER BY random() LIMIT $1",
                &[&(self.singles as i64)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut latencies = Vec::new();
        let started = Instant::now();
        for id in &ids {
            let t = Instant::now();
            c.execute("UPDATE items SET price = price + 1 WHERE id = $1", &[id])
                .await?;
            latencies.push(t.elapsed());
        }
        out.insert(
            Workload::W6UpdateTps,
            ids.len() as f64 / started.elapsed().as_secs_f64(),
        );
        latencies.sort();
        out.insert(Workload::W6UpdateP50, percentile(&latencies, 0.50));
        out.insert(Workload::W6UpdateP99, percentile(&latencies, 0.99));

        out.insert(
            Workload::W4BulkUpdate,
            timed("UPDATE items SET price = price + 1".into()).await?,
        );
        out.insert(
            Workload::W5BulkDelete,
            timed("DELETE FROM items WHERE name LIKE 'bulk%'".into()).await?,
        );

        if matches!(variant, Variant::Async | Variant::Queueing) {
            if variant == Variant::Queueing {
                // The peer is back.
                self.set_link(0, &db, self.servers[1].port).await?;
            }
            pgtwin::runner::run_once(&self.config(&db, variant)?).await?;
        }
        if variant == Variant::Async {
            out.insert(
                Workload::TwoQueuesRate,
                self.two_queues(&db, Contention::SPREAD).await?,
            );
            out.insert(
                Workload::TwoQueuesHotRate,
                self.two_queues(&db, Contention::HOT).await?,
            );
            // Twice the versions of each hot row queued on each node: the rate stays if weighing one
            // costs the same whatever the queue holds (it halved while each was weighed against all).
            out.insert(
                Workload::TwoQueuesHotLongRate,
                self.two_queues(
                    &db,
                    Contention {
                        length: 2,
                        ..Contention::HOT
                    },
                )
                .await?,
            );
        }
        let identical = match variant {
            Variant::Unsynced => true,
            _ => self.identical(&db).await?,
        };
        if variant == Variant::Async {
            // A steady stream into a fresh database: measured in this one, right after the bulk
            // workloads, p50 read 8 ms, against 1.8 ms in a fresh one.
            let fresh = self
                .prepare_named(Variant::Async, format!("bench_lag_{rep}"))
                .await?;
            let (p50, p99) = self.lag(&fresh).await?;
            out.insert(Workload::LagP50, p50);
            out.insert(Workload::LagP99, p99);
        }
        Ok((out, identical))
    }

    /// Both nodes write apart (async mode, no runner): `singles` single-row transactions each, new rows
    /// and updates of rows the other node updates too (`contention`). Then `run --once` drains both
    /// queues, weighing every arriving change against the other queue. Returns the changes applied per
    /// second.
    async fn two_queues(&self, db: &str, contention: Contention) -> Result<f64> {
        let (a, b) = (
            connect(&self.servers[0], db).await?,
            connect(&self.servers[1], db).await?,
        );
        let ids: Vec<i64> = a
            .query("SELECT id FROM items ORDER BY id LIMIT 100", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (i, c) in [&a, &b].into_iter().enumerate() {
            for n in 0..self.singles * contention.length {
                if n % contention.every == 0 {
                    let id = ids[n / contention.every % contention.rows.min(ids.len())];
                    c.execute(
                        "UPDATE items SET price = $2 WHERE id = $1",
                        &[&id, &(i as i32)],
                    )
                    .await?;
                } else {
                    c.execute(
                        "INSERT INTO items (name, price) VALUES ('apart', $1)",
                        &[&(n as i32)],
                    )
                    .await?;
                }
            }
        }
        let cfg = self.config(db, Variant::Async)?;
        let started = Instant::now();
        let drained = pgtwin::runner::run_once(&cfg).await?;
        Ok((drained[0].rows + drained[1].rows) as f64 / started.elapsed().as_secs_f64())
    }

    async fn identical(&self, db: &str) -> Result<bool> {
        let q = "SELECT md5(string_agg(i::text, ',' ORDER BY id)) FROM items i";
        let a: Option<String> = connect(&self.servers[0], db)
            .await?
            .query_one(q, &[])
            .await?
            .get(0);
        let b: Option<String> = connect(&self.servers[1], db)
            .await?
            .query_one(q, &[])
            .await?
            .get(0);
        Ok(a == b)
    }
}

/// Which of two_queues' transactions update a row the other node updates too: every `every`th, of
/// `rows` rows in turn; `length` times `singles` transactions on each node.
#[derive(Clone, Copy)]
struct Contention {
    every: usize,
    rows: usize,
    length: usize,
}

impl Contention {
    /// A tenth, spread over 100 rows.
    const SPREAD: Contention = Contention {
        every: 10,
        rows: 100,
        length: 1,
    };
    /// Half, on 5 rows: each queues hundreds of versions of them, and every version arriving is
    /// weighed against the other queue's (the cost must not grow with their number).
    const HOT: Contention = Contention {
        every: 2,
        rows: 5,
        length: 1,
    };
}

/// Waits, at most `limit`, until node a's queue is empty (a runner drains it).
async fn drained(c: &Client, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let left: i64 = c
            .query_one("SELECT count(*) FROM pgtwin.queue", &[])
            .await?
            .get(0);
        if left == 0 || Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` single-row INSERTs, one after the other: (transactions per second, the longest one).
async fn single_inserts(c: &Client, n: usize, label: &str) -> Result<(f64, Duration)> {
    let mut longest = Duration::ZERO;
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        c.execute(
            "INSERT INTO items (name, price) VALUES ($1, $2)",
            &[&format!("{label} {i}"), &(i as i32)],
        )
        .await?;
        longest = longest.max(t.elapsed());
    }
    Ok((n as f64 / started.elapsed().as_secs_f64(), longest))
}

/// The lag from commit on node a to arrival on node b of a steady stream of `writes` single-row
/// INSERTs at 200 a second, p50 and p99, in seconds: whatever carries them (pgtwin's runner, or
/// pglogical) is running. `arrivals` reads, on b, when each row of `ids = ANY($1)` arrived (epoch
/// seconds).
pub(crate) async fn stream_lag(
    c: &Client,
    b: &Client,
    writes: usize,
    arrivals: &str,
) -> Result<(f64, f64)> {
    // One write first, measured once it arrived: the replication is connected and listening.
    let warm: i64 = c
        .query_one(
            "INSERT INTO items (name, price) VALUES ('warm up', 0) RETURNING id",
            &[],
        )
        .await?
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while times(b, arrivals, &[warm]).await?.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "the replication never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut ids = Vec::new();
    for i in 0..writes {
        tick.tick().await;
        let row = c
            .query_one(
                "INSERT INTO items (name, price) VALUES ('lag', $1) RETURNING id",
                &[&(i as i32)],
            )
            .await?;
        ids.push(row.get::<_, i64>(0));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let on_b = loop {
        let on_b = times(b, arrivals, &ids).await?;
        if on_b.len() == ids.len() {
            break on_b;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "async changes did not arrive within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let on_a = times(c, COMMIT_TIMES, &ids).await?;
    let mut lags: Vec<Duration> = ids
        .iter()
        .map(|id| Duration::from_secs_f64((on_b[id] - on_a[id]).max(0.0)))
        .collect();
    lags.sort();
    Ok((percentile(&lags, 0.5), percentile(&lags, 0.99)))
}

/// When each row of `items` with `id = ANY($1)` committed (epoch seconds).
const COMMIT_TIMES: &str = "SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 FROM items WHERE id = ANY($1)";

/// The time (seconds since the epoch) `sql` gives each row with one of these ids (`id = ANY($1)`).
async fn times(client: &Client, sql: &str, ids: &[i64]) -> Result<BTreeMap<i64, f64>> {
    Ok(client
        .query(sql, &[&ids])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // The runners the benchmark starts in-process log their warnings (a replay that failed and is
    // retried) to stderr, so that a stall reads as what it is.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .init();
    // The runners started in-process catch SIGINT and SIGTERM to stop between two transactions, which
    // takes the signals' default action away from the whole process: without this, Ctrl-C would stop
    // a runner and leave the benchmark going. The benchmark is dropped first, and with it its servers'
    // temporary directory (the servers stop once this process is gone: crate::localpg).
    let code = tokio::select! {
        done = benchmark(args) => return done,
        code = stop_signal() => code,
    };
    std::process::exit(code);
}

/// The exit code of the signal that asks the benchmark to stop: SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => term.recv().await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => 130,
        _ = term => 143,
    }
}

async fn benchmark(args: Args) -> Result<()> {
    let (reps, rows, singles) = if args.quick {
        (1, 2_000, 200)
    } else {
        (3, 100_000, 2_000)
    };
    let reps = args.reps.unwrap_or(reps);
    let rows = args.rows.unwrap_or(rows);
    let singles = args.singles.unwrap_or(singles);
    let dir = tempfile::Builder::new().prefix("pgtwin-bench-").tempdir()?;
    let mut servers = Vec::new();
    for name in ["a", "b"] {
        let s = LocalServer::start(
            &dir.path().join(name),
            &["max_wal_size = 4GB", "track_commit_timestamp = on"],
        )
        .context("starting a server")?;
        s.stop_when_process_ends(std::process::id())?;
        servers.push(s);
    }
    let bench = Bench {
        servers: servers.try_into().ok().expect("two servers"),
        rows,
        singles,
    };
    let data_rows = args
        .data_rows
        .unwrap_or(if args.quick { 20_000 } else { 1_000_000 });
    if matches!(args.only, Section::All | Section::Writes) {
        write_section(&bench, reps, dir.path()).await?;
    }
    if matches!(args.only, Section::All | Section::Data) {
        data_section(&bench, reps, data_rows).await?;
    }
    if args.only == Section::Lag {
        lag_section(&bench, reps, dir.path()).await?;
    }
    if args.only == Section::Live {
        live_section(&bench, reps).await?;
    }
    if matches!(args.only, Section::All | Section::Load) {
        let seconds =
            |quick: u64, full: u64| Duration::from_secs(if args.quick { quick } else { full });
        let plan = load::Plan {
            writers_per_node: if args.quick { 1 } else { args.load_writers },
            steady: seconds(2, 30),
            outage: args
                .outage_seconds
                .map(Duration::from_secs)
                .unwrap_or(seconds(2, 60)),
            drain_limit: seconds(60, 600),
            modes: match args.load_mode.as_str() {
                "async" => vec!["async"],
                "sync" => vec!["sync"],
                _ => vec!["async", "sync"],
            },
        };
        load::load_section(&bench, &plan).await?;
    }
    Ok(())
}

/// Async lag at 200 writes/s, as the writes section measures it, without the rest of that section.
async fn lag_section(bench: &Bench, reps: usize, dir: &Path) -> Result<()> {
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let db = bench
            .prepare_named(Variant::Async, format!("bench_lag_{rep}"))
            .await?;
        let (p50, p99) = bench.lag(&db).await?;
        eprintln!(
            "  repetition {}/{reps}: p50 {:.2} ms, p99 {:.2} ms",
            rep + 1,
            p50 * 1e3,
            p99 * 1e3
        );
        p50s.push(p50);
        p99s.push(p99);
    }
    let p99 = median(p99s);
    println!(
        "async lag at 200 writes/s, medians of {reps}: p50 {:.2} ms, p99 {:.2} ms",
        median(p50s) * 1e3,
        p99 * 1e3
    );
    pglogical_line(bench, reps, dir, Some(p99)).await
}

/// The spread behind the medians: for each ratio, its lowest and highest over the repetitions, each
/// repetition's figure against the unsynced table of the same repetition (the variants run
/// interleaved, so a slow moment of the machine weighs on both).
fn print_ranges(results: &BTreeMap<(Variant, Workload), Vec<f64>>, reps: usize) {
    if reps < 2 {
        return;
    }
    println!(
        "
min-max over the {reps} repetitions, ratio to the same repetition's unsynced table
"
    );
    for w in Workload::ALL {
        if w.is_absolute() || w == Workload::DrainRate {
            continue;
        }
        let base_of = if w == Workload::W1LiveTps {
            Workload::W1InsertTps
        } else {
            w
        };
        let Some(base) = results.get(&(Variant::Unsynced, base_of)) else {
            continue;
        };
        print!("{:<42}", w.label());
        for v in Variant::ALL {
            let ratios: Vec<f64> = results
                .get(&(v, w))
                .map(|xs| xs.iter().zip(base).map(|(x, b)| x / b).collect())
                .unwrap_or_default();
            let cell = match (
                ratios.iter().copied().reduce(f64::min),
                ratios.iter().copied().reduce(f64::max),
            ) {
                (Some(lo), Some(hi)) if w.is_throughput() => format!("{lo:.2}-{hi:.2}"),
                (Some(lo), Some(hi)) => format!("{lo:.1}x-{hi:.1}x"),
                _ => "-".into(),
            };
            print!("{cell:>22}");
        }
        println!();
    }
}

/// The lag of two-way pglogical for the same stream, the target's reference, and whether pgtwin
/// async's p99 (measured in this run) is below it; a note where pglogical is not installed.
async fn pglogical_line(bench: &Bench, reps: usize, dir: &Path, p99: Option<f64>) -> Result<()> {
    if let Some(package) = pglogical::missing()? {
        println!("two-way pglogical, the async lag's reference: not installed, left out (Debian: apt-get install {package})");
        return Ok(());
    }
    eprintln!("  two-way pglogical: {reps} repetition(s)");
    let lags = match pglogical::lags(dir, reps, (bench.singles / 4).max(50)).await {
        Ok(lags) => lags,
        Err(e) => {
            println!("two-way pglogical, the async lag's reference: failed, left out: {e:#}");
            return Ok(());
        }
    };
    let reference = median(lags.iter().map(|l| l.1).collect());
    let verdict = match p99 {
        Some(p99) if p99 < reference => "pgtwin async's p99 is below it",
        Some(_) => "pgtwin async's p99 is NOT below it",
        None => "",
    };
    println!(
        "two-way pglogical, the same stream on two servers of its own, medians of {reps}: p50 {:.2} ms, p99 {:.2} ms; {verdict}",
        median(lags.iter().map(|l| l.0).collect()) * 1e3,
        reference * 1e3
    );
    Ok(())
}

/// W1 with `pgtwin run` replaying beside it, against W1 on the unsynced table, interleaved.
async fn live_section(bench: &Bench, reps: usize) -> Result<()> {
    let mut ratios = Vec::new();
    for rep in 0..reps {
        let db = bench.prepare(Variant::Unsynced, rep).await?;
        let c = connect(&bench.servers[0], &db).await?;
        let (unsynced, _) = single_inserts(&c, bench.singles, "unsynced").await?;
        let db = bench.prepare(Variant::Async, rep).await?;
        let cfg = bench.config(&db, Variant::Async)?;
        let runner = tokio::spawn(async move { pgtwin::runner::run_forever(&cfg).await });
        let c = connect(&bench.servers[0], &db).await?;
        single_inserts(&c, 10, "warm up").await?;
        drained(&c, Duration::from_secs(60)).await?;
        let (live, _) = single_inserts(&c, bench.singles, "live").await?;
        drained(&c, Duration::from_secs(60)).await?;
        runner.abort();
        eprintln!(
            "  repetition {}/{reps}: {:.2} ({live:.0}/s against {unsynced:.0}/s)",
            rep + 1,
            live / unsynced
        );
        ratios.push(live / unsynced);
    }
    let (lo, hi) = (
        ratios.iter().copied().fold(f64::MAX, f64::min),
        ratios.iter().copied().fold(f64::MIN, f64::max),
    );
    println!(
        "W1 with pgtwin run live (async), medians of {reps}: {:.2} ({lo:.2} to {hi:.2})",
        median(ratios)
    );
    Ok(())
}

async fn write_section(bench: &Bench, reps: usize, dir: &Path) -> Result<()> {
    let (rows, singles) = (bench.rows, bench.singles);
    eprintln!("pgtwin-bench: {reps} repetition(s), N = {rows} rows, {singles} single-row statements; variants interleaved");
    let mut results: BTreeMap<(Variant, Workload), Vec<f64>> = BTreeMap::new();
    let mut identical: BTreeMap<Variant, bool> = BTreeMap::new();
    for rep in 0..reps {
        for v in Variant::ALL {
            eprintln!("  repetition {}/{reps}: {}", rep + 1, v.label());
            let (figures, same) = bench
                .run(v, rep)
                .await
                .with_context(|| format!("variant {}", v.label()))?;
            for (w, x) in figures {
                results.entry((v, w)).or_default().push(x);
            }
            *identical.entry(v).or_insert(true) &= same;
        }
    }
    let med = |v: Variant, w: Workload| results.get(&(v, w)).map(|x| median(x.clone()));
    println!(
        "\nmedians of {reps} run(s); ratio to the unsynced table (throughput: fraction kept, higher is better; time: x slower, lower is better)\n"
    );
    print!("{:<42}", "workload");
    for v in Variant::ALL {
        print!("{:>22}", v.label());
    }
    println!("{:>18}", "target sync/async");
    for w in Workload::ALL {
        print!("{:<42}", w.label());
        // Writes with the runner live compare with the same writes on the unsynced table.
        let base = med(
            Variant::Unsynced,
            if w == Workload::W1LiveTps {
                Workload::W1InsertTps
            } else {
                w
            },
        );
        for v in Variant::ALL {
            let cell = match (med(v, w), base) {
                (None, _) => "-".to_string(),
                (Some(x), _) if w.is_absolute() => w.unit(x),
                (Some(x), _) if w == Workload::DrainRate => format!("{x:.2}"),
                (Some(x), Some(base)) if w.is_throughput() => {
                    format!("{:.2} ({})", x / base, w.unit(x))
                }
                (Some(x), Some(base)) => format!("{:.1}x ({})", x / base, w.unit(x)),
                (Some(x), None) => w.unit(x),
            };
            print!("{cell:>22}");
        }
        println!("{:>18}", w.targets());
    }
    print!("{:<42}", "both nodes identical afterwards");
    for v in Variant::ALL {
        let cell = match (v, identical[&v]) {
            (Variant::Unsynced, _) => "-",
            (_, true) => "yes",
            (Variant::Article, false) => "no (by design)",
            (_, false) => "NO",
        };
        print!("{cell:>22}");
    }
    println!();
    print!("{:<42}", "W7 transaction / W1 statement (time)");
    for v in Variant::ALL {
        let cell = match (
            med(v, Workload::W1InsertTps),
            med(v, Workload::W7TransactionTps),
        ) {
            (Some(one), Some(ten)) => format!("{:.2}x", one / ten),
            _ => "-".into(),
        };
        print!("{cell:>22}");
    }
    println!("{:>18}", "<=1.5x / -");
    print_ranges(&results, reps);
    pglogical_line(bench, reps, dir, med(Variant::Async, Workload::LagP99)).await?;
    for v in [Variant::Sync, Variant::Async, Variant::Queueing] {
        anyhow::ensure!(identical[&v], "{} left the nodes different", v.label());
    }
    Ok(())
}

/// Runs a shell pipeline (psql) and returns its wall time in seconds.
fn shell_time(script: &str) -> Result<f64> {
    let started = Instant::now();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()?;
    anyhow::ensure!(status.success(), "failed: {script}");
    Ok(started.elapsed().as_secs_f64())
}

/// Issue 4's figures: the initial copy to an empty peer against a binary COPY pipe through psql, and
/// `check` of identical and of slightly different tables against one COPY of the table to /dev/null.
async fn data_section(bench: &Bench, reps: usize, rows: i64) -> Result<()> {
    eprintln!("pgtwin-bench data: {reps} repetition(s), {rows} rows");
    let psql = |i: usize, db: &str| {
        format!(
            "psql -X -q '{}'",
            bench.servers[i].url("postgres", None, db)
        )
    };
    let table = "CREATE TABLE items (id bigint PRIMARY KEY, name text, price int, updated_at timestamptz NOT NULL)";
    let fill = format!("INSERT INTO items SELECT g, 'item ' || g, g % 1000, '2024-01-01'::timestamptz + g * interval '1 second' FROM generate_series(1, {rows}) g");
    let mut figures: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut found_all = true;
    for rep in 0..reps {
        let db = format!("bench_data_{rep}");
        bench.fresh_databases(&db, table).await?;
        let a = connect(&bench.servers[0], &db).await?;
        let b = connect(&bench.servers[1], &db).await?;
        a.batch_execute(&fill).await?;
        a.batch_execute("VACUUM ANALYZE items").await?;

        // Baseline: binary COPY out of a, into b, through psql.
        let pipe = shell_time(&format!(
            "{} -c 'COPY items TO STDOUT (FORMAT binary)' | {} -c 'COPY items FROM STDIN (FORMAT binary)'",
            psql(0, &db),
            psql(1, &db)
        ))?;
        b.batch_execute("TRUNCATE items").await?;
        // pgtwin: the merge step of `up` into the empty peer (COPY streamed through pgtwin).
        let cfg = Config::parse(
            &format!(
                "[nodes.a]\nurl = \"{}\"\n[nodes.b]\nurl = \"{}\"\n[[tables]]\nname = \"items\"\n",
                bench.servers[0].url("postgres", None, &db),
                bench.servers[1].url("postgres", None, &db)
            ),
            |_: &str| None,
        )?;
        let p = pgtwin::install::prepare(&cfg).await?;
        let t = &p.tables[0];
        let started = Instant::now();
        let copied = pgtwin::data::copy::copy_rows(
            p.sides()[0],
            p.sides()[1],
            (&t[0], &t[1]),
            None,
            pgtwin::data::copy::OnConflict::Keep,
            &pgtwin::progress::Progress::hidden(),
        )
        .await?;
        let copy = started.elapsed().as_secs_f64();
        anyhow::ensure!(copied == rows as u64, "copied {copied} of {rows} rows");
        b.batch_execute("VACUUM ANALYZE items").await?;

        let dump = shell_time(&format!(
            "{} -c 'COPY items TO STDOUT' > /dev/null",
            psql(0, &db)
        ))?;
        let started = Instant::now();
        let diff = pgtwin::data::compare::compare(p.sides(), t).await?;
        let check_equal = started.elapsed().as_secs_f64();
        anyhow::ensure!(diff.is_equal(), "identical tables reported different");
        b.batch_execute("UPDATE items SET price = price + 1 WHERE id IN (SELECT (g * 7919) % $n + 1 FROM generate_series(1, 100) g)".replace("$n", &rows.to_string()).as_str()).await?;
        let started = Instant::now();
        let diff = pgtwin::data::compare::compare(p.sides(), t).await?;
        let check_diff = started.elapsed().as_secs_f64();
        found_all &= diff.different.len() == 100 && diff.only_on.iter().all(Vec::is_empty);

        for (name, x) in [
            ("copy rows/s", rows as f64 / copy),
            ("pipe rows/s", rows as f64 / pipe),
            ("copy to /dev/null", dump),
            ("check identical", check_equal),
            ("check 100 differences", check_diff),
        ] {
            figures.entry(name).or_default().push(x);
        }
    }
    let m = |k: &str| median(figures[k].clone());
    println!("\ndata, {rows} rows, medians of {reps} run(s)\n");
    println!(
        "{:<58}{:>10}{:>26}{:>10}",
        "figure", "ratio", "absolute", "target"
    );
    println!(
        "{:<58}{:>10.2}{:>26}{:>10}",
        "initial copy to an empty peer, vs binary COPY | COPY (psql)",
        m("copy rows/s") / m("pipe rows/s"),
        format!("{:.0} vs {:.0} rows/s", m("copy rows/s"), m("pipe rows/s")),
        ">= 0.8"
    );
    println!(
        "{:<58}{:>9.2}x{:>26}{:>10}",
        "check of identical tables, vs COPY TO STDOUT > /dev/null",
        m("check identical") / m("copy to /dev/null"),
        format!(
            "{:.2} s vs {:.2} s",
            m("check identical"),
            m("copy to /dev/null")
        ),
        "<= 1.0x"
    );
    println!(
        "{:<58}{:>9.2}x {:>32}{:>10}",
        "check with 100 scattered differences, same baseline",
        m("check 100 differences") / m("copy to /dev/null"),
        format!(
            "{:.2} s, all 100 found: {}",
            m("check 100 differences"),
            if found_all { "yes" } else { "NO" }
        ),
        "<= 1.0x"
    );
    anyhow::ensure!(found_all, "check missed some of the 100 differences");
    Ok(())
}
