//! Table data across the two nodes: comparing it (`compare`), moving rows (`copy`), and deciding which
//! rows go where when both nodes hold data (`merge`, used by `up` and `repair`).

pub mod compare;
pub mod copy;
pub mod merge;

use crate::catalog::TableInfo;

/// One node, as the data functions take it: its name (for errors) and its connection.
pub type Side<'a> = (&'a str, &'a tokio_postgres::Client);
use crate::sql::ident::{comma_list, Ident};

/// `ROW(key columns)::text`: how keys are named between pgtwin and the servers. Unambiguous for any key
/// type (values are quoted as in a composite literal), and the same on both nodes, whose sessions run
/// with the same output settings (db::SESSION_SETUP).
pub fn key_text(t: &TableInfo, alias: Option<&str>) -> String {
    let prefix = alias.map_or(String::new(), |a| format!("{a}."));
    format!(
        "ROW({})::text",
        comma_list(t.key.iter().map(|k| format!("{prefix}{k}")))
    )
}

/// The columns that make a row's content: the synced columns, which both nodes' views of a table list
/// in the same order (twin::pair_tables), whatever the physical order or names on each node.
pub fn content_columns(t: &TableInfo) -> Vec<&Ident> {
    t.columns.iter().map(|c| &c.name).collect()
}
