//! Both nodes at once: connecting, reading their catalogs, and the compatibility rules that decide
//! whether a table can be synced. Everything `plan`, `up` and `status` know comes from here.

use std::time::Duration;

use anyhow::{bail, Result};
use tokio_postgres::Client;

use crate::catalog::{self, Column, KeySequence, NodeInfo, TableInfo};
use crate::config::{Config, Node, Sequences};
use crate::problems::Problems;
use crate::sql::gen::{interleaved_start, SequenceChange};
use crate::sql::ident::{Ident, QualName};
use crate::sql::names;

pub struct Connected {
    pub node: Node,
    pub db: Client,
    pub info: NodeInfo,
}

impl Connected {
    pub fn name(&self) -> &str {
        &self.node.name
    }
}

pub async fn connect(cfg: &Config, node: &Node) -> Result<Connected> {
    connect_node(
        node,
        Duration::from_secs(cfg.options.connect_timeout_s.into()),
    )
    .await
}

/// Connects to a node and reads what it is (no config needed: `init` has none yet).
pub async fn connect_node(node: &Node, timeout: Duration) -> Result<Connected> {
    let db = crate::db::connect(&node.name, &node.conn, timeout).await?;
    let info = catalog::node_info(&node.name, &db).await?;
    crate::state::refuse_newer(&node.name, &info)?;
    Ok(Connected {
        node: node.clone(),
        db,
        info,
    })
}

/// Connects to both nodes concurrently; a failure is an error naming the node (both, when both fail).
pub async fn connect_both(cfg: &Config) -> Result<[Connected; 2]> {
    let (a, b) = tokio::join!(connect(cfg, &cfg.nodes[0]), connect(cfg, &cfg.nodes[1]));
    match (a, b) {
        (Ok(a), Ok(b)) => Ok([a, b]),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        (Err(a), Err(b)) => {
            let mut both = Problems::default();
            both.push_error(a);
            both.push_error(b);
            Err(both.into())
        }
    }
}

/// One synced table as both nodes have it: each node's view restricted to the columns that are synced
/// (same order on both), and every way the two schemas differ.
#[derive(Clone, Debug)]
pub struct TablePair {
    pub infos: [TableInfo; 2],
    pub drift: Vec<String>,
}

/// Reads every configured table on both nodes. A table that cannot be synced as it is (missing, keys
/// that differ) does not stop the others: it is returned with what is wrong, for `prepare` (which
/// refuses), `check` and `status` to report.
pub async fn inspect_tolerant(
    cfg: &Config,
    nodes: &[Connected; 2],
) -> (Vec<TablePair>, Vec<(QualName, String)>) {
    let mut tables = Vec::new();
    let mut problems = Vec::new();
    for table in &cfg.tables {
        match inspect_table(nodes, table).await {
            Ok(pair) => tables.push(pair),
            // Each node's problem with the table on its own.
            Err(e) => {
                let mut each = Problems::default();
                each.push_error(e);
                problems.extend(each.0.into_iter().map(|p| (table.name.clone(), p)));
            }
        }
    }
    (tables, problems)
}

/// Reads one configured table on both nodes; an error says why it cannot be synced and what to run.
pub async fn inspect_table(
    nodes: &[Connected; 2],
    table: &crate::config::Table,
) -> Result<TablePair> {
    let (a, b) = (
        catalog::table_info(nodes[0].name(), &nodes[0].db, table).await,
        catalog::table_info(nodes[1].name(), &nodes[1].db, table).await,
    );
    // Both nodes' problems with the table, not just the first node's.
    let (mut a, mut b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
        (Err(a), Err(b)) => {
            let mut both = Problems::default();
            both.push_error(a);
            both.push_error(b);
            return Err(both.into());
        }
    };
    // Every column the config renames, here and there, whether or not it exists yet.
    let renamed: std::collections::BTreeSet<&Ident> = table
        .on_node
        .values()
        .flat_map(|n| n.rename.keys())
        .collect();
    for (info, here, there) in [
        (&mut a, nodes[0].name(), nodes[1].name()),
        (&mut b, nodes[1].name(), nodes[0].name()),
    ] {
        info.peer_renames = renamed
            .iter()
            .map(|c| (table.column_on(here, c), table.column_on(there, c)))
            .filter(|(x, y)| x != y)
            .collect();
    }
    pair_tables(nodes[0].name(), a, nodes[1].name(), b)
}

