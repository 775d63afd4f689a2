//! `plan`, `up` and `down` as one path: read both nodes, check what must hold before anything changes,
//! build each node's steps, then print them or run them.

use anyhow::{bail, Result};
use tokio_postgres::Client;

use crate::apply;
use crate::catalog::{self, NodeInfo, TableInfo};
use crate::config::{Config, Sequences};
use crate::data::compare::{self, Diff};
use crate::data::merge::{self, MergeReport};
use crate::db::on_node;
use crate::plan::{plan_hash, Step};
use crate::problems::Problems;
use crate::progress::Progress;
use crate::sql::gen::{self, Install, SequenceChange};
use crate::sql::ident::{Ident, Literal, QualName};
use crate::sql::names;
use crate::twin::{self, Connected};

#[derive(Debug, serde::Serialize)]
pub struct NodePlan {
    pub node: String,
    pub url: String,
    /// Installed as the config says now (what `status` reports).
    pub up_to_date: bool,
    /// And the apply functions' fast paths compiled for the tables as they are now (a migration
    /// since `up` leaves them on the slower path by name, which `up` recompiles).
    #[serde(skip)]
    pub fast_path_current: bool,
    pub steps: Vec<Step>,
}

/// A table's comparison, as reported: counts, and the differing keys (the first `KEYS_SHOWN` of each kind
/// unless all are asked for).
#[derive(Debug, serde::Serialize)]
pub struct TableDiff {
    pub table: QualName,
    pub rows: [u64; 2],
    pub only_on: [usize; 2],
    pub different: usize,
    pub keys: DiffKeys,
    #[serde(skip)]
    pub diff: Diff,
}

#[derive(Debug, serde::Serialize)]
pub struct DiffKeys {
    pub only_on: [Vec<String>; 2],
    pub different: Vec<String>,
}

pub const KEYS_SHOWN: usize = 10;

impl TableDiff {
    pub fn new(table: QualName, diff: Diff, all_keys: bool) -> TableDiff {
        let take = |v: &Vec<String>| {
            v.iter()
                .take(if all_keys { usize::MAX } else { KEYS_SHOWN })
                .cloned()
                .collect()
        };
        let [a, b, d] = diff.counts();
        TableDiff {
            table,
            rows: diff.rows,
            only_on: [a, b],
            different: d,
            keys: DiffKeys {
                only_on: [take(&diff.only_on[0]), take(&diff.only_on[1])],
                different: take(&diff.different),
            },
            diff,
        }
    }

    pub fn is_equal(&self) -> bool {
        self.diff.is_equal()
    }
}

/// Both nodes connected, checked and read: the input of every plan.
pub struct Prepared {
    pub nodes: [Connected; 2],
    pub tables: Vec<[TableInfo; 2]>,
}

/// Connects, checks privileges and extension on both nodes, and reads every configured table. Fails
/// before anything is changed anywhere, with every problem of both nodes found in one run.
pub async fn prepare(cfg: &Config) -> Result<Prepared> {
    let (a, b) = tokio::join!(
        twin::connect(cfg, &cfg.nodes[0]),
        twin::connect(cfg, &cfg.nodes[1])
    );
    let mut problems = Problems::default();
    let mut connected = Vec::new();
    for (i, n) in [a, b].into_iter().enumerate() {
        match n {
            Ok(n) => {
                let peer = &cfg.nodes[1 - i];
                problems.0.extend(preflight(
                    n.name(),
                    &n.info,
                    &peer.name,
                    peer.conn.password.is_some(),
                ));
                connected.push(n);
            }
            Err(e) => problems.push_error(e),
        }
    }
    let Ok(nodes) = <[Connected; 2]>::try_from(connected) else {
        return Err(problems.into());
    };
    // Tables are read even when a node failed its checks: their problems are reported with the others.
    let (pairs, table_problems) = twin::inspect_tolerant(cfg, &nodes).await;
    problems
        .0
        .extend(table_problems.into_iter().map(|(_, problem)| problem));
    let tables: Vec<[TableInfo; 2]> = pairs.into_iter().map(|pair| pair.infos).collect();
    if cfg.options.sequences == Sequences::Interleave {
        for pair in &tables {
            for (n, t) in nodes.iter().zip(pair) {
                problems.0.extend(
                    t.key_sequences
                        .iter()
                        .filter_map(|seq| twin::sequence_problem(seq, &t.name, n.name())),
                );
            }
        }
    }
    problems.into_result()?;
    Ok(Prepared { nodes, tables })
}

