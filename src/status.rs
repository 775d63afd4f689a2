//! What is installed and working on each node, read from the node itself (its installation record and
//! catalogs), so `status` works with the other node down.

use std::time::Instant;

use anyhow::Result;
use tokio_postgres::Client;

use crate::catalog::{self, Installed};
use crate::config::{Config, Node};
use crate::sql::names;
use crate::state::QueueStatus;
use crate::twin;

#[derive(Debug, serde::Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub url: String,
    pub reachable: bool,
    pub error: Option<String>,
    pub installed: Option<Installed>,
    /// Version of pgtwin's state tables there (crate::state).
    pub state_version: Option<i32>,
    /// The installation was made in another database: this is a copy (see NodeInfo::is_copy).
    pub copy: bool,
    pub tables: Vec<TableStatus>,
    /// Whether this node reaches its peer through the foreign server, as the triggers do.
    pub link: Option<Link>,
    pub queue: Option<QueueStatus>,
}

#[derive(Debug, serde::Serialize)]
pub struct TableStatus {
    pub table: String,
    pub triggers: usize,
    pub triggers_expected: usize,
    pub sequences: Vec<SequenceStatus>,
}

#[derive(Debug, serde::Serialize)]
pub struct SequenceStatus {
    pub sequence: String,
    pub increment: i64,
    pub next_value: i64,
    /// The largest key on this node in its residue (the largest id it handed out; None: none).
    pub largest_key: Option<i64>,
    /// What is wrong with it, where interleaving is on: off its node's residue, or not above the
    /// node's largest key (an application's `setval`, a restored backup).
    pub problem: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct Link {
    pub ok: bool,
    pub millis: u64,
    pub error: Option<String>,
}

/// What holds between the two nodes: table definitions that drifted apart, and whether what is
/// installed still matches the config and the tables (else `up` should run).
#[derive(Debug, Default, serde::Serialize)]
pub struct PairStatus {
    pub schema_drift: Vec<Drift>,
    /// Per node, in config order: installed from the plan `up` would make now.
    pub up_to_date: Option<[bool; 2]>,
    /// Key sequences that would hand out ids the other node already holds.
    pub ids_reused: Vec<IdsReused>,
}

/// A node's key sequence behind the largest id of its own residue that the other node holds: it
/// hands out those ids again. The mark of a node restored from a backup (its sequence and rows went
/// back; the peer kept what it had shipped), or of a `setval` on it. Its inserts of those ids fail
/// until a repair (see apply.sql), rather than overwrite the peer's rows.
#[derive(Debug, serde::Serialize)]
pub struct IdsReused {
    pub node: String,
    pub peer: String,
    pub table: String,
    pub sequence: String,
    pub next_value: i64,
    pub peer_largest: i64,
}

#[derive(Debug, serde::Serialize)]
pub struct Drift {
    pub table: String,
    pub problem: String,
    /// Whether the table's shared columns still sync despite it.
    pub synced: bool,
}

/// Everything `status` reports, with its verdict: what `pgtwin status` prints and `/healthz` serves.
pub struct Report {
    pub nodes: Vec<NodeStatus>,
    pub pair: Option<PairStatus>,
    pub problems: Vec<Problem>,
}

impl Report {
    /// The worst problem's severity; None: healthy.
    pub fn severity(&self) -> Option<Severity> {
        self.problems.iter().map(|p| p.severity).max()
    }
}

/// Connects to each node once (both at once): its own status, then, where both answer, what holds
/// between them.
pub async fn report(cfg: &Config) -> Report {
    let (a, b) = tokio::join!(
        twin::connect(cfg, &cfg.nodes[0]),
        twin::connect(cfg, &cfg.nodes[1])
    );
    let connected = [a, b];
    let mut nodes = Vec::new();
    for (node, c) in cfg.nodes.iter().zip(&connected) {
        nodes.push(status_of(cfg, node, c).await);
    }
    if let [Ok(a), Ok(b)] = &connected {
        reread_marks(&mut nodes, [a, b]).await;
    }
    let pair = match connected {
        [Ok(a), Ok(b)] => Some(pair_status(cfg, [a, b]).await),
        _ => None,
    };
    let problems = problems(&nodes, pair.as_ref());
    Report {
        nodes,
        pair,
        problems,
    }
}

/// Reads the marks again, both at once at the end: what each node recorded of the other first, then
/// the marks themselves, so that a runner's heartbeat between the reads makes a mark read as ahead,
/// never behind (see runner::advance_marks). Best effort: an install older than the marks has none.
async fn reread_marks(nodes: &mut [NodeStatus], connected: [&twin::Connected; 2]) {
    let saw = [
        link_column(connected[0], "peer_mark").await,
        link_column(connected[1], "peer_mark").await,
    ];
    let marks = [
        link_column(connected[0], "mark").await,
        link_column(connected[1], "mark").await,
    ];
    for (i, n) in nodes.iter_mut().enumerate() {
        if let Some(q) = &mut n.queue {
            q.peer_mark = saw[i];
            q.mark = marks[i];
        }
    }
}

/// One column of a node's link state; None where it has none (an install older than it).
async fn link_column(n: &twin::Connected, column: &str) -> Option<i64> {
    let sql = format!(
        "SELECT (to_jsonb(l) ->> {})::bigint FROM {} l",
        crate::sql::ident::Literal(column),
        names::link_table()
    );
    n.db.query_one(&sql, &[])
        .await
        .ok()
        .and_then(|r| r.get::<_, Option<i64>>(0))
}

/// Each node's key sequences of one table that are behind the largest id of their residue on the
/// other node (see IdsReused).
async fn ids_reused(
    nodes: &[twin::Connected; 2],
    infos: &[crate::catalog::TableInfo; 2],
) -> Vec<IdsReused> {
    let mut out = Vec::new();
    for i in 0..2 {
        let (own, other) = (&infos[i], &infos[1 - i]);
        for k in own.key_sequences.iter().filter(|k| k.may_alter) {
            let Some(column) = own
                .column(&k.column)
                .and_then(|c| other.synced_column(&c.synced_as))
            else {
                continue;
            };
            let largest = catalog::max_in_residue(
                nodes[1 - i].name(),
                &nodes[1 - i].db,
                &other.name,
                &column.name,
                2,
                i as i64 + 1,
            )
            .await
            .ok()
            .flatten();
            if let Some(m) = largest.filter(|m| k.next_value <= *m) {
                out.push(IdsReused {
                    node: nodes[i].name().to_string(),
                    peer: nodes[1 - i].name().to_string(),
                    table: own.synced_name.to_string(),
                    sequence: k.sequence.to_string(),
                    next_value: k.next_value,
                    peer_largest: m,
                });
            }
        }
    }
    out
}

/// Needs both nodes; None when either is unreachable.
async fn pair_status(cfg: &Config, nodes: [twin::Connected; 2]) -> PairStatus {
    let (tables, problems) = twin::inspect_tolerant(cfg, &nodes).await;
    let mut out = PairStatus {
        schema_drift: problems
            .into_iter()
            .map(|(table, problem)| Drift {
                table: table.to_string(),
                problem,
                synced: false,
            })
            .chain(tables.iter().flat_map(|pair| {
                pair.drift.iter().map(|d| Drift {
                    table: pair.infos[0].synced_name.to_string(),
                    problem: d.clone(),
                    synced: true,
                })
            }))
            .collect(),
        up_to_date: None,
        ids_reused: Vec::new(),
    };
    if cfg.options.sequences == crate::config::Sequences::Interleave {
        for pair in &tables {
            out.ids_reused.extend(ids_reused(&nodes, &pair.infos).await);
        }
    }
    let blocked = out.schema_drift.iter().any(|d| !d.synced);
    if !blocked && nodes.iter().all(|n| n.info.installed.is_some()) {
        let tables = tables.into_iter().map(|pair| pair.infos).collect();
        let p = crate::install::Prepared { nodes, tables };
        if let Ok(plans) = crate::install::build(cfg, &p).await {
            out.up_to_date = Some([plans[0].up_to_date, plans[1].up_to_date]);
        }
    }
    out
}

async fn status_of(cfg: &Config, node: &Node, connected: &Result<twin::Connected>) -> NodeStatus {
    let mut s = NodeStatus {
        node: node.name.clone(),
        url: node.conn.to_string(),
        reachable: false,
        error: None,
        installed: None,
        state_version: None,
        copy: false,
        tables: Vec::new(),
        link: None,
        queue: None,
    };
    let result = match connected {
        Ok(n) => node_status(cfg, node, n, &mut s).await,
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    };
    if let Err(e) = result {
        s.error = Some(format!("{e:#}"));
    }
    s
}

async fn node_status(
    cfg: &Config,
    node: &Node,
    n: &twin::Connected,
    s: &mut NodeStatus,
) -> Result<()> {
    s.reachable = true;
    s.installed = n.info.installed.clone();
    s.state_version = n.info.state_version;
    s.copy = n.info.is_copy();
    let captured = catalog::captured_tables(n.name(), &n.db).await?;
    for table in &cfg.tables {
        let triggers = captured
            .iter()
            .find(|(t, _)| t == table.name_on(&node.name))
            .map_or(0, |(_, trig)| trig.len());
        let mut sequences = Vec::new();
        if let Ok(info) = catalog::table_info(n.name(), &n.db, table).await {
            let count = cfg.nodes.len() as i64;
            let position = cfg
                .nodes
                .iter()
                .position(|x| x.name == node.name)
                .unwrap_or(0) as i64
                + 1;
            for k in info.key_sequences {
                let largest_key = catalog::max_in_residue(
                    n.name(),
                    &n.db,
                    &info.name,
                    &k.column,
                    count,
                    position,
                )
                .await?;
                // Healthy: in this node's residue and above the largest key in it (the other node's
                // keys are in the other residue, whatever their size: no false alarm after one node
                // inserted more).
                let interleaved = cfg.options.sequences == crate::config::Sequences::Interleave
                    && s.installed.is_some();
                let problem = if !interleaved || !k.may_alter {
                    None
                } else if k.increment != count
                    || k.next_value.rem_euclid(count) != position.rem_euclid(count)
                {
                    Some(format!(
                        "hands out ids outside node {}'s residue (next {}, step {}): run pgtwin up",
                        node.name, k.next_value, k.increment
                    ))
                } else if k.cycle {
                    Some(format!("is CYCLE: after its end it would hand out the other node's ids: run ALTER SEQUENCE {} NO CYCLE; then pgtwin up", k.sequence))
                } else if k.start.rem_euclid(count) != position.rem_euclid(count) {
                    Some(format!(
                        "restarts outside node {}'s residue (START {}): a RESTART or TRUNCATE ... RESTART IDENTITY would hand out the other node's ids: run pgtwin up",
                        node.name, k.start
                    ))
                } else if largest_key.is_some_and(|m| k.next_value <= m)
                    && still_behind(n.name(), &n.db, table, &k.sequence, largest_key).await
                {
                    Some(format!("is behind the largest id it handed out, {} (next {}): it would hand out ids again: run pgtwin up", largest_key.unwrap_or_default(), k.next_value))
                } else {
                    None
                };
                sequences.push(SequenceStatus {
                    sequence: k.sequence.to_string(),
                    increment: k.increment,
                    next_value: k.next_value,
                    largest_key,
                    problem,
                });
            }
        }
        s.tables.push(TableStatus {
            table: table.name.to_string(),
            triggers,
            triggers_expected: names::TRIGGER_EVENTS.len(),
            sequences,
        });
    }
    if s.installed.is_some() {
        let tables: Vec<_> = cfg.tables.iter().map(|t| t.name.clone()).collect();
        s.queue = Some(crate::state::queue_status(n.name(), &n.db, &tables).await?);
    }
    if let Some(first) = s.installed.as_ref().and_then(|i| i.tables.first()) {
        if let Ok(name) = crate::sql::ident::QualName::parse(first) {
            s.link = Some(check_link(&n.db, &name).await);
        }
    }
    Ok(())
}

/// Reads the sequence again after the largest key: an insert that committed between the two reads
/// is not a sequence behind its keys.
async fn still_behind(
    node: &str,
    db: &Client,
    table: &crate::config::Table,
    sequence: &crate::sql::ident::QualName,
    largest_key: Option<i64>,
) -> bool {
    let Ok(info) = catalog::table_info(node, db, table).await else {
        return false;
    };
    info.key_sequences
        .iter()
        .find(|k| &k.sequence == sequence)
        .is_some_and(|k| largest_key.is_some_and(|m| k.next_value <= m))
}

/// Reads the peer's inbox view through the foreign server: the same path, role and
/// credentials the triggers use, bounded by the server's connect_timeout.
async fn check_link(db: &Client, table: &crate::sql::ident::QualName) -> Link {
    let started = Instant::now();
    let result = db
        .query_one(
            &format!("SELECT EXISTS (SELECT FROM {})", names::peer_inbox(table)),
            &[],
        )
        .await;
    Link {
        ok: result.is_ok(),
        millis: started.elapsed().as_millis() as u64,
        error: result.err().map(|e| crate::db::pg_message(&e)),
    }
}

/// Queued changes older than this, with no runner seen for RUNNER_GONE_S, make the pair degraded.
const QUEUED_TOO_LONG_S: f64 = 30.0;
const RUNNER_GONE_S: f64 = 60.0;

/// How bad a problem is, as `status` exits: 1 degraded, 2 down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Degraded,
    Down,
}

