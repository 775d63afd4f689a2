//! The chaos soak: writers at full speed on both nodes while the servers are killed, frozen and
//! restarted and `pgtwin run` is killed, then a comparison of both nodes, in plain SQL, with what each
//! writer saw acknowledged. `pgtwin-soak` runs it for minutes; a short version runs in the tests.
//!
//! The rules it checks:
//! - **Divergence**: after the faults stop and the queues drain, every row is the same on both nodes,
//!   but for a row that holds, on one node only, a write its own node's writer saw fail (a value or
//!   deletion unique to that attempt): that node died in the window postgres_fdw leaves between the
//!   peer's commit and its own (no two-phase commit; README, Concurrency and failure). Those rows are
//!   reported apart, as in doubt, and `check`/`repair` settle them.
//! - **Lost writes**: a row whose INSERT was acknowledged exists on both nodes with the inserted
//!   values, unless its DELETE was acknowledged (only the inserting writer updates or deletes it);
//!   a row whose DELETE was acknowledged exists on neither; a hot row (updated by writers on both
//!   nodes) holds the value of an acknowledged UPDATE of it that no other acknowledged UPDATE of it
//!   follows (one sent after the first was acknowledged must win: the last writer wins, by lock order
//!   while both nodes are up, by transaction time where one of them queued).
//! - **Unexpected errors**: any error but those faults cause (connections lost, servers shutting
//!   down, lock and statement timeouts, deadlocks across the servers, serialization failures).
//! - **Hangs**: a statement that took longer than HANG.
//!
//! Writes acknowledged means: the statement (each in its own transaction) returned success.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_postgres::{Client, NoTls};

use crate::localpg::LocalServer;

/// A statement slower than this is a hang.
pub const HANG: Duration = Duration::from_secs(15);
/// Hot rows: keys both nodes' writers update (negative, outside every sequence's range).
const HOT_ROWS: i64 = 20;
const DB: &str = "soak";

pub struct Options {
    pub mode: String,
    pub duration: Duration,
    pub writers_per_node: usize,
    /// How long the queues may take to drain once the faults stop (longer is a failure).
    pub drain_limit: Duration,
    /// A pause after each statement of a writer (None: full speed).
    pub pace: Option<Duration>,
    /// Time between two faults.
    pub fault_every: Duration,
    /// Where the servers live.
    pub dir: PathBuf,
    /// `pgtwin run` for a config file: the command to start (killed and restarted by the soak).
    pub runner: Box<dyn Fn(&Path) -> Command + Send + Sync>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub mode: String,
    pub seconds: f64,
    /// Acknowledged transactions per node, and per second per node.
    pub acknowledged: [u64; 2],
    pub tps: [f64; 2],
    pub faults: Vec<String>,
    pub divergent_rows: usize,
    /// Rows that differ only by a write whose node died in the commit window (see the rules above).
    pub in_doubt_rows: Vec<String>,
    pub lost_writes: Vec<String>,
    pub unexpected_errors: BTreeMap<String, u64>,
    pub expected_errors: u64,
    pub hangs: u64,
    pub longest_statement_ms: u64,
    /// Changes the peer refused, set aside (each would be a difference `repair` settles).
    pub set_aside: i64,
    /// How long the queues took to drain once the faults stopped, and the entries they held then.
    pub drain_s: f64,
    pub queued_when_faults_stopped: i64,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.divergent_rows == 0
            && self.lost_writes.is_empty()
            && self.unexpected_errors.is_empty()
            && self.hangs == 0
            && self.set_aside == 0
    }
}

/// A node's table at the end: id → (v, note).
type Rows = BTreeMap<i64, (Option<i64>, Option<String>)>;

/// What one writer saw acknowledged.
#[derive(Default)]
struct Acks {
    inserted: BTreeMap<i64, i64>,
    deleted: BTreeSet<i64>,
    /// Writes that failed: the values inserted or set (each unique to its attempt), the keys deleted.
    failed: Failed,
    hot: BTreeMap<i64, Vec<HotWrite>>,
    transactions: u64,
    expected_errors: u64,
    unexpected: BTreeMap<String, u64>,
    hangs: u64,
    longest: Duration,
}