/// What must hold on a node before `up` may change it (POSTGRES-NOTES 4 and 10): every problem found,
/// each naming the node and what to run.
pub fn preflight(node: &str, info: &NodeInfo, peer: &str, peer_has_password: bool) -> Vec<String> {
    let (user, db) = (&info.current_user, &info.database);
    let role = Ident::new(user.as_str());
    let mut out = Vec::new();
    if info.server_version_num < 140000 {
        out.push(format!(
            "node {node} runs PostgreSQL {}; pgtwin needs 14 or later",
            info.server_version_num
        ));
    }
    if !info.fdw_available {
        out.push(format!("node {node}: postgres_fdw is not available on the server: install PostgreSQL's contrib package (Debian: postgresql-contrib)"));
    } else if !info.superuser {
        // Without the extension there is no wrapper to grant on yet: both statements in one go.
        if !info.fdw_installed {
            out.push(format!("node {node}: extension postgres_fdw is not installed in database {db} and role {user} is not a superuser: run CREATE EXTENSION postgres_fdw; GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO {role}; there as a superuser once"));
        } else if !info.fdw_usage {
            out.push(format!("node {node}: role {user} may not use postgres_fdw: run GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO {role}; as a superuser"));
        }
    }
    if !info.superuser && !peer_has_password {
        out.push(format!("node {node}: role {user} is not a superuser, so postgres_fdw must log in to node {peer} with a password: put it in [nodes.{peer}] url, or in PGPASSWORD, the password file (~/.pgpass) or the service file pgtwin reads"));
    }
    if peer_has_password {
        for (setting, value) in &info.loud_recorders {
            out.push(format!("node {node}: {setting} = '{value}' would record the peer's password when pgtwin up creates the user mapping, and role {user} may not lower it for that statement: run GRANT SET ON PARAMETER {setting} TO {role}; as a superuser, or install as a superuser"));
        }
    }
    if !info.foreign_objects.is_empty() {
        out.push(format!(
            "node {node}: role {user} did not create what pgtwin would use there ({}): pgtwin will not run another role's code; drop or rename it as its owner, then run pgtwin up",
            info.foreign_objects.join(", ")
        ));
    } else if info.foreign_schema {
        out.push(format!(
            "node {node}: schema pgtwin exists but was not created by pgtwin: rename or drop it"
        ));
    }
    if info.installed.is_none() && !info.can_create_schema && !info.superuser {
        out.push(format!("node {node}: role {user} cannot create schema pgtwin in database {db}: run GRANT CREATE ON DATABASE {} TO {role}; as a superuser", Ident::new(db.as_str())));
    }
    out
}

/// Compares every table on both nodes; `recheck` re-reads the differing keys (for live tables).
pub async fn diffs(p: &Prepared, recheck: bool, all_keys: bool) -> Result<Vec<TableDiff>> {
    let mut out = Vec::new();
    let sides = p.sides();
    for pair in &p.tables {
        let mut diff = compare::compare(sides, pair).await?;
        if recheck {
            diff = compare::recheck(sides, pair, diff, 3).await?;
        }
        out.push(TableDiff::new(pair[0].synced_name.clone(), diff, all_keys));
    }
    Ok(out)
}

impl Prepared {
    pub fn sides(&self) -> [crate::data::Side<'_>; 2] {
        [
            (self.nodes[0].name(), &self.nodes[0].db),
            (self.nodes[1].name(), &self.nodes[1].db),
        ]
    }
}

