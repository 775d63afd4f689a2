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

use crate::catalog::TableInfo;
use crate::data::{content_columns, key_text, Side};
use crate::db::on_node;
use crate::sql::ident::{comma_list, Ident};

/// Keys (as `ROW(key)::text`) that differ between node 0 and node 1.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Diff {
    pub rows: [u64; 2],
    /// Keys present on one node only, per node.
    pub only_on: [Vec<String>; 2],
    /// Keys present on both nodes with different rows.
    pub different: Vec<String>,
    /// How rows were bucketed, and the buckets that differed: `recheck` reads only those again.
    #[serde(skip)]
    pub scheme: Option<Buckets>,
    #[serde(skip)]
    pub differing_buckets: Vec<i64>,
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

/// How rows fall into buckets. A single integer key is bucketed by ranges of its values, so reading a
/// differing bucket again is an index range scan; any other key by a hash of its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Buckets {
    Range { column: Ident, lo: i64, width: i64 },
    Hash { key_hash: String, mask: i64 },
}

/// About 512 rows a bucket: a differing bucket is then cheap to read again.
const ROWS_PER_BUCKET: f64 = 512.0;

impl Buckets {
    async fn choose(nodes: [Side<'_>; 2], t: &TableInfo) -> Result<Buckets> {
        let estimate = row_estimate(nodes, t).await?;
        let count = ((estimate / ROWS_PER_BUCKET).max(16.0) as u64)
            .next_power_of_two()
            .min(1 << 16) as i64;
        let integer_key = match t.key.as_slice() {
            [k] => t
                .column(k)
                .filter(|c| matches!(c.ty.0.as_str(), "smallint" | "integer" | "bigint")),
            _ => None,
        };
        if let Some(col) = integer_key {
            let (mut lo, mut hi) = (i64::MAX, i64::MIN);
            for (node, db) in nodes {
                let row = db
                    .query_one(
                        &format!(
                            "SELECT min({c})::bigint, max({c})::bigint FROM {}",
                            t.name,
                            c = col.name
                        ),
                        &[],
                    )
                    .await
                    .map_err(on_node(node, &format!("reading {}", t.name)))?;
                if let (Some(a), Some(b)) =
                    (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1))
                {
                    lo = lo.min(a);
                    hi = hi.max(b);
                }
            }
            // Integer arithmetic below needs the span to fit in a bigint; keys spread over the whole
            // bigint range fall back to hash buckets.
            if lo <= hi && hi.checked_sub(lo).is_some_and(|span| span < i64::MAX) {
                let width = ((hi - lo) / count + 1).max(1);
                return Ok(Buckets::Range {
                    column: col.name.clone(),
                    lo,
                    width,
                });
            }
        }
        let key_cols: Vec<&Ident> = t.key.iter().collect();
        Ok(Buckets::Hash {
            key_hash: hash_expr(t, &key_cols, 0, None),
            mask: count - 1,
        })
    }

    fn expr(&self) -> String {
        match self {
            // Keys are >= lo, so integer division is the floor: bucket n holds [lo + n*w, lo + (n+1)*w).
            Buckets::Range { column, lo, width } => {
                format!("(({column}::bigint - {lo}) / {width})")
            }
            Buckets::Hash { key_hash, mask } => format!("({key_hash} & {mask})"),
        }
    }

    /// `FROM ... WHERE` part selecting the rows of some buckets, with its two bigint[] parameters: range
    /// bounds (an index range scan per bucket), or the bucket numbers twice (a filtered scan).
    fn rows_of(&self, table: &str, buckets: &[i64]) -> (String, Vec<i64>, Vec<i64>) {
        match self {
            Buckets::Range { column, lo, width } => {
                let bound = |n: i64, end: i64| {
                    (i128::from(*lo) + i128::from(n + end) * i128::from(*width) - i128::from(end))
                        .clamp(i128::from(i64::MIN), i128::from(i64::MAX))
                        as i64
                };
                (
                    format!("{table} t JOIN unnest($1::bigint[], $2::bigint[]) AS r(lo, hi) ON t.{column} BETWEEN r.lo AND r.hi"),
                    buckets.iter().map(|n| bound(*n, 0)).collect(),
                    buckets.iter().map(|n| bound(*n, 1)).collect(),
                )
            }
            Buckets::Hash { .. } => (
                format!(
                    "{table} t WHERE {} = ANY($1) AND cardinality($2::bigint[]) >= 0",
                    self.expr()
                ),
                buckets.to_vec(),
                buckets.to_vec(),
            ),
        }
    }
}

/// A 64-bit hash of the columns: the types' own hash where it is exact (Column::exact_hash), the text
/// form for the rest; several times faster than hashing everything as text.
fn hash_expr(t: &TableInfo, cols: &[&Ident], seed: i64, alias: Option<&str>) -> String {
    let (typed, as_text): (Vec<&Ident>, Vec<&Ident>) = cols
        .iter()
        .copied()
        .partition(|c| t.column(c).is_some_and(|col| col.exact_hash));
    let prefix = alias.map_or(String::new(), |a| format!("{a}."));
    let list = |v: Vec<&Ident>| comma_list(v.iter().map(|c| format!("{prefix}{c}")));
    let mut parts = Vec::new();
    if !typed.is_empty() {
        parts.push(format!(
            "hash_record_extended(ROW({}), {seed})",
            list(typed)
        ));
    }
    if !as_text.is_empty() {
        parts.push(format!(
            "hashtextextended(ROW({})::text, {})",
            list(as_text),
            seed + 2
        ));
    }
    parts.join(" # ")
}

