//! pgtwin's own tables on a node (queue, replay records, conflicts, heartbeat, ...): their schema, its
//! version and migrations, and the queries that read them for people and monitors.
//!
//! The schema is versioned. `up` runs every migration an installation lacks, in order, in the
//! transaction of the rest of the install, so an install made by an older pgtwin is upgraded in place with its queued changes and
//! conflicts kept; a fresh install takes the same path from nothing. An installation whose version is
//! newer than this binary knows is refused by every command: this binary would misread its tables.

use anyhow::{bail, Result};
use tokio_postgres::Client;

use crate::catalog::NodeInfo;
use crate::db::on_node;
use crate::sql::ident::{dollar_quote, Literal, QualName};
use crate::sql::names;

/// Numbered migrations; the last number is this binary's state version. Never edit one that shipped:
/// add the next.
const MIGRATIONS: [(i32, &str); 10] = [
    (1, include_str!("sql/templates/state/1.sql")),
    (2, include_str!("sql/templates/state/2.sql")),
    (3, include_str!("sql/templates/state/3.sql")),
    (4, include_str!("sql/templates/state/4.sql")),
    (5, include_str!("sql/templates/state/5.sql")),
    (6, include_str!("sql/templates/state/6.sql")),
    (7, include_str!("sql/templates/state/7.sql")),
    (8, include_str!("sql/templates/state/8.sql")),
    (9, include_str!("sql/templates/state/9.sql")),
    (10, include_str!("sql/templates/state/10.sql")),
];

/// The state version this binary writes and reads.
pub const VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Installs made before versions were recorded have no version table: they are version 1.
pub const UNRECORDED: i32 = 1;

/// The state step of `up` (a template: `{{name}}` placeholders), in `up`'s transaction: refuses a
/// newer installation, runs the migrations a node lacks, records the version. The same text whatever the node has, so the
/// plan hash does not change with an upgrade.
pub fn migrations_sql() -> String {
    let mut sql = String::from(
        "CREATE TABLE IF NOT EXISTS {{state_version}} (\n    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),\n    version integer NOT NULL\n);\n",
    );
    let guard = format!(
        "BEGIN\n    IF (SELECT version FROM {{{{state_version}}}}) > {VERSION} THEN\n        RAISE EXCEPTION {};\n    END IF;\nEND",
        Literal(&newer_message(None))
    );
    sql.push_str(&format!("DO {};\n", dollar_quote(&guard)));
    for (n, migration) in MIGRATIONS {
        // Each runs once, where the recorded version is below its number. An install made before
        // versions were recorded counts as none: migration 1 (idempotent) finds its tables there.
        let body = format!(
            "BEGIN\n    IF coalesce((SELECT version FROM {{{{state_version}}}}), 0) < {n} THEN\n        EXECUTE {};\n    END IF;\nEND",
            dollar_quote(migration.trim())
        );
        sql.push_str(&format!(
            "-- State schema migration {n}\nDO {};\n",
            dollar_quote(&body)
        ));
    }
    sql.push_str(&format!(
        "INSERT INTO {{{{state_version}}}} VALUES (true, {VERSION})\n    ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version;\n"
    ));
    sql
}

fn newer_message(node: Option<&str>) -> String {
    let at = node.map_or(String::new(), |n| format!("node {n}: "));
    format!(
        "{at}pgtwin's state there was written by a newer pgtwin (state version above {VERSION}, which pgtwin {} knows): use that pgtwin or a later one",
        env!("CARGO_PKG_VERSION")
    )
}

/// The state version installed on a node; None where pgtwin is not installed.
pub async fn installed_version(node: &str, db: &Client) -> Result<Option<i32>> {
    let row = db
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
            &[
                &names::installation_table().to_string(),
                &names::state_version_table().to_string(),
            ],
        )
        .await
        .map_err(on_node(node, "reading pgtwin's state version"))?;
    let (installed, recorded): (bool, bool) = (row.get(0), row.get(1));
    if !installed {
        return Ok(None);
    }
    if !recorded {
        return Ok(Some(UNRECORDED));
    }
    let version = db
        .query_opt(
            &format!("SELECT version FROM {}", names::state_version_table()),
            &[],
        )
        .await
        .map_err(on_node(node, "reading pgtwin's state version"))?;
    Ok(Some(version.map_or(UNRECORDED, |r| r.get(0))))
}

