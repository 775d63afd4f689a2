//! Two-way pglogical, the reference the async lag is measured against: the same stream of single-row
//! INSERTs at 200 a second, carried by logical decoding instead of pgtwin's queue.
//!
//! It runs on two servers of its own: logical decoding needs `wal_level = logical` and the library
//! preloaded, which the servers measuring pgtwin should not pay for. Where the package is missing,
//! the line says so and the figure is left out.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pgtwin::localpg::LocalServer;
use pgtwin::sql::ident::Literal;

use crate::{connect, stream_lag, TABLE};

/// The Debian package to install when pglogical's library is missing beside the server binaries the
/// benchmark uses; None when it is there.
pub fn missing() -> Result<Option<String>> {
    let bin = pgtwin::localpg::find_bin_dir()?;
    let Some(dir) = bin.parent() else {
        return Ok(Some("postgresql-<version>-pglogical".into()));
    };
    if dir.join("lib").join("pglogical.so").exists() {
        return Ok(None);
    }
    let version = dir
        .file_name()
        .map_or("<version>".into(), |v| v.to_string_lossy().into_owned());
    Ok(Some(format!("postgresql-{version}-pglogical")))
}

/// p50 and p99 of the lag, one pair per repetition, with a subscription each way
/// (`forward_origins = '{}'`: nothing is sent back where it came from). The servers stop at the end.
pub async fn lags(dir: &Path, reps: usize, writes: usize) -> Result<Vec<(f64, f64)>> {
    let mut servers = Vec::new();
    for name in ["pglogical_a", "pglogical_b"] {
        let s = LocalServer::start(
            &dir.join(name),
            &[
                "max_wal_size = 4GB",
                "track_commit_timestamp = on",
                "wal_level = logical",
                "shared_preload_libraries = 'pglogical'",
            ],
        )
        .context("starting a server for pglogical")?;
        s.stop_when_process_ends(std::process::id())?;
        servers.push(s);
    }
    let measured = measure(&servers, reps, writes).await;
    for s in &servers {
        let _ = s.stop(true);
    }
    measured
}

async fn measure(servers: &[LocalServer], reps: usize, writes: usize) -> Result<Vec<(f64, f64)>> {
    let db = "bench_pglogical";
    let dsn = |s: &LocalServer| format!("host=127.0.0.1 port={} dbname={db} user=postgres", s.port);
    for (s, name) in servers.iter().zip(["a", "b"]) {
        s.connect("postgres")
            .await?
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await?;
        connect(s, db)
            .await?
            .batch_execute(&format!(
                "{TABLE};
                 CREATE EXTENSION pglogical;
                 SELECT pglogical.create_node(node_name := {}, dsn := {});
                 SELECT pglogical.replication_set_add_table('default', 'items');",
                Literal(name),
                Literal(&dsn(s)),
            ))
            .await
            .context("pglogical node")?;
    }
    let (a, b) = (
        connect(&servers[0], db).await?,
        connect(&servers[1], db).await?,
    );
    // pglogical gives the rows it applies the origin's commit time, so their arrival is taken by a
    // trigger deferred to the applying transaction's commit: a moment before the commit time
    // pgtwin's rows are measured by (both before the commit's WAL flush), which favours pglogical
    // by that moment.
    b.batch_execute(
        "CREATE TABLE arrivals (id bigint PRIMARY KEY, at timestamptz NOT NULL);
         CREATE FUNCTION note_arrival() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO arrivals VALUES (NEW.id, clock_timestamp());
             RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER note_arrival AFTER INSERT ON items
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION note_arrival();
         ALTER TABLE items ENABLE ALWAYS TRIGGER note_arrival;",
    )
    .await?;
    for (to, from) in [(1, 0), (0, 1)] {
        connect(&servers[to], db)
            .await?
            .batch_execute(&format!(
                "SELECT pglogical.create_subscription(subscription_name := {}, provider_dsn := {},
                     synchronize_structure := false, synchronize_data := false, forward_origins := '{{}}')",
                Literal(&format!("from_{from}")),
                Literal(&dsn(&servers[from])),
            ))
            .await
            .context("pglogical subscription")?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in [&a, &b] {
        loop {
            let status: Option<String> = c
                .query_one(
                    "SELECT min(status) FROM pglogical.show_subscription_status()",
                    &[],
                )
                .await?
                .get(0);
            if status.as_deref() == Some("replicating") {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "pglogical's subscriptions never started replicating ({status:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut out = Vec::new();
    for _ in 0..reps {
        out.push(
            stream_lag(
                &a,
                &b,
                writes,
                "SELECT id, extract(epoch FROM at)::float8 FROM arrivals WHERE id = ANY($1)",
            )
            .await?,
        );
    }
    Ok(out)
}
