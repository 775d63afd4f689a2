//! pgtwin's own tables on a node (queue, replay records, conflicts, heartbeat, ...): their schema, its
//! version and migrations, and the queries that read them for people and monitors.
//!
//! The schema is versioned. `up` runs every migration an installation lacks, in order, in its own
//! transaction, so an install made by an older pgtwin is upgraded in place with its queued changes and
//! conflicts kept; a fresh install takes the same path from nothing. An installation whose version is
//! newer than this binary knows is refused by every command: this binary would misread its tables.

use anyhow::{bail, Result};
use tokio_postgres::Client;

use crate::catalog::NodeInfo;
use crate::db::on_node;
use crate::sql::ident::{dollar_quote, Literal};
use crate::sql::names;

/// Numbered migrations; the last number is this binary's state version. Never edit one that shipped:
/// add the next.
const MIGRATIONS: [(i32, &str); 2] = [
    (1, include_str!("sql/templates/state/1.sql")),
    (2, include_str!("sql/templates/state/2.sql")),
];

/// The state version this binary writes and reads.
pub const VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Installs made before versions were recorded have no version table: they are version 1.
pub const UNRECORDED: i32 = 1;

/// The state step of `up` (a template: `{{name}}` placeholders): refuses a newer installation, runs
/// the migrations a node lacks, records the version. The same text whatever the node has, so the
/// plan hash does not change with an upgrade.
pub fn migrations_sql() -> String {
    let mut sql = String::from(
        "CREATE TABLE IF NOT EXISTS {{state_version}} (\n    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),\n    version integer NOT NULL\n);\n",
    );
    let guard = format!(
        "BEGIN\n    IF (SELECT version FROM {{{{state_version}}}}) > {VERSION} THEN\n        RAISE EXCEPTION {};\n    END IF;\nEND",
        Literal(&newer_message(None))
    );
    sql.push_str(&format!("DO {};\n", dollar_quote(&guard)));
    for (n, migration) in MIGRATIONS {
        // Migration 1 is idempotent and also runs on installs with no recorded version; later ones
        // run once, where the recorded version is below theirs.
        if n == 1 {
            sql.push_str(migration);
            continue;
        }
        let body = format!(
            "BEGIN\n    IF coalesce((SELECT version FROM {{{{state_version}}}}), {UNRECORDED}) < {n} THEN\n        EXECUTE {};\n    END IF;\nEND",
            dollar_quote(migration.trim())
        );
        sql.push_str(&format!(
            "-- State schema migration {n}\nDO {};\n",
            dollar_quote(&body)
        ));
    }
    sql.push_str(&format!(
        "INSERT INTO {{{{state_version}}}} VALUES (true, {VERSION})\n    ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version;\n"
    ));
    sql
}

fn newer_message(node: Option<&str>) -> String {
    let at = node.map_or(String::new(), |n| format!("node {n}: "));
    format!(
        "{at}pgtwin's state there was written by a newer pgtwin (state version above {VERSION}, which pgtwin {} knows): use that pgtwin or a later one",
        env!("CARGO_PKG_VERSION")
    )
}

/// The state version installed on a node; None where pgtwin is not installed.
pub async fn installed_version(node: &str, db: &Client) -> Result<Option<i32>> {
    let row = db
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
            &[
                &names::installation_table().to_string(),
                &names::state_version_table().to_string(),
            ],
        )
        .await
        .map_err(on_node(node, "reading pgtwin's state version"))?;
    let (installed, recorded): (bool, bool) = (row.get(0), row.get(1));
    if !installed {
        return Ok(None);
    }
    if !recorded {
        return Ok(Some(UNRECORDED));
    }
    let version = db
        .query_opt(
            &format!("SELECT version FROM {}", names::state_version_table()),
            &[],
        )
        .await
        .map_err(on_node(node, "reading pgtwin's state version"))?;
    Ok(Some(version.map_or(UNRECORDED, |r| r.get(0))))
}

/// Refuses a node whose installation is newer than this binary.
pub fn refuse_newer(node: &str, info: &NodeInfo) -> Result<()> {
    if info.state_version.is_some_and(|v| v > VERSION) {
        bail!("{}", newer_message(Some(node)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, (n, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*n, i as i32 + 1);
        }
    }

    #[test]
    fn later_migrations_run_only_below_their_number() {
        let sql = migrations_sql();
        assert!(sql.contains("< 2 THEN"), "{sql}");
        assert!(sql.contains("DO UPDATE SET version = EXCLUDED.version"));
        assert!(sql.contains(&format!("> {VERSION} THEN")));
    }
}
