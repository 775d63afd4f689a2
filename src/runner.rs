//! `pgtwin run`: replays each node's queue on its peer, in order, exactly once, and keeps doing so.
//!
//! Each queue entry is a chunk of changes exactly as the capture trigger would have shipped it. The
//! runner applies entries on the peer through the same inbox view the triggers use, and records the last
//! applied entry in the peer's `pgtwin.applied` in the same transaction: a replay cut short at any point
//! (runner killed, peer gone again) is repeated from there, and nothing is applied twice. Only then are the
//! entries deleted from the origin's queue; while it holds any, the origin's writers keep queueing, so no
//! change overtakes an older one.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};

use crate::config::{Config, Node};
use crate::db::{on_node, pg_message};
use crate::sql::ident::QualName;
use crate::sql::names;

/// Queue entries replayed per transaction on the peer.
const ENTRIES_PER_TRANSACTION: i64 = 100;
/// Session advisory lock that keeps a second runner off a node ("pgtr").
const RUNNER_LOCK_KEY: i64 = 0x7067_7472;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub entries: u64,
    pub rows: u64,
}

/// A node connection that also delivers the queue's notifications.
struct Listener {
    name: String,
    db: Client,
}

async fn connect_listening(
    cfg: &Config,
    node: &Node,
    wake: mpsc::UnboundedSender<()>,
) -> Result<Listener> {
    let timeout = Duration::from_secs(cfg.options.connect_timeout_s.into());
    let (db, mut connection) = crate::db::open(&node.name, &node.conn, timeout).await?;
    // Drive the connection ourselves, so notifications reach the runner instead of being dropped.
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    let _ = wake.send(());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("connection closed: {e}");
                    break;
                }
            }
        }
    });
    crate::db::setup_session(&node.name, &db, timeout).await?;
    let locked: bool = db
        .query_one("SELECT pg_try_advisory_lock($1)", &[&RUNNER_LOCK_KEY])
        .await
        .map_err(on_node(&node.name, "taking the runner lock"))?
        .get(0);
    if !locked {
        bail!(
            "node {}: another pgtwin run is already replaying here",
            node.name
        );
    }
    db.batch_execute(&format!("LISTEN {}", names::QUEUE_CHANNEL))
        .await
        .map_err(on_node(&node.name, "LISTEN"))?;
    Ok(Listener {
        name: node.name.clone(),
        db,
    })
}