/// Two tables are synced by the columns both have (by name), as long as their keys agree. Everything
/// else that differs (a column on one node only, types, nullability, defaults, unique constraints,
/// enum labels, generation) is drift: reported, never a reason to stop syncing the shared columns.
pub fn pair_tables(na: &str, a: TableInfo, nb: &str, b: TableInfo) -> Result<TablePair> {
    let t = a.synced_name.clone();
    for c in a.columns.iter().chain(&b.columns) {
        if c.name.as_str().starts_with(names::RESERVED_PREFIX) {
            bail!("column {} of table {t}: names starting with {} are reserved for pgtwin's own use: rename the column", c.name, names::RESERVED_PREFIX);
        }
    }
    if a.synced_key() != b.synced_key() {
        bail!(
            "table {t} has key ({}) on node {na} but ({}) on node {nb}: give it the same primary key on both, or set key = [...] in pgtwin.toml to columns with a unique index on both",
            crate::sql::ident::comma_list(&a.key),
            crate::sql::ident::comma_list(&b.key)
        );
    }
    for (ka, kb) in a.key.iter().zip(&b.key) {
        let (ca, cb) = (
            a.column(ka).expect("key column"),
            b.column(kb).expect("key column"),
        );
        if ca.ty != cb.ty {
            bail!(
                "key column {ka} of table {t} is {} on node {na} but {} on node {nb}: make the key types equal (ALTER TABLE {t} ALTER COLUMN {ka} TYPE ...), then pgtwin up",
                ca.ty, cb.ty
            );
        }
    }
    let mut drift = Vec::new();
    for (n1, t1, n2, t2) in [(na, &a, nb, &b), (nb, &b, na, &a)] {
        for c in &t1.columns {
            if t2.synced_column(&c.synced_as).is_none() {
                drift.push(format!(
                    "column {} ({}) exists on node {n1} only: not synced; {n1} keeps its values, rows from {n2} get its default",
                    c.name, c.ty
                ));
            }
        }
        for u in &t1.unique {
            if !t2.unique.contains(u) {
                drift.push(format!(
                    "unique constraint on ({}) exists on node {n1} only: a row that {n2} accepts may fail there",
                    u.join(", ")
                ));
            }
        }
    }
    let mut synced: [Vec<Column>; 2] = [Vec::new(), Vec::new()];
    for ca in &a.columns {
        let Some(cb) = b.synced_column(&ca.synced_as) else {
            continue;
        };
        let c = &ca.synced_as;
        if ca.generated || cb.generated {
            if ca.generated != cb.generated {
                drift.push(format!(
                    "column {c} is generated on node {} only: not compared; the other node's values are its own",
                    if ca.generated { na } else { nb }
                ));
            }
            continue;
        }
        if ca.ty != cb.ty {
            drift.push(format!(
                "column {c} is {} on node {na} but {} on node {nb}: synced as text; a value one side cannot take fails that write",
                ca.ty, cb.ty
            ));
        }
        if ca.not_null != cb.not_null {
            drift.push(format!(
                "column {c} is NOT NULL on node {} only: a NULL from the other node fails that write",
                if ca.not_null { na } else { nb }
            ));
        }
        // Each node's serial column draws from its own sequence, whose name may differ.
        let own_sequence =
            |d: &Option<String>| d.as_deref().is_some_and(|d| d.starts_with("nextval("));
        if ca.default != cb.default && !(own_sequence(&ca.default) && own_sequence(&cb.default)) {
            drift.push(format!(
                "column {c} has default {} on node {na} but {} on node {nb}",
                ca.default.as_deref().unwrap_or("NULL"),
                cb.default.as_deref().unwrap_or("NULL")
            ));
        }
        if ca.enum_labels != cb.enum_labels {
            drift.push(format!(
                "column {c}: enum {} has different labels on nodes {na} and {nb}: a label one side lacks fails that write",
                ca.ty
            ));
        }
        // Values cross by their text when the types differ: neither COPY's binary form nor the
        // types' own hash functions agree then.
        let same_type = ca.ty == cb.ty && ca.enum_labels == cb.enum_labels;
        for (out, (col, peer)) in synced.iter_mut().zip([(ca, cb), (cb, ca)]) {
            out.push(Column {
                binary_ok: col.binary_ok && same_type,
                typed_hash: col.typed_hash.filter(|_| same_type),
                same_type_as_peer: same_type,
                peer_name: peer.name.clone(),
                ..col.clone()
            });
        }
    }
    let [sa, sb] = synced;
    let (header_a, header_b) = (
        crate::change::columns_json(&a.all_columns),
        crate::change::columns_json(&b.all_columns),
    );
    Ok(TablePair {
        infos: [
            TableInfo {
                columns: sa,
                peer_header: header_b,
                ..a
            },
            TableInfo {
                columns: sb,
                peer_header: header_a,
                ..b
            },
        ],
        drift,
    })
}