/// Writes a writer saw fail, whose outcome on the peer is unknown.
#[derive(Default, Clone)]
struct Failed {
    values: BTreeSet<i64>,
    deletes: BTreeSet<i64>,
}

/// The write a writer is attempting, recorded as failed if it does.
enum Attempt {
    Value(i64),
    Delete(i64),
}

/// Sorts the rows that differ between the two nodes' tables into those a failed write of one node,
/// present on the other only, explains (the commit window: described each) and the others (counted).
fn divergence(tables: &[Rows], failed: &[Failed; 2]) -> (usize, Vec<String>) {
    let keys: BTreeSet<i64> = tables.iter().flat_map(|t| t.keys().copied()).collect();
    let mut unexplained = 0;
    let mut in_doubt = Vec::new();
    for k in keys {
        let (a, b) = (tables[0].get(&k), tables[1].get(&k));
        if a == b {
            continue;
        }
        // Node n's failed write, found on its peer alone.
        let explained = (0..2).find(|&n| {
            let (own, peer) = if n == 0 { (a, b) } else { (b, a) };
            match (own, peer) {
                (_, Some((Some(v), _))) => failed[n].values.contains(v),
                (Some(_), None) => failed[n].deletes.contains(&k),
                _ => false,
            }
        });
        match explained {
            Some(n) => in_doubt.push(format!(
                "row {k}: node {}'s failed write is on node {} only ({a:?} against {b:?})",
                ["a", "b"][n],
                ["b", "a"][n]
            )),
            None => unexplained += 1,
        }
    }
    (unexplained, in_doubt)
}

/// An acknowledged update of a hot row: its value (unique to it), when it was sent and when it was
/// acknowledged (one clock for every writer).
#[derive(Clone, Copy)]
struct HotWrite {
    value: i64,
    sent: Instant,
    acked: Instant,
}

/// A small deterministic generator (xorshift64*): each writer its own sequence.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Errors the faults cause, which an application retries.
fn expected(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        // The connection itself: lost, refused, closed.
        return true;
    };
    let code = db.code().code();
    code.starts_with("08")
        || code.starts_with("57P")
        || matches!(code, "55P03" | "40P01" | "40001" | "57014" | "53300")
        // postgres_fdw reports a peer lost mid-statement with its own text.
        || db.message().contains("could not connect to server")
        || db.message().contains("connection to server")
        || db.message().contains("server closed the connection")
        || db.message().contains("lost connection")
}

async fn connect(server: &LocalServer) -> Result<Client> {
    let (c, conn) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(&server.url("postgres", None, DB), NoTls),
    )
    .await
    .context("connect timeout")??;
    tokio::spawn(conn);
    c.batch_execute("SET statement_timeout = '20s'").await?;
    Ok(c)
}