/// Replays `from`'s queue on `to` until it is empty.
async fn drain(from: &Listener, to: &Listener) -> Result<Drained> {
    let mut total = Drained::default();
    loop {
        to.db
            .batch_execute("BEGIN")
            .await
            .map_err(on_node(&to.name, "BEGIN"))?;
        let step = drain_batch(from, to).await;
        match step {
            Ok(None) => {
                to.db
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(on_node(&to.name, "ROLLBACK"))?;
                return Ok(total);
            }
            Ok(Some((last_seq, done))) => {
                to.db
                    .batch_execute("COMMIT")
                    .await
                    .map_err(on_node(&to.name, "COMMIT"))?;
                // Applied and recorded on the peer; now the origin may forget them. If this fails, the
                // next round skips them by the peer's record.
                forget(from, last_seq).await?;
                total.entries += done.entries;
                total.rows += done.rows;
                tracing::info!(from = %from.name, to = %to.name, entries = done.entries, rows = done.rows, "replayed");
            }
            Err(e) => {
                let _ = to.db.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
    }
}

/// One transaction's worth: returns the last entry applied, or None when nothing is left.
async fn drain_batch(from: &Listener, to: &Listener) -> Result<Option<(i64, Drained)>> {
    let origin = from.name.as_str();
    // The record of what was applied, locked: a second runner on the same pair would wait here.
    to.db
        .execute(
            &format!(
                "INSERT INTO {} VALUES ($1, 0, now()) ON CONFLICT (origin) DO NOTHING",
                names::applied_table()
            ),
            &[&origin],
        )
        .await
        .map_err(on_node(&to.name, "recording replay progress"))?;
    let applied: i64 = to
        .db
        .query_one(
            &format!(
                "SELECT seq FROM {} WHERE origin = $1 FOR UPDATE",
                names::applied_table()
            ),
            &[&origin],
        )
        .await
        .map_err(on_node(&to.name, "reading replay progress"))?
        .get(0);
    forget(from, applied).await?;
    let entries = from
        .db
        .query(
            &format!(
                "SELECT seq, table_tag, rows, batch, changed_at::text FROM {} WHERE seq > $1 ORDER BY seq LIMIT $2",
                names::queue_table()
            ),
            &[&applied, &ENTRIES_PER_TRANSACTION],
        )
        .await
        .map_err(on_node(&from.name, "reading the queue"))?;
    let Some(last) = entries.last() else {
        return Ok(None);
    };
    let last_seq: i64 = last.get(0);
    let mut done = Drained::default();
    for entry in &entries {
        let tag: String = entry.get(1);
        let rows: i32 = entry.get(2);
        let batch: String = entry.get(3);
        let changed_at: String = entry.get(4);
        let inbox: QualName = names::inbox_of_tag(&tag);
        // The commit time of the change travels with it: the peer's conflict resolution compares it
        // with the times of its own queued changes of the same keys.
        to.db
            .execute(
                "SELECT set_config('pgtwin.replay_at', $1, true)",
                &[&changed_at],
            )
            .await
            .map_err(on_node(&to.name, "replay"))?;
        to.db
            .execute(
                &format!(
                    "UPDATE {inbox} SET {} = $1",
                    crate::sql::ident::Ident::new(names::BATCH_COLUMN)
                ),
                &[&batch],
            )
            .await
            .map_err(|e| {
                anyhow!(
                    "node {}: applying queued changes from {origin}: {}",
                    to.name,
                    pg_message(&e)
                )
            })?;
        done.entries += 1;
        done.rows += rows.max(0) as u64;
    }
    to.db
        .execute(
            &format!(
                "UPDATE {} SET seq = $2, applied_at = now() WHERE origin = $1",
                names::applied_table()
            ),
            &[&origin, &last_seq],
        )
        .await
        .map_err(on_node(&to.name, "recording replay progress"))?;
    Ok(Some((last_seq, done)))
}

async fn forget(from: &Listener, up_to: i64) -> Result<()> {
    from.db
        .execute(
            &format!("DELETE FROM {} WHERE seq <= $1", names::queue_table()),
            &[&up_to],
        )
        .await
        .map_err(on_node(&from.name, "removing replayed queue entries"))?;
    Ok(())
}

/// `run --once`: drains both queues and returns; an unreachable node is an error after the other
/// direction has been drained as far as it can be.
pub async fn run_once(cfg: &Config) -> Result<[Drained; 2]> {
    let (wake, _) = mpsc::unbounded_channel();
    let (a, b) = tokio::join!(
        connect_listening(cfg, &cfg.nodes[0], wake.clone()),
        connect_listening(cfg, &cfg.nodes[1], wake)
    );
    let (a, b) = (a?, b?);
    let ab = drain(&a, &b).await.context("replaying")?;
    let ba = drain(&b, &a).await.context("replaying")?;
    Ok([ab, ba])
}

/// `run`: drains, then waits for new queue entries (LISTEN/NOTIFY) and drains again; reconnects with
/// backoff after an outage; returns on SIGINT/SIGTERM between two transactions.
pub async fn run_forever(cfg: &Config) -> Result<()> {
    let mut backoff = Duration::from_millis(500);
    let mut shutdown = shutdown_signal();
    loop {
        let (wake_tx, mut wake) = mpsc::unbounded_channel();
        let connected = tokio::join!(
            connect_listening(cfg, &cfg.nodes[0], wake_tx.clone()),
            connect_listening(cfg, &cfg.nodes[1], wake_tx)
        );
        let (a, b) = match connected {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                let e = a.err().or(b.err()).expect("one failed");
                tracing::warn!("{e:#}; retrying in {:?}", backoff);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut shutdown => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        eprintln!(
            "pgtwin run: replaying queues between {} and {}",
            a.name, b.name
        );
        loop {
            let result = async {
                drain(&a, &b).await?;
                drain(&b, &a).await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!("{e:#}; reconnecting");
                break;
            }
            // Wake on a notification, or every few seconds anyway (a peer coming back sends none).
            tokio::select! {
                _ = wake.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = &mut shutdown => return Ok(()),
            }
        }
    }
}

fn shutdown_signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
}
