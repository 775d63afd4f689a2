//! pgtwin's locks on a node: one for `up`/`down`/`repair` (held by their transaction), one for the
//! runner replaying (held by its sessions).
//!
//! They are advisory locks, which any role could take by their key. So the keys are random, kept in
//! pgtwin's schema where only its role reads them, one per purpose; and since `pg_locks` shows every
//! role the keys held, a role could learn one and hold it once released: a key found held by a
//! session of another role is replaced by a new one at once, and the lock taken under that. Before
//! pgtwin is installed (no key table yet) the lock has a fixed key; a first install goes on without
//! it when another role holds it (see try_take).

use anyhow::{anyhow, Result};
use tokio_postgres::Client;

use crate::db::on_node;
use crate::sql::names;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `up`, `down`, `repair`: held by their transaction on the node.
    Install,
    /// `pgtwin run` replaying: held by its session for as long as it lives.
    Runner,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Purpose::Install => "install",
            Purpose::Runner => "runner",
        }
    }

    /// The key where pgtwin has no key table yet ("pgtw" / "pgtr" in ASCII).
    fn fixed_key(self) -> i64 {
        match self {
            Purpose::Install => 0x7067_7477,
            Purpose::Runner => 0x7067_7472,
        }
    }

    fn sql(self, function: &str) -> String {
        let f = match self {
            Purpose::Install => format!("{function}_xact_lock"),
            Purpose::Runner => format!("{function}_lock"),
        };
        format!("SELECT {f}($1)")
    }
}

/// Who holds a lock key on this database: (role, pid).
async fn holder(node: &str, db: &Client, key: i64) -> Result<Option<(String, i32)>> {
    // A bigint key shows as classid (high half) and objid (low half), objsubid 1.
    Ok(db
        .query_opt(
            "SELECT coalesce(a.usename::text, '?'), l.pid FROM pg_locks l
               LEFT JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND (l.classid::bigint << 32 | l.objid::bigint) = $1
              LIMIT 1",
            &[&key],
        )
        .await
        .map_err(on_node(node, "reading who holds pgtwin's lock"))?
        .map(|r| (r.get(0), r.get(1))))
}

/// 64 random bits from gen_random_uuid (a strong source): a new lock key (state migration 3 makes
/// the first ones with it).
pub const RANDOM_KEY_SQL: &str =
    "('x' || substr(translate(gen_random_uuid()::text, '-', ''), 1, 16))::bit(64)::bigint";

/// The key of `purpose` on this node now (the fixed one before pgtwin has a key table).
pub async fn current_key(node: &str, db: &Client, purpose: Purpose) -> Result<i64> {
    let table = names::locks_table();
    let exists: bool = db
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.to_string()])
        .await
        .map_err(on_node(node, "reading the catalog"))?
        .get(0);
    if !exists {
        return Ok(purpose.fixed_key());
    }
    let row = db
        .query_opt(
            &format!("SELECT key FROM {table} WHERE purpose = $1"),
            &[&purpose.name()],
        )
        .await
        .map_err(on_node(node, "reading pgtwin's lock key"))?;
    Ok(row.map_or(purpose.fixed_key(), |r| r.get(0)))
}

/// Replaces `old`, the key of `purpose`, by a new random one; returns the key in force after (another
/// session's replacement, should it have come first: never two new keys).
async fn replace_key(node: &str, db: &Client, purpose: Purpose, old: i64) -> Result<i64> {
    db.execute(
        &format!(
            "UPDATE {} SET key = {RANDOM_KEY_SQL} WHERE purpose = $1 AND key = $2",
            names::locks_table()
        ),
        &[&purpose.name(), &old],
    )
    .await
    .map_err(on_node(node, "replacing pgtwin's lock key"))?;
    current_key(node, db, purpose).await
}

/// Takes pgtwin's lock for `purpose` without waiting, and returns the key it holds it under; None
/// when another session of pgtwin's role holds it (another `up`, or another runner). One held by
/// another role is never waited for: its key is replaced (logged), and the lock taken under the new
/// one.
pub async fn try_take(node: &str, db: &Client, purpose: Purpose) -> Result<Option<i64>> {
    let mut key = current_key(node, db, purpose).await?;
    let mut replaced = false;
    loop {
        let taken: bool = db
            .query_one(&purpose.sql("pg_try_advisory"), &[&key])
            .await
            .map_err(on_node(node, "taking pgtwin's lock"))?
            .get(0);
        if taken {
            return Ok(Some(key));
        }
        // pg_stat_activity names a session by its login role.
        let me: String = db
            .query_one("SELECT session_user::text", &[])
            .await
            .map_err(on_node(node, "reading the role"))?
            .get(0);
        match holder(node, db, key).await? {
            Some((role, _)) if role == me => return Ok(None),
            // Released meanwhile: try again.
            None => continue,
            Some((role, pid)) => {
                if key == purpose.fixed_key()
                    && purpose == Purpose::Install
                    && !schema_exists(node, db).await?
                {
                    // A first install. It needs no advisory lock to exclude another: each `up` locks
                    // every synced table before its first step, and the second, whose plan was made
                    // before the first committed, then fails at creating schema pgtwin.
                    tracing::warn!(
                        "node {node}: role {role} (pid {pid}) holds the lock key pgtwin uses before it is installed; installing without it"
                    );
                    return Ok(Some(key));
                }
                if replaced || key == purpose.fixed_key() {
                    return Err(anyhow!(
                        "node {node}: role {role} (pid {pid}) holds pgtwin's {} lock, which is not pgtwin's: end that session (SELECT pg_terminate_backend({pid}))",
                        purpose.name()
                    ));
                }
                tracing::warn!(
                    "node {node}: role {role} (pid {pid}) held pgtwin's {} lock key; a new key is in use",
                    purpose.name()
                );
                key = replace_key(node, db, purpose, key).await?;
                replaced = true;
            }
        }
    }
}

async fn schema_exists(node: &str, db: &Client) -> Result<bool> {
    Ok(db
        .query_one("SELECT to_regnamespace($1) IS NOT NULL", &[&names::SCHEMA])
        .await
        .map_err(on_node(node, "reading the catalog"))?
        .get(0))
}

/// Releases a session lock taken under `key` (the runner's; a transaction's goes with it).
pub async fn release(node: &str, db: &Client, key: i64) -> Result<()> {
    db.execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .map_err(on_node(node, "releasing pgtwin's lock"))?;
    Ok(())
}
