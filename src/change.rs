//! The change format: what a chunk of changes is, on the wire between the nodes and in the queue. This
//! module is its one home; docs/change-format.md describes it for people.
//!
//! A chunk is text: one op byte, then (except for a truncate) a JSON object naming its columns:
//!
//! ```text
//! I{"columns":["id","name","price"],"rows":[{"id":1,"name":"kettle","price":29}, ...]}   insert rows
//! U{"columns":["id","name","price"],"rows":[{"id":1,"name":"kettle","price":30}, ...]}   upsert rows
//! D{"columns":["id"],"rows":[{"id":7}, ...]}                                              delete keys
//! T                                                                                      truncate
//! T["public_orders_1a2b3c4d","public_customers_5e6f7a8b"]                    truncate these tables together
//! ```
//!
//! Rows travel by column name, written by `row_to_json` on the origin and read by `json_to_recordset`
//! with the receiving table's own types, so physical column order, dropped-column gaps and `attnum`s do
//! not matter, and neither does a column that only one node has.

use crate::sql::ident::{comma_list, Ident, Literal};

/// Rows an INSERT added: the peer refuses one whose key it holds with other values (that key was
/// handed out twice: a node restored from a backup), where an upsert would overwrite its row.
pub const INSERT: u8 = b'I';
/// Rows an UPDATE wrote (or, before that op existed, any new rows). A row that carries `BEFORE` is
/// written only over that version: the peer refuses it where it holds the key with other values, or
/// not at all (that row changed there since: a node restored from a backup writes over rows from
/// before it). A row without it is written whatever the peer has.
pub const UPSERT: u8 = b'U';
/// The member of an upsert's row holding the row the UPDATE replaced on the origin (every column, by
/// name). Last in the row's object. The name is reserved: no user column starts with `pgtwin_`.
pub const BEFORE: &str = "pgtwin_before";
pub const DELETE: u8 = b'D';
/// A whole chunk of its own: the table is truncated; followed by a JSON list of table tags, those
/// tables are truncated in one statement (a TRUNCATE of several tables, which foreign keys between
/// them require).
pub const TRUNCATE: &str = "T";

/// An empty truncate: changes nothing, but opens the peer's transaction, so a TRUNCATE learns at once
/// whether the peer is reachable (it cannot be queued key by key once its rows are gone).
pub const PROBE: &str = "T[]";

/// The most text one chunk may carry beyond its last row: PostgreSQL refuses any value over 1 GB, so
/// chunks are cut by bytes as well as by rows (a bulk update of large rows must still travel).
pub const CHUNK_BYTES: i64 = 16 * 1024 * 1024;

/// Chunks of up to this many rows record their keys for the conflict resolution's index; a larger one
/// (a bulk statement) is read whole by it instead: indexing every key of a bulk statement would cost
/// its writer more than all the lookups save.
pub const KEYED_ROWS: i64 = 64;

/// Most rows a chunk joined from several gets (by `pgtwin run` from queue entries, and by the flush at
/// commit from a transaction's statements).
pub const JOINED_ROWS: u64 = 10_000;

/// Separates a chunk's column list from its rows in the canonical form (JSON escapes every quote
/// inside a name, so it cannot occur inside the column list).
pub const ROWS_MARK: &str = ",\"rows\":[";
/// What follows the op byte in the canonical form, up to the column list.
pub const COLUMNS_PREFIX: &str = "{\"columns\":";

/// The column list of a chunk, over `pg_attribute a` of the table's live columns: compact JSON, as
/// `columns_json` writes it. Generated columns are left out: each node computes its own.
pub const COLUMNS_SQL: &str =
    "'[' || string_agg(to_json(a.attname::text)::text, ',' ORDER BY a.attnum) FILTER (WHERE a.attgenerated = '') || ']'";

/// A table's columns as they are (over `pg_attribute a` of one table, live columns), as one text: the
/// apply function compares it with the value `up` recorded to know whether the table changed since.
pub const SIGNATURE_SQL: &str = "string_agg(quote_ident(a.attname) || ' ' || a.atttypid::text || ' ' || a.atttypmod::text || ' ' || a.attgenerated::text, ',' ORDER BY a.attnum)";

/// The op byte of an insert, upsert or delete chunk in canonical form; None for a truncate or anything else
/// (such a chunk is never joined with another).
pub fn op(chunk: &str) -> Option<u8> {
    split(chunk).map(|(op, _, _)| op)
}

/// (op, column list, the rows' inner text) of a canonical insert, upsert or delete chunk.
fn split(chunk: &str) -> Option<(u8, &str, &str)> {
    let op = *chunk.as_bytes().first()?;
    if op != INSERT && op != UPSERT && op != DELETE {
        return None;
    }
    let body = chunk[1..].strip_prefix(COLUMNS_PREFIX)?;
    let mark = body.find(ROWS_MARK)?;
    let rows = body[mark + ROWS_MARK.len()..].strip_suffix("]}")?;
    Some((op, &body[..mark], rows))
}

