//! Row-level comparison of a synced table on both nodes. Each node hashes its rows on the server (one
//! md5 per row over the columns in name order, text form), so only keys and hashes travel.

use std::collections::HashMap;

use anyhow::Result;
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::Client;

use crate::catalog::TableInfo;
use crate::db::on_node;
use crate::sql::ident::comma_list;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Diff {
    pub rows: [u64; 2],
    pub only_on: [u64; 2],
    pub different: u64,
    /// Differing keys (as row text), the first ones found.
    pub sample_keys: Vec<String>,
}

impl Diff {
    pub fn is_equal(&self) -> bool {
        self.only_on == [0, 0] && self.different == 0
    }
}

const SAMPLE_KEYS: usize = 20;

/// `SELECT key_text, row_hash FROM table`, with columns in name order so both nodes agree whatever the
/// physical column order. Sessions run with UTC and full float precision (db::SESSION_SETUP), so the
/// text form is exact.
fn digest_query(t: &TableInfo) -> String {
    let mut cols: Vec<_> = t.columns.iter().map(|c| &c.name).collect();
    cols.sort();
    format!(
        "SELECT ROW({})::text, md5(ROW({})::text) FROM {}",
        comma_list(&t.key),
        comma_list(cols),
        t.name
    )
}

async fn digests(node: &str, db: &Client, t: &TableInfo) -> Result<HashMap<String, String>> {
    let stream = db
        .query_raw(digest_query(t).as_str(), std::iter::empty::<&str>())
        .await
        .map_err(on_node(node, &format!("reading {}", t.name)))?;
    pin_mut!(stream);
    let mut out = HashMap::new();
    while let Some(row) = stream
        .try_next()
        .await
        .map_err(on_node(node, &format!("reading {}", t.name)))?
    {
        out.insert(row.get(0), row.get(1));
    }
    Ok(out)
}

/// Compares one table on the two nodes.
pub async fn compare(nodes: [(&str, &Client); 2], t: &TableInfo) -> Result<Diff> {
    let (a, b) = tokio::try_join!(
        digests(nodes[0].0, nodes[0].1, t),
        digests(nodes[1].0, nodes[1].1, t)
    )?;
    let mut diff = Diff {
        rows: [a.len() as u64, b.len() as u64],
        ..Diff::default()
    };
    let note = |diff: &mut Diff, key: &str| {
        if diff.sample_keys.len() < SAMPLE_KEYS {
            diff.sample_keys.push(key.to_string());
        }
    };
    for (key, hash) in &a {
        match b.get(key) {
            None => {
                diff.only_on[0] += 1;
                note(&mut diff, key);
            }
            Some(h) if h != hash => {
                diff.different += 1;
                note(&mut diff, key);
            }
            Some(_) => {}
        }
    }
    for key in b.keys() {
        if !a.contains_key(key) {
            diff.only_on[1] += 1;
            note(&mut diff, key);
        }
    }
    diff.sample_keys.sort();
    Ok(diff)
}
