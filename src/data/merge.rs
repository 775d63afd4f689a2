//! Which rows go where when both nodes hold data: `up` merges two populated tables into their union,
//! `repair` makes two drifted tables equal. Both decide per differing key, then copy set-wise.

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::catalog::TableInfo;
use crate::data::compare::Diff;
use crate::data::copy::{copy_rows, delete_rows, OnConflict};
use crate::data::{content_columns, key_text, Side};
use crate::db::on_node;
use crate::progress::Progress;
use crate::sql::ident::{comma_list, Ident};

/// Which version wins where both nodes hold a key with different rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Winner {
    /// This node's row (index into the two nodes).
    Node(usize),
    /// The row with the later value in this column (NULL is oldest); ties go to the node whose name
    /// sorts last, as for conflicts after an outage.
    Newest(Ident),
}

/// What a merge does to a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub winner: Winner,
    /// Make the winner's table an exact copy: rows only on the other node are deleted there.
    pub mirror: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MergeReport {
    pub table: String,
    /// Rows written on each node (copied from the other).
    pub copied_to: [u64; 2],
    /// Rows deleted on each node (mirror only).
    pub deleted_on: [u64; 2],
    /// Keys only on each node: copied to the other (or, with mirror, deleted where the loser has them).
    pub only_on: [u64; 2],
    /// The first `SHOWN` of them, per node.
    pub only_on_keys: [Vec<String>; 2],
    /// Keys both nodes held with different rows.
    pub conflicts: u64,
    /// The first `SHOWN` of them, both versions side by side: the same key can mean different things on
    /// the two nodes (product 5 a hat on one, a shoe on the other), which only a person can tell.
    pub conflict_rows: Vec<ConflictRow>,
    /// Why `up` refuses this table (a dry run reports it instead of stopping at it).
    pub refused: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ConflictRow {
    pub key: String,
    /// The node whose row wins; None where no policy says (`up` refuses the table).
    pub winner: Option<String>,
    /// Every synced column (as the config names it) with its value on each node, as text.
    pub columns: Vec<ColumnValues>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ColumnValues {
    pub column: String,
    /// The value on each node (None: NULL, or no row).
    pub values: [Option<String>; 2],
}

impl ColumnValues {
    pub fn differs(&self) -> bool {
        self.values[0] != self.values[1]
    }
}

/// Keys and rows reported per table (and kind): enough to judge, bounded for a table of millions.
pub const SHOWN: usize = 20;

/// Decides and (unless `dry_run`) applies the merge of one table. `policy` None allows no conflicts:
/// rows on one node only are copied, and differing rows are an error asking for a policy.
pub async fn merge(
    nodes: [Side<'_>; 2],
    pair: &[TableInfo; 2],
    diff: &Diff,
    policy: Option<&Policy>,
    dry_run: bool,
    progress: &Progress,
) -> Result<MergeReport> {
    let names = [nodes[0].0, nodes[1].0];
    let t = &pair[0].synced_name;
    let mut report = MergeReport {
        table: t.to_string(),
        conflicts: diff.different.len() as u64,
        only_on: diff.only_on.each_ref().map(|k| k.len() as u64),
        only_on_keys: diff
            .only_on
            .each_ref()
            .map(|k| k.iter().take(SHOWN).cloned().collect()),
        ..MergeReport::default()
    };
    // Keys to write on node i (from the other node), and keys to delete on node i.
    let mut copy_to: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let mut delete_on: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for i in 0..2 {
        let only_here = diff.only_on[i].clone();
        match policy {
            Some(Policy {
                winner: Winner::Node(w),
                mirror: true,
            }) if *w != i => delete_on[i] = only_here,
            _ => copy_to[1 - i] = only_here,
        }
    }
    if !diff.different.is_empty() {
        let winners = match policy.map(|p| &p.winner) {
            None => {
                report.refused = Some(format!(
                    "table {}: {} key(s) hold different rows on {} and {} (e.g. {}): run pgtwin up --prefer NODE (this once), or set prefer = \"NODE\" or \"newest\" for the table in pgtwin.toml",
                    t,
                    diff.different.len(),
                    names[0],
                    names[1],
                    diff.different.iter().take(3).cloned().collect::<Vec<_>>().join(" ")
                ));
                match dry_run {
                    true => Vec::new(),
                    false => bail!("{}", report.refused.as_deref().unwrap_or_default()),
                }
            }
            Some(Winner::Node(w)) => vec![*w; diff.different.len()],
            Some(Winner::Newest(column)) => newest(nodes, pair, column, &diff.different).await?,
        };
        let shown = &diff.different[..diff.different.len().min(SHOWN)];
        let mut values = column_values(nodes, pair, shown).await?;
        for (i, key) in shown.iter().enumerate() {
            report.conflict_rows.push(ConflictRow {
                key: key.clone(),
                winner: winners.get(i).map(|&w| names[w].to_string()),
                columns: values.remove(key).unwrap_or_default(),
            });
        }
        for (key, &w) in diff.different.iter().zip(&winners) {
            copy_to[1 - w].push(key.clone());
        }
    }
    for i in 0..2 {
        report.copied_to[i] = copy_to[i].len() as u64;
        report.deleted_on[i] = delete_on[i].len() as u64;
    }
    if dry_run {
        return Ok(report);
    }
    for i in 0..2 {
        if !copy_to[i].is_empty() {
            progress.set_label(&format!("{t}: {} -> {}", names[1 - i], names[i]));
            // All of one node's rows into an empty table: copy the whole table, no key list.
            let all = copy_to[i].len() as u64 == diff.rows[1 - i] && diff.rows[i] == 0;
            let keys = if all {
                None
            } else {
                Some(copy_to[i].as_slice())
            };
            report.copied_to[i] = copy_rows(
                nodes[1 - i],
                nodes[i],
                (&pair[1 - i], &pair[i]),
                keys,
                OnConflict::Overwrite,
                progress,
            )
            .await?;
        }
        report.deleted_on[i] = delete_rows(nodes[i], &pair[i], &delete_on[i]).await?;
    }
    Ok(report)
}

/// For each key, the node whose row is newer by `column`.
async fn newest(
    nodes: [Side<'_>; 2],
    pair: &[TableInfo; 2],
    column: &Ident,
    keys: &[String],
) -> Result<Vec<usize>> {
    let [Some(col), Some(col_b)] = pair.each_ref().map(|t| t.synced_column(column)) else {
        bail!(
            "table {}: newest_by column {column} is not synced on both nodes: fix newest_by in pgtwin.toml",
            pair[0].synced_name
        );
    };
    let (t, t_b) = (&pair[0], &pair[1]);
    let (node_b, db_b) = nodes[1];
    let b_values: Vec<(String, Option<String>)> = db_b
        .query(
            &format!(
                "SELECT {k}, {c}::text FROM {} WHERE {k} = ANY($1)",
                t_b.name,
                c = col_b.name,
                k = key_text(t_b, None)
            ),
            &[&keys],
        )
        .await
        .map_err(on_node(
            node_b,
            &format!("reading {column} of {}", t_b.name),
        ))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let (bk, bv): (Vec<String>, Vec<Option<String>>) = b_values.into_iter().unzip();
    // Ties go to the node whose name sorts last: node 1 (nodes are in name order).
    let (node_a, db_a) = nodes[0];
    let a_newer: std::collections::HashSet<String> = db_a
        .query(
            &format!(
                "SELECT b.k FROM unnest($1::text[], $2::text[]) AS b(k, v) JOIN {table} t ON {kt} = b.k
                 WHERE (t.{c} IS NOT NULL AND b.v IS NULL) OR t.{c} > b.v::{ty}",
                table = t.name,
                c = col.name,
                kt = key_text(t, Some("t")),
                ty = col.ty
            ),
            &[&bk, &bv],
        )
        .await
        .map_err(on_node(node_a, &format!("comparing {column} of {}", t.name)))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(keys
        .iter()
        .map(|k| if a_newer.contains(k) { 0 } else { 1 })
        .collect())
}

/// Each key's synced columns with both nodes' values, as text (the columns are in the same order in
/// both nodes' views of the table; a node without the row gives NULLs).
async fn column_values(
    nodes: [Side<'_>; 2],
    pair: &[TableInfo; 2],
    keys: &[String],
) -> Result<HashMap<String, Vec<ColumnValues>>> {
    let mut out: HashMap<String, Vec<ColumnValues>> = keys
        .iter()
        .map(|k| {
            let columns = pair[0]
                .columns
                .iter()
                .map(|c| ColumnValues {
                    column: c.synced_as.as_str().to_string(),
                    values: [None, None],
                })
                .collect();
            (k.clone(), columns)
        })
        .collect();
    for (i, ((node, db), t)) in nodes.iter().zip(pair).enumerate() {
        let rows = db
            .query(
                &format!(
                    "SELECT {k}, ARRAY[{}]::text[] FROM {} r WHERE {k} = ANY($1)",
                    comma_list(content_columns(t).iter().map(|c| format!("r.{c}::text"))),
                    t.name,
                    k = key_text(t, Some("r"))
                ),
                &[&keys],
            )
            .await
            .map_err(on_node(node, &format!("reading {}", t.name)))?;
        for r in rows {
            let values: Vec<Option<String>> = r.get(1);
            if let Some(columns) = out.get_mut(&r.get::<_, String>(0)) {
                for (c, v) in columns.iter_mut().zip(values) {
                    c.values[i] = v;
                }
            }
        }
    }
    Ok(out)
}
