//! `pgtwin run`: replays each node's queue on its peer, in order, exactly once, and keeps doing so.
//!
//! Each queue entry is a chunk of changes exactly as the capture trigger would have shipped it. The
//! runner applies entries on the peer through the same inbox view the triggers use, and records each
//! applied entry in the peer's `pgtwin.replayed` in the same transaction: a replay cut short at any point
//! (runner killed, peer gone again) is repeated from there, and nothing is applied twice. Only then are
//! the entries deleted from the origin's queue, and once that has committed, their records on the peer;
//! while the queue holds any, the origin's writers keep queueing, so no change overtakes an older one of
//! the same key.
//!
//! Entries are tracked one by one, not by a high-water mark: sequence numbers are taken at insert time,
//! so a transaction can commit entry 101 after entry 102 has been replayed. Per key the order holds: a
//! second writer of a key waits for the first's row lock, so its entry is numbered and committed later.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};

use crate::change;
use crate::config::{Config, Node};
use crate::db::{on_node, pg_message};
use crate::locks::Purpose;
use crate::sql::ident::{Ident, Literal};
use crate::sql::names;
use crate::state;

/// After a drain that applied anything, how long `run` keeps looking every TAIL_POLL; then IDLE_POLL
/// (see run_forever).
const TAIL: Duration = Duration::from_millis(50);
const TAIL_POLL: Duration = Duration::from_millis(2);
/// The pause after a drain that found a few entries (see Replay::until_error).
const GATHER: Duration = Duration::from_millis(2);
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Queue entries replayed per transaction on the peer.
const ENTRIES_PER_TRANSACTION: i64 = 100;
/// Rows deleted from a node's queue tables (its queue, and its records of the peer's entries) between
/// two vacuums of them by the runner (see Listener::tidy).
const VACUUM_EVERY: u64 = 10_000;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    pub entries: u64,
    pub rows: u64,
    /// Rows per table tag, for the metrics.
    pub by_tag: Vec<(String, u64)>,
}

impl Drained {
    fn add(&mut self, other: Drained) {
        self.entries += other.entries;
        self.rows += other.rows;
        for (tag, rows) in other.by_tag {
            self.count(&tag, rows);
        }
    }

    fn count(&mut self, tag: &str, rows: u64) {
        match self.by_tag.iter_mut().find(|(t, _)| t == tag) {
            Some((_, n)) => *n += rows,
            None => self.by_tag.push((tag.to_string(), rows)),
        }
    }
}

/// A node connection that also delivers the queue's notifications.
struct Listener {
    name: String,
    db: Client,
    /// Of pgtwin's state tables there (crate::state): an install not yet upgraded by `up` still replays.
    state_version: i32,
    /// Sync mode: the node's writers queue while its queue holds anything, so its last entries are
    /// replayed with the queue closed to new ones (read_batch), and its writers ship directly again.
    closes_queue: bool,
    /// When the runner vacuums this node's queue tables next (see Listener::tidy).
    vacuum: std::sync::Mutex<VacuumPace>,
}

/// When to vacuum a node's queue tables: after VACUUM_EVERY rows deleted there, and no sooner than nine
/// times the last vacuum's duration after it. A vacuum reads each index of the queue whole, so with a
/// long queue it takes longer and comes less often: at most a tenth of the runner's time, however long
/// the backlog.
#[derive(Debug, Default)]
struct VacuumPace {
    deleted: u64,
    not_before: Option<Instant>,
}

impl VacuumPace {
    /// Counts `deleted` rows; true when a vacuum is due (the count starts again).
    fn due(&mut self, deleted: u64, now: Instant) -> bool {
        self.deleted += deleted;
        if self.deleted < VACUUM_EVERY || self.not_before.is_some_and(|t| now < t) {
            return false;
        }
        self.deleted = 0;
        true
    }

    /// A vacuum that started at `started` ended at `now`.
    fn done(&mut self, started: Instant, now: Instant) {
        self.not_before = Some(now + now.saturating_duration_since(started) * 9);
    }
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
    // Replaying reads and writes pgtwin's tables as this role: never in a schema another role filled.
    let info = crate::catalog::node_info(&node.name, &db).await?;
    crate::state::refuse_newer(&node.name, &info)?;
    // A copy's queue holds changes the live node queued, and replayed, long ago.
    if info.is_copy() {
        bail!(
            "node {}: this database is a copy of one pgtwin was installed in (a restored dump): pgtwin run replays nothing from it; see pgtwin status there",
            node.name
        );
    }
    if !info.foreign_objects.is_empty() {
        bail!(
            "node {}: role {} did not create what pgtwin would use there ({}): pgtwin run will not touch it",
            node.name,
            info.current_user,
            info.foreign_objects.join(", ")
        );
    }
    db.batch_execute(&format!("LISTEN {}", names::QUEUE_CHANNEL))
        .await
        .map_err(on_node(&node.name, "LISTEN"))?;
    Ok(Listener {
        name: node.name.clone(),
        db,
        state_version: info.state_version.unwrap_or(crate::state::UNRECORDED),
        closes_queue: cfg.options.mode == crate::config::Mode::Sync,
        vacuum: Default::default(),
    })
}

