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

use crate::catalog::{TableInfo, TypedHash};
use crate::data::{content_columns, key_text, Side};
use crate::db::on_node;
use crate::sql::ident::Ident;

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
    /// `key` is the position of the key column in the table's key (its name may differ per node).
    Range {
        key: usize,
        lo: i64,
        width: i64,
    },
    Hash {
        mask: i64,
    },
}

/// About 512 rows a bucket: a differing bucket is then cheap to read again.
const ROWS_PER_BUCKET: f64 = 512.0;

impl Buckets {
    async fn choose(nodes: [Side<'_>; 2], pair: &[TableInfo; 2]) -> Result<Buckets> {
        let estimate = row_estimate(nodes, pair).await?;
        let count = ((estimate / ROWS_PER_BUCKET).max(16.0) as u64)
            .next_power_of_two()
            .min(1 << 16) as i64;
        let integer_key = |t: &TableInfo| match t.key.as_slice() {
            [k] => t
                .column(k)
                .filter(|c| matches!(c.ty.0.as_str(), "smallint" | "integer" | "bigint"))
                .map(|c| c.name.clone()),
            _ => None,
        };
        if let (Some(_), Some(_)) = (integer_key(&pair[0]), integer_key(&pair[1])) {
            let (mut lo, mut hi) = (i64::MAX, i64::MIN);
            for ((node, db), t) in nodes.into_iter().zip(pair) {
                let row = db
                    .query_one(
                        &format!(
                            "SELECT min({c})::bigint, max({c})::bigint FROM {}",
                            t.name,
                            c = integer_key(t).expect("checked")
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
                return Ok(Buckets::Range { key: 0, lo, width });
            }
        }
        Ok(Buckets::Hash { mask: count - 1 })
    }

    /// The bucket of a row of `t` (as one node names its columns).
    fn expr(&self, t: &TableInfo) -> String {
        match self {
            // Keys are >= lo, so integer division is the floor: bucket n holds [lo + n*w, lo + (n+1)*w).
            Buckets::Range { key, lo, width } => {
                format!("(({}::bigint - {lo}) / {width})", t.key[*key])
            }
            Buckets::Hash { mask } => {
                let key_cols: Vec<&Ident> = t.key.iter().collect();
                format!("({} & {mask})", hash_expr(t, &key_cols, 0, None))
            }
        }
    }

    /// `FROM ... WHERE` part selecting the rows of some buckets, with its two bigint[] parameters: range
    /// bounds (an index range scan per bucket), or the bucket numbers twice (a filtered scan).
    fn rows_of(&self, t: &TableInfo, buckets: &[i64]) -> (String, Vec<i64>, Vec<i64>) {
        let table = &t.name;
        match self {
            Buckets::Range { key, lo, width } => {
                let bound = |n: i64, end: i64| {
                    (i128::from(*lo) + i128::from(n + end) * i128::from(*width) - i128::from(end))
                        .clamp(i128::from(i64::MIN), i128::from(i64::MAX))
                        as i64
                };
                (
                    format!("{table} t JOIN unnest($1::bigint[], $2::bigint[]) AS r(lo, hi) ON t.{} BETWEEN r.lo AND r.hi", t.key[*key]),
                    buckets.iter().map(|n| bound(*n, 0)).collect(),
                    buckets.iter().map(|n| bound(*n, 1)).collect(),
                )
            }
            Buckets::Hash { .. } => (
                format!(
                    "{table} t WHERE {} = ANY($1) AND cardinality($2::bigint[]) >= 0",
                    self.expr(t)
                ),
                buckets.to_vec(),
                buckets.to_vec(),
            ),
        }
    }
}

/// A 64-bit hash of the columns, folded one column at a time, in the columns' order (the same on both
/// nodes): each column's hash function is seeded with the hash of the columns before it. A value's part
/// of the row hash thus depends on every other column of its row, the key included, so a bucket's XOR
/// of row hashes cannot cancel out between rows (two rows changed alike, values swapped between rows).
/// Calling each type's hash function directly is also faster than hashing a record of the row.
fn hash_expr(t: &TableInfo, cols: &[&Ident], seed: i64, alias: Option<&str>) -> String {
    let prefix = alias.map_or(String::new(), |a| format!("{a}."));
    cols.iter().fold(seed.to_string(), |seed, c| {
        let column = t.column(c);
        column_hash(
            &format!("{prefix}{c}"),
            column.and_then(|col| col.typed_hash),
            column.is_none_or(|col| !col.not_null),
            &seed,
        )
    })
}

/// One column's hash step: the hash of the column's value, seeded with `seed` (the columns before it).
/// A type whose own hash tells values apart (TypedHash) is hashed by it, called directly where SQL can
/// call it for that type, and through a one-element array otherwise (`hash_array_extended` calls the
/// element type's). The hash functions of 64-bit types fold them to 32 bits first, so that 1 and 2^32
/// would hash alike: a bigint's upper half goes into the seed, and the time types are hashed by their
/// binary form. Any other type is hashed by its printed form, as its output function writes it (a
/// `::text` cast would drop a char(n)'s trailing spaces).
///
/// A NULL hashes as a placeholder value ('' for the printed form, 0, the epoch...) with the seed's
/// lowest bit flipped, so that it differs from the placeholder itself. For any other value that flip
/// and the `coalesce` change nothing, so a node that leaves them out for a column it holds NOT NULL
/// still agrees with a node that does not. A composite value whose fields are all NULL is
/// not NULL itself (`num_nulls`, unlike `IS NULL`, tells them apart).
fn column_hash(column: &str, typed: Option<TypedHash>, nullable: bool, seed: &str) -> String {
    let flipped_if_null = |is_null: String| {
        if nullable {
            format!("({seed} # {is_null})")
        } else {
            seed.to_string()
        }
    };
    let (v, s) = match typed {
        // By its bytes: text under a case-insensitive collation would hash case-folded. concat()
        // prints NULL as ''.
        None => (
            format!("concat({column}) COLLATE \"C\""),
            flipped_if_null(format!("num_nulls({column})::bigint")),
        ),
        Some(h) if nullable => (
            format!("coalesce({column}, {})", placeholder(h)),
            flipped_if_null(format!("({column} IS NULL)::int::bigint")),
        ),
        Some(_) => (column.to_string(), seed.to_string()),
    };
    match typed {
        Some(TypedHash::Bool) => format!("hashint4extended({v}::int, {s})"),
        Some(TypedHash::Int2) => format!("hashint2extended({v}, {s})"),
        Some(TypedHash::Int4) => format!("hashint4extended({v}, {s})"),
        Some(TypedHash::Int8) => {
            format!("hashint8extended({v}, hashint4extended(({v} >> 32)::int, {s}))")
        }
        Some(TypedHash::Text) | None => format!("hashtextextended({v}, {s})"),
        Some(TypedHash::Uuid) => format!("uuid_hash_extended({v}, {s})"),
        Some(TypedHash::Bytea | TypedHash::Date) => {
            format!("hash_array_extended(ARRAY[{v}], {s})")
        }
        Some(TypedHash::Time) => format!("hash_array_extended(ARRAY[time_send({v})], {s})"),
        Some(TypedHash::Timestamp) => {
            format!("hash_array_extended(ARRAY[timestamp_send({v})], {s})")
        }
        Some(TypedHash::TimestampTz) => {
            format!("hash_array_extended(ARRAY[timestamptz_send({v})], {s})")
        }
    }
}

/// The value a NULL of the type hashes as (with the seed's lowest bit flipped: see column_hash).
fn placeholder(typed: TypedHash) -> &'static str {
    match typed {
        TypedHash::Bool => "false",
        TypedHash::Bytea => "''::bytea",
        TypedHash::Int2 => "0::smallint",
        TypedHash::Int4 | TypedHash::Int8 => "0",
        TypedHash::Text => "''",
        TypedHash::Date => "'epoch'::date",
        TypedHash::Time => "'00:00'::time",
        TypedHash::Timestamp => "'epoch'::timestamp",
        TypedHash::TimestampTz => "'epoch'::timestamptz",
        TypedHash::Uuid => "'00000000-0000-0000-0000-000000000000'::uuid",
    }
}

/// Compares the table on both nodes.
pub async fn compare(nodes: [Side<'_>; 2], pair: &[TableInfo; 2]) -> Result<Diff> {
    let scheme = Buckets::choose(nodes, pair).await?;
    let (a, b) = tokio::try_join!(
        summary(nodes[0], &pair[0], &scheme),
        summary(nodes[1], &pair[1], &scheme)
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
        read_buckets(nodes, pair, &scheme, &differing, &mut diff).await?;
    }
    diff.scheme = Some(scheme);
    diff.differing_buckets = differing;
    Ok(diff)
}

/// Pass 2: the rows of the given buckets, key by key.
async fn read_buckets(
    nodes: [Side<'_>; 2],
    pair: &[TableInfo; 2],
    scheme: &Buckets,
    buckets: &[i64],
    diff: &mut Diff,
) -> Result<()> {
    let query = |t: &TableInfo| {
        let (from, p1, p2) = scheme.rows_of(t, buckets);
        let sql = format!(
            "SELECT {}, {} FROM {from}",
            key_text(t, Some("t")),
            hash_expr(t, &content_columns(t), 1, Some("t")),
        );
        (sql, p1, p2)
    };
    let (qa, qb) = (query(&pair[0]), query(&pair[1]));
    let (rows_a, rows_b) = tokio::try_join!(
        stream_pairs(nodes[0], &qa.0, &qa.1, &qa.2, &pair[0]),
        stream_pairs(nodes[1], &qb.0, &qb.1, &qb.2, &pair[1])
    )?;
    diff.only_on = [Vec::new(), Vec::new()];
    diff.different.clear();
    classify(&rows_a, &rows_b, diff);
    Ok(())
}

/// Compares again, after a pause, only the buckets found different; keeps the keys that still differ.
/// Changes in flight when the first comparison read the nodes are not differences.
pub async fn recheck(
    nodes: [Side<'_>; 2],
    pair: &[TableInfo; 2],
    diff: Diff,
    rounds: u32,
) -> Result<Diff> {
    let mut diff = diff;
    for _ in 0..rounds {
        if diff.is_equal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = diff.keys().count();
        diff = reread(nodes, pair, diff).await?;
        if diff.keys().count() == before {
            break;
        }
    }
    Ok(diff)
}

/// Reads the differing buckets again and keeps the keys that still differ (no new ones: a key that
/// starts to differ now is a change in flight).
pub async fn reread(nodes: [Side<'_>; 2], pair: &[TableInfo; 2], diff: Diff) -> Result<Diff> {
    let Some(scheme) = diff.scheme.clone() else {
        return Ok(diff);
    };
    let suspects: HashSet<String> = diff.keys().cloned().collect();
    let mut again = Diff {
        rows: diff.rows,
        ..Diff::default()
    };
    read_buckets(nodes, pair, &scheme, &diff.differing_buckets, &mut again).await?;
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

async fn row_estimate(nodes: [Side<'_>; 2], pair: &[TableInfo; 2]) -> Result<f64> {
    let mut most: f64 = 0.0;
    for ((node, db), t) in nodes.into_iter().zip(pair) {
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
) -> Result<BTreeMap<i64, (u64, i64)>> {
    let (node, db) = side;
    let sql = format!(
        "SELECT {} AS bucket, count(*), bit_xor({}) FROM {} GROUP BY 1",
        scheme.expr(t),
        hash_expr(t, &content_columns(t), 1, None),
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

    fn table() -> TableInfo {
        let column = |name: &str, typed_hash: Option<TypedHash>| crate::catalog::Column {
            name: Ident::new(name),
            synced_as: Ident::new(name),
            peer_name: Ident::new(name),
            ty: crate::sql::ident::SqlType("integer".into()),
            not_null: true,
            generated: false,
            enum_labels: None,
            binary_ok: true,
            typed_hash,
            default: None,
            same_type_as_peer: true,
        };
        TableInfo {
            name: crate::sql::ident::QualName::new("public", "t"),
            synced_name: crate::sql::ident::QualName::new("public", "t"),
            columns: vec![
                column("id", Some(TypedHash::Int4)),
                column("a", Some(TypedHash::Int4)),
                column("b", None),
            ],
            key: vec![Ident::new("id")],
            key_sequences: vec![],
            all_columns: vec![],
            signature: String::new(),
            peer_header: String::new(),
            peer_renames: vec![],
            only_columns: None,
            excluded_columns: vec![],
            unique: vec![],
        }
    }

    #[test]
    fn range_buckets_cover_their_keys_exactly() {
        let t = table();
        let b = Buckets::Range {
            key: 0,
            lo: -5,
            width: 10,
        };
        assert_eq!(b.expr(&t), r#"(("id"::bigint - -5) / 10)"#);
        let (sql, lows, highs) = b.rows_of(&t, &[0, 3]);
        assert!(sql.contains(r#"t."id" BETWEEN r.lo AND r.hi"#), "{sql}");
        // Bucket n holds [lo + n*w, lo + (n+1)*w - 1]: the same keys `expr` puts in it.
        assert_eq!(lows, vec![-5, 25]);
        assert_eq!(highs, vec![4, 34]);
        let edge = Buckets::Range {
            key: 0,
            lo: i64::MAX - 3,
            width: 10,
        };
        assert_eq!(edge.rows_of(&t, &[0]).2, vec![i64::MAX]);
    }

    #[test]
    fn hash_buckets_filter_by_bucket_number() {
        let b = Buckets::Hash { mask: 1023 };
        let (sql, p1, _) = b.rows_of(&table(), &[7]);
        assert!(
            sql.contains(r#"t WHERE (hashint4extended("id", 0) & 1023) = ANY($1)"#),
            "{sql}"
        );
        assert_eq!(p1, vec![7]);
    }

    #[test]
    fn a_row_hash_folds_every_column_into_the_next_ones_seed() {
        let mut t = table();
        t.columns[1].not_null = false;
        t.columns[2].not_null = false;
        let cols: Vec<&Ident> = t.columns.iter().map(|c| &c.name).collect();
        assert_eq!(
            hash_expr(&t, &cols, 1, Some("t")),
            concat!(
                r#"hashtextextended(concat(t."b") COLLATE "C", (hashint4extended(coalesce(t."a", 0), "#,
                r#"(hashint4extended(t."id", 1) # (t."a" IS NULL)::int::bigint)) # num_nulls(t."b")::bigint))"#
            )
        );
    }

    #[test]
    fn sixty_four_bit_types_are_hashed_whole_and_others_through_an_array() {
        let h = |typed, nullable| column_hash("c", Some(typed), nullable, "7");
        assert_eq!(
            h(TypedHash::Int8, false),
            "hashint8extended(c, hashint4extended((c >> 32)::int, 7))"
        );
        assert_eq!(
            h(TypedHash::TimestampTz, false),
            "hash_array_extended(ARRAY[timestamptz_send(c)], 7)"
        );
        assert_eq!(
            h(TypedHash::Date, true),
            "hash_array_extended(ARRAY[coalesce(c, 'epoch'::date)], (7 # (c IS NULL)::int::bigint))"
        );
    }
}