/// Appends the rows of `second` to `first` when both are chunks of the same op and the same columns
/// (in place: the runner joins many entries); returns whether it did.
pub fn append(first: &mut String, second: &str) -> bool {
    let Some((op1, cols1, rows1)) = split(first) else {
        return false;
    };
    let Some((op2, cols2, rows2)) = split(second) else {
        return false;
    };
    if op1 != op2 || cols1 != cols2 {
        return false;
    }
    let first_empty = rows1.trim().is_empty();
    let rows2 = rows2.to_string();
    first.truncate(first.len() - "]}".len());
    if !first_empty && !rows2.trim().is_empty() {
        first.push(',');
    }
    first.push_str(&rows2);
    first.push_str("]}");
    true
}

/// `first` and `second` joined (see `append`), or None.
pub fn join(first: &str, second: &str) -> Option<String> {
    let mut joined = first.to_string();
    append(&mut joined, second).then_some(joined)
}

/// The rows of an UPDATE that kept every key, each as `row_to_json` of its new version with `BEFORE`
/// (its old version) appended: a source for `chunks_query`, aliased `alias`, with the key columns and
/// the row's text (`pgtwin_json`). Transition tables do not pair old and new rows, and a join of the
/// two would be planned once, for the first statement's size (PL/pgSQL caches the plan; transition
/// tables have no statistics): a nested loop over two 100,000-row tables never ends. So both go
/// through one sort by key, each key's old version just before its new one. A row whose two versions
/// together pass `max_row_bytes` travels without its old version (unchecked, as before versions
/// travelled): it must not be refused where its new version alone would not be.
pub fn updated_rows_source(
    new: &str,
    old: &str,
    key: &[Ident],
    max_row_bytes: i64,
    alias: &str,
) -> String {
    let keys = comma_list(key);
    let side = |table: &str, version: &str, side: u8| {
        format!(
            "SELECT {}, {side} AS pgtwin_side, row_to_json({version}) AS pgtwin_j FROM {table} {version}",
            comma_list(key.iter().map(|k| format!("{version}.{k}")))
        )
    };
    // The aliases are reserved (no user column starts with pgtwin_): a column named like a bare
    // alias would be taken for it.
    format!(
        "(SELECT {keys}, CASE WHEN octet_length(pgtwin_j::text) + octet_length(pgtwin_was::text) > {max_row_bytes} THEN pgtwin_j::text\n                         \
         ELSE left(pgtwin_j::text, -1) || {} || pgtwin_was::text || '}}' END AS pgtwin_json\n                         \
         FROM (SELECT {keys}, pgtwin_side, pgtwin_j, lag(pgtwin_j) OVER (ORDER BY {keys}, pgtwin_side) AS pgtwin_was\n                               \
         FROM ({} UNION ALL {}) pgtwin_both) pgtwin_paired\n                         \
         WHERE pgtwin_side = 1) {alias}",
        Literal(&format!(",\"{BEFORE}\":")),
        side(old, "pgtwin_o", 0),
        side(new, "pgtwin_n", 1),
    )
}

/// A JSON array of names, as the column list of a chunk: compact, escaped as PostgreSQL's `to_json`
/// escapes (the capture function writes the list that way, and the peer compares the two as text).
pub fn columns_json<'a>(names: impl IntoIterator<Item = &'a Ident>) -> String {
    serde_json::to_string(&names.into_iter().map(Ident::as_str).collect::<Vec<_>>())
        .expect("names serialize")
}

/// What a chunk query needs to know besides its rows.
pub struct Chunking<'a> {
    pub max_rows: u32,
    /// Rows longer than this (as text) are refused by `refuse_row`.
    pub max_row_bytes: i64,
    /// The function that raises the error for a row too large: (table, key, bytes).
    pub refuse_row: &'a str,
    /// The table's name, as a SQL literal, for that error.
    pub table: &'a str,
    /// A relation with as many rows as the source, cheaper to count (the source of an update's rows
    /// sorts both transition tables: counting it would sort them twice). None: the source itself.
    pub counted: Option<&'a str>,
}