/// One writer on one node until `stop`: single and multi-row inserts, updates of the hot rows (in
/// either order), deletes of its own rows, each statement its own transaction.
async fn writer(
    server: Arc<LocalServer>,
    id: u64,
    pace: Option<Duration>,
    stop: Arc<AtomicBool>,
) -> Acks {
    let mut acks = Acks::default();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1).wrapping_mul(0x1000_0000_01B3));
    let mut db: Option<Client> = None;
    let mut value = (id as i64) * 1_000_000_000;
    let mut own: Vec<i64> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let client = match &db {
            Some(c) if !c.is_closed() => c,
            _ => match connect(&server).await {
                Ok(c) => {
                    db = Some(c);
                    db.as_ref().expect("just set")
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        value += 1;
        let started = Instant::now();
        let pick = rng.below(100);
        let mut attempt = Attempt::Value(value);
        let result: Result<(), tokio_postgres::Error> = async {
            if pick < 40 {
                let row = client
                    .query_one(
                        "INSERT INTO items (v, note) VALUES ($1, 'one') RETURNING id",
                        &[&value],
                    )
                    .await?;
                let id: i64 = row.get(0);
                acks.inserted.insert(id, value);
                own.push(id);
            } else if pick < 50 {
                let rows = client
                    .query(
                        "INSERT INTO items (v, note) SELECT $1, 'many' FROM generate_series(1, 5) RETURNING id",
                        &[&value],
                    )
                    .await?;
                for r in rows {
                    let id: i64 = r.get(0);
                    acks.inserted.insert(id, value);
                    own.push(id);
                }
            } else if pick < 80 {
                let key = -1 - rng.below(HOT_ROWS as u64) as i64;
                if client
                    .execute("UPDATE items SET v = $1 WHERE id = $2", &[&value, &key])
                    .await?
                    == 1
                {
                    let acked = Instant::now();
                    acks.hot.entry(key).or_default().push(HotWrite {
                        value,
                        sent: started,
                        acked,
                    });
                }
            } else if pick < 90 {
                // Five hot rows at once, in one order or the other.
                let order = if rng.below(2) == 0 { "ASC" } else { "DESC" };
                let keys: Vec<i64> = client
                    .query(
                        &format!(
                            "WITH locked AS (SELECT id FROM items WHERE id BETWEEN -5 AND -1 ORDER BY id {order} FOR UPDATE)
                             UPDATE items SET v = $1 FROM locked WHERE items.id = locked.id RETURNING items.id"
                        ),
                        &[&value],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let acked = Instant::now();
                for k in keys {
                    acks.hot.entry(k).or_default().push(HotWrite {
                        value,
                        sent: started,
                        acked,
                    });
                }
            } else if let Some(i) = (!own.is_empty()).then(|| rng.below(own.len() as u64) as usize) {
                let key = own.swap_remove(i);
                attempt = Attempt::Delete(key);
                if client
                    .execute("DELETE FROM items WHERE id = $1", &[&key])
                    .await?
                    == 1
                {
                    acks.deleted.insert(key);
                }
            }
            Ok(())
        }
        .await;
        let took = started.elapsed();
        if let Some(pause) = pace {
            tokio::time::sleep(pause).await;
        }
        acks.longest = acks.longest.max(took);
        if took > HANG {
            acks.hangs += 1;
        }
        let closed = client.is_closed();
        match result {
            Ok(()) => acks.transactions += 1,
            Err(e) if expected(&e) => {
                acks.expected_errors += 1;
                match attempt {
                    Attempt::Value(v) => acks.failed.values.insert(v),
                    Attempt::Delete(k) => acks.failed.deletes.insert(k),
                };
                if closed {
                    db = None;
                }
            }
            Err(e) => {
                let text = match e.as_db_error() {
                    Some(d) => format!("{}: {}", d.code().code(), d.message()),
                    None => e.to_string(),
                };
                *acks.unexpected.entry(text).or_default() += 1;
            }
        }
    }
    acks
}

/// A node's processes, postmaster first (for SIGSTOP/SIGCONT of the whole server).
fn server_pids(server: &LocalServer) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(server.data_dir.join("postmaster.pid")) else {
        return Vec::new();
    };
    let Some(pid) = text.lines().next().map(str::trim).map(str::to_string) else {
        return Vec::new();
    };
    let children = Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().map(str::to_string))
        .collect()
}

fn signal(pids: &[String], sig: &str) {
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .args(pids)
            .status();
    }
}

struct Runner {
    child: Option<Child>,
}

