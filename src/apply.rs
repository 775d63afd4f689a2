//! Runs steps on a node: one transaction, under pgtwin's install lock so two pgtwin runs never
//! interleave.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::SinkExt;
use tokio_postgres::Client;

use crate::db::{on_node, pg_message};
use crate::locks::{self, Purpose};
use crate::plan::Step;

/// How long `up`, `down` or `repair` waits for another one to finish on a node before failing.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens the node's transaction and takes pgtwin's install lock (crate::locks). A second `up` waits
/// LOCK_WAIT, then fails with a clear message instead of queueing behind the first.
pub async fn begin(node: &str, db: &Client) -> Result<()> {
    db.batch_execute("BEGIN")
        .await
        .map_err(on_node(node, "BEGIN"))?;
    let started = Instant::now();
    while locks::try_take(node, db, Purpose::Install).await?.is_none() {
        if started.elapsed() >= LOCK_WAIT {
            bail!("node {node}: another pgtwin up, down or repair holds pgtwin's lock there: wait for it to finish");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub async fn run(node: &str, db: &Client, steps: &[Step]) -> Result<()> {
    for step in steps {
        tracing::debug!(node, step = %step.id, "running step");
        let failed = |e: tokio_postgres::Error| {
            anyhow!(
                "node {node}: step \"{}\" failed: {}",
                step.id,
                pg_message(&e)
            )
        };
        if !step.settings.is_empty() {
            set_locally(db, &step.settings).await.map_err(failed)?;
        }
        db.batch_execute(&step.sql).await.map_err(failed)?;
        for (name, _) in &step.settings {
            db.execute("SELECT set_config($1, '', true)", &[name])
                .await
                .map_err(failed)?;
        }
    }
    Ok(())
}

/// Sets transaction-local settings whose values are secrets. They travel as COPY data, which no
/// server log and no statement statistics record (bound parameters are logged by `log_statement = 'all'`
/// and `log_min_duration_statement`).
async fn set_locally(
    db: &Client,
    settings: &[(&'static str, String)],
) -> Result<(), tokio_postgres::Error> {
    db.batch_execute("CREATE TEMP TABLE pgtwin_settings (name text, value text) ON COMMIT DROP")
        .await?;
    let mut data = String::new();
    for (name, value) in settings {
        data.push_str(&format!("{}\t{}\n", copy_text(name), copy_text(value)));
    }
    let sink = db
        .copy_in::<_, bytes::Bytes>("COPY pg_temp.pgtwin_settings FROM STDIN")
        .await?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data)).await?;
    sink.finish().await?;
    db.batch_execute(
        "SELECT set_config(name, value, true) FROM pg_temp.pgtwin_settings; \
         DROP TABLE pg_temp.pgtwin_settings",
    )
    .await
}

/// A value in COPY's text format: backslash, tab, newline and carriage return escaped.
fn copy_text(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

pub async fn commit(node: &str, db: &Client) -> Result<()> {
    db.batch_execute("COMMIT")
        .await
        .map_err(on_node(node, "COMMIT"))
}

pub async fn rollback(db: &Client) {
    // Best effort: if the connection is gone, the server has rolled back already.
    let _ = db.batch_execute("ROLLBACK").await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        assert_eq!(super::copy_text("a\\b\tc\nd\re"), "a\\\\b\\tc\\nd\\re");
        assert_eq!(super::copy_text("plain 'quoted' ü"), "plain 'quoted' ü");
    }
}