/// Refuses a node whose installation is newer than this binary.
pub fn refuse_newer(node: &str, info: &NodeInfo) -> Result<()> {
    if info.state_version.is_some_and(|v| v > VERSION) {
        bail!("{}", newer_message(Some(node)));
    }
    Ok(())
}

/// Changes waiting on this node for its peer, and what replay has done.
#[derive(Debug, serde::Serialize)]
pub struct QueueStatus {
    /// Queue entries (chunks) and the changes they hold.
    pub entries: i64,
    pub rows: i64,
    /// Age of the oldest queued change, in seconds.
    pub oldest_age_s: Option<f64>,
    /// When changes from the peer were last replayed here.
    pub last_replay_from_peer: Option<String>,
    pub conflicts: i64,
    /// Set when the queue outgrew its limit: only a repair joins the nodes again.
    pub needs_repair_since: Option<String>,
    pub needs_repair_reason: Option<String>,
    /// Queue entries the peer refused for their data, set aside.
    pub set_aside: i64,
    /// Seconds since `pgtwin run` last wrote its heartbeat here (None: never).
    pub runner_seen_s_ago: Option<f64>,
    /// When the runner last found both queues empty.
    pub runner_drained_at: Option<String>,
    /// Which process wrote the heartbeat: "HOST pid N, pgtwin VERSION" (what the install records).
    pub runner: Option<String>,
    /// This node's mark, moved forward by `pgtwin run`, and its peer's as last seen here (see
    /// runner::advance_marks); None on an install older than the marks, or with the peer unreachable.
    pub mark: Option<i64>,
    pub peer_mark: Option<i64>,
    /// When `pgtwin run` found that the peer went back to an earlier state of itself: its changes are
    /// refused here until a repair.
    pub peer_went_back_at: Option<String>,
    /// The same figures per table.
    pub by_table: Vec<TableQueue>,
}

/// One table's share of a node's queue, set-aside changes and conflicts.
#[derive(Debug, Default, serde::Serialize)]
pub struct TableQueue {
    /// The table by its name in the config, unquoted (`public.items`).
    pub table: String,
    pub entries: i64,
    pub rows: i64,
    pub oldest_age_s: Option<f64>,
    pub set_aside: i64,
    pub conflicts: i64,
}

/// A node's queue, replay, conflict and heartbeat figures, in all and per table of `tables` (their
/// config names).
pub async fn queue_status(node: &str, db: &Client, tables: &[QualName]) -> Result<QueueStatus> {
    let row = db
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {q}), (SELECT coalesce(sum(rows), 0)::bigint FROM {q}),
                        (SELECT extract(epoch FROM now() - min(changed_at))::float8 FROM {q}),
                        (SELECT max(applied_at)::text FROM {applied}),
                        (SELECT count(*) FROM {conflicts}),
                        (SELECT needs_repair_since::text FROM {link}), (SELECT reason FROM {link})",
                q = names::queue_table(),
                applied = names::applied_table(),
                conflicts = names::conflicts_table(),
                link = names::link_table(),
            ),
            &[],
        )
        .await
        .map_err(on_node(node, "reading the queue"))?;
    // Tables an install older than this binary lacks until its next `up`: read when present.
    let runner = db
        .query_opt(
            &format!(
                "SELECT extract(epoch FROM now() - seen_at)::float8, drained_at::text,
                        concat_ws(' ', nullif(host, ''), 'pid ' || (to_jsonb(r) ->> 'pid'),
                                  'pgtwin ' || (to_jsonb(r) ->> 'version'))
                 FROM {} r",
                names::runner_table()
            ),
            &[],
        )
        .await
        .ok()
        .flatten();
    let set_aside = db
        .query_one(
            &format!("SELECT count(*) FROM {}", names::set_aside_table()),
            &[],
        )
        .await
        .ok();
    // A column an install older than this binary lacks until its next `up`: read when present.
    let went_back = db
        .query_one(
            &format!(
                "SELECT (to_jsonb(l) ->> 'peer_went_back_at')::timestamptz::text FROM {} l",
                names::link_table()
            ),
            &[],
        )
        .await
        .ok();
    Ok(QueueStatus {
        // Read by `status` with both nodes at hand (status::reread_marks).
        mark: None,
        peer_mark: None,
        peer_went_back_at: went_back.and_then(|r| r.get(0)),
        entries: row.get(0),
        rows: row.get(1),
        oldest_age_s: row.get(2),
        last_replay_from_peer: row.get(3),
        conflicts: row.get(4),
        needs_repair_since: row.get(5),
        needs_repair_reason: row.get(6),
        runner_seen_s_ago: runner.as_ref().and_then(|r| r.get(0)),
        runner_drained_at: runner.as_ref().and_then(|r| r.get(1)),
        runner: runner
            .as_ref()
            .and_then(|r| r.get::<_, Option<String>>(2))
            .filter(|s| !s.is_empty()),
        set_aside: set_aside.map_or(0, |r| r.get(0)),
        by_table: queue_by_table(db, tables).await,
    })
}

