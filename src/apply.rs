//! Runs steps on a node: one transaction, under an advisory lock so two pgtwin runs never interleave.

use anyhow::{anyhow, Result};
use tokio_postgres::Client;

use crate::db::{on_node, pg_message};
use crate::plan::Step;
use crate::sql::names;

/// Opens the node's transaction and takes pgtwin's advisory lock. The session's lock_timeout bounds the
/// wait, so a second `up` fails with a clear message instead of queueing behind the first.
pub async fn begin(node: &str, db: &Client) -> Result<()> {
    db.batch_execute("BEGIN")
        .await
        .map_err(on_node(node, "BEGIN"))?;
    db.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&names::ADVISORY_LOCK_KEY],
    )
    .await
    .map_err(|e| {
        anyhow!(
            "node {node}: another pgtwin up/down holds the lock ({}): wait for it to finish",
            pg_message(&e)
        )
    })?;
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
        for (name, value) in &step.settings {
            db.execute("SELECT set_config($1, $2, true)", &[name, value])
                .await
                .map_err(failed)?;
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

pub async fn commit(node: &str, db: &Client) -> Result<()> {
    db.batch_execute("COMMIT")
        .await
        .map_err(on_node(node, "COMMIT"))
}

pub async fn rollback(db: &Client) {
    // Best effort: if the connection is gone, the server has rolled back already.
    let _ = db.batch_execute("ROLLBACK").await;
}