/// Builds both nodes' steps. Reads the largest keys (for sequence interleaving): call it with the
/// tables locked when the steps are going to run.
pub async fn build(cfg: &Config, p: &Prepared) -> Result<[NodePlan; 2]> {
    let sequences = twin::sequence_changes(cfg, &p.nodes, &p.tables).await?;
    let mut plans = Vec::new();
    for (i, n) in p.nodes.iter().enumerate() {
        let peer = &p.nodes[1 - i];
        let tables: Vec<TableInfo> = p.tables.iter().map(|pair| pair[i].clone()).collect();
        let stale = twin::stale_tables(cfg, n).await?;
        let steps = gen::install_steps(&Install {
            node: n.name(),
            peer: peer.name(),
            peer_conn: &peer.node.conn,
            options: &cfg.options,
            tables: &tables,
            create_extension: !n.info.fdw_installed,
            stale_tables: &stale,
            sequences: &sequences[i],
            database_oid: n.info.database_oid,
            system_identifier: n.info.system_identifier,
            schema_exists: n.info.schema_exists,
        });
        let hash = plan_hash(&steps);
        let up_to_date = is_up_to_date(n, peer, &hash, &tables, &sequences[i]).await?;
        let fast_path_current = up_to_date && fast_paths_current(n, &tables).await?;
        let mut steps = steps;
        steps.push(gen::record_step(
            n.name(),
            peer.name(),
            &hash,
            !n.info.fdw_installed,
            &tables,
        ));
        plans.push(NodePlan {
            node: n.name().to_string(),
            url: n.node.conn.to_string(),
            up_to_date,
            fast_path_current,
            steps,
        });
    }
    let [a, b]: [NodePlan; 2] = plans.try_into().expect("two nodes");
    Ok([a, b])
}

/// Installed from the same plan and state version, with the same peer login, every capture trigger
/// still in place and sequences interleaved.
async fn is_up_to_date(
    n: &Connected,
    peer: &Connected,
    hash: &str,
    tables: &[TableInfo],
    seqs: &[SequenceChange],
) -> Result<bool> {
    let Some(installed) = &n.info.installed else {
        return Ok(false);
    };
    // State tables an older pgtwin left are upgraded by the next `up`.
    let state_current = n.info.state_version == Some(crate::state::VERSION);
    if installed.plan_hash != hash || !seqs.is_empty() || !state_current {
        return Ok(false);
    }
    // The hash covers the masked SQL only: compare the stored login with the config's.
    let options: Option<Vec<String>> =
        n.db.query_opt(
            "SELECT umoptions FROM pg_user_mappings WHERE srvname = $1 AND usename = current_user",
            &[&names::SERVER],
        )
        .await
        .map_err(on_node(n.name(), "reading the user mapping"))?
        .and_then(|r| r.get(0));
    let conn = &peer.node.conn;
    let mut wanted = vec![format!("user={}", conn.user)];
    wanted.extend(conn.password.as_ref().map(|p| format!("password={p}")));
    if options.unwrap_or_default() != wanted {
        return Ok(false);
    }
    let captured = catalog::captured_tables(n.name(), &n.db).await?;
    Ok(tables.iter().all(|t| {
        captured.iter().any(|(name, triggers)| {
            name == &t.name && triggers.len() == names::TRIGGER_EVENTS.len()
        })
    }))
}

