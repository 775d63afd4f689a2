//! The one home for names: every object pgtwin creates gets its name here. All per-table objects live in
//! the `pgtwin` schema, so `down` can remove them by dropping that schema; the triggers on user tables
//! carry a fixed `pgtwin_` prefix and call functions in that schema, which is how they are found again.

use crate::sql::ident::{Ident, QualName, MAX_IDENT_BYTES};

pub const SCHEMA: &str = "pgtwin";
/// The foreign server that points at the peer (one per database: each node has exactly one peer).
pub const SERVER: &str = "pgtwin_peer";
/// Statement triggers on a synced table, by event.
pub const TRIGGER_EVENTS: [(&str, &str); 4] = [
    ("pgtwin_capture_insert", "AFTER INSERT"),
    ("pgtwin_capture_update", "AFTER UPDATE"),
    ("pgtwin_capture_delete", "AFTER DELETE"),
    // BEFORE: while changes queue, a truncate is recorded as the deletion of the keys still there.
    ("pgtwin_capture_truncate", "BEFORE TRUNCATE"),
];
pub const APPLY_TRIGGER: &str = "pgtwin_apply";
/// Transition-table names used by the generated functions.
pub const NEW_ROWS: &str = "pgtwin_new";
pub const OLD_ROWS: &str = "pgtwin_old";
/// The inbox view's one column: a chunk of changes (crate::change).
pub const BATCH_COLUMN: &str = "pgtwin_batch";
/// Column names with this prefix are pgtwin's own in the generated functions; user tables may not use it.
pub const RESERVED_PREFIX: &str = "pgtwin_";
/// Session setting that marks a session whose writes pgtwin applied (see sql/gen and db::SESSION_SETUP).
pub const ORIGIN_SETTING: &str = "pgtwin.origin";
/// Transaction-local setting carrying, during `pgtwin run`, the commit time of the changes replayed.
pub const REPLAY_AT_SETTING: &str = "pgtwin.replay_at";
/// Transaction-local setting: the peer has taken part in this transaction (see sql/gen ship_body).
pub const PEER_REACHED_SETTING: &str = "pgtwin.peer_reached";
/// Transaction-local settings that carry the peer login into the user mapping step (see plan::Step).
pub const PEER_USER_SETTING: &str = "pgtwin.peer_user";
pub const PEER_PASSWORD_SETTING: &str = "pgtwin.peer_password";
/// Transaction-local setting set by `pgtwin run` on a chunk it joined from several queue entries.
pub const REPLAY_JOINED_SETTING: &str = "pgtwin.replay_joined";
/// SQLSTATE the apply trigger raises when a joined chunk meets changes queued on its node: `pgtwin run`
/// then replays those entries one by one, each with its own time.
pub const RETRY_UNJOINED_SQLSTATE: &str = "PT409";
/// SQLSTATE the apply trigger raises for an update written over a version of the row this node does
/// not hold (it changed here since, or went): the write fails rather than overwrite it in silence.
pub const STALE_UPDATE_SQLSTATE: &str = "PT412";
/// SQLSTATE the apply trigger raises for every change of a peer that went back to an earlier state of
/// itself (restored from a backup): its changes would undo this node's newer rows, so they are
/// refused (queued there, and set aside by `pgtwin run`) until a repair.
pub const WENT_BACK_SQLSTATE: &str = "PT410";
/// SQLSTATE the apply trigger raises, and catches, to undo its one-pass write of an update whose rows
/// did not all find the version they replaced (it then applies the chunk the careful way); never
/// reaches a writer.
pub const UNDONE_SQLSTATE: &str = "PT399";
/// SQLSTATE the apply trigger raises when its table lost pgtwin's triggers (dropped, or created again by
/// a schema load): the write that reached it fails instead of syncing one way.
pub const NOT_CAPTURED_SQLSTATE: &str = "PT404";

fn in_schema(name: String) -> QualName {
    debug_assert!(name.len() <= MAX_IDENT_BYTES, "{name}");
    QualName::new(SCHEMA, name)
}

pub fn schema() -> Ident {
    Ident::new(SCHEMA)
}

pub fn server() -> Ident {
    Ident::new(SERVER)
}

pub fn installation_table() -> QualName {
    in_schema("installation".into())
}

pub fn sequences_table() -> QualName {
    in_schema("sequences".into())
}

/// Per-table objects are named from a readable prefix of the table's name plus a hash of the exact
/// name, so that they stay unique and under 63 bytes whatever the table is called.
pub fn table_tag(table: &QualName) -> String {
    let readable: String = format!("{}_{}", table.schema.as_str(), table.name.as_str())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let hash = fnv1a64(format!("{}\0{}", table.schema.as_str(), table.name.as_str()).as_bytes());
    format!("{readable}_{:08x}", hash as u32)
}