/// Sequence settings for interleaving, per node (index 0 and 1). Reads the largest keys on both nodes;
/// call it while the tables are locked against writes.
pub async fn sequence_changes(
    cfg: &Config,
    nodes: &[Connected; 2],
    tables: &[[TableInfo; 2]],
) -> Result<[Vec<SequenceChange>; 2]> {
    let mut out: [Vec<SequenceChange>; 2] = [Vec::new(), Vec::new()];
    if cfg.options.sequences == Sequences::None {
        return Ok(out);
    }
    let count = nodes.len() as i64;
    for pair in tables {
        // Every key column (by position: its name may differ per node) with a sequence on either
        // node, and both nodes' sequences for it.
        for k in 0..pair[0].key.len() {
            let seqs = [0, 1].map(|i| {
                pair[i]
                    .key_sequences
                    .iter()
                    .find(|s| s.column == pair[i].key[k])
            });
            if seqs.iter().all(Option::is_none) {
                continue;
            }
            // Ids in use (largest key on either node), and ids that either sequence may already have
            // handed out to a transaction not yet visible.
            let mut key_floor = 0;
            for (i, n) in nodes.iter().enumerate() {
                if let Some(m) =
                    catalog::max_value(n.name(), &n.db, &pair[i].name, &pair[i].key[k]).await?
                {
                    key_floor = key_floor.max(m);
                }
            }
            // Per node, the largest id in its residue on either node: a node restored from a backup
            // has lost ids it handed out that its peer still holds.
            let mut own_max = [0i64; 2];
            for (r, max) in own_max.iter_mut().enumerate() {
                for (i, n) in nodes.iter().enumerate() {
                    let m = catalog::max_in_residue(
                        n.name(),
                        &n.db,
                        &pair[i].name,
                        &pair[i].key[k],
                        count,
                        r as i64 + 1,
                    )
                    .await?;
                    // None: no key of this residue among the top ones (the other node inserted
                    // more since): the floor stays as the other reads say.
                    *max = (*max).max(m.unwrap_or(0));
                }
            }
            let floor = seqs
                .iter()
                .flatten()
                .fold(key_floor, |f, s| f.max(s.next_value - 1));
            for (i, seq) in seqs.iter().enumerate() {
                let Some(seq) = seq else { continue };
                let position = i as i64 + 1;
                if let Some(problem) = sequence_problem(seq, &pair[i].name, nodes[i].name()) {
                    bail!("{problem}");
                }
                let in_residue = |v: i64| v.rem_euclid(count) == position.rem_euclid(count);
                // Interleaved already: in its residue, and above every id of that residue on either
                // node (the other residue's ids do not matter, whatever their size).
                let aligned = seq.increment == count
                    && in_residue(seq.next_value)
                    && in_residue(seq.start)
                    && seq.next_value > own_max[i];
                if !aligned {
                    out[i].push(SequenceChange {
                        sequence: seq.sequence.clone(),
                        original_increment: seq.increment,
                        increment: count,
                        restart: interleaved_start(floor, position, count),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Why a key sequence cannot be interleaved, if it cannot.
pub fn sequence_problem(seq: &KeySequence, table: &QualName, node: &str) -> Option<String> {
    if !seq.may_alter {
        return Some(format!("sequence {} of table {table} is not owned by the connecting role on node {node}: run pgtwin as its owner, or set sequences = \"none\"", seq.sequence));
    }
    // A sequence that wraps around, or counts down, would leave its node's ids.
    if seq.cycle {
        return Some(format!("sequence {} of table {table} on node {node} is CYCLE: after its end it would hand out the other node's ids: run ALTER SEQUENCE {} NO CYCLE, or set sequences = \"none\"", seq.sequence, seq.sequence));
    }
    if seq.increment < 0 {
        return Some(format!("sequence {} of table {table} on node {node} counts down (INCREMENT BY {}): interleaving supports ascending key sequences only: set sequences = \"none\"", seq.sequence, seq.increment));
    }
    None
}

/// Tables that carry pgtwin triggers on a node but are not in the config.
pub async fn stale_tables(cfg: &Config, node: &Connected) -> Result<Vec<QualName>> {
    Ok(catalog::captured_tables(node.name(), &node.db)
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| !cfg.tables.iter().any(|c| c.name_on(node.name()) == t))
        .collect())
}