/// Compares the table on both nodes.
pub async fn compare(nodes: [Side<'_>; 2], t: &TableInfo) -> Result<Diff> {
    let scheme = Buckets::choose(nodes, t).await?;
    let row_hash = hash_expr(t, &content_columns(t), 1, None);
    let (a, b) = tokio::try_join!(
        summary(nodes[0], t, &scheme, &row_hash),
        summary(nodes[1], t, &scheme, &row_hash)
    )?;
    let mut diff = Diff {
        rows: [a.values().map(|s| s.0).sum(), b.values().map(|s| s.0).sum()],
        ..Diff::default()
    };
    let all: HashSet<i64> = a.keys().chain(b.keys()).copied().collect();
    let mut differing: Vec<i64> = all
        .into_iter()
        .filter(|bucket| a.get(bucket) != b.get(bucket))
        .collect();
    differing.sort_unstable();
    if !differing.is_empty() {
        read_buckets(nodes, t, &scheme, &differing, &mut diff).await?;
    }
    diff.scheme = Some(scheme);
    diff.differing_buckets = differing;
    Ok(diff)
}

/// Pass 2: the rows of the given buckets, key by key.
async fn read_buckets(
    nodes: [Side<'_>; 2],
    t: &TableInfo,
    scheme: &Buckets,
    buckets: &[i64],
    diff: &mut Diff,
) -> Result<()> {
    let (from, p1, p2) = scheme.rows_of(&t.name.to_string(), buckets);
    let sql = format!(
        "SELECT {}, {} FROM {from}",
        key_text(t, Some("t")),
        hash_expr(t, &content_columns(t), 1, Some("t")),
    );
    let (rows_a, rows_b) = tokio::try_join!(
        stream_pairs(nodes[0], &sql, &p1, &p2, t),
        stream_pairs(nodes[1], &sql, &p1, &p2, t)
    )?;
    diff.only_on = [Vec::new(), Vec::new()];
    diff.different.clear();
    classify(&rows_a, &rows_b, diff);
    Ok(())
}

/// Compares again, after a pause, only the buckets found different; keeps the keys that still differ.
/// Changes in flight when the first comparison read the nodes are not differences.
pub async fn recheck(nodes: [Side<'_>; 2], t: &TableInfo, diff: Diff, rounds: u32) -> Result<Diff> {
    let mut diff = diff;
    for _ in 0..rounds {
        if diff.is_equal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = diff.keys().count();
        diff = reread(nodes, t, diff).await?;
        if diff.keys().count() == before {
            break;
        }
    }
    Ok(diff)
}

/// Reads the differing buckets again and keeps the keys that still differ (no new ones: a key that
/// starts to differ now is a change in flight).
pub async fn reread(nodes: [Side<'_>; 2], t: &TableInfo, diff: Diff) -> Result<Diff> {
    let Some(scheme) = diff.scheme.clone() else {
        return Ok(diff);
    };
    let suspects: HashSet<String> = diff.keys().cloned().collect();
    let mut again = Diff {
        rows: diff.rows,
        ..Diff::default()
    };
    read_buckets(nodes, t, &scheme, &diff.differing_buckets, &mut again).await?;
    for list in again.only_on.iter_mut().chain([&mut again.different]) {
        list.retain(|k| suspects.contains(k));
    }
    again.scheme = diff.scheme;
    again.differing_buckets = diff.differing_buckets;
    Ok(again)
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
async fn summary(
    side: Side<'_>,
    t: &TableInfo,
    scheme: &Buckets,
    row_hash: &str,
) -> Result<BTreeMap<i64, (u64, i64)>> {
    let (node, db) = side;
    let sql = format!(
        "SELECT {} AS bucket, count(*), bit_xor({row_hash}) FROM {} GROUP BY 1",
        scheme.expr(),
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

/// key → row hash, streamed.
async fn stream_pairs(
    side: Side<'_>,
    sql: &str,
    p1: &Vec<i64>,
    p2: &Vec<i64>,
    t: &TableInfo,
) -> Result<HashMap<String, i64>> {
    let (node, db) = side;
    let what = format!("comparing {}", t.name);
    let stream = db
        .query_raw(sql, [p1 as &(dyn tokio_postgres::types::ToSql + Sync), p2])
        .await
        .map_err(on_node(node, &what))?;
    pin_mut!(stream);
    let mut out = HashMap::new();
    while let Some(row) = stream.try_next().await.map_err(on_node(node, &what))? {
        out.insert(row.get(0), row.get(1));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_buckets_cover_their_keys_exactly() {
        let b = Buckets::Range {
            column: Ident::new("id"),
            lo: -5,
            width: 10,
        };
        assert_eq!(b.expr(), r#"(("id"::bigint - -5) / 10)"#);
        let (sql, lows, highs) = b.rows_of("t", &[0, 3]);
        assert!(sql.contains(r#"t."id" BETWEEN r.lo AND r.hi"#), "{sql}");
        // Bucket n holds [lo + n*w, lo + (n+1)*w - 1]: the same keys `expr` puts in it.
        assert_eq!(lows, vec![-5, 25]);
        assert_eq!(highs, vec![4, 34]);
        let edge = Buckets::Range {
            column: Ident::new("id"),
            lo: i64::MAX - 3,
            width: 10,
        };
        assert_eq!(edge.rows_of("t", &[0]).2, vec![i64::MAX]);
    }

    #[test]
    fn hash_buckets_filter_by_bucket_number() {
        let b = Buckets::Hash {
            key_hash: r#"hash_record_extended(ROW("a", "b"), 0)"#.into(),
            mask: 1023,
        };
        let (sql, p1, _) = b.rows_of("t", &[7]);
        assert!(
            sql.contains(r#"t WHERE (hash_record_extended(ROW("a", "b"), 0) & 1023) = ANY($1)"#),
            "{sql}"
        );
        assert_eq!(p1, vec![7]);
    }
}