/// Composite type of one change in the positional format older installs used; `up` drops it.
pub fn change_type(table: &QualName) -> QualName {
    in_schema(format!("change_{}", table_tag(table)))
}

/// View on the receiving node that the peer updates with chunks of changes.
pub fn inbox(table: &QualName) -> QualName {
    inbox_of_tag(&table_tag(table))
}

/// Foreign table on the sending node, pointing at the peer's inbox view.
pub fn peer_inbox(table: &QualName) -> QualName {
    in_schema(format!("peer_{}", table_tag(table)))
}

pub fn enqueue_function() -> QualName {
    in_schema("enqueue".into())
}

/// Raises the error for a row too large to travel (crate::change::chunks_query).
pub fn refuse_row_function() -> QualName {
    in_schema("refuse_row".into())
}

/// Queue entries the peer refused for a reason of data.
pub fn set_aside_table() -> QualName {
    in_schema("set_aside".into())
}

/// `pgtwin run`'s heartbeat.
pub fn locks_table() -> QualName {
    in_schema("locks".into())
}

pub fn state_version_table() -> QualName {
    in_schema("state_version".into())
}

pub fn runner_table() -> QualName {
    in_schema("runner".into())
}

pub fn queue_table() -> QualName {
    in_schema("queue".into())
}

/// The newest queued change of each key the queue's small chunks record (state migration 6).
pub fn queue_latest_table() -> QualName {
    in_schema("queue_latest".into())
}

/// The trigger function that keeps `queue_latest` true when entries leave the queue.
pub fn queue_forgotten_function() -> QualName {
    in_schema("queue_forgotten".into())
}

pub const QUEUE_FORGOTTEN_TRIGGER: &str = "pgtwin_queue_forgotten";

/// A transaction's changes until it commits (sync mode).
pub fn pending_table() -> QualName {
    in_schema("pending".into())
}

/// The deferred trigger on the pending table that sends a transaction's changes at its commit.
pub fn flush_function() -> QualName {
    in_schema("flush".into())
}

/// Truncates several synced tables in one statement (a TRUNCATE from the peer).
pub fn truncate_function() -> QualName {
    in_schema("truncate_tables".into())
}

pub const FLUSH_TRIGGER: &str = "pgtwin_flush";

/// Session-level, in sessions that apply changes: the search_path an application's session has.
pub const APP_PATH_SETTING: &str = "pgtwin.app_search_path";

pub fn applied_table() -> QualName {
    in_schema("applied".into())
}

pub fn replayed_table() -> QualName {
    in_schema("replayed".into())
}

pub fn conflicts_table() -> QualName {
    in_schema("conflicts".into())
}

pub fn link_table() -> QualName {
    in_schema("link".into())
}

/// The inbox view of the table whose tag a queue entry names.
pub fn inbox_of_tag(tag: &str) -> QualName {
    in_schema(format!("inbox_{tag}"))
}

/// Channel the queue notifies on, so `pgtwin run` wakes up without polling.
pub const QUEUE_CHANNEL: &str = "pgtwin_queue";

pub fn ship_function(table: &QualName) -> QualName {
    in_schema(format!("ship_{}", table_tag(table)))
}

pub fn resolve_function(table: &QualName) -> QualName {
    in_schema(format!("resolve_{}", table_tag(table)))
}

pub fn capture_function(table: &QualName) -> QualName {
    in_schema(format!("capture_{}", table_tag(table)))
}

pub fn apply_function(table: &QualName) -> QualName {
    in_schema(format!("apply_{}", table_tag(table)))
}

/// FNV-1a: a stable 64-bit hash (std's hasher may change between Rust releases; names must not).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_short_unique_and_stable() {
        let a = table_tag(&QualName::new("public", "products"));
        assert_eq!(
            a,
            format!(
                "public_products_{:08x}",
                fnv1a64(b"public\0products") as u32
            )
        );
        let long = QualName::new("s".repeat(63), "t".repeat(63));
        assert!(capture_function(&long).name.as_str().len() <= MAX_IDENT_BYTES);
        // Names that sanitize alike still differ.
        assert_ne!(
            table_tag(&QualName::new("Sales Data", "x")),
            table_tag(&QualName::new("sales_data", "x"))
        );
        assert_ne!(
            table_tag(&QualName::new("a.b", "c")),
            table_tag(&QualName::new("a", "b.c"))
        );
    }

    #[test]
    fn fnv_known_value() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
