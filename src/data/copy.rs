//! Moving rows from one node to the other with COPY, streamed through pgtwin (binary where the column
//! types allow), then applied on the target set-wise. pgtwin's sessions carry pgtwin.origin, so the
//! target's capture triggers do not ship the copied rows back.

use anyhow::Result;
use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, TryStreamExt};

use crate::catalog::TableInfo;
use crate::data::{key_text, Side};
use crate::db::on_node;
use crate::progress::Progress;
use crate::sql::ident::comma_list;

/// What to do when the target already has a row with the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    Overwrite,
    Keep,
}

fn format_clause(pair: [&TableInfo; 2]) -> &'static str {
    if pair
        .iter()
        .all(|t| t.shipped_columns().all(|c| c.binary_ok))
    {
        "(FORMAT binary)"
    } else {
        "(FORMAT text)"
    }
}

/// Copies rows of a table from one node to the other (`from_t` and `t`: the table as each names it):
/// all rows (`keys` None) or those with the given keys. Returns the rows copied.
pub async fn copy_rows(
    from: Side<'_>,
    to: Side<'_>,
    (from_t, t): (&TableInfo, &TableInfo),
    keys: Option<&[String]>,
    on_conflict: OnConflict,
    progress: &Progress,
) -> Result<u64> {
    if keys.is_some_and(|k| k.is_empty()) {
        return Ok(0);
    }
    // Both lists name the synced columns in the same order (twin::pair_tables).
    let from_cols = comma_list(from_t.shipped_columns().map(|c| &c.name));
    let cols = comma_list(t.shipped_columns().map(|c| &c.name));
    let format = format_clause([from_t, t]);
    let filter = match keys {
        None => String::new(),
        Some(keys) => {
            load_keys(from, keys).await?;
            format!(
                " WHERE {} IN (SELECT k FROM pg_temp.pgtwin_keys)",
                key_text(from_t, None)
            )
        }
    };
    // An empty target takes the rows straight into the table; otherwise they land in a temporary table
    // first and are merged by key in one statement.
    let empty: bool =
        to.1.query_one(&format!("SELECT NOT EXISTS (SELECT FROM {})", t.name), &[])
            .await
            .map_err(on_node(to.0, &format!("reading {}", t.name)))?
            .get(0);
    let target = if empty {
        t.name.to_string()
    } else {
        to.1.batch_execute(&format!(
            "DROP TABLE IF EXISTS pg_temp.pgtwin_stage; CREATE TEMP TABLE pgtwin_stage AS SELECT {cols} FROM {} WITH NO DATA",
            t.name
        ))
        .await
        .map_err(on_node(to.0, "creating a staging table"))?;
        "pg_temp.pgtwin_stage".to_string()
    };
    let out = from
        .1
        .copy_out(&format!(
            "COPY (SELECT {from_cols} FROM {}{filter}) TO STDOUT {format}",
            from_t.name
        ))
        .await
        .map_err(on_node(from.0, &format!("reading {}", from_t.name)))?;
    let sink =
        to.1.copy_in::<_, Bytes>(&format!("COPY {target} ({cols}) FROM STDIN {format}"))
            .await
            .map_err(on_node(to.0, &format!("writing {}", t.name)))?;
    pin_mut!(out);
    pin_mut!(sink);
    while let Some(chunk) = out
        .try_next()
        .await
        .map_err(on_node(from.0, &format!("reading {}", from_t.name)))?
    {
        progress.add_bytes(chunk.len() as u64);
        // `feed`, not `send`: the server sends a message per row, and a flush per row costs a write each.
        sink.feed(chunk)
            .await
            .map_err(on_node(to.0, &format!("writing {}", t.name)))?;
    }
    let copied = sink
        .finish()
        .await
        .map_err(on_node(to.0, &format!("writing {}", t.name)))?;
    if !empty {
        let action = match on_conflict {
            OnConflict::Overwrite => crate::sql::gen::upsert_action(t),
            OnConflict::Keep => "NOTHING".to_string(),
        };
        to.1.batch_execute(&format!(
            "INSERT INTO {} AS t ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM pg_temp.pgtwin_stage
             ON CONFLICT ({}) DO {action}; DROP TABLE pg_temp.pgtwin_stage",
            t.name,
            comma_list(&t.key)
        ))
        .await
        .map_err(on_node(to.0, &format!("merging rows into {}", t.name)))?;
    }
    Ok(copied)
}

/// Deletes the rows with the given keys.
pub async fn delete_rows(side: Side<'_>, t: &TableInfo, keys: &[String]) -> Result<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    side.1
        .execute(
            &format!(
                "DELETE FROM {} WHERE {} = ANY($1)",
                t.name,
                key_text(t, None)
            ),
            &[&keys],
        )
        .await
        .map_err(on_node(side.0, &format!("deleting from {}", t.name)))
}

/// Puts the keys in a temporary table on the source, for COPY's query to join against (COPY takes no
/// parameters).
async fn load_keys(side: Side<'_>, keys: &[String]) -> Result<()> {
    side.1
        .batch_execute("CREATE TEMP TABLE IF NOT EXISTS pgtwin_keys (k text PRIMARY KEY); TRUNCATE pg_temp.pgtwin_keys")
        .await
        .map_err(on_node(side.0, "preparing keys"))?;
    side.1
        .execute(
            "INSERT INTO pg_temp.pgtwin_keys SELECT DISTINCT unnest($1::text[])",
            &[&keys],
        )
        .await
        .map_err(on_node(side.0, "preparing keys"))?;
    Ok(())
}
