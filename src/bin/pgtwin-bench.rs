//! pgtwin-bench: the write-path cost of keeping a table synced, as ratios to the same table unsynced.
//!
//! Starts two throwaway servers (fsync on), and for each repetition runs every variant in turn
//! (unsynced, the article's row triggers, pgtwin sync) on fresh databases, interleaved, so machine noise
//! hits all variants alike. Prints medians as ratios to the unsynced table, absolute medians beside them,
//! and whether both nodes ended with identical rows. `--quick` uses small sizes (correctness, not timing).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use pgtwin::config::Config;
use pgtwin::localpg::LocalServer;
use tokio_postgres::{Client, NoTls};

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    Unsynced,
    Article,
    Sync,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Unsynced, Variant::Article, Variant::Sync];

    fn label(self) -> &'static str {
        match self {
            Variant::Unsynced => "unsynced",
            Variant::Article => "article's triggers",
            Variant::Sync => "pgtwin sync",
        }
    }
}

/// One measured figure: throughput (higher is better) or time (lower is better).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    W1InsertTps,
    W2Insert4Tps,
    W3BulkInsert,
    W4BulkUpdate,
    W5BulkDelete,
    W6UpdateTps,
    W6UpdateP50,
    W6UpdateP99,
}

impl Workload {
    const ALL: [Workload; 8] = [
        Workload::W1InsertTps,
        Workload::W2Insert4Tps,
        Workload::W3BulkInsert,
        Workload::W4BulkUpdate,
        Workload::W5BulkDelete,
        Workload::W6UpdateTps,
        Workload::W6UpdateP50,
        Workload::W6UpdateP99,
    ];

    fn label(self) -> &'static str {
        match self {
            Workload::W1InsertTps => "W1 single-row INSERT, 1 client (TPS)",
            Workload::W2Insert4Tps => "W2 single-row INSERT, 4 clients (TPS)",
            Workload::W3BulkInsert => "W3 INSERT ... SELECT of N rows (time)",
            Workload::W4BulkUpdate => "W4 UPDATE of N rows (time)",
            Workload::W5BulkDelete => "W5 DELETE of N rows (time)",
            Workload::W6UpdateTps => "W6 single-row UPDATE by key (TPS)",
            Workload::W6UpdateP50 => "W6 latency p50 (time)",
            Workload::W6UpdateP99 => "W6 latency p99 (time)",
        }
    }

    fn is_throughput(self) -> bool {
        matches!(
            self,
            Workload::W1InsertTps | Workload::W2Insert4Tps | Workload::W6UpdateTps
        )
    }

    /// The issue's target for pgtwin sync, as printed beside the figures (goals, not asserts).
    fn sync_target(self) -> &'static str {
        match self {
            Workload::W1InsertTps | Workload::W6UpdateTps => ">= 0.45",
            Workload::W3BulkInsert => "<= 2.0x",
            Workload::W4BulkUpdate | Workload::W5BulkDelete => "<= 3.0x",
            _ => "",
        }
    }

    fn unit(self, v: f64) -> String {
        if self.is_throughput() {
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
    /// Fresh databases with the table on both servers, set up for the variant.
    async fn prepare(&self, variant: Variant, rep: usize) -> Result<String> {
        let db = format!("bench_{}_{rep}", format!("{variant:?}").to_lowercase());
        for s in &self.servers {
            let admin = s.connect("postgres").await?;
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
                .await?;
            admin
                .batch_execute(&format!("CREATE DATABASE {db}"))
                .await?;
            connect(s, &db).await?.batch_execute(TABLE).await?;
        }
        match variant {
            Variant::Unsynced => {}
            Variant::Article => {
                for i in 0..2 {
                    let c = connect(&self.servers[i], &db).await?;
                    c.batch_execute(&article_sql(self.servers[1 - i].port, &db))
                        .await?;
                }
            }
            Variant::Sync => {
                let text = format!(
                    "[nodes.a]\nurl = \"{}\"\n[nodes.b]\nurl = \"{}\"\n[[tables]]\nname = \"items\"\n",
                    self.servers[0].url("postgres", None, &db),
                    self.servers[1].url("postgres", None, &db)
                );
                pgtwin::install::up(&Config::parse(&text, |_| None)?).await?;
            }
        }
        Ok(db)
    }

    async fn run(&self, variant: Variant, rep: usize) -> Result<(BTreeMap<Workload, f64>, bool)> {
        let db = self.prepare(variant, rep).await?;
        let a = &self.servers[0];
        let c = connect(a, &db).await?;
        let mut out = BTreeMap::new();

        let started = Instant::now();
        for i in 0..self.singles {
            c.execute(
                "INSERT INTO items (name, price) VALUES ($1, $2)",
                &[&format!("single {i}"), &(i as i32)],
            )
            .await?;
        }
        out.insert(
            Workload::W1InsertTps,
            self.singles as f64 / started.elapsed().as_secs_f64(),
        );

        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..4 {
            let c = connect(a, &db).await?;
            let n = self.singles / 4;
            tasks.push(tokio::spawn(async move {
                for i in 0..n {
                    c.execute(
                        "INSERT INTO items (name, price) VALUES ($1, $2)",
                        &[&format!("client {w}"), &(i as i32)],
                    )
                    .await?;
                }
                Ok::<_, tokio_postgres::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        out.insert(
            Workload::W2Insert4Tps,
            (self.singles / 4 * 4) as f64 / started.elapsed().as_secs_f64(),
        );

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

        let identical = match variant {
            Variant::Unsynced => true,
            _ => self.identical(&db).await?,
        };
        Ok((out, identical))
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
        let s = LocalServer::start(&dir.path().join(name), &["max_wal_size = 4GB"])
            .context("starting a server")?;
        s.stop_when_process_ends(std::process::id())?;
        servers.push(s);
    }
    let bench = Bench {
        servers: servers.try_into().ok().expect("two servers"),
        rows,
        singles,
    };
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
    let med = |v: Variant, w: Workload| median(results[&(v, w)].clone());
    println!(
        "\nmedians of {reps} run(s); ratio to the unsynced table (throughput: fraction kept, higher is better; time: x slower, lower is better)\n"
    );
    print!("{:<40}", "workload");
    for v in Variant::ALL {
        print!("{:>24}", v.label());
    }
    println!("{:>14}", "sync target");
    for w in Workload::ALL {
        print!("{:<40}", w.label());
        let base = med(Variant::Unsynced, w);
        for v in Variant::ALL {
            let x = med(v, w);
            let ratio = x / base;
            let cell = if w.is_throughput() {
                format!("{ratio:.2} ({})", w.unit(x))
            } else {
                format!("{ratio:.1}x ({})", w.unit(x))
            };
            print!("{cell:>24}");
        }
        println!("{:>14}", w.sync_target());
    }
    print!("{:<40}", "both nodes identical afterwards");
    for v in Variant::ALL {
        let cell = match (v, identical[&v]) {
            (Variant::Unsynced, _) => "-",
            (_, true) => "yes",
            (Variant::Article, false) => "no (by design)",
            (_, false) => "NO",
        };
        print!("{cell:>24}");
    }
    println!();
    if !identical[&Variant::Sync] {
        anyhow::bail!("pgtwin sync left the nodes different");
    }
    Ok(())
}