impl Runner {
    /// Its log goes to runner.log beside the config.
    fn start(opts: &Options, config: &Path) -> Result<Runner> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.with_file_name("runner.log"))?;
        let child = (opts.runner)(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting pgtwin run")?;
        Ok(Runner { child: Some(child) })
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Table shapes that differ between the nodes as real ones do: another column order, a dropped
/// column's gap, a column on one side only.
const TABLE_A: &str = "CREATE TABLE items (id bigserial PRIMARY KEY, v bigint, note text)";
const TABLE_B: &str = "CREATE TABLE items (note text, gone int, id bigserial PRIMARY KEY, only_b text DEFAULT 'b', v bigint);
     ALTER TABLE items DROP COLUMN gone";

/// Runs one soak and reports it; the servers are stopped at the end.
pub async fn run(opts: Options) -> Result<Report> {
    let settings = ["fsync = off", "max_connections = 200"];
    let servers = [
        Arc::new(LocalServer::start(&opts.dir.join("a"), &settings)?),
        Arc::new(LocalServer::start(&opts.dir.join("b"), &settings)?),
    ];
    for s in &servers {
        s.stop_when_process_ends(std::process::id())?;
    }
    let result = soak(&opts, &servers).await;
    for s in &servers {
        signal(&server_pids(s), "CONT");
        let _ = s.stop(false);
    }
    result
}

async fn soak(opts: &Options, servers: &[Arc<LocalServer>; 2]) -> Result<Report> {
    for (s, table) in servers.iter().zip([TABLE_A, TABLE_B]) {
        s.connect("postgres")
            .await?
            .batch_execute(&format!("CREATE DATABASE {DB}"))
            .await?;
        let db = s.connect(DB).await?;
        db.batch_execute(table).await?;
    }
    servers[0]
        .connect(DB)
        .await?
        .batch_execute(&format!(
            "INSERT INTO items (id, v, note) SELECT -g, 0, 'hot' FROM generate_series(1, {HOT_ROWS}) g"
        ))
        .await?;
    let config = opts.dir.join("pgtwin.toml");
    std::fs::write(
        &config,
        format!(
            "[nodes.a]\nurl = \"{}\"\n[nodes.b]\nurl = \"{}\"\n[[tables]]\nname = \"items\"\n[options]\nmode = \"{}\"\nconnect_timeout_s = 2\n",
            servers[0].url("postgres", None, DB),
            servers[1].url("postgres", None, DB),
            opts.mode
        ),
    )?;
    let cfg = crate::config::Config::load(&config)?;
    crate::install::up(&cfg, false, false).await?;
    let mut runner = Runner::start(opts, &config)?;

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut writers = Vec::new();
    for (n, s) in servers.iter().enumerate() {
        for w in 0..opts.writers_per_node {
            let id = (n * opts.writers_per_node + w) as u64 + 1;
            writers.push((
                n,
                tokio::spawn(writer(s.clone(), id, opts.pace, stop.clone())),
            ));
        }
    }
    let faults = Arc::new(Mutex::new(Vec::new()));
    let mut rng = Rng(0xC0FF_EE00_D15E_A5E5);
    while started.elapsed() < opts.duration {
        tokio::time::sleep(opts.fault_every).await;
        if started.elapsed() >= opts.duration {
            break;
        }
        let node = rng.below(2) as usize;
        let name = ["a", "b"][node];
        let server = servers[node].clone();
        let fault = match rng.below(3) {
            0 => {
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = server.stop(true);
                    std::thread::sleep(Duration::from_secs(2));
                    server.start_again()
                })
                .await;
                format!(
                    "{:.0}s: node {name} killed (-m immediate) and restarted",
                    started.elapsed().as_secs_f64()
                )
            }
            1 => {
                let pids = server_pids(&server);
                signal(&pids, "STOP");
                tokio::time::sleep(Duration::from_secs(3)).await;
                signal(&pids, "CONT");
                format!(
                    "{:.0}s: node {name} frozen 3 s (SIGSTOP)",
                    started.elapsed().as_secs_f64()
                )
            }
            _ => {
                runner.kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                runner = Runner::start(opts, &config)?;
                format!(
                    "{:.0}s: pgtwin run killed -9 and restarted",
                    started.elapsed().as_secs_f64()
                )
            }
        };
        faults.lock().expect("faults").push(fault);
    }
    stop.store(true, Ordering::Relaxed);
    let mut report = Report {
        mode: opts.mode.clone(),
        seconds: started.elapsed().as_secs_f64(),
        faults: faults.lock().expect("faults").clone(),
        ..Report::default()
    };
    let mut all: Vec<(usize, Acks)> = Vec::new();
    for (n, w) in writers {
        all.push((n, w.await?));
    }
    for (n, a) in &all {
        report.acknowledged[*n] += a.transactions;
        report.expected_errors += a.expected_errors;
        report.hangs += a.hangs;
        report.longest_statement_ms = report
            .longest_statement_ms
            .max(a.longest.as_millis() as u64);
        for (e, count) in &a.unexpected {
            *report.unexpected_errors.entry(e.clone()).or_default() += count;
        }
    }
    for n in 0..2 {
        report.tps[n] = report.acknowledged[n] as f64 / report.seconds;
    }

    // Calm: both servers up, a runner alive, until both queues are empty.
    let drain_started = Instant::now();
    if runner
        .child
        .as_mut()
        .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    {
        runner = Runner::start(opts, &config)?;
    }
    let clients = [connect(&servers[0]).await?, connect(&servers[1]).await?];
    let mut first = true;
    loop {
        let mut queued = 0i64;
        for c in &clients {
            queued += c
                .query_one("SELECT count(*) FROM pgtwin.queue", &[])
                .await?
                .get::<_, i64>(0);
        }
        if first {
            report.queued_when_faults_stopped = queued;
            first = false;
        }
        if queued == 0 {
            break;
        }
        if drain_started.elapsed() > opts.drain_limit {
            let log =
                std::fs::read_to_string(config.with_file_name("runner.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let mut sessions = String::new();
            for (c, name) in clients.iter().zip(["a", "b"]) {
                for r in c
                    .query(
                        "SELECT concat_ws(' | ', pid, application_name, state, wait_event_type, wait_event,
                                          now() - xact_start, left(query, 100))
                         FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await?
                {
                    sessions.push_str(&format!("node {name}: {}\n", r.get::<_, String>(0)));
                }
            }
            bail!(
                "the queues did not drain within {:?} of the faults stopping ({queued} entries left of {}); pgtwin run's last lines:\n{}\nsessions:\n{sessions}",
                opts.drain_limit,
                report.queued_when_faults_stopped,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.drain_s = drain_started.elapsed().as_secs_f64();
    runner.kill();

    // Compare, in plain SQL.
    let mut tables: Vec<Rows> = Vec::new();
    for c in &clients {
        let rows = c.query("SELECT id, v, note FROM items", &[]).await?;
        tables.push(
            rows.iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2))))
                .collect(),
        );
        report.set_aside += c
            .query_one("SELECT count(*) FROM pgtwin.set_aside", &[])
            .await?
            .get::<_, i64>(0);
    }
    let mut failed: [Failed; 2] = Default::default();
    for (n, a) in &all {
        failed[*n].values.extend(&a.failed.values);
        failed[*n].deletes.extend(&a.failed.deletes);
    }
    (report.divergent_rows, report.in_doubt_rows) = divergence(&tables, &failed);
    for (n, a) in &all {
        let node = ["a", "b"][*n];
        for (id, v) in &a.inserted {
            let deleted = a.deleted.contains(id);
            for (t, name) in tables.iter().zip(["a", "b"]) {
                match (t.get(id), deleted) {
                    (Some(_), true) => report
                        .lost_writes
                        .push(format!("row {id} deleted on node {node} (acknowledged) is on node {name}")),
                    (None, false) => report
                        .lost_writes
                        .push(format!("row {id} inserted on node {node} (acknowledged) is missing on node {name}")),
                    (Some((got, _)), false) if *got != Some(*v) => report.lost_writes.push(format!(
                        "row {id} inserted on node {node} with v = {v} has v = {got:?} on node {name}"
                    )),
                    _ => {}
                }
            }
        }
    }
    let mut hot: BTreeMap<i64, Vec<HotWrite>> = (1..=HOT_ROWS).map(|k| (-k, Vec::new())).collect();
    for (_, a) in &all {
        for (k, writes) in &a.hot {
            hot.entry(*k).or_default().extend(writes);
        }
    }
    report.lost_writes.extend(hot_row_losses(&hot, &tables));
    Ok(report)
}

