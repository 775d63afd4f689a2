//! Comparing a table on both nodes without pulling it through pgtwin.
//!
//! Pass 1: each node, in one scan, sorts its rows into buckets by a hash of the key and returns per
//! bucket the row count and an XOR of 64-bit row hashes: a few thousand numbers, whatever the table's
//! size. Equal tables are confirmed here. Pass 2: only the buckets that differ are read again, as (key,
//! row hash) pairs, and compared key by key. Hash buckets rather than key ranges: the two nodes agree on
//! them without first agreeing on range boundaries, they work for any key type, and scattered differences
//! narrow down in one more pass instead of a bisection's many.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::Result;
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::Client;

use crate::catalog::TableInfo;
use crate::data::{content_columns, key_text};
use crate::db::on_node;
use crate::sql::ident::comma_list;

/// Keys (as `ROW(key)::text`) that differ between node 0 and node 1.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Diff {
    pub rows: [u64; 2],
    /// Keys present on one node only, per node.
    pub only_on: [Vec<String>; 2],
    /// Keys present on both nodes with different rows.
    pub different: Vec<String>,
}

impl Diff {
    pub fn is_equal(&self) -> bool {
        self.only_on[0].is_empty() && self.only_on[1].is_empty() && self.different.is_empty()
    }

    pub fn counts(&self) -> [usize; 3] {
        [
            self.only_on[0].len(),
            self.only_on[1].len(),
            self.different.len(),
        ]
    }

    /// Every differing key.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.only_on[0]
            .iter()
            .chain(&self.only_on[1])
            .chain(&self.different)
    }
}

/// A node to compare: its name and connection.
pub type Side<'a> = (&'a str, &'a Client);

/// How rows hash: the key picks the bucket, the whole row (columns in name order) its content hash.
struct Hashing {
    key: String,
    row: String,
    mask: i64,
}

impl Hashing {
    fn new(t: &TableInfo, rows_estimate: f64) -> Hashing {
        // About 512 rows a bucket: pass 2 then reads little around each difference.
        let buckets = ((rows_estimate / 512.0).max(16.0) as u64)
            .next_power_of_two()
            .min(1 << 16);
        Hashing {
            key: format!("hashtextextended({}, 0)", key_text(t, None)),
            row: format!(
                "hashtextextended(ROW({})::text, 1)",
                comma_list(content_columns(t))
            ),
            mask: buckets as i64 - 1,
        }
    }

    fn bucket(&self) -> String {
        format!("({} & {})", self.key, self.mask)
    }
}