/// Queue, set-aside and conflict figures per table. Entries carry a table's tag, matched here to its
/// config name; conflicts carry that name. Best effort: an older install may lack a table.
async fn queue_by_table(db: &Client, tables: &[QualName]) -> Vec<TableQueue> {
    // Every synced table has its figures, zeros included: a monitor sees a series, not a gap.
    let mut out: Vec<TableQueue> = tables
        .iter()
        .map(|t| TableQueue {
            table: t.plain(),
            ..TableQueue::default()
        })
        .collect();
    let tag_of = |tag: &str| tables.iter().find(|t| names::table_tag(t) == tag);
    let grouped = |sql: String| async move { db.query(&sql, &[]).await.unwrap_or_default() };
    let queued = grouped(format!(
        "SELECT table_tag, count(*), coalesce(sum(rows), 0)::bigint,
                extract(epoch FROM now() - min(changed_at))::float8
         FROM {} GROUP BY 1",
        names::queue_table()
    ))
    .await;
    let set_aside = grouped(format!(
        "SELECT table_tag, count(*) FROM {} GROUP BY 1",
        names::set_aside_table()
    ))
    .await;
    let conflicts = grouped(format!(
        "SELECT table_name, count(*) FROM {} GROUP BY 1",
        names::conflicts_table()
    ))
    .await;
    let name_of = |tag: &str| tag_of(tag).map_or(tag.to_string(), |t| t.plain());
    for r in &queued {
        let t = table_entry(&mut out, name_of(r.get(0)));
        t.entries = r.get(1);
        t.rows = r.get(2);
        t.oldest_age_s = r.get(3);
    }
    for r in &set_aside {
        table_entry(&mut out, name_of(r.get(0))).set_aside = r.get(1);
    }
    for r in &conflicts {
        // Recorded by the name's SQL text (quoted): labelled like the others.
        let name: String = r.get(0);
        let name = tables
            .iter()
            .find(|t| t.to_string() == name)
            .map_or(name, |t| t.plain());
        table_entry(&mut out, name).conflicts = r.get(1);
    }
    out.sort_by(|a, b| a.table.cmp(&b.table));
    out
}