/// A hot row must hold the value of an acknowledged update that no other acknowledged update of it
/// follows: one sent after that update was acknowledged began after it committed, on either node, and
/// must win (the last writer wins). A hot row no update reached keeps its seed value, 0.
fn hot_row_losses(hot: &BTreeMap<i64, Vec<HotWrite>>, tables: &[Rows]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, writes) in hot {
        for (t, name) in tables.iter().zip(["a", "b"]) {
            let got = t.get(k).and_then(|(v, _)| *v);
            if writes.is_empty() && got == Some(0) {
                continue;
            }
            let Some(kept) = writes.iter().find(|w| Some(w.value) == got) else {
                out.push(format!(
                    "hot row {k} on node {name} holds {got:?}, a value no acknowledged update wrote"
                ));
                continue;
            };
            if let Some(later) = writes.iter().find(|w| w.sent > kept.acked) {
                out.push(format!(
                    "hot row {k} on node {name} holds {}, but update {} was sent after that one was acknowledged: the last writer lost",
                    kept.value, later.value
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_write_found_on_the_peer_alone_explains_a_difference() {
        let row = |v: i64| (Some(v), Some("one".to_string()));
        let failed_on_a = Failed {
            values: BTreeSet::from([7]),
            deletes: BTreeSet::from([3]),
        };
        let failed = [failed_on_a, Failed::default()];
        // Row 1: a's failed insert (7) is on b only. Row 3: a's failed delete left it on a only.
        // Row 2: b holds a value no failed write of a had; row 4: a holds a's failed value, b not.
        let a: Rows = BTreeMap::from([(2, row(1)), (3, row(3)), (4, row(7)), (5, row(5))]);
        let b: Rows = BTreeMap::from([(1, row(7)), (2, row(2)), (5, row(5))]);
        let (unexplained, in_doubt) = divergence(&[a, b], &failed);
        assert_eq!(unexplained, 2, "{in_doubt:?}");
        assert_eq!(in_doubt.len(), 2, "{in_doubt:?}");
        assert!(in_doubt[0].starts_with("row 1: node a's failed write is on node b only"));
        assert!(in_doubt[1].starts_with("row 3: node a's"));
    }

    #[test]
    fn a_hot_row_must_keep_the_last_acknowledged_write() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let write = |value, sent, acked| HotWrite {
            value,
            sent: at(sent),
            acked: at(acked),
        };
        // Two overlapping updates (either may win), then one sent after both were acknowledged.
        let hot = BTreeMap::from([(-1, vec![write(1, 0, 10), write(2, 5, 12), write(3, 20, 30)])]);
        let holding = |v: i64| -> Rows { BTreeMap::from([(-1, (Some(v), None))]) };
        assert!(hot_row_losses(&hot, &[holding(3), holding(3)]).is_empty());
        let lost = hot_row_losses(&hot, &[holding(2), holding(3)]);
        assert_eq!(lost.len(), 1);
        assert!(lost[0].contains("node a holds 2, but update 3"), "{lost:?}");
        assert!(
            hot_row_losses(&hot, &[holding(9), holding(3)])[0].contains("no acknowledged update")
        );
        let untouched = BTreeMap::from([(-2, vec![])]);
        let seed: Rows = BTreeMap::from([(-2, (Some(0), None))]);
        assert!(hot_row_losses(&untouched, &[seed.clone(), seed]).is_empty());
        let overlapping = BTreeMap::from([(-1, vec![write(1, 0, 10), write(2, 5, 12)])]);
        assert!(hot_row_losses(&overlapping, &[holding(1), holding(1)]).is_empty());
    }
}