/// Compares the table on both nodes.
pub async fn compare(nodes: [Side<'_>; 2], t: &TableInfo) -> Result<Diff> {
    let estimate = row_estimate(nodes, t).await?;
    let hashing = Hashing::new(t, estimate);
    let (a, b) = tokio::try_join!(
        summary(nodes[0], t, &hashing),
        summary(nodes[1], t, &hashing)
    )?;
    let mut diff = Diff {
        rows: [a.values().map(|s| s.0).sum(), b.values().map(|s| s.0).sum()],
        ..Diff::default()
    };
    let all: HashSet<i64> = a.keys().chain(b.keys()).copied().collect();
    let differing: Vec<i64> = all
        .into_iter()
        .filter(|bucket| a.get(bucket) != b.get(bucket))
        .collect();
    if differing.is_empty() {
        return Ok(diff);
    }
    let (rows_a, rows_b) = tokio::try_join!(
        bucket_rows(nodes[0], t, &hashing, &differing),
        bucket_rows(nodes[1], t, &hashing, &differing)
    )?;
    classify(&rows_a, &rows_b, &mut diff);
    Ok(diff)
}

/// Compares again, after a pause, only the buckets of the keys found different; keeps the keys that
/// still differ. Changes in flight when the first comparison read the nodes are not differences.
pub async fn recheck(nodes: [Side<'_>; 2], t: &TableInfo, diff: Diff, rounds: u32) -> Result<Diff> {
    let mut diff = diff;
    for _ in 0..rounds {
        if diff.is_equal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let suspects: HashSet<String> = diff.keys().cloned().collect();
        let keys: Vec<String> = suspects.iter().cloned().collect();
        let (rows_a, rows_b) =
            tokio::try_join!(key_rows(nodes[0], t, &keys), key_rows(nodes[1], t, &keys))?;
        let mut again = Diff {
            rows: diff.rows,
            ..Diff::default()
        };
        classify(&rows_a, &rows_b, &mut again);
        let stable = again.keys().filter(|k| suspects.contains(*k)).count() == suspects.len();
        diff = again;
        if stable {
            break;
        }
    }
    Ok(diff)
}

fn classify(a: &HashMap<String, i64>, b: &HashMap<String, i64>, diff: &mut Diff) {
    for (key, hash) in a {
        match b.get(key) {
            None => diff.only_on[0].push(key.clone()),
            Some(h) if h != hash => diff.different.push(key.clone()),
            Some(_) => {}
        }
    }
    diff.only_on[1].extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    diff.only_on[0].sort();
    diff.only_on[1].sort();
    diff.different.sort();
}

async fn row_estimate(nodes: [Side<'_>; 2], t: &TableInfo) -> Result<f64> {
    let mut most: f64 = 0.0;
    for (node, db) in nodes {
        let n: f32 = db
            .query_one("SELECT greatest(reltuples, pg_relation_size(oid) / 100.0)::real FROM pg_class WHERE oid = $1::text::regclass", &[&t.name.to_string()])
            .await
            .map_err(on_node(node, "reading table statistics"))?
            .get(0);
        most = most.max(f64::from(n));
    }
    Ok(most)
}

/// Pass 1: bucket → (rows, XOR of row hashes).
async fn summary(side: Side<'_>, t: &TableInfo, h: &Hashing) -> Result<BTreeMap<i64, (u64, i64)>> {
    let (node, db) = side;
    let sql = format!(
        "SELECT {} AS bucket, count(*), bit_xor({}) FROM {} GROUP BY 1",
        h.bucket(),
        h.row,
        t.name
    );
    let rows = db
        .query(&sql, &[])
        .await
        .map_err(on_node(node, &format!("comparing {}", t.name)))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0),
                (r.get::<_, i64>(1) as u64, r.get::<_, i64>(2)),
            )
        })
        .collect())
}

/// Pass 2: key → row hash, for the rows of the given buckets.
async fn bucket_rows(
    side: Side<'_>,
    t: &TableInfo,
    h: &Hashing,
    buckets: &[i64],
) -> Result<HashMap<String, i64>> {
    let sql = format!(
        "SELECT {}, {} FROM {} WHERE {} = ANY($1)",
        key_text(t, None),
        h.row,
        t.name,
        h.bucket()
    );
    stream_pairs(side, &sql, &buckets.to_vec(), t).await
}

/// key → row hash, for the given keys.
async fn key_rows(side: Side<'_>, t: &TableInfo, keys: &[String]) -> Result<HashMap<String, i64>> {
    let h = Hashing::new(t, 0.0);
    let sql = format!(
        "SELECT {k}, {} FROM {} WHERE {k} = ANY($1)",
        h.row,
        t.name,
        k = key_text(t, None)
    );
    stream_pairs(side, &sql, &keys.to_vec(), t).await
}

async fn stream_pairs<P>(
    side: Side<'_>,
    sql: &str,
    param: &P,
    t: &TableInfo,
) -> Result<HashMap<String, i64>>
where
    P: tokio_postgres::types::ToSql + Sync,
{
    let (node, db) = side;
    let what = format!("comparing {}", t.name);
    let stream = db
        .query_raw(sql, [param as &(dyn tokio_postgres::types::ToSql + Sync)])
        .await
        .map_err(on_node(node, &what))?;
    pin_mut!(stream);
    let mut out = HashMap::new();
    while let Some(row) = stream.try_next().await.map_err(on_node(node, &what))? {
        out.insert(row.get(0), row.get(1));
    }
    Ok(out)
}