fn table_entry(out: &mut Vec<TableQueue>, table: String) -> &mut TableQueue {
    let i = match out.iter().position(|t| t.table == table) {
        Some(i) => i,
        None => {
            out.push(TableQueue {
                table,
                ..TableQueue::default()
            });
            out.len() - 1
        }
    };
    &mut out[i]
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Installed {
    pub version: String,
    pub node: String,
    pub peer: String,
    pub plan_hash: String,
    pub created_extension: bool,
    pub tables: Vec<String>,
    /// The OID of the database `up` installed in (None: an install older than the record of it).
    pub database_oid: Option<i64>,
    /// The system identifier of the cluster `up` installed in (None: an install older than the record).
    pub system_identifier: Option<i64>,
}

/// The installation record `up` wrote on a node (None: not installed).
pub async fn read_installed(node: &str, db: &Client) -> Result<Option<Installed>> {
    let sql = format!(
        "SELECT version, node, peer, plan_hash, created_extension, tables,
                (to_jsonb(i) ->> 'database_oid')::bigint, (to_jsonb(i) ->> 'system_identifier')::bigint
         FROM {} i",
        names::installation_table()
    );
    let row = db
        .query_opt(&sql, &[])
        .await
        .map_err(on_node(node, "reading pgtwin's installation record"))?;
    Ok(row.map(|r| Installed {
        version: r.get(0),
        node: r.get(1),
        peer: r.get(2),
        plan_hash: r.get(3),
        created_extension: r.get(4),
        tables: r.get(5),
        database_oid: r.get(6),
        system_identifier: r.get(7),
    }))
}

/// Sequences whose increment `up` changed, with the increment to restore (those that still exist).
pub async fn recorded_sequences(node: &str, db: &Client) -> Result<Vec<(QualName, i64)>> {
    let rows = db
        .query(
            &format!(
                "SELECT schema_name, sequence_name, original_increment FROM {}
                 WHERE to_regclass(quote_ident(schema_name) || '.' || quote_ident(sequence_name)) IS NOT NULL",
                names::sequences_table()
            ),
            &[],
        )
        .await
        .map_err(on_node(node, "reading recorded sequences"))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                QualName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                r.get(2),
            )
        })
        .collect())
}

/// Changes waiting in a node's queue (0 where the queue does not exist yet).
pub async fn queued_rows(node: &str, db: &Client) -> Result<i64> {
    let exists: bool = db
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&names::queue_table().to_string()],
        )
        .await
        .map_err(on_node(node, "reading the catalog"))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(db
        .query_one(
            &format!(
                "SELECT coalesce(sum(rows), 0)::bigint FROM {}",
                names::queue_table()
            ),
            &[],
        )
        .await
        .map_err(on_node(node, "reading the queue"))?
        .get(0))
}

/// Queue entries of one table waiting on a node.
pub async fn queued_entries_of(node: &str, db: &Client, table: &QualName) -> Result<i64> {
    Ok(db
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE table_tag = $1",
                names::queue_table()
            ),
            &[&names::table_tag(table)],
        )
        .await
        .map_err(on_node(node, "reading the queue"))?
        .get(0))
}

/// Whether the node's queue outgrew its limit (only a repair joins the nodes again).
pub async fn needs_repair(node: &str, db: &Client) -> Result<bool> {
    Ok(db
        .query_one(
            &format!(
                "SELECT needs_repair_since IS NOT NULL FROM {}",
                names::link_table()
            ),
            &[],
        )
        .await
        .map_err(on_node(node, "reading the link state"))?
        .get(0))
}

/// After a repair: changes are queued again, and the changes set aside are settled.
pub async fn repaired(node: &str, db: &Client) -> Result<()> {
    let failed = || on_node(node, "clearing the repair mark and the changes set aside");
    db.batch_execute(&format!(
        "UPDATE {} SET needs_repair_since = NULL, reason = NULL",
        names::link_table()
    ))
    .await
    .map_err(failed())?;
    // The peer's rows are equal to this node's again: its changes are taken again.
    forget_peer_mark(node, db).await?;
    // An install made before changes were set aside has no such table until its next `up`.
    let set_aside = names::set_aside_table();
    let exists: bool = db
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&set_aside.to_string()],
        )
        .await
        .map_err(failed())?
        .get(0);
    if exists {
        db.batch_execute(&format!("DELETE FROM {set_aside}"))
            .await
            .map_err(failed())?;
    }
    Ok(())
}