/// A query yielding (chunk text, row count, keys) for every chunk of `rows` (a SQL expression of type
/// json per row of `source`), cut at `max_rows` rows or CHUNK_BYTES bytes, whichever comes first.
/// Chunks come in no particular order: the rows of one statement never share a key. `columns` is a SQL
/// expression for the column list's JSON text; `key` (written for `source`'s alias `alias`) one for a
/// row's key, as JSON, named in the error for a row too large to travel; `key_text` one for the key as
/// comparable text (`key_text_of`). A statement of up to KEYED_ROWS rows records its keys with each
/// chunk, so that a change arriving from the peer finds the queued changes of its keys through an
/// index, whatever the length of the queue; a chunk of a larger statement records none (NULL, which
/// the conflict resolution reads as "read the chunk"), however few rows it holds.
pub fn chunks_query(
    op: u8,
    columns: &str,
    row: &str,
    (key, key_text): (&str, &str),
    (source, alias): (&str, &str),
    key_columns: &[Ident],
    c: &Chunking,
) -> String {
    // Each row weighs its length plus a fixed share of the byte budget, so a chunk ends at about
    // max_rows rows or CHUNK_BYTES bytes.
    let per_row = CHUNK_BYTES / i64::from(c.max_rows.max(1));
    let prefix = Literal(&format!("{}{COLUMNS_PREFIX}", op as char));
    let mark = Literal(ROWS_MARK);
    let (max, refuse, table) = (c.max_row_bytes, c.refuse_row, c.table);
    let counted = c.counted.unwrap_or(source);
    let keys = comma_list(key_columns.iter().map(|k| format!("{alias}.{k}")));
    // OFFSET 0 keeps the row's text computed once: pulled up into the outer query, its expression
    // would be evaluated for each of its three uses. The row's key as JSON is built only for a row
    // refused as too large (from the key columns passed along under the source's alias).
    format!(
        "SELECT {prefix} || {columns} || {mark} || string_agg(pgtwin_r, ',') || ']}}', count(*)::integer, CASE WHEN count(pgtwin_kt) = count(*) THEN array_agg(pgtwin_kt) END\n            \
         FROM (SELECT CASE WHEN octet_length(pgtwin_r) > {max} THEN {refuse}({table}, ({key})::text, octet_length(pgtwin_r)) ELSE pgtwin_r END AS pgtwin_r, pgtwin_kt,\n                         \
         (sum(octet_length(pgtwin_r) + {per_row}) OVER (ROWS UNBOUNDED PRECEDING) - 1) / {CHUNK_BYTES} AS pgtwin_chunk_no\n                  \
         FROM (SELECT ({row})::text AS pgtwin_r, {keys},\n                               \
         CASE WHEN (SELECT count(*) <= {KEYED_ROWS} FROM (SELECT FROM {counted} LIMIT {KEYED_ROWS} + 1) pgtwin_few) THEN {key_text} END AS pgtwin_kt\n                        \
         FROM {source} OFFSET 0) {alias}) pgtwin_s\n            \
         GROUP BY pgtwin_chunk_no"
    )
}

/// `json_build_object('k1', alias.k1, ...)`: the key of a row, as a delete carries it.
pub fn key_object(key: &[Ident], alias: &str) -> String {
    format!(
        "json_build_object({})",
        comma_list(
            key.iter()
                .map(|k| format!("{}, {alias}.{k}", Literal(k.as_str())))
        )
    )
}

/// `json_build_array(alias.k1, ...)::text`: a key as comparable text, from a row of the table (the
/// same text as `key_text` reads from that row in a chunk).
pub fn key_text_of(key: &[Ident], alias: &str) -> String {
    format!(
        "json_build_array({})::text",
        comma_list(key.iter().map(|k| format!("{alias}.{k}")))
    )
}

/// `json_build_array(alias->'k1', ...)::text`: a key as comparable text, from a row of a chunk.
pub fn key_text(key: &[Ident], alias: &str) -> String {
    format!(
        "json_build_array({})::text",
        comma_list(
            key.iter()
                .map(|k| format!("{alias}->{}", Literal(k.as_str())))
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"U{"columns":["id","n"],"rows":[{"id":1,"n":"a"}, {"id":2,"n":"b"}]}"#;
    const B: &str = r#"U{"columns":["id","n"],"rows":[{"id":3,"n":"c"}]}"#;

    #[test]
    fn chunks_of_one_op_and_columns_join() {
        assert_eq!(
            join(A, B).unwrap(),
            r#"U{"columns":["id","n"],"rows":[{"id":1,"n":"a"}, {"id":2,"n":"b"},{"id":3,"n":"c"}]}"#
        );
        let joined: serde_json::Value = serde_json::from_str(&join(A, B).unwrap()[1..]).unwrap();
        assert_eq!(joined["rows"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn chunks_of_other_columns_ops_or_forms_do_not_join() {
        let other_columns = r#"U{"columns":["id","n","x"],"rows":[{"id":3,"n":"c","x":1}]}"#;
        assert_eq!(join(A, other_columns), None);
        assert_eq!(
            join(A, r#"D{"columns":["id","n"],"rows":[{"id":3}]}"#),
            None
        );
        assert_eq!(join(A, TRUNCATE), None);
        // Rewritten by the peer's conflict resolution with other spacing: left alone, not misread.
        assert_eq!(join(A, r#"U{"columns" : ["id","n"], "rows" : []}"#), None);
        assert_eq!(op(TRUNCATE), None);
        assert_eq!(op(B), Some(UPSERT));
    }

    #[test]
    fn a_name_holding_the_rows_mark_cannot_confuse_the_split() {
        let names = [Ident::new(r#","rows":["#), Ident::new("id")];
        let cols = columns_json(&names);
        let chunk = format!(r#"U{{"columns":{cols},"rows":[{{"id":1}}]}}"#);
        let (_, got, rows) = split(&chunk).unwrap();
        assert_eq!(got, cols);
        assert_eq!(rows, r#"{"id":1}"#);
    }

    #[test]
    fn empty_row_lists_join_without_a_stray_comma() {
        let empty = r#"U{"columns":["id","n"],"rows":[]}"#;
        assert_eq!(join(empty, B).unwrap(), B);
    }
}