impl Listener {
    /// Counts `deleted` rows gone from this node's queue tables, and vacuums them when that is due
    /// (VacuumPace). Entries leave the queue from its head, and until a vacuum every scan that starts
    /// there walks all those deleted since: autovacuum looks at most once a minute, a drain deletes
    /// thousands of rows a second. Best effort, and it never waits: SKIP_LOCKED passes a table another
    /// vacuum holds, and without TRUNCATE it takes no lock that conflicts with the writers' inserts.
    /// Never inside a transaction: both callers run it after their node's commit.
    async fn tidy(&self, deleted: u64) {
        let due = self
            .vacuum
            .lock()
            .is_ok_and(|mut pace| pace.due(deleted, Instant::now()));
        if !due {
            return;
        }
        let started = Instant::now();
        for sql in state::vacuum_queue_sql() {
            if let Err(e) = self.db.batch_execute(&sql).await {
                tracing::debug!(node = %self.name, "vacuuming the queue: {e}");
            }
        }
        if let Ok(mut pace) = self.vacuum.lock() {
            pace.done(started, Instant::now());
        }
    }

    /// Takes the runner lock of this node, unless another runner holds it (crate::locks); returns
    /// the key held.
    async fn try_lock(&self) -> Result<Option<i64>> {
        crate::locks::try_take(&self.name, &self.db, Purpose::Runner).await
    }

    /// Whether this node's runner key is still `held` (a key replaced since, or made by `up`'s
    /// migration where the fixed one was held, is another runner's to take).
    async fn still_locked(&self, held: i64) -> Result<bool> {
        Ok(crate::locks::current_key(&self.name, &self.db, Purpose::Runner).await? == held)
    }
}

/// Takes the runner locks of both nodes, always the first node's first: of two runners, one gets
/// both and the other none (never one each, which would stop both). Their sessions hold them; a
/// runner that dies, even by kill -9, loses them as soon as its server sees the connection close
/// (the session's keepalives bound that when its host is gone: db::setup_session).
async fn lock_pair(a: &Listener, b: &Listener) -> Result<Option<[i64; 2]>> {
    let Some(key_a) = a.try_lock().await? else {
        return Ok(None);
    };
    let Some(key_b) = b.try_lock().await? else {
        crate::locks::release(&a.name, &a.db, key_a).await?;
        return Ok(None);
    };
    Ok(Some([key_a, key_b]))
}