/// Once the tables of both nodes are made equal by a policy (a repair, `up --mirror`): the peer's
/// changes are taken again, and its mark is seen afresh (a peer that went back is below the mark
/// recorded here, which would read as going back again).
pub async fn forget_peer_mark(node: &str, db: &Client) -> Result<()> {
    if installed_version(node, db).await?.unwrap_or(0) < MARKS_VERSION {
        return Ok(());
    }
    db.batch_execute(&format!(
        "UPDATE {} SET peer_mark = 0, peer_went_back_at = NULL",
        names::link_table()
    ))
    .await
    .map_err(on_node(node, "forgetting its peer's mark"))?;
    Ok(())
}

/// Forgets the records of `origin`'s entries replayed here (its queue was emptied).
pub async fn forget_replay_records(node: &str, db: &Client, origin: &str) -> Result<()> {
    db.execute(
        &format!("DELETE FROM {} WHERE origin = $1", names::replayed_table()),
        &[&origin],
    )
    .await
    .map_err(on_node(node, "clearing replay records"))?;
    Ok(())
}

/// Whether pgtwin is installed on a node (its queue exists).
pub async fn is_installed(db: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(db
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&names::queue_table().to_string()],
        )
        .await?
        .get(0))
}

/// A node's queued deletions, oldest first: (table tag, chunk).
pub async fn queued_deletions(node: &str, db: &Client) -> Result<Vec<(String, String)>> {
    let rows = db
        .query(
            &format!(
                "SELECT table_tag, batch FROM {} WHERE left(batch, 1) = {} ORDER BY seq",
                names::queue_table(),
                Literal(&(crate::change::DELETE as char).to_string())
            ),
            &[],
        )
        .await
        .map_err(on_node(node, "reading the queue"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Empties a node's queue: only once what it held was applied (see install::up).
pub async fn clear_queue(node: &str, db: &Client) -> Result<()> {
    db.execute(&format!("DELETE FROM {}", names::queue_table()), &[])
        .await
        .map_err(on_node(node, "emptying the queue"))?;
    Ok(())
}

/// A conflict recorded on a node: a key both nodes changed while apart, and which change won (each
/// change as JSON text `{"op": ..., "row": {...}}`).
pub struct RecordedConflict {
    pub id: i64,
    pub resolved_at: String,
    pub table: String,
    pub key: Option<String>,
    pub winner: String,
    pub local_change: Option<String>,
    pub remote_change: Option<String>,
}

pub async fn conflicts(node: &str, db: &Client) -> Result<Vec<RecordedConflict>> {
    let rows = db
        .query(
            &format!(
                "SELECT id, resolved_at::text, table_name, key, winner, local_change, remote_change
                 FROM {} ORDER BY id",
                names::conflicts_table()
            ),
            &[],
        )
        .await
        .map_err(on_node(node, "reading the conflicts"))?;
    Ok(rows
        .iter()
        .map(|r| RecordedConflict {
            id: r.get(0),
            resolved_at: r.get(1),
            table: r.get(2),
            key: r.get(3),
            winner: r.get(4),
            local_change: r.get(5),
            remote_change: r.get(6),
        })
        .collect())
}

/// Clears the conflicts `ids` (those a user has read).
pub async fn forget_conflicts(node: &str, db: &Client, ids: &[i64]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    db.execute(
        &format!(
            "DELETE FROM {} WHERE id = ANY($1)",
            names::conflicts_table()
        ),
        &[&ids],
    )
    .await
    .map_err(on_node(node, "clearing the conflicts"))?;
    Ok(())
}

/// A queue entry the peer refused for its data, with the peer's reason.
pub struct SetAside {
    pub seq: i64,
    pub set_aside_at: String,
    pub table_tag: String,
    pub reason: String,
    /// The chunk as queued (crate::change).
    pub batch: String,
}

/// The entries set aside on a node (none where an older install lacks the table).
pub async fn set_aside(db: &Client) -> Vec<SetAside> {
    let rows = db
        .query(
            &format!(
                "SELECT seq, set_aside_at::text, table_tag, reason, batch FROM {} ORDER BY seq",
                names::set_aside_table()
            ),
            &[],
        )
        .await
        .unwrap_or_default();
    rows.iter()
        .map(|r| SetAside {
            seq: r.get(0),
            set_aside_at: r.get(1),
            table_tag: r.get(2),
            reason: r.get(3),
            batch: r.get(4),
        })
        .collect()
}

/// The replay protocol's statements on pgtwin's tables. `pgtwin run` sends them, several to a round
/// trip, within transactions it opens and commits itself (see crate::runner).
///
/// The newest queue entry: a drain goes up to it and no further.
pub fn last_queued_sql() -> String {
    format!("SELECT max(seq) FROM {}", names::queue_table())
}

/// On the peer: the origin's ($1) entries applied there and maybe not yet deleted from its queue.
pub fn replayed_from_sql() -> String {
    format!(
        "SELECT seq, changed_at::text FROM {} WHERE origin = $1",
        names::replayed_table()
    )
}

/// Deletes from the queue the entries the peer recorded as replayed: (seq, changed_at) each, an entry
/// of that number queued at that time (a number alone for a record from before times were recorded).
pub fn forget_replayed_sql(records: &[(i64, String)]) -> String {
    format!(
        "DELETE FROM {} q USING unnest({}, {}) AS r(seq, changed_at) \
         WHERE q.seq = r.seq AND (q.changed_at = r.changed_at OR r.changed_at = '-infinity')",
        names::queue_table(),
        bigint_array(&records.iter().map(|r| r.0).collect::<Vec<_>>()),
        timestamptz_array(records.iter().map(|r| r.1.as_str())),
    )
}

/// Deletes entries from the queue.
pub fn forget_entries_sql(seqs: &[i64]) -> String {
    format!(
        "DELETE FROM {} WHERE seq = ANY({})",
        names::queue_table(),
        bigint_array(seqs)
    )
}

/// The next `limit` entries up to `last`, and every later entry of the writers' transactions among
/// them (and those in between; a transaction that committed after the drain began is taken whole, not
/// cut at `last`), in order, locked: (seq, table_tag, rows, batch, changed_at, xid). More than `limit`
/// rows means the batch grew, and the entries it took in may belong to further transactions
/// (rest_of_transactions_sql).
///
/// Bounded on both sides: the planner, knowing neither bound, then guesses a narrow range and walks
/// the queue's key from the head. With the upper bound alone it guesses a third of the queue, and past
/// a few hundred thousand entries it scanned and sorted the whole queue for each batch.
pub fn read_entries_sql(last: i64, limit: i64) -> String {
    format!(
        "WITH head AS (SELECT seq, xid FROM {queue} WHERE seq <= {last} ORDER BY seq LIMIT {limit}) \
         SELECT {ENTRY_COLUMNS} FROM {queue} WHERE seq BETWEEN (SELECT min(seq) FROM head) AND \
             greatest((SELECT max(seq) FROM head), \
                      (SELECT max(q.seq) FROM {queue} q WHERE q.xid IN (SELECT xid FROM head))) \
         ORDER BY seq FOR UPDATE",
        queue = names::queue_table(),
        last = Literal(&last.to_string()),
        limit = Literal(&limit.to_string())
    )
}

/// The entries after `after` up to the last entry of the writers' transactions `xids`, in order,
/// locked, as read_entries_sql: a batch read so far ends whole transactions with them.
pub fn rest_of_transactions_sql(after: i64, xids: &[&str]) -> String {
    let xids = format!("{{{}}}", xids.join(","));
    format!(
        "SELECT {ENTRY_COLUMNS} FROM {queue} WHERE seq > {after} AND seq <= \
         (SELECT max(seq) FROM {queue} WHERE xid = ANY({xids}::xid8[])) \
         ORDER BY seq FOR UPDATE",
        queue = names::queue_table(),
        after = Literal(&after.to_string()),
        xids = Literal(&xids),
    )
}

const ENTRY_COLUMNS: &str = "seq, table_tag, rows, batch, changed_at, xid";

/// The sequence number of the first entry of table `tag` in the queue (none when it holds none of that
/// table): one probe of the queue's index by table, however many entries of other tables come first.
pub fn first_queued_of_table_sql(tag: &str) -> String {
    format!(
        "SELECT seq FROM {} WHERE table_tag = {} ORDER BY table_tag, seq LIMIT 1",
        names::queue_table(),
        Literal(tag)
    )
}

/// Whether the queue holds at most `n` entries (reading no more than n + 1).
pub fn queue_holds_at_most_sql(n: i64) -> String {
    format!(
        "SELECT count(*) <= {n} FROM (SELECT FROM {} ORDER BY seq LIMIT {n} + 1) q",
        names::queue_table(),
        n = Literal(&n.to_string())
    )
}

/// Keeps new entries out of the queue until this transaction ends: every insert into it, and the sync
/// flush before it looks whether the queue is empty (flush.sql), takes a lock this one excludes. SHARE,
/// not stronger: a change arriving from the peer still reads the queue FOR SHARE to weigh it.
pub fn close_queue_sql() -> String {
    format!("LOCK TABLE {} IN SHARE MODE", names::queue_table())
}

/// On the peer, first in a replay transaction: forgets the records of entries the origin deleted,
/// and marks (and locks) the origin's progress row.
pub fn replay_start_sql(origin: &str, forgotten: &[i64]) -> String {
    format!(
        "{}INSERT INTO {applied} VALUES ({origin}, now()) ON CONFLICT (origin) DO UPDATE SET applied_at = now()",
        if forgotten.is_empty() {
            String::new()
        } else {
            forget_records_sql(origin, forgotten) + "; "
        },
        applied = names::applied_table(),
        origin = Literal(origin),
    )
}

/// Vacuums the tables rows leave as fast as they come: the queue, its key records, the records of the
/// peer's entries replayed here (crate::runner's Listener::tidy says why, and why these options). One
/// statement each: a node installed by an older version may lack one (its runner replays until `up`
/// upgrades it), and a VACUUM of several tables fails whole.
pub fn vacuum_queue_sql() -> Vec<String> {
    [
        names::queue_table(),
        names::queue_latest_table(),
        names::replayed_table(),
    ]
    .iter()
    .map(|t| format!("VACUUM (SKIP_LOCKED, TRUNCATE false) {t}"))
    .collect()
}

/// On the peer: forgets the records of the origin's entries `seqs`, which the origin has deleted.
pub fn forget_records_sql(origin: &str, seqs: &[i64]) -> String {
    format!(
        "DELETE FROM {} WHERE origin = {} AND seq = ANY({})",
        names::replayed_table(),
        Literal(origin),
        bigint_array(seqs),
    )
}

/// On the peer, last in a replay transaction: records the entries applied, (seq, changed_at) each.
pub fn record_replayed_sql<'a>(
    origin: &str,
    entries: impl Iterator<Item = (i64, &'a str)>,
) -> String {
    let (seqs, times): (Vec<i64>, Vec<&str>) = entries.unzip();
    format!(
        "INSERT INTO {} (origin, seq, changed_at) SELECT {}, seq, changed_at FROM unnest({}, {}) AS r(seq, changed_at)",
        names::replayed_table(),
        Literal(origin),
        bigint_array(&seqs),
        timestamptz_array(times.into_iter()),
    )
}

/// Moves queue entries the peer refused (one writer's transaction) into the set-aside table, with
/// the reason.
pub fn set_aside_sql(seqs: &[i64], reason: &str) -> String {
    format!(
        "INSERT INTO {} (seq, table_tag, rows, batch, changed_at, xid, reason)
         SELECT seq, table_tag, rows, batch, changed_at, xid, {} FROM {} WHERE seq = ANY({})",
        names::set_aside_table(),
        Literal(reason),
        names::queue_table(),
        bigint_array(seqs)
    )
}

/// The state version from which each node carries a mark that `pgtwin run` moves forward (migration
/// 8): a node whose mark falls below what its peer saw of it went back to an earlier state of itself.
pub const MARKS_VERSION: i32 = 8;

/// This node's mark.
pub fn mark_sql() -> String {
    format!("SELECT mark FROM {}", names::link_table())
}

/// The peer's mark as last seen here.
pub fn peer_mark_sql() -> String {
    format!("SELECT peer_mark FROM {}", names::link_table())
}

/// Moves this node's mark forward: past the clock's microseconds (see state migration 8), and past
/// its own last value should the clock step back.
pub fn advance_mark_sql() -> String {
    format!(
        "UPDATE {} SET mark = greatest(mark + 1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)",
        names::link_table()
    )
}

/// Records the peer's mark as seen now.
pub fn record_peer_mark_sql(mark: i64) -> String {
    format!(
        "UPDATE {} SET peer_mark = {}",
        names::link_table(),
        Literal(&mark.to_string())
    )
}

/// Records that the peer went back (its mark, `mark`, is below the one recorded here): its changes
/// are refused here from now on, until a repair. Only while the record still says so: a repair that
/// committed meanwhile forgot it.
pub fn peer_went_back_sql(mark: i64) -> String {
    format!(
        "UPDATE {} SET peer_went_back_at = now() WHERE peer_went_back_at IS NULL AND peer_mark > {}",
        names::link_table(),
        Literal(&mark.to_string())
    )
}

/// The runner's heartbeat; `drained`: its last round found both queues empty. It names this process
/// (host, pid, version) where the state tables have room for it (version 2 on).
pub fn heartbeat_sql(state_version: i32, drained: bool, host: &str) -> String {
    let t = names::runner_table();
    let host = Literal(host);
    let drained = Literal(&drained.to_string());
    if state_version >= 2 {
        format!(
            "INSERT INTO {t} AS r (singleton, seen_at, drained_at, host, pid, version)
             VALUES (true, now(), CASE WHEN {drained}::boolean THEN now() END, {host}, {pid}::integer, {version})
             ON CONFLICT (singleton) DO UPDATE SET seen_at = now(), host = EXCLUDED.host,
                 pid = EXCLUDED.pid, version = EXCLUDED.version,
                 drained_at = coalesce(EXCLUDED.drained_at, r.drained_at)",
            pid = Literal(&std::process::id().to_string()),
            version = Literal(env!("CARGO_PKG_VERSION")),
        )
    } else {
        format!(
            "INSERT INTO {t} AS r (singleton, seen_at, drained_at, host)
             VALUES (true, now(), CASE WHEN {drained}::boolean THEN now() END, {host})
             ON CONFLICT (singleton) DO UPDATE SET seen_at = now(), host = EXCLUDED.host,
                 drained_at = coalesce(EXCLUDED.drained_at, r.drained_at)"
        )
    }
}

/// `'{1,2,3}'::bigint[]`, through the literal quoting like every value in SQL text.
/// `ARRAY[...]::timestamptz[]` of timestamps written as text.
fn timestamptz_array<'a>(values: impl Iterator<Item = &'a str>) -> String {
    format!(
        "ARRAY[{}]::timestamptz[]",
        values
            .map(|v| Literal(v).to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

pub fn bigint_array(values: &[i64]) -> String {
    let text = values
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    format!("{}::bigint[]", Literal(&format!("{{{text}}}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_lists_become_array_literals() {
        assert_eq!(bigint_array(&[]), "'{}'::bigint[]");
        assert_eq!(bigint_array(&[1, -2, 30]), "'{1,-2,30}'::bigint[]");
    }

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, (n, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*n, i as i32 + 1);
        }
    }

    #[test]
    fn migrations_run_only_below_their_number() {
        let sql = migrations_sql();
        for n in 1..=VERSION {
            assert!(sql.contains(&format!("), 0) < {n} THEN")), "{sql}");
        }
        assert!(sql.contains("DO UPDATE SET version = EXCLUDED.version"));
        assert!(sql.contains(&format!("> {VERSION} THEN")));
    }
}