impl Severity {
    pub fn word(self) -> &'static str {
        match self {
            Severity::Degraded => "DEGRADED",
            Severity::Down => "DOWN",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub what: String,
}

/// Everything that keeps the pair from being healthy, each in one line that names the node or table
/// and what to run.
pub fn problems(nodes: &[NodeStatus], pair: Option<&PairStatus>) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut add = |severity, what: String| out.push(Problem { severity, what });
    for n in nodes {
        if let Some(e) = &n.error {
            add(
                Severity::Down,
                format!("node {} is unreachable: {e}", n.node),
            );
            continue;
        }
        if n.installed.is_none() {
            add(
                Severity::Down,
                format!("node {}: pgtwin is not installed: run pgtwin up", n.node),
            );
            continue;
        }
        if n.copy {
            let peer_name = nodes
                .iter()
                .find(|m| m.node != n.node)
                .map_or("the other node", |m| m.node.as_str());
            add(
                Severity::Down,
                format!(
                    "node {}: this database is a copy of one pgtwin was installed in (a restored dump): it captures and ships nothing; if it is node {} itself, restored from a dump of its own, run pgtwin up --mirror {} (it makes its tables a copy of the live node's, so rows deleted since the dump stay deleted, and installs anew); if it is a copy elsewhere, remove pgtwin's objects (and the peer's password) from it with DROP SCHEMA pgtwin CASCADE; DROP SERVER pgtwin_peer CASCADE; run there (not pgtwin down, which would also reach the live peer)",
                    n.node,
                    n.node,
                    peer_name
                ),
            );
        }
        for t in &n.tables {
            for q in &t.sequences {
                if let Some(problem) = &q.problem {
                    add(
                        Severity::Degraded,
                        format!(
                            "sequence {} of table {} on node {} {problem}",
                            q.sequence, t.table, n.node
                        ),
                    );
                }
            }
            if t.triggers < t.triggers_expected {
                add(Severity::Degraded, format!(
                    "table {} on node {} has {} of pgtwin's {} triggers (dropped, or created again by a schema load): its writes are not synced: run pgtwin up",
                    t.table, n.node, t.triggers, t.triggers_expected
                ));
            }
        }
        if let Some(Link { error: Some(e), .. }) = &n.link {
            add(
                Severity::Degraded,
                format!("node {} does not reach its peer: {e}", n.node),
            );
        }
        if let Some(q) = &n.queue {
            // Changes waiting with nobody to replay them (sync mode stays in "queue everything").
            let waiting = q.oldest_age_s.is_some_and(|age| age > QUEUED_TOO_LONG_S);
            let runner_gone = q.runner_seen_s_ago.is_none_or(|s| s > RUNNER_GONE_S);
            if waiting && runner_gone {
                let seen = q
                    .runner_seen_s_ago
                    .map_or("never".to_string(), |s| format!("{s:.0} s ago"));
                add(
                    Severity::Degraded,
                    format!(
                        "node {}: {} change(s) queued for {:.0} s and no pgtwin run seen (last: {seen}): start pgtwin run",
                        n.node,
                        q.rows,
                        q.oldest_age_s.unwrap_or_default()
                    ),
                );
            }
            if q.set_aside > 0 {
                add(
                    Severity::Degraded,
                    format!(
                        "node {}: {} change(s) set aside (its peer refused them for their data): pgtwin conflicts lists them, pgtwin repair makes the tables equal and clears them",
                        n.node, q.set_aside
                    ),
                );
            }
            if q.conflicts > 0 {
                add(
                    Severity::Degraded,
                    format!(
                        "node {}: {} conflict(s) recorded (keys both nodes changed while apart): pgtwin conflicts lists them, --ack clears them",
                        n.node, q.conflicts
                    ),
                );
            }
            if q.needs_repair_since.is_some() {
                add(
                    Severity::Degraded,
                    format!(
                        "node {} needs repair: changes are no longer recorded: run pgtwin repair",
                        n.node
                    ),
                );
            }
        }
    }
    // A node gone back to an earlier state of itself: recorded by `pgtwin run` on its peer, or seen
    // here first (its mark below what its peer saw of it).
    for (i, n) in nodes.iter().enumerate() {
        let peer = &nodes[1 - i];
        let (Some(q), Some(pq)) = (&n.queue, &peer.queue) else {
            continue;
        };
        let recorded = pq.peer_went_back_at.is_some();
        let seen = matches!((q.mark, pq.peer_mark), (Some(m), Some(saw)) if m < saw);
        if recorded || seen {
            let refused = match recorded {
                true => format!(
                    "node {} refuses its changes (queued, then set aside by pgtwin run)",
                    peer.node
                ),
                false => format!(
                    "node {} will refuse its changes once pgtwin run sees this",
                    peer.node
                ),
            };
            add(
                Severity::Degraded,
                format!(
                    "node {} went back to an earlier state of itself (restored from a backup?): node {} saw it further on; {refused} until you run pgtwin repair --mirror {} (rows deleted since the backup must not come back), then pgtwin up",
                    n.node, peer.node, peer.node
                ),
            );
        }
    }
    if let Some(pair) = pair {
        for d in &pair.schema_drift {
            add(
                Severity::Degraded,
                format!("schema drift in {}: {}", d.table, d.problem),
            );
        }
        for r in &pair.ids_reused {
            add(
                Severity::Degraded,
                format!(
                    "node {}: sequence {} of {} hands out ids node {} already holds (next {}, node {} holds {}): was node {} restored from a backup? its inserts of those ids fail until you run pgtwin repair --mirror {} (rows deleted since the backup must not come back), then pgtwin up",
                    r.node, r.sequence, r.table, r.peer, r.next_value, r.peer, r.peer_largest, r.node, r.peer
                ),
            );
        }
        for (n, fresh) in nodes.iter().zip(pair.up_to_date.unwrap_or([true; 2])) {
            let state = n.state_version.unwrap_or(crate::state::VERSION);
            if state < crate::state::VERSION {
                add(
                    Severity::Degraded,
                    format!("node {}: pgtwin's state tables there are version {state}, this pgtwin's are {}: run pgtwin up to upgrade them", n.node, crate::state::VERSION),
                );
            } else if !fresh {
                add(
                    Severity::Degraded,
                    format!("node {}: installed objects do not match the config and tables: run pgtwin up", n.node),
                );
            }
        }
    }
    // The worst first: the summary line names it.
    out.sort_by_key(|p| std::cmp::Reverse(p.severity));
    out
}

/// The one line `status` prints first: the verdict, and why.
pub fn summary(problems: &[Problem]) -> String {
    match problems {
        [] => "healthy".to_string(),
        [first, rest @ ..] => {
            let more = match rest.len() {
                0 => String::new(),
                n => format!(" (and {n} more problem(s) below)"),
            };
            format!("{}: {}{more}", first.severity.word(), first.what)
        }
    }
}