/// Whether each table's apply function was compiled for the tables' current shape: its source holds the
/// peer's column list that `up` reads now, and its comment this table's signature.
async fn fast_paths_current(n: &Connected, tables: &[TableInfo]) -> Result<bool> {
    for t in tables {
        let row = n
            .db
            .query_opt(
                "SELECT prosrc, obj_description(oid, 'pg_proc') FROM pg_proc WHERE oid = to_regprocedure($1)",
                &[&format!("{}()", names::apply_function(&t.synced_name))],
            )
            .await
            .map_err(on_node(n.name(), "reading the apply function"))?;
        let current = row.is_some_and(|r| {
            let (source, comment): (String, Option<String>) = (r.get(0), r.get(1));
            source.contains(&Literal(&t.peer_header).to_string())
                && comment.as_deref() == Some(t.signature.as_str())
        });
        if !current {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Applies the deletions queued on node `i` to the other node's tables (see up_locked), in the up's
/// transaction there.
async fn apply_stranded_deletions(p: &Prepared, i: usize) -> Result<()> {
    let (origin, peer) = (&p.nodes[i], &p.nodes[1 - i]);
    for (tag, chunk) in crate::state::queued_deletions(origin.name(), &origin.db).await? {
        // A table no longer in the config: nothing of it is synced any more.
        let Some(pair) = p
            .tables
            .iter()
            .find(|pair| names::table_tag(&pair[i].synced_name) == tag)
        else {
            continue;
        };
        let table = &pair[1 - i];
        let (defs, key_match) = crate::sql::gen::peer_key_reading(table);
        peer.db
            .execute(
                &format!(
                    "DELETE FROM {} t USING json_to_recordset((substr($1, 2)::json) -> 'rows') AS b({defs})
                     WHERE {key_match}",
                    table.name
                ),
                &[&chunk],
            )
            .await
            .map_err(on_node(
                peer.name(),
                &format!("applying deletions queued on node {}", origin.name()),
            ))?;
    }
    Ok(())
}

#[derive(Debug, serde::Serialize)]
pub struct UpReport {
    pub dry_run: bool,
    pub nodes: Vec<NodePlan>,
    /// How each table's rows were made the same on both nodes before the triggers went live.
    pub merges: Vec<MergeReport>,
}

/// Installs on both nodes. Both transactions stay open, with the synced tables locked against writes,
/// from the data comparison until both commit, so no write can slip between "compared" and "synced".
pub async fn up(cfg: &Config, dry_run: bool, progress: bool) -> Result<UpReport> {
    let p = prepare(cfg).await?;
    let result = up_locked(cfg, &p, dry_run, progress).await;
    if result.is_err() {
        for n in &p.nodes {
            apply::rollback(&n.db).await;
        }
    }
    result
}

async fn up_locked(cfg: &Config, p: &Prepared, dry_run: bool, progress: bool) -> Result<UpReport> {
    for n in &p.nodes {
        apply::begin(n.name(), &n.db).await?;
    }
    for (i, n) in p.nodes.iter().enumerate() {
        for pair in &p.tables {
            lock_table(n.name(), &n.db, &pair[i].name).await?;
        }
    }
    // Queued changes must reach the peer first: the merge would take them for differences (and a
    // queued deletion would come back as a row the other node still has). The one exception is a
    // half-done install (an `up` that committed on one node only, a `down --force` that reached one
    // node only): the installed node queued for a peer without an inbox, so nothing can replay it.
    // Its inserts and updates are in its table, and the merge below carries them over; its deletions
    // are applied on the peer here, first, in order, so the merge cannot bring those rows back. Only
    // then is that queue emptied.
    let mut stranded = [false; 2];
    for (i, n) in p.nodes.iter().enumerate() {
        if p.nodes[1 - i].info.installed.is_none() {
            stranded[i] = crate::state::queued_rows(n.name(), &n.db).await? > 0;
            if stranded[i] {
                apply_stranded_deletions(p, i).await?;
            }
        } else {
            refuse_queued(n, None).await?;
        }
    }
    // Both tables hold the union of their rows before the triggers go live; the locks keep writers out
    // until both nodes commit, so no write is lost or missed.
    let progress = Progress::new(progress, "merging");
    let mut merges = Vec::new();
    for (table, pair) in cfg.tables.iter().zip(&p.tables) {
        let diff = compare::compare(p.sides(), pair).await?;
        let policy = cfg.merge_policy(table);
        let report =
            merge::merge(p.sides(), pair, &diff, policy.as_ref(), dry_run, &progress).await?;
        if !dry_run && !diff.is_equal() {
            let after = compare::compare(p.sides(), pair).await?;
            if !after.is_equal() {
                bail!("table {}: still different after the merge ({:?} only on / different): nothing was changed", pair[0].name, after.counts());
            }
        }
        merges.push(report);
    }
    drop(progress);
    // Sequences start above the largest keys after the merge.
    let plans = build(cfg, p).await?;
    let merged = stranded.contains(&true)
        || merges
            .iter()
            .any(|m| m.copied_to != [0, 0] || m.deleted_on != [0, 0]);
    // A mirror settles a node gone back (see below): it commits even with nothing else to do.
    if dry_run || (!merged && !cfg.mirror && plans.iter().all(|pl| pl.fast_path_current)) {
        for n in &p.nodes {
            apply::rollback(&n.db).await;
        }
        return Ok(UpReport {
            dry_run,
            nodes: plans.into(),
            merges,
        });
    }
    for (i, (n, plan)) in p.nodes.iter().zip(&plans).enumerate() {
        if !plan.fast_path_current {
            apply::run(n.name(), &n.db, &plan.steps).await?;
        }
        if stranded[i] {
            crate::state::clear_queue(n.name(), &n.db).await?;
        }
        // The peer's queue is empty now, so no replay record here refers to a live entry (queue
        // numbers restart with a reinstalled peer).
        crate::state::forget_replay_records(n.name(), &n.db, p.nodes[1 - i].name()).await?;
        // One node's tables are a copy of the other's now: a node that went back (a dump of itself
        // restored) is the peer's equal again.
        if cfg.mirror {
            crate::state::forget_peer_mark(n.name(), &n.db).await?;
        }
    }
    // No two-phase commit across servers: if the second commit fails, the first node is installed
    // alone; its triggers queue (the peer has no inbox yet) until `up` is run again.
    for n in &p.nodes {
        apply::commit(n.name(), &n.db).await?;
    }
    Ok(UpReport {
        dry_run,
        nodes: plans.into(),
        merges,
    })
}

#[derive(Debug, serde::Serialize)]
pub struct RepairReport {
    pub dry_run: bool,
    pub tables: Vec<MergeReport>,
    pub equal_after: bool,
}

/// Makes the nodes equal by the policy: finds the differing keys (re-checking them, so changes in
/// flight are left alone), copies exactly those rows with the tables locked against writes, and checks
/// again. The copied rows are not shipped back: pgtwin's sessions carry pgtwin.origin.
pub async fn repair(
    cfg: &Config,
    policy: &merge::Policy,
    dry_run: bool,
    progress: bool,
) -> Result<RepairReport> {
    let p = prepare(cfg).await?;
    for n in &p.nodes {
        refuse_queued(n, None).await?;
    }
    // A link that stopped queueing (past max_queue_age_s) dropped changes that only the table data
    // shows now: every table is then compared under its locks, not just the suspects found without.
    let mut stopped_queueing = false;
    for n in &p.nodes {
        stopped_queueing |= needs_repair(n).await?;
    }
    let mut suspects = Vec::new();
    for pair in &p.tables {
        let diff = compare::compare(p.sides(), pair).await?;
        suspects.push(match stopped_queueing {
            true => None,
            false => Some(compare::recheck(p.sides(), pair, diff, 3).await?),
        });
    }
    let result = repair_locked(&p, policy, &suspects, dry_run, progress).await;
    if result.is_err() || dry_run {
        for n in &p.nodes {
            apply::rollback(&n.db).await;
        }
    }
    result
}

/// `suspects`: per table, the keys that differed when compared without locks, or None to compare the
/// whole table under the locks.
async fn repair_locked(
    p: &Prepared,
    policy: &merge::Policy,
    suspects: &[Option<Diff>],
    dry_run: bool,
    progress: bool,
) -> Result<RepairReport> {
    for n in &p.nodes {
        apply::begin(n.name(), &n.db).await?;
    }
    let progress = Progress::new(progress, "repairing");
    let mut tables = Vec::new();
    for (pair, suspect) in p.tables.iter().zip(suspects) {
        if suspect.as_ref().is_some_and(|d| d.is_equal()) {
            tables.push(merge::MergeReport {
                table: pair[0].synced_name.to_string(),
                ..Default::default()
            });
            continue;
        }
        for (i, n) in p.nodes.iter().enumerate() {
            lock_table(n.name(), &n.db, &pair[i].name).await?;
        }
        // Queued changes are differences on their way: repairing them away would undo them on replay.
        // Checked again under the locks, which keep new ones out.
        for n in &p.nodes {
            refuse_queued(n, Some(&pair[0].name)).await?;
        }
        // Under the locks, the suspects are compared once more: only rows that still differ are touched.
        let diff = match suspect {
            Some(suspect) => compare::reread(p.sides(), pair, suspect.clone()).await?,
            None => compare::compare(p.sides(), pair).await?,
        };
        tables.push(merge::merge(p.sides(), pair, &diff, Some(policy), dry_run, &progress).await?);
    }
    drop(progress);
    // Repaired: changes are queued again from the commit on (writers of the locked tables wait for it).
    for n in p.nodes.iter().filter(|n| n.info.installed.is_some()) {
        // The tables are equal now: the changes the peer refused are settled by the repair's policy.
        crate::state::repaired(n.name(), &n.db).await?;
    }
    if dry_run {
        return Ok(RepairReport {
            dry_run,
            tables,
            equal_after: false,
        });
    }
    for n in &p.nodes {
        apply::commit(n.name(), &n.db).await?;
    }
    let after = diffs(p, true, false).await?;
    Ok(RepairReport {
        dry_run,
        tables,
        equal_after: after.iter().all(|d| d.is_equal()),
    })
}

/// SHARE ROW EXCLUSIVE: readers go on, writers wait until `up` commits (bounded by their lock_timeout
/// or ours).
async fn lock_table(node: &str, db: &Client, table: &QualName) -> Result<()> {
    db.batch_execute(&format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))
        .await
        .map_err(on_node(node, &format!("locking {table}")))
}

#[derive(Debug, serde::Serialize)]
pub struct DownOutcome {
    pub node: String,
    pub steps: Vec<Step>,
    pub error: Option<String>,
    /// Queued changes removed with pgtwin (only `--force` removes a node whose queue holds any).
    pub dropped_changes: i64,
}

/// Removes pgtwin from each node independently: an unreachable node does not stop the other's cleanup.
/// Unless `force`, first refuses (changing nothing) while either reachable node's queue holds changes:
/// removing either node would leave them with nowhere to go.
pub async fn down(cfg: &Config, dry_run: bool, force: bool) -> Result<Vec<DownOutcome>> {
    let mut nodes = Vec::new();
    for node in &cfg.nodes {
        nodes.push((node.name.clone(), twin::connect(cfg, node).await));
    }
    if !force && !dry_run {
        for n in nodes.iter().filter_map(|(_, n)| n.as_ref().ok()) {
            if n.info.installed.is_some() {
                refuse_queued_for_down(n).await?;
            }
        }
    }
    // A node left installed keeps capturing and queueing for a peer that no longer takes anything,
    // and a later `up` would merge its table with the queue's deletions lost: so both nodes go, or
    // neither (unless --force).
    if !force && !dry_run {
        if let Some((name, Err(e))) = nodes.iter().find(|(_, n)| n.is_err()) {
            bail!(
                "{e:#}: down changes nothing while node {name} is unreachable (a node left installed would keep queueing for nothing); run it again once {name} is back, or pgtwin down --force to remove pgtwin from the other node alone"
            );
        }
    }
    // Every reachable node's tables are locked against writers first, so the largest keys read next
    // (each sequence is left above them) are final: no insert lands between the reading and the
    // removal.
    let mut locked = Vec::new();
    for (_, n) in &nodes {
        locked.push(match n {
            Ok(n) => lock_for_down(n, dry_run, force).await,
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        });
    }
    let floors = sequence_floors(cfg, &nodes).await;
    let mut out = Vec::new();
    let mut opened = Vec::new();
    for ((name, n), locked) in nodes.iter().zip(locked) {
        let mut outcome = DownOutcome {
            node: name.clone(),
            steps: Vec::new(),
            error: None,
            dropped_changes: 0,
        };
        let removed = match (n, locked) {
            // Without --force each node's transaction stays open until both are done.
            (Ok(n), Ok((info, captured))) => {
                if force && !dry_run && info.installed.is_some() {
                    outcome.dropped_changes =
                        crate::state::queued_rows(name, &n.db).await.unwrap_or(0);
                }
                let removed = down_node(
                    n,
                    &info,
                    &captured,
                    &floors,
                    dry_run,
                    force,
                    &mut outcome.steps,
                )
                .await;
                if removed.is_ok() && !force && !dry_run {
                    opened.push(n);
                }
                removed
            }
            (Ok(n), Err(e)) => {
                apply::rollback(&n.db).await;
                Err(e)
            }
            (Err(_), Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(anyhow::anyhow!("{e:#}")),
        };
        if let Err(e) = removed {
            outcome.error = Some(format!("{e:#}"));
        }
        out.push(outcome);
    }
    if !force && !dry_run {
        if out.iter().any(|o| o.error.is_some()) {
            for n in opened {
                apply::rollback(&n.db).await;
            }
        } else {
            for n in opened {
                apply::commit(n.name(), &n.db).await?;
            }
        }
    }
    Ok(out)
}

/// For each key sequence of a synced table on a reachable node (node name, sequence), the largest key
/// on either reachable node of the column it feeds.
async fn sequence_floors(
    cfg: &Config,
    nodes: &[(String, Result<Connected>)],
) -> std::collections::HashMap<(String, QualName), i64> {
    let mut out = std::collections::HashMap::new();
    for table in &cfg.tables {
        let mut infos = Vec::new();
        for n in nodes.iter().filter_map(|(_, n)| n.as_ref().ok()) {
            if let Ok(info) = catalog::table_info(n.name(), &n.db, table).await {
                infos.push((n, info));
            }
        }
        for (n, info) in &infos {
            for seq in &info.key_sequences {
                let Some(k) = info.key.iter().position(|c| c == &seq.column) else {
                    continue;
                };
                let mut floor: Option<i64> = None;
                for (m, other) in &infos {
                    let Some(column) = other.key.get(k) else {
                        continue;
                    };
                    if let Ok(Some(v)) =
                        catalog::max_value(m.name(), &m.db, &other.name, column).await
                    {
                        floor = Some(floor.map_or(v, |f| f.max(v)));
                    }
                }
                if let Some(floor) = floor {
                    out.insert((n.name().to_string(), seq.sequence.clone()), floor);
                }
            }
        }
    }
    out
}

/// Opens the node's transaction under pgtwin's lock and locks its captured tables against writers
/// (those in flight have committed, and queued, by then); returns what is installed there and the
/// captured tables.
async fn lock_for_down(
    n: &Connected,
    dry_run: bool,
    force: bool,
) -> Result<(crate::catalog::NodeInfo, Vec<QualName>)> {
    apply::begin(n.name(), &n.db).await?;
    // Re-read inside the lock: another run may have changed the node meanwhile.
    let info = catalog::node_info(n.name(), &n.db).await?;
    if info.foreign_schema {
        bail!("node {}: schema pgtwin exists but was not created by pgtwin: down leaves it alone (rename it, then run down again)", n.name());
    }
    let captured: Vec<QualName> = catalog::captured_tables(n.name(), &n.db)
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    if !dry_run {
        for table in &captured {
            lock_table(n.name(), &n.db, table).await?;
        }
    }
    // The check before `down` began was without locks: look once more, so nothing queued is dropped
    // unseen.
    if info.installed.is_some() && !force && !dry_run {
        refuse_queued_for_down(n).await?;
    }
    Ok((info, captured))
}

async fn down_node(
    n: &Connected,
    info: &crate::catalog::NodeInfo,
    captured: &[QualName],
    floors: &std::collections::HashMap<(String, QualName), i64>,
    dry_run: bool,
    force: bool,
    steps: &mut Vec<Step>,
) -> Result<()> {
    let sequences: Vec<gen::RestoredSequence> = if info.installed.is_some() {
        crate::state::recorded_sequences(n.name(), &n.db)
            .await?
            .into_iter()
            .map(|(sequence, increment)| gen::RestoredSequence {
                floor: floors
                    .get(&(n.name().to_string(), sequence.clone()))
                    .copied(),
                sequence,
                increment,
            })
            .collect()
    } else {
        Vec::new()
    };
    let drop_extension = match &info.installed {
        Some(i) if i.created_extension => other_fdw_servers(n.name(), &n.db).await? == 0,
        _ => false,
    };
    *steps = gen::uninstall_steps(captured, &sequences, drop_extension);
    if dry_run {
        apply::rollback(&n.db).await;
        return Ok(());
    }
    apply::run(n.name(), &n.db, steps).await?;
    if force {
        apply::commit(n.name(), &n.db).await?;
    }
    Ok(())
}

/// Fails while changes wait in the node's queue (of one table, or of any).
async fn refuse_queued(n: &Connected, table: Option<&QualName>) -> Result<()> {
    let queued = crate::state::queued_rows(n.name(), &n.db).await?;
    if queued == 0 {
        return Ok(());
    }
    let Some(table) = table else {
        bail!("{queued} change(s) on node {} still wait to be applied to its peer: run pgtwin run --once first", n.name());
    };
    let of_table = crate::state::queued_entries_of(n.name(), &n.db, table).await?;
    if of_table > 0 {
        bail!("table {table}: changes on node {} still wait to be applied to its peer: run pgtwin run --once, then repair again", n.name());
    }
    Ok(())
}

async fn refuse_queued_for_down(n: &Connected) -> Result<()> {
    refuse_queued(n, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}, or down --force to drop them"))
}

/// Whether the node's link stopped queueing and only a repair joins the nodes again.
async fn needs_repair(n: &Connected) -> Result<bool> {
    if n.info.installed.is_none() {
        return Ok(false);
    }
    crate::state::needs_repair(n.name(), &n.db).await
}

async fn other_fdw_servers(node: &str, db: &Client) -> Result<i64> {
    Ok(db
        .query_one(
            "SELECT count(*) FROM pg_foreign_server s JOIN pg_foreign_data_wrapper w ON w.oid = s.srvfdw
             WHERE w.fdwname = 'postgres_fdw' AND s.srvname <> $1",
            &[&names::SERVER],
        )
        .await
        .map_err(on_node(node, "reading foreign servers"))?
        .get(0))
}
