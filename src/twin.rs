//! Both nodes at once: connecting, reading their catalogs, and the compatibility rules that decide
//! whether a table can be synced. Everything `plan`, `up` and `status` know comes from here.

use std::time::Duration;

use anyhow::{bail, Result};
use tokio_postgres::Client;

use crate::catalog::{self, NodeInfo, TableInfo};
use crate::config::{Config, Node, Sequences};
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
    let timeout = Duration::from_secs(cfg.options.connect_timeout_s.into());
    let db = crate::db::connect(&node.name, &node.conn, timeout).await?;
    let info = catalog::node_info(&node.name, &db).await?;
    Ok(Connected {
        node: node.clone(),
        db,
        info,
    })
}

/// Connects to both nodes concurrently; either failing is an error naming that node.
pub async fn connect_both(cfg: &Config) -> Result<[Connected; 2]> {
    let (a, b) = tokio::join!(connect(cfg, &cfg.nodes[0]), connect(cfg, &cfg.nodes[1]));
    Ok([a?, b?])
}

/// Reads every configured table on both nodes and checks that they match. Returns, per table, the info
/// of node 0 and of node 1.
pub async fn inspect_tables(cfg: &Config, nodes: &[Connected; 2]) -> Result<Vec<[TableInfo; 2]>> {
    let mut out = Vec::new();
    for table in &cfg.tables {
        out.push(inspect_table(nodes, table).await?);
    }
    Ok(out)
}

/// Like `inspect_tables`, but a table that cannot be synced as it is (drifted apart, missing) does not
/// stop the others: it is returned with what is wrong, for `check` and `status` to report.
pub async fn inspect_tolerant(
    cfg: &Config,
    nodes: &[Connected; 2],
) -> (Vec<[TableInfo; 2]>, Vec<(QualName, String)>) {
    let mut tables = Vec::new();
    let mut problems = Vec::new();
    for table in &cfg.tables {
        match inspect_table(nodes, table).await {
            Ok(pair) => tables.push(pair),
            Err(e) => problems.push((table.name.clone(), format!("{e:#}"))),
        }
    }
    (tables, problems)
}

/// Reads one configured table on both nodes; an error says how they differ and what to run.
pub async fn inspect_table(
    nodes: &[Connected; 2],
    table: &crate::config::Table,
) -> Result<[TableInfo; 2]> {
    let a = catalog::table_info(nodes[0].name(), &nodes[0].db, table).await?;
    let b = catalog::table_info(nodes[1].name(), &nodes[1].db, table).await?;
    check_compatible(nodes[0].name(), &a, nodes[1].name(), &b)?;
    Ok([a, b])
}

/// Two tables can be synced when they have the same columns with the same types, nullability and
/// generation, the same enum labels, and the same key. Column order may differ: rows are shipped by name.
pub fn check_compatible(na: &str, a: &TableInfo, nb: &str, b: &TableInfo) -> Result<()> {
    let t = &a.name;
    for (n1, t1, n2, t2) in [(na, a, nb, b), (nb, b, na, a)] {
        for c in &t1.columns {
            if t2.column(&c.name).is_none() {
                bail!(
                    "column {} of table {t} exists on node {n1} but not on node {n2}: run ALTER TABLE {t} ADD COLUMN {} {} on {n2}, then pgtwin up",
                    c.name,
                    c.name,
                    c.ty
                );
            }
        }
    }
    for c in &a.columns {
        if c.name.as_str().starts_with(names::RESERVED_PREFIX) {
            bail!("column {} of table {t}: names starting with {} are reserved for pgtwin's own use: rename the column", c.name, names::RESERVED_PREFIX);
        }
        let other = b.column(&c.name).expect("checked above");
        if c.ty != other.ty {
            bail!(
                "column {} of table {t} is {} on node {na} but {} on node {nb}: make the types equal (ALTER TABLE {t} ALTER COLUMN {} TYPE ... on one node), then pgtwin up",
                c.name,
                c.ty,
                other.ty,
                c.name
            );
        }
        if c.not_null != other.not_null {
            bail!("column {} of table {t} is {} on node {na} but not on node {nb}: make nullability equal", c.name, if c.not_null { "NOT NULL" } else { "nullable" });
        }
        if c.generated != other.generated {
            bail!("column {} of table {t} is generated on only one node: make it the same on {na} and {nb}", c.name);
        }
        if c.enum_labels != other.enum_labels {
            bail!("column {} of table {t}: enum {} has different labels on nodes {na} and {nb}: make them equal", c.name, c.ty);
        }
    }
    if a.key != b.key {
        bail!(
            "table {t} has key ({}) on node {na} but ({}) on node {nb}: give it the same primary key on both",
            crate::sql::ident::comma_list(&a.key),
            crate::sql::ident::comma_list(&b.key)
        );
    }
    Ok(())
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
        // Every key column with a sequence on either node, and both nodes' sequences for it.
        let mut columns: Vec<&Ident> = pair
            .iter()
            .flat_map(|t| t.key_sequences.iter().map(|s| &s.column))
            .collect();
        columns.sort();
        columns.dedup();
        for column in columns {
            let seqs = [0, 1].map(|i| pair[i].key_sequences.iter().find(|s| &s.column == column));
            // Ids in use (largest key on either node), and ids that either sequence may already have
            // handed out to a transaction not yet visible.
            let mut key_floor = 0;
            for (i, n) in nodes.iter().enumerate() {
                if let Some(m) = catalog::max_value(n.name(), &n.db, &pair[i].name, column).await? {
                    key_floor = key_floor.max(m);
                }
            }
            let floor = seqs
                .iter()
                .flatten()
                .fold(key_floor, |f, s| f.max(s.next_value - 1));
            for (i, seq) in seqs.iter().enumerate() {
                let Some(seq) = seq else { continue };
                let position = i as i64 + 1;
                if !seq.may_alter {
                    bail!("sequence {} of table {} is not owned by the connecting role on node {}: run pgtwin as its owner, or set sequences = \"none\"", seq.sequence, pair[i].name, nodes[i].name());
                }
                let aligned = seq.increment == count
                    && seq.next_value.rem_euclid(count) == position.rem_euclid(count)
                    && seq.next_value > key_floor;
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

/// Tables that carry pgtwin triggers on a node but are not in the config.
pub async fn stale_tables(cfg: &Config, node: &Connected) -> Result<Vec<QualName>> {
    Ok(catalog::captured_tables(node.name(), &node.db)
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| !cfg.tables.iter().any(|c| &c.name == t))
        .collect())
}