/// How often a runner standing by tries to take over.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Replays `from`'s queue on `to`, up to the last entry queued when it starts (writers that never
/// stop must not keep one direction, or `run --once`, going forever). Stops between two transactions
/// once `stop` says so.
///
/// Each batch is one transaction on each node, in as few round trips as the protocol allows (the lag
/// of async mode is mostly round trips and the two commits): the origin's entries are read and locked,
/// applied and recorded on the peer (commit), then deleted from the origin (commit). A record on the
/// peer goes once its entry's deletion has committed, in the peer's next transaction.
async fn drain(from: &Listener, to: &Listener, stop: &Stop) -> Result<Drained> {
    let mut total = Drained::default();
    let (last, recorded) = tokio::join!(
        async {
            from.db
                .query_one(&state::last_queued_sql(), &[])
                .await
                .map_err(on_node(&from.name, "reading the queue"))
        },
        async {
            to.db
                .query(&state::replayed_from_sql(), &[&from.name])
                .await
                .map_err(on_node(&to.name, "reading replay progress"))
        }
    );
    // Entries applied before (by a run cut short) but still in the origin's queue go with the first
    // batch's transaction there; their records, after it commits.
    let mut applied_earlier: Vec<(i64, String)> =
        recorded?.iter().map(|r| (r.get(0), r.get(1))).collect();
    let Some(last) = last?.get::<_, Option<i64>>(0) else {
        // An empty queue holds none of the recorded entries any more.
        let gone: Vec<i64> = applied_earlier.iter().map(|(seq, _)| *seq).collect();
        forget_records(from, to, &gone).await;
        return Ok(total);
    };
    let mut forgotten: Vec<i64> = Vec::new();
    let mut batch_started = Instant::now();
    while !*stop.borrow() {
        let (entries, full) = match read_batch(from, last, &applied_earlier).await {
            Ok(read) => read,
            Err(e) => {
                let _ = from.db.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        if entries.is_empty() {
            if from.db.batch_execute("COMMIT").await.is_ok() {
                forgotten.extend(applied_earlier.drain(..).map(|(seq, _)| seq));
            }
            break;
        }
        let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
        let done = match apply_batch(from, to, &entries, &forgotten).await {
            Ok(done) => done,
            Err(e) => {
                let _ = from.db.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        // Applied and recorded on the peer; now the origin forgets them. If this fails, the next
        // drain finds them recorded on the peer and deletes them then.
        from.db
            .batch_execute(&format!("{}; COMMIT", state::forget_entries_sql(&seqs)))
            .await
            .map_err(on_node(&from.name, "removing replayed queue entries"))?;
        // The origin deleted its entries; the peer deletes its records of them with its next batch.
        from.tidy(seqs.len() as u64).await;
        to.tidy(seqs.len() as u64).await;
        forgotten = std::mem::take(&mut applied_earlier)
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        forgotten.extend(&seqs);
        tracing::info!(from = %from.name, to = %to.name, entries = done.entries, rows = done.rows, "replayed");
        crate::metrics::replayed(&from.name, &to.name, &done.by_tag);
        total.add(done);
        // A long catch-up is a runner at work, not a runner gone: keep the heartbeat going.
        if batch_started.elapsed() >= HEARTBEAT {
            if let Err(e) = heartbeat(from, to, false).await {
                tracing::debug!("heartbeat: {e:#}");
            }
            batch_started = Instant::now();
        }
        // A short batch was the last one up to `last` (an entry committed out of order since is the
        // next drain's).
        if !full {
            break;
        }
    }
    // The records of what the origin has forgotten by now: the next batch would have taken them
    // along, but a drain's last batch has no next one, and records left behind pile up.
    forget_records(from, to, &forgotten).await;
    Ok(total)
}

/// Deletes `to`'s records of `from`'s entries `seqs`, which `from`'s queue no longer holds. Best
/// effort: a record left behind matches no entry, and the next drain tries again.
async fn forget_records(from: &Listener, to: &Listener, seqs: &[i64]) {
    if seqs.is_empty() {
        return;
    }
    if let Err(e) = to
        .db
        .batch_execute(&state::forget_records_sql(&from.name, seqs))
        .await
    {
        tracing::debug!(from = %from.name, to = %to.name, "forgetting replay records: {e}");
    }
}

/// Set to true on SIGINT/SIGTERM.
type Stop = watch::Receiver<bool>;

/// Opens a transaction on `from`, deletes `applied_earlier` from its queue, and reads the next entries
/// `FOR UPDATE`: a change arriving from the peer that beats one of them waits to rewrite it until they
/// are replayed, and never rewrites the copy being replayed. The batch ends whole writers'
/// transactions (their entries may interleave with others'): a transaction is never split between two
/// replays, so its deferred constraints hold on the peer. Returns the entries and whether the first
/// read was full (more may follow).
async fn read_batch(
    from: &Listener,
    last: i64,
    applied_earlier: &[(i64, String)],
) -> Result<(Vec<Entry>, bool)> {
    let begin = if applied_earlier.is_empty() {
        "BEGIN".to_string()
    } else {
        format!("BEGIN; {}", state::forget_replayed_sql(applied_earlier))
    };
    // Sync mode under load: writers queue as fast as they write while the queue holds anything, so a
    // queue drained batch by batch may never empty. Once what is left fits in one batch, the queue is
    // locked against new entries (each writer's flush takes a lock this one excludes before it looks
    // at the queue), the rest is read and replayed, and the writers, after that short wait, find the
    // queue empty and ship directly.
    let read = if from.closes_queue && queue_is_short(from, &begin).await? {
        format!(
            "{}; {}",
            state::close_queue_sql(),
            state::read_entries_sql(i64::MAX, ENTRIES_PER_TRANSACTION)
        )
    } else if from.closes_queue {
        state::read_entries_sql(last, ENTRIES_PER_TRANSACTION)
    } else {
        format!(
            "{begin}; {}",
            state::read_entries_sql(last, ENTRIES_PER_TRANSACTION)
        )
    };
    let mut entries = read_entries(from, &read).await?;
    let full = entries.len() as i64 >= ENTRIES_PER_TRANSACTION;
    // Read as they were, the head's transactions are whole; entries taken in beyond the head may
    // belong to further transactions.
    let mut grew = entries.len() as i64 > ENTRIES_PER_TRANSACTION;
    while grew {
        let Some(after) = entries.last().map(|e| e.seq) else {
            break;
        };
        let mut xids: Vec<&str> = entries.iter().filter_map(|e| e.xid.as_deref()).collect();
        xids.sort_unstable();
        xids.dedup();
        if xids.is_empty() {
            break;
        }
        let more = read_entries(from, &state::rest_of_transactions_sql(after, &xids)).await?;
        grew = !more.is_empty();
        entries.extend(more);
    }
    Ok((entries, full))
}

/// Opens the batch's transaction (`begin`) and tells whether the queue holds at most one batch.
async fn queue_is_short(from: &Listener, begin: &str) -> Result<bool> {
    let messages = from
        .db
        .simple_query(&format!(
            "{begin}; {}",
            state::queue_holds_at_most_sql(ENTRIES_PER_TRANSACTION)
        ))
        .await
        .map_err(on_node(&from.name, "reading the queue"))?;
    Ok(messages
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("t"))))
}

async fn read_entries(from: &Listener, sql: &str) -> Result<Vec<Entry>> {
    let messages = from
        .db
        .simple_query(sql)
        .await
        .map_err(on_node(&from.name, "reading the queue"))?;
    let mut entries = Vec::new();
    for m in messages {
        if let SimpleQueryMessage::Row(r) = m {
            let field = |i: usize| r.get(i).unwrap_or_default().to_string();
            entries.push(Entry {
                seq: field(0).parse().context("queue seq")?,
                tag: field(1),
                rows: field(2).parse::<u64>().unwrap_or(0),
                batch: field(3),
                changed_at: field(4),
                xid: r.get(5).map(str::to_string),
            });
        }
    }
    Ok(entries)
}

/// Applies a batch on `to` in one transaction, committed before this returns. Joined chunks first;
/// should one meet changes queued on the peer (whose queue may fill at any time), the entries go again
/// one by one, each with its own time for the conflict resolution.
async fn apply_batch(
    from: &Listener,
    to: &Listener,
    entries: &[Entry],
    forgotten: &[i64],
) -> Result<Drained> {
    let mut join = true;
    loop {
        match apply_entries(from, to, entries, forgotten, join).await {
            Ok(done) => return Ok(done),
            Err(e) => {
                let _ = to.db.batch_execute("ROLLBACK").await;
                match refusal(&e) {
                    Refusal::Unjoined if join => join = false,
                    // One entry the peer will never take must not hold up the others: find it.
                    Refusal::Data(_) => {
                        return apply_one_by_one(from, to, entries, forgotten).await
                    }
                    _ => bail!(
                        "node {}: applying queued changes from {}: {}",
                        to.name,
                        from.name,
                        describe(&e)
                    ),
                }
            }
        }
    }
}

/// Why the peer refused a replay, as far as the retry policy goes.
enum Refusal {
    /// A joined chunk met changes queued on the peer: send the entries one by one.
    Unjoined,
    /// The data itself (a constraint, a value the column cannot take, a trigger's exception): that
    /// entry will never be taken, however often it is sent.
    Data(String),
    /// Anything else (connection, lock timeout, pgtwin missing there): try again later.
    Other,
}

fn refusal(e: &anyhow::Error) -> Refusal {
    let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() else {
        return Refusal::Other;
    };
    let Some(code) = pg.code().map(|c| c.code()) else {
        return Refusal::Other;
    };
    let refused_by_its_table = pg
        .as_db_error()
        .is_some_and(|db| db.message().contains(APPLY_REFUSED));
    if code == names::RETRY_UNJOINED_SQLSTATE {
        Refusal::Unjoined
    } else if transient(code) {
        Refusal::Other
    } else if refused_by_its_table
        || code.starts_with("22")
        || code.starts_with("23")
        || code == "P0001"
        || code == "54000"
        || code == names::STALE_UPDATE_SQLSTATE
        || code == names::WENT_BACK_SQLSTATE
    {
        Refusal::Data(pg_message(pg))
    } else {
        Refusal::Other
    }
}

/// What the apply trigger says of any error its table raised while applying a change (its constraint,
/// its trigger's exception whatever the SQLSTATE, a relation missing in that trigger): see apply.sql.
/// An error outside that (the inbox missing, pgtwin's own table gone) is pgtwin's, and waits for `up`.
const APPLY_REFUSED: &str = " refused a change of table ";

/// Errors that pass: a connection lost, a serialization failure or deadlock, resources short, a lock
/// or statement timeout, a server shutting down, an I/O error.
fn transient(code: &str) -> bool {
    ["08", "40", "53", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == "55P03"
}

fn describe(e: &anyhow::Error) -> String {
    match e.downcast_ref::<tokio_postgres::Error>() {
        Some(pg) => pg_message(pg),
        None => format!("{e:#}"),
    }
}

/// Each writer's transaction in a peer transaction of its own, in the order they committed; one the
/// peer refuses for its data is set aside, with the reason, in the origin's transaction that removes
/// the batch from the queue.
async fn apply_one_by_one(
    from: &Listener,
    to: &Listener,
    entries: &[Entry],
    forgotten: &[i64],
) -> Result<Drained> {
    let mut done = Drained::default();
    let mut forgotten = forgotten;
    for transaction in by_transaction(entries) {
        match apply_entries(from, to, &transaction, forgotten, false).await {
            Ok(d) => {
                done.add(d);
                forgotten = &[];
            }
            Err(e) => {
                let _ = to.db.batch_execute("ROLLBACK").await;
                let Refusal::Data(reason) = refusal(&e) else {
                    bail!(
                        "node {}: applying queued changes from {}: {}",
                        to.name,
                        from.name,
                        describe(&e)
                    );
                };
                // A foreign key that refused the order of a queued TRUNCATE's deletions: once more,
                // with the tables the other way round.
                if sqlstate(&e) == Some("23503") {
                    if let Some(reversed) = deletions_reversed(&transaction) {
                        match apply_entries(from, to, &reversed, forgotten, false).await {
                            Ok(d) => {
                                done.add(d);
                                forgotten = &[];
                                continue;
                            }
                            Err(_) => {
                                let _ = to.db.batch_execute("ROLLBACK").await;
                            }
                        }
                    }
                }
                let reason = format!("node {} refused it: {reason}", to.name);
                let seqs: Vec<i64> = transaction.iter().map(|e| e.seq).collect();
                tracing::warn!(from = %from.name, ?seqs, "change set aside: {reason}");
                from.db
                    .batch_execute(&state::set_aside_sql(&seqs, &reason))
                    .await
                    .map_err(on_node(&from.name, "setting a refused change aside"))?;
            }
        }
    }
    Ok(done)
}

/// The SQLSTATE of a server's error.
fn sqlstate(e: &anyhow::Error) -> Option<&str> {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|pg| pg.code())
        .map(|c| c.code())
}

/// A writer's transaction with each run of consecutive deletions of several tables in the reverse
/// order of its tables (each table's entries keeping theirs), or None if it has no such run. A
/// TRUNCATE queued key by key deletes its tables in the order the statement reached them, so a
/// parent named first, or reached first by CASCADE (which adds the tables referencing each table
/// after it), comes before the tables that reference it: a peer key that is neither deferrable nor
/// ON DELETE CASCADE refuses that order, and accepts the reverse.
fn deletions_reversed(transaction: &[Entry]) -> Option<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::with_capacity(transaction.len());
    let mut changed = false;
    let mut i = 0;
    while i < transaction.len() {
        let run_end = transaction[i..]
            .iter()
            .position(|e| !e.batch.starts_with('D'))
            .map_or(transaction.len(), |n| i + n);
        if run_end == i {
            out.push(transaction[i].clone());
            i += 1;
            continue;
        }
        // The run's entries by table, in the order the tables first come.
        let mut blocks: Vec<Vec<Entry>> = Vec::new();
        for e in &transaction[i..run_end] {
            match blocks.iter_mut().find(|b| b[0].tag == e.tag) {
                Some(block) => block.push(e.clone()),
                None => blocks.push(vec![e.clone()]),
            }
        }
        changed |= blocks.len() > 1;
        out.extend(blocks.into_iter().rev().flatten());
        i = run_end;
    }
    changed.then_some(out)
}

/// The entries of each writer's transaction (an entry queued before transactions were recorded is
/// one of its own), ordered by each transaction's last entry: two transactions that changed the same
/// key queued all of the first's entries before the second's change of it, so this is their commit
/// order wherever it matters.
fn by_transaction(entries: &[Entry]) -> Vec<Vec<Entry>> {
    let mut groups: Vec<Vec<Entry>> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for e in entries {
        match e.xid.as_deref().and_then(|x| index.get(x)) {
            Some(&i) => groups[i].push(e.clone()),
            None => {
                if let Some(x) = e.xid.as_deref() {
                    index.insert(x, groups.len());
                }
                groups.push(vec![e.clone()]);
            }
        }
    }
    groups.sort_by_key(|g| g.last().map(|e| e.seq));
    groups
}

/// One transaction on `to`: deletes the records of `forgotten` entries (gone from the origin's queue),
/// applies the entries through the inbox, records them as applied, commits: one round trip, or one per
/// CHUNK_BYTES of changes.
async fn apply_entries(
    from: &Listener,
    to: &Listener,
    entries: &[Entry],
    forgotten: &[i64],
    join: bool,
) -> Result<Drained> {
    // The progress row is locked: should a second runner reach this pair, it waits here. A joined
    // chunk that meets a key queued on the peer is refused there (its entries lost their separate
    // times) and the batch goes again entry by entry (apply_batch).
    let chunks = if join {
        join_entries(entries.to_vec())
    } else {
        entries.iter().map(|e| (e.clone(), false)).collect()
    };
    // The time of the change travels with it (set in the WHERE clause, which runs before the INSTEAD
    // OF trigger): the peer compares it with its own queued changes of the same keys. Typed
    // parameters: no separate prepare, and an error's log line holds the statement, not the rows.
    let apply = |tag: &str| {
        format!(
            "UPDATE {} SET {} = $1 WHERE set_config({}, $2, true) IS NOT NULL \
             AND set_config({}, $3, true) IS NOT NULL",
            names::inbox_of_tag(tag),
            Ident::new(names::BATCH_COLUMN),
            Literal(names::REPLAY_AT_SETTING),
            Literal(names::REPLAY_JOINED_SETTING),
        )
    };
    let statements: Vec<(String, &Entry, &str)> = chunks
        .iter()
        .map(|(chunk, joined)| (apply(&chunk.tag), chunk, if *joined { "on" } else { "off" }))
        .collect();
    let (begin, end) = (
        format!("BEGIN; {}", state::replay_start_sql(&from.name, forgotten)),
        format!(
            "{}; COMMIT",
            state::record_replayed_sql(
                &from.name,
                entries.iter().map(|e| (e.seq, e.changed_at.as_str()))
            )
        ),
    );
    // The whole transaction in one round trip, or one per CHUNK_BYTES of changes.
    let mut group: Vec<Statement<'_>> = vec![Box::pin(to.db.batch_execute(&begin))];
    let mut bytes = 0;
    for (sql, chunk, joined) in &statements {
        bytes += chunk.batch.len();
        group.push(Box::pin(async move {
            let params: [(&(dyn ToSql + Sync), Type); 3] = [
                (&chunk.batch, Type::TEXT),
                (&chunk.changed_at, Type::TEXT),
                (joined, Type::TEXT),
            ];
            to.db.execute_typed(sql, &params).await.map(|_| ())
        }));
        if bytes as i64 >= change::CHUNK_BYTES {
            pipelined(std::mem::take(&mut group)).await?;
            bytes = 0;
        }
    }
    group.push(Box::pin(to.db.batch_execute(&end)));
    pipelined(group).await?;
    let mut done = Drained::default();
    for (chunk, _) in &chunks {
        done.entries += 1;
        done.rows += chunk.rows;
        done.count(&chunk.tag, chunk.rows);
    }
    Ok(done)
}

/// A statement sent to the peer, to be awaited later.
type Statement<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a>,
>;

/// Runs statements pipelined: each is polled once, in order, before any is awaited (tokio-postgres
/// sends a statement when its future is first polled), so they reach the server in this order and in
/// one round trip; then each is awaited in turn. The server runs them in order; after one fails, those
/// of the same transaction fail as "transaction aborted", so the first error is the one returned.
async fn pipelined(statements: Vec<Statement<'_>>) -> Result<(), tokio_postgres::Error> {
    let mut statements: Vec<_> = statements
        .into_iter()
        .map(|s| Box::pin(futures_util::future::maybe_done(s)))
        .collect();
    futures_util::future::poll_fn(|cx| {
        for s in &mut statements {
            let _ = std::future::Future::poll(s.as_mut(), cx);
        }
        std::task::Poll::Ready(())
    })
    .await;
    let mut first_error = None;
    for s in &mut statements {
        s.as_mut().await;
        if let Some(Err(e)) = s.as_mut().take_output() {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// One queue entry: a chunk of changes of one table (crate::change).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    seq: i64,
    tag: String,
    rows: u64,
    batch: String,
    changed_at: String,
    /// The writer's transaction (none for entries queued by pgtwin before it recorded them).
    xid: Option<String>,
}

/// Joins runs of entries of the same table, op and columns (crate::change::join) into chunks of up to
/// change::JOINED_ROWS rows: fewer, larger set-wise applies on the peer. Order is kept; truncates are left
/// alone. A joined chunk carries the time of its last entry, and says it was joined.
fn join_entries(entries: Vec<Entry>) -> Vec<(Entry, bool)> {
    let mut out: Vec<(Entry, bool)> = Vec::new();
    for e in entries {
        if let Some((last, joined)) = out.last_mut() {
            if last.tag == e.tag
                && last.rows + e.rows <= change::JOINED_ROWS
                && last.batch.len() + e.batch.len() <= change::CHUNK_BYTES as usize
                && change::append(&mut last.batch, &e.batch)
            {
                last.rows += e.rows;
                last.changed_at = e.changed_at;
                *joined = true;
                continue;
            }
        }
        out.push((e, false));
    }
    out
}

/// `run --once`: drains both queues and returns; either node unreachable is an error (nothing can be
/// replayed without both).
pub async fn run_once(cfg: &Config) -> Result<[Drained; 2]> {
    let (wake, _) = mpsc::unbounded_channel();
    let (a, b) = tokio::join!(
        connect_listening(cfg, &cfg.nodes[0], wake.clone()),
        connect_listening(cfg, &cfg.nodes[1], wake)
    );
    let (a, b) = (a?, b?);
    if lock_pair(&a, &b).await?.is_none() {
        bail!(
            "another pgtwin run is replaying between {} and {}: it drains the queues; stop it first to drain them here",
            a.name,
            b.name
        );
    }
    // A node gone back is found before its queue is replayed.
    advance_marks(&a, &b).await?;
    let (_keep, never) = watch::channel(false);
    let ab = drain(&a, &b, &never).await.context("replaying")?;
    let ba = drain(&b, &a, &never).await.context("replaying")?;
    Ok([ab, ba])
}

/// Backoff after an error of any kind (connecting, replaying, pgtwin removed): doubles up to a cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Logs a problem once per change of state, not once per try: the same error again is debug output.
#[derive(Default)]
struct Reporter {
    last: Option<String>,
}

impl Reporter {
    fn problem(&mut self, what: &str, retry_in: Duration) {
        if self.last.as_deref() == Some(what) {
            tracing::debug!("still: {what}; retrying in {retry_in:?}");
        } else {
            tracing::warn!("{what}; retrying in {retry_in:?} (and with backoff after that)");
            self.last = Some(what.to_string());
        }
    }

    fn recovered(&mut self) {
        if self.last.take().is_some() {
            tracing::warn!("recovered: replaying again");
        }
    }
}

/// Whether pgtwin is installed on a node (its queue exists); None when the node cannot be asked.
async fn installed(cfg: &Config, node: &Node) -> Option<bool> {
    let timeout = Duration::from_secs(cfg.options.connect_timeout_s.into());
    let db = crate::db::connect(&node.name, &node.conn, timeout)
        .await
        .ok()?;
    state::is_installed(&db).await.ok()
}

/// `run`: drains, then waits for new queue entries (LISTEN/NOTIFY) and drains again; after any error
/// backs off (capped) and tries again, logging each new state once; returns on SIGINT/SIGTERM between
/// two transactions, and with an error once pgtwin is removed from both nodes.
pub async fn run_forever(cfg: &Config) -> Result<()> {
    let mut backoff = BACKOFF_FIRST;
    let mut report = Reporter::default();
    let (stop_tx, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    while !*stop.borrow() {
        let (wake_tx, mut wake) = mpsc::unbounded_channel();
        let connected = tokio::join!(
            connect_listening(cfg, &cfg.nodes[0], wake_tx.clone()),
            connect_listening(cfg, &cfg.nodes[1], wake_tx)
        );
        let problem = match connected {
            (Ok(a), Ok(b)) => match stand_by(&a, &b, &mut wake, &mut stop).await {
                Ok(None) => return Ok(()),
                // Both connections (and any lock taken) go before the backoff.
                Err(e) => format!("{e:#}"),
                Ok(Some(held)) => {
                    // A change of state, logged like the others (as JSON with --log-format json).
                    tracing::warn!("replaying queues between {} and {}", a.name, b.name);
                    let mut replay = Replay {
                        a: &a,
                        b: &b,
                        held,
                        wake: &mut wake,
                        stop: &mut stop,
                        report: &mut report,
                        backoff: &mut backoff,
                    };
                    match replay.until_error().await {
                        None => return Ok(()),
                        Some(e) => e,
                    }
                }
            },
            (a, b) => {
                let e = a.err().or(b.err()).expect("one failed");
                format!("{e:#}")
            }
        };
        // Removed from both nodes (`pgtwin down`): nothing will ever be replayed again.
        let (a, b) = tokio::join!(installed(cfg, &cfg.nodes[0]), installed(cfg, &cfg.nodes[1]));
        if a == Some(false) && b == Some(false) {
            bail!(
                "pgtwin is not installed on node {} nor on node {} (removed by pgtwin down?): nothing to replay; run pgtwin up, then start pgtwin run again",
                cfg.nodes[0].name,
                cfg.nodes[1].name
            );
        }
        crate::metrics::active(false);
        crate::metrics::error();
        report.problem(&problem, backoff);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return Ok(()),
        }
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
    Ok(())
}

/// Waits, connected, until this runner holds both nodes' runner locks (their keys) or is told to
/// stop (None). Another runner replaying is a state, logged once: this one takes over when it stops.
async fn stand_by(
    a: &Listener,
    b: &Listener,
    wake: &mut mpsc::UnboundedReceiver<()>,
    stop: &mut Stop,
) -> Result<Option<[i64; 2]>> {
    let mut said = false;
    loop {
        if let Some(held) = lock_pair(a, b).await? {
            crate::metrics::active(true);
            if said {
                tracing::warn!("the other pgtwin run is gone: taking over");
            }
            return Ok(Some(held));
        }
        if !said {
            tracing::warn!(
                "standing by: another pgtwin run replays between {} and {}; taking over when it stops",
                a.name,
                b.name
            );
            said = true;
        }
        // The queues' notifications are the active runner's business.
        while wake.try_recv().is_ok() {}
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = stop.changed() => return Ok(None),
        }
    }
}

/// How often `run` writes its heartbeat (status calls a runner unseen for a minute gone).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Writes the heartbeat on both nodes; `drained`: the last round found both queues empty. It names this
/// process (host, pid, version) where the state tables have room for it (state version 2).
async fn heartbeat(a: &Listener, b: &Listener, drained: bool) -> Result<()> {
    // HOSTNAME is a shell's variable, which a service does not get.
    let host = whoami::hostname().unwrap_or_default();
    for l in [a, b] {
        let sql = state::heartbeat_sql(l.state_version, drained, &host);
        l.db.batch_execute(&sql)
            .await
            .map_err(on_node(&l.name, "writing the heartbeat"))?;
    }
    advance_marks(a, b).await
}

/// Moves both nodes' marks forward and records each on the other node. First, a node whose mark is
/// below what its peer saw of it went back to an earlier state of itself (a backup restored there, or
/// a failover to a replica that lagged): the peer is told to refuse its changes from now on (they
/// would undo the peer's newer rows); its queued ones are then set aside like any refused change, and
/// its writers queue, until a repair.
async fn advance_marks(a: &Listener, b: &Listener) -> Result<()> {
    if a.state_version < state::MARKS_VERSION || b.state_version < state::MARKS_VERSION {
        return Ok(());
    }
    // What each node recorded of the other first, then the marks themselves: a mark moved forward
    // between the two reads (by another runner, for an instant after a takeover) then reads as
    // ahead, never behind.
    let saw = [
        read(a, state::peer_mark_sql(), "reading the marks").await?,
        read(b, state::peer_mark_sql(), "reading the marks").await?,
    ];
    let marks = [
        read(a, state::mark_sql(), "reading the marks").await?,
        read(b, state::mark_sql(), "reading the marks").await?,
    ];
    for (i, (node, peer)) in [(a, b), (b, a)].into_iter().enumerate() {
        if marks[i] >= saw[1 - i] {
            continue;
        }
        let newly = peer
            .db
            .execute(&state::peer_went_back_sql(marks[i]), &[])
            .await
            .map_err(on_node(&peer.name, "recording that its peer went back"))?;
        if newly > 0 {
            tracing::error!(
                "node {} went back to an earlier state of itself (restored from a backup?): node {} saw it further on; node {} refuses its changes until pgtwin repair --mirror {}",
                node.name,
                peer.name,
                peer.name,
                peer.name
            );
        }
    }
    // Moved forward durably whatever synchronous_commit the server has: a mark lost in a crash would
    // read as a node gone back. (Where a synchronous standby is required and away, this waits for it,
    // as every commit there does.)
    let mut moved = [0i64; 2];
    for (l, mark) in [a, b].into_iter().zip(moved.iter_mut()) {
        l.db.batch_execute(&format!(
            "BEGIN; SET LOCAL synchronous_commit = on; {}; COMMIT",
            state::advance_mark_sql()
        ))
        .await
        .map_err(on_node(&l.name, "moving its mark forward"))?;
        *mark = read(l, state::mark_sql(), "moving its mark forward").await?;
    }
    for (l, peer_mark) in [(a, moved[1]), (b, moved[0])] {
        l.db.batch_execute(&state::record_peer_mark_sql(peer_mark))
            .await
            .map_err(on_node(&l.name, "recording its peer's mark"))?;
    }
    Ok(())
}

/// The one bigint a query of pgtwin's state returns.
async fn read(l: &Listener, sql: String, what: &'static str) -> Result<i64> {
    let row =
        l.db.query_one(&sql, &[])
            .await
            .map_err(on_node(&l.name, what))?;
    Ok(row.get(0))
}

/// A runner replaying, with the lock keys it holds on both nodes.
struct Replay<'a> {
    a: &'a Listener,
    b: &'a Listener,
    held: [i64; 2],
    wake: &'a mut mpsc::UnboundedReceiver<()>,
    stop: &'a mut Stop,
    report: &'a mut Reporter,
    backoff: &'a mut Duration,
}

impl Replay<'_> {
    /// Drains both directions and waits for more, until an error (returned as text) or a stop (None).
    async fn until_error(&mut self) -> Option<String> {
        let (a, b) = (self.a, self.b);
        let mut last_applied = Instant::now();
        let mut last_heartbeat: Option<Instant> = None;
        // A node gone back is found before its queue is replayed.
        if let Err(e) = advance_marks(a, b).await {
            return Some(format!("{e:#}"));
        }
        loop {
            let result = async {
                let ab = drain(a, b, self.stop).await?;
                let ba = drain(b, a, self.stop).await?;
                Ok::<_, anyhow::Error>((ab.entries + ba.entries, ab.rows + ba.rows))
            }
            .await;
            let (applied, rows) = match result {
                Ok(n) => n,
                Err(e) => return Some(format!("{e:#}")),
            };
            // A full round without an error: the next problem starts its backoff afresh.
            self.report.recovered();
            *self.backoff = BACKOFF_FIRST;
            if last_heartbeat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
                // Still this runner's turn? Two runners must never replay at once.
                match (a.still_locked(self.held[0]).await, b.still_locked(self.held[1]).await) {
                (Ok(true), Ok(true)) => {}
                (Err(e), _) | (_, Err(e)) => return Some(format!("{e:#}")),
                _ => {
                    return Some(
                        "pgtwin's runner lock has a new key (an upgrade, or another role held it): standing by again".into(),
                    )
                }
            }
                // Not a reason to stop replaying (an install older than this binary has no heartbeat
                // table until its next `up`).
                if let Err(e) = heartbeat(a, b, applied == 0).await {
                    tracing::debug!("heartbeat: {e:#}");
                }
                last_heartbeat = Some(Instant::now());
            }
            // Writers notify only when they find the queue empty (NOTIFY serializes the commits of
            // all notifying transactions). One that found entries a drain was busy with sends none,
            // and may commit just after the runner last looked: so after a drain that applied
            // anything, look again at once, then every few milliseconds for a short while, and only
            // then wait for a notification (or a second: a peer coming back sends none, nor does a
            // writer that committed long after it queued).
            if applied > 0 {
                last_applied = Instant::now();
                // Under a fast stream of small transactions each drain finds a few entries: a short
                // pause lets the next ones gather, so the runner's own work on the writers' node (a
                // transaction that reads and deletes what it replayed) stays a fraction of theirs, for
                // GATHER of lag. A single change (a slow stream) or a backlog (full batches) goes on
                // without pause.
                if (2..ENTRIES_PER_TRANSACTION as u64).contains(&rows) {
                    tokio::select! {
                        _ = tokio::time::sleep(GATHER) => {}
                        _ = self.stop.changed() => return None,
                    }
                }
                while self.wake.try_recv().is_ok() {}
                continue;
            }
            let wait = if last_applied.elapsed() < TAIL {
                TAIL_POLL
            } else {
                IDLE_POLL
            };
            tokio::select! {
                _ = self.wake.recv() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.changed() => return None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: &str, rows: u64, batch: &str, at: &str) -> Entry {
        Entry {
            seq: 0,
            tag: tag.into(),
            rows,
            batch: batch.into(),
            changed_at: at.into(),
            xid: None,
        }
    }

    #[test]
    fn the_queue_is_vacuumed_every_so_many_rows_and_at_most_a_tenth_of_the_time() {
        let mut pace = VacuumPace::default();
        let t0 = Instant::now();
        assert!(!pace.due(VACUUM_EVERY - 1, t0));
        assert!(pace.due(1, t0));
        // The count starts again.
        assert!(!pace.due(VACUUM_EVERY - 1, t0));
        // A vacuum of 1 s: the next one waits 9 s more, however many rows left meanwhile.
        pace.done(t0, t0 + Duration::from_secs(1));
        assert!(!pace.due(10 * VACUUM_EVERY, t0 + Duration::from_secs(9)));
        assert!(pace.due(0, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn the_apply_names_its_refusals_as_the_runner_reads_them() {
        let apply = include_str!("sql/templates/apply.sql");
        assert!(apply.contains(&format!("'pgtwin: node %{APPLY_REFUSED}% from node %: %'")));
    }

    #[test]
    fn transactions_go_whole_in_the_order_of_their_last_entry() {
        let e = |seq: i64, xid: Option<&str>| Entry {
            seq,
            xid: xid.map(str::to_string),
            ..entry("t", 1, "x", "")
        };
        // x: 1 and 3 (y committed in between); an entry without a transaction stays alone.
        let entries = [
            e(1, Some("x")),
            e(2, Some("y")),
            e(3, Some("x")),
            e(4, None),
            e(5, Some("z")),
            e(6, Some("z")),
        ];
        let groups: Vec<Vec<i64>> = by_transaction(&entries)
            .iter()
            .map(|g| g.iter().map(|e| e.seq).collect())
            .collect();
        assert_eq!(groups, vec![vec![2], vec![1, 3], vec![4], vec![5, 6]]);
    }

    #[test]
    fn a_run_of_deletions_of_several_tables_is_reversed_table_by_table() {
        let e = |seq: i64, tag: &str, batch: &str| Entry {
            seq,
            ..entry(tag, 1, batch, "")
        };
        let transaction = [
            e(1, "customers", "U{}"),
            e(2, "customers", "D{}"),
            e(3, "customers", "D{}"),
            e(4, "orders", "D{}"),
            e(5, "lines", "D{}"),
            e(6, "orders", "I{}"),
            e(7, "orders", "D{}"),
        ];
        let order: Vec<i64> = deletions_reversed(&transaction)
            .expect("a run of several tables")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(order, [1, 5, 4, 2, 3, 6, 7]);
        // Deletions of one table alone: nothing to reverse.
        assert!(deletions_reversed(&transaction[..3]).is_none());
    }

    fn up(ids: &[i64]) -> String {
        let rows: Vec<String> = ids.iter().map(|i| format!(r#"{{"id":{i}}}"#)).collect();
        format!(r#"U{{"columns":["id"],"rows":[{}]}}"#, rows.join(","))
    }

    fn del(ids: &[i64]) -> String {
        up(ids).replacen('U', "D", 1)
    }

    #[test]
    fn runs_of_one_table_and_op_join_in_order() {
        let joined = join_entries(vec![
            entry("t", 1, &up(&[1]), "1"),
            entry("t", 2, &up(&[2, 3]), "2"),
            entry("t", 1, &del(&[1]), "3"),
            entry("t", 1, "T", "4"),
            entry("t", 1, &up(&[4]), "5"),
            entry("u", 1, &up(&[9]), "6"),
        ]);
        assert_eq!(
            joined,
            vec![
                (entry("t", 3, &up(&[1, 2, 3]), "2"), true),
                (entry("t", 1, &del(&[1]), "3"), false),
                (entry("t", 1, "T", "4"), false),
                (entry("t", 1, &up(&[4]), "5"), false),
                (entry("u", 1, &up(&[9]), "6"), false),
            ]
        );
    }

    #[test]
    fn full_chunks_stay_apart() {
        let big = vec![
            entry("t", change::JOINED_ROWS, &up(&[1]), "1"),
            entry("t", 1, &up(&[2]), "2"),
        ];
        assert_eq!(join_entries(big).len(), 2);
    }

    #[test]
    fn entries_written_before_and_after_a_migration_stay_apart() {
        let widened = r#"U{"columns":["id","note"],"rows":[{"id":2,"note":null}]}"#;
        let entries = vec![entry("t", 1, &up(&[1]), "1"), entry("t", 1, widened, "2")];
        assert_eq!(join_entries(entries).len(), 2);
    }
}
