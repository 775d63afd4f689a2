//! Read-only introspection of a node: who we are there, what pgtwin already installed, and the synced
//! tables' columns, keys and key sequences.

use anyhow::{bail, Result};
use tokio_postgres::Client;

use crate::config::Table;
use crate::db::on_node;
use crate::sql::ident::{Ident, QualName, SqlType};
use crate::sql::names;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Column {
    /// The column's name on this node.
    pub name: Ident,
    /// Its name in the config, the same on both nodes (differs from `name` only where the config
    /// renames it for this node).
    pub synced_as: Ident,
    /// Its name on the peer, where the config renames it there or here (set when both nodes are read).
    #[serde(skip)]
    pub peer_name: Ident,
    #[serde(rename = "type")]
    pub ty: SqlType,
    /// Holds no NULL: NOT NULL, and valid (PostgreSQL 18 can add one NOT VALID over older NULLs).
    pub not_null: bool,
    /// `GENERATED ALWAYS AS (...) STORED`: computed on each node, never shipped.
    pub generated: bool,
    /// Enum labels in order, for enum-typed columns (they must match on both nodes).
    pub enum_labels: Option<Vec<String>>,
    /// Whether COPY's binary format carries this column between nodes: not for arrays and composites
    /// of user-defined types, whose binary form embeds type OIDs that differ from node to node.
    #[serde(skip)]
    pub binary_ok: bool,
    /// How `check` hashes the column by its type's own hash function, when that function tells every two
    /// different values apart (as text would) and hashes the same on both nodes: ints, text, timestamps,
    /// uuid (TypedHash)... but not floats (-0 = 0), numeric and jsonb (1.0 = 1.00), interval ('1 day' = '24 hours'),
    /// enums (hashed by OID, which differs per node), nor text under a nondeterministic collation (hashed
    /// case- or accent-folded). `None`: hashed by its text, which is slower.
    #[serde(skip)]
    pub typed_hash: Option<TypedHash>,
    /// The column's default expression, as the node prints it.
    pub default: Option<String>,
    /// Whether the peer's column has the same type (set when both nodes are read): only then does a
    /// value written on one node read back the same on the other, which comparing an update's old
    /// version with the peer's row needs.
    #[serde(skip)]
    pub same_type_as_peer: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct KeySequence {
    pub column: Ident,
    pub sequence: QualName,
    pub increment: i64,
    /// The value the next `nextval` returns.
    pub next_value: i64,
    /// Where `RESTART` and `TRUNCATE … RESTART IDENTITY` take it.
    pub start: i64,
    /// Wraps around at its end.
    pub cycle: bool,
    pub may_alter: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TableInfo {
    /// The table's name on this node.
    pub name: QualName,
    /// Its name in the config: pgtwin's objects for it are named from this, the same on both nodes.
    pub synced_name: QualName,
    pub columns: Vec<Column>,
    pub key: Vec<Ident>,
    pub key_sequences: Vec<KeySequence>,
    /// Every live column of the table on this node, in physical order (what its chunks list).
    pub all_columns: Vec<Ident>,
    /// The table's columns as `up` saw them (crate::change::SIGNATURE_SQL).
    pub signature: String,
    /// The column list the peer's chunks carry, as `up` saw the peer (set when both nodes are read).
    #[serde(skip)]
    pub peer_header: String,
    /// This node's column → the peer's name of it, for every column the config renames on either node.
    pub peer_renames: Vec<(Ident, Ident)>,
    /// This node's names of the only columns the config syncs (None: all).
    pub only_columns: Option<Vec<Ident>>,
    /// This node's names of the columns the config never syncs.
    pub excluded_columns: Vec<Ident>,
    /// The column sets of the table's unique indexes and constraints (as the config names the
    /// columns), each sorted.
    pub unique: Vec<Vec<String>>,
}

impl TableInfo {
    pub fn column(&self, name: &Ident) -> Option<&Column> {
        self.columns.iter().find(|c| &c.name == name)
    }

    /// The column the config calls `synced_as`.
    pub fn synced_column(&self, synced_as: &Ident) -> Option<&Column> {
        self.columns.iter().find(|c| &c.synced_as == synced_as)
    }

    /// This table with what a migration changes left out: the non-key columns, and the shapes `up`
    /// saw (for the plan hash; see Step::hashed_as).
    pub fn without_shape(&self) -> TableInfo {
        TableInfo {
            columns: self
                .columns
                .iter()
                .filter(|c| self.key.contains(&c.name))
                .cloned()
                .collect(),
            all_columns: Vec::new(),
            signature: String::new(),
            peer_header: String::new(),
            ..self.clone()
        }
    }

    /// The key columns as the config names them.
    pub fn synced_key(&self) -> Vec<&Ident> {
        self.key
            .iter()
            .map(|k| self.column(k).map_or(k, |c| &c.synced_as))
            .collect()
    }

    /// Columns that are shipped to the peer: all but generated ones.
    pub fn shipped_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.generated)
    }
}

pub use crate::state::Installed;

#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeInfo {
    pub current_user: String,
    pub database: String,
    pub superuser: bool,
    pub server_version_num: i32,
    pub fdw_installed: bool,
    pub fdw_available: bool,
    pub fdw_usage: bool,
    pub can_create_schema: bool,
    pub installed: Option<Installed>,
    /// `pgtwin` exists but holds no installation record, or objects another role owns: someone else's.
    pub foreign_schema: bool,
    /// Whether schema `pgtwin` exists.
    pub schema_exists: bool,
    /// What in schema `pgtwin` is not the connecting role's (see FOREIGN_OBJECTS_SQL).
    pub foreign_objects: Vec<String>,
    /// This database's OID: an install records it, and a copy (a dump restored elsewhere) has another.
    pub database_oid: i64,
    /// The system identifier of this node's cluster (pg_control_system()).
    pub system_identifier: i64,
    /// The version of pgtwin's state tables here (crate::state); None: not installed.
    pub state_version: Option<i32>,
    /// Settings (name, value) that would record the peer's password when `up` creates the user
    /// mapping, and that this role may not lower for that statement (crate::sql::gen::LOUD_RECORDERS_SQL).
    pub loud_recorders: Vec<(String, String)>,
}

/// A built-in type whose own hash, as `check` calls it, tells every two values apart and is the same on
/// both nodes (see Column::typed_hash). Not jsonb: its hash treats the numbers 1.0 and 1.00 as one. Not
/// arrays: `hash_array_extended` leaves out their bounds, and ignores its seed for an empty one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypedHash {
    Bool,
    Bytea,
    Int2,
    Int4,
    Int8,
    /// text and varchar.
    Text,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
}

impl TypedHash {
    const TYPES: [(u32, TypedHash); 12] = [
        (16, TypedHash::Bool),
        (17, TypedHash::Bytea),
        (20, TypedHash::Int8),
        (21, TypedHash::Int2),
        (23, TypedHash::Int4),
        (25, TypedHash::Text),
        (1043, TypedHash::Text),
        (1082, TypedHash::Date),
        (1083, TypedHash::Time),
        (1114, TypedHash::Timestamp),
        (1184, TypedHash::TimestampTz),
        (2950, TypedHash::Uuid),
    ];

    fn oids() -> Vec<u32> {
        Self::TYPES.iter().map(|(oid, _)| *oid).collect()
    }

    fn of(oid: u32) -> Option<TypedHash> {
        Self::TYPES.iter().find(|(o, _)| *o == oid).map(|(_, h)| *h)
    }
}

pub async fn node_info(node: &str, db: &Client) -> Result<NodeInfo> {
    let row = db
        .query_one(
            "SELECT current_user::text, current_database()::text,
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                    current_setting('server_version_num')::int,
                    EXISTS (SELECT FROM pg_extension WHERE extname = 'postgres_fdw'),
                    EXISTS (SELECT FROM pg_available_extensions WHERE name = 'postgres_fdw'),
                    EXISTS (SELECT FROM pg_foreign_data_wrapper WHERE fdwname = 'postgres_fdw'
                            AND has_foreign_data_wrapper_privilege(oid, 'USAGE')),
                    has_database_privilege(current_database(), 'CREATE'),
                    to_regclass($1) IS NOT NULL,
                    EXISTS (SELECT FROM pg_namespace WHERE nspname = $2),
                    (SELECT oid FROM pg_database WHERE datname = current_database())::bigint,
                    (SELECT system_identifier FROM pg_control_system())",
            &[&names::installation_table().to_string(), &names::SCHEMA],
        )
        .await
        .map_err(on_node(node, "reading the catalog"))?;
    let has_state: bool = row.get(8);
    // Objects in pgtwin's schema that another role owns (or a trigger pgtwin never creates) could run
    // that role's code as whoever installs: found before anything there is read.
    let foreign_objects: Vec<String> = db
        .query(
            FOREIGN_OBJECTS_SQL,
            &[
                &names::SCHEMA,
                &names::APPLY_TRIGGER,
                &names::FLUSH_TRIGGER,
                &names::SERVER,
                &names::QUEUE_FORGOTTEN_TRIGGER,
            ],
        )
        .await
        .map_err(on_node(node, "reading the catalog"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let trusted = has_state && foreign_objects.is_empty();
    let state_version = if trusted {
        crate::state::installed_version(node, db).await?
    } else {
        None
    };
    // A newer installation's record may not read as this binary expects: it is refused (see
    // state::refuse_newer) before anything else is read there.
    let installed = if trusted && state_version.is_some_and(|v| v <= crate::state::VERSION) {
        crate::state::read_installed(node, db).await?
    } else {
        None
    };
    // Who may set a superuser-only setting: GRANT SET ON PARAMETER exists from PostgreSQL 15 on.
    let server_version_num: i32 = row.get(3);
    let may_set = if server_version_num >= 150000 {
        "has_parameter_privilege(name, 'SET')"
    } else {
        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
    };
    let loud_recorders = db
        .query(
            &format!(
                "SELECT name, current_setting(name) FROM ({}) loud WHERE NOT {may_set}",
                crate::sql::gen::LOUD_RECORDERS_SQL
            ),
            &[],
        )
        .await
        .map_err(on_node(node, "reading the catalog"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(NodeInfo {
        current_user: row.get(0),
        database: row.get(1),
        superuser: row.get(2),
        server_version_num,
        fdw_installed: row.get(4),
        fdw_available: row.get(5),
        fdw_usage: row.get(6),
        can_create_schema: row.get(7),
        installed,
        schema_exists: row.get(9),
        foreign_schema: row.get::<_, bool>(9) && (!has_state || !foreign_objects.is_empty()),
        foreign_objects,
        database_oid: row.get(10),
        system_identifier: row.get(11),
        state_version,
        loud_recorders,
    })
}

/// pgtwin's schema and what is in it, where not owned by the connecting role; triggers on its
/// relations other than its own (the inbox trigger $2, the flush trigger $3, the queue-forgotten
/// trigger $5); and a foreign server of pgtwin's name ($4) that another role owns (`up` drops and
/// recreates it). The schema name is $1.
const FOREIGN_OBJECTS_SQL: &str = "
    WITH me AS (SELECT oid FROM pg_roles WHERE rolname = current_user),
         s AS (SELECT oid, nspowner FROM pg_namespace WHERE nspname = $1)
    SELECT 'schema ' || quote_ident($1) FROM s WHERE s.nspowner <> (SELECT oid FROM me)
    UNION ALL
    SELECT 'relation ' || c.oid::regclass::text FROM pg_class c, s
     WHERE c.relnamespace = s.oid AND c.relowner <> (SELECT oid FROM me) AND c.relkind <> 'i'
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p, s
     WHERE p.pronamespace = s.oid AND p.proowner <> (SELECT oid FROM me)
    UNION ALL
    SELECT 'type ' || t.oid::regtype::text FROM pg_type t, s
     WHERE t.typnamespace = s.oid AND t.typowner <> (SELECT oid FROM me)
    UNION ALL
    SELECT 'trigger ' || quote_ident(g.tgname) || ' on ' || g.tgrelid::regclass::text
      FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid, s
     WHERE c.relnamespace = s.oid AND NOT g.tgisinternal AND (g.tgname <> $2 OR c.relkind <> 'v')
       AND (g.tgname <> $3 OR c.relname <> 'pending' OR c.relkind <> 'r')
       AND (g.tgname <> $5 OR c.relname <> 'queue' OR c.relkind <> 'r')
    UNION ALL
    SELECT 'foreign server ' || quote_ident(f.srvname) FROM pg_foreign_server f
     WHERE f.srvname = $4 AND f.srvowner <> (SELECT oid FROM me)
    ORDER BY 1";

/// The tables of this database a user may want synced: ordinary and partitioned tables (not single
/// partitions: their parent syncs them), outside the system schemas and pgtwin's, not part of an
/// extension.
pub async fn user_tables(node: &str, db: &Client) -> Result<Vec<QualName>> {
    let rows = db
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) AND n.nspname !~ '^pg_(toast|temp)'
               AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                               AND d.objid = c.oid AND d.deptype = 'e')
             ORDER BY 1, 2",
            &[&names::SCHEMA],
        )
        .await
        .map_err(on_node(node, "listing tables"))?;
    Ok(rows
        .iter()
        .map(|r| QualName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// Column sets that could key a table without a usable primary key: those of its unique indexes (as
/// `choose_key` accepts them) whose columns are all NOT NULL, fewest columns first.
pub async fn key_candidates(node: &str, db: &Client, table: &QualName) -> Result<Vec<Vec<Ident>>> {
    let rows = db
        .query(
            "SELECT array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord)
             FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indisvalid AND i.indimmediate
               AND i.indpred IS NULL AND i.indexprs IS NULL
               AND NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = i.indrelid
                               AND a.attnum = ANY (i.indkey) AND NOT a.attnotnull)
             ORDER BY i.indnatts, i.indexrelid",
            &[&table.schema.as_str(), &table.name.as_str()],
        )
        .await
        .map_err(on_node(node, "reading indexes"))?;
    Ok(rows
        .iter()
        .map(|r| {
            r.get::<_, Vec<String>>(0)
                .into_iter()
                .map(Ident::new)
                .collect()
        })
        .collect())
}

/// Reads one configured table. A missing table, or one without a usable key, is an error naming the
/// node and the table.
pub async fn table_info(node: &str, db: &Client, table: &Table) -> Result<TableInfo> {
    let name = table.name_on(node);
    let rel = db
        .query_opt(
            "SELECT c.oid, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&name.schema.as_str(), &name.name.as_str()],
        )
        .await
        .map_err(on_node(node, "reading the catalog"))?;
    let Some(rel) = rel else {
        bail!("table {name} does not exist on node {node}: create it there with the same columns, or leave it out of pgtwin.toml");
    };
    let oid: u32 = rel.get(0);
    let kind: String = rel.get(1);
    if kind != "r" && kind != "p" {
        bail!("{name} on node {node} is not a table (relkind {kind}): only tables can be synced");
    }
    let columns = db
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    a.attnotnull AND coalesce((to_jsonb(a) ->> 'attnotnullvalid')::bool, true),
                    a.attgenerated <> '',
                    (SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e
                      WHERE e.enumtypid = a.atttypid),
                    NOT (t.typtype = 'c' OR (t.typcategory = 'A' AND t.typelem >= 16384)),
                    CASE WHEN a.atttypid = ANY ($2::oid[])
                      AND coalesce((SELECT co.collisdeterministic FROM pg_collation co WHERE co.oid = a.attcollation), true)
                    THEN a.atttypid END,
                    pg_get_expr(d.adbin, d.adrelid)
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.attgenerated = ''
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&oid, &TypedHash::oids()],
        )
        .await
        .map_err(on_node(node, "reading columns"))?
        .into_iter()
        .map(|r| Column {
            name: Ident::new(r.get::<_, String>(0)),
            synced_as: table.config_name(node, &Ident::new(r.get::<_, String>(0))),
            peer_name: Ident::new(r.get::<_, String>(0)),
            ty: SqlType(r.get(1)),
            not_null: r.get(2),
            generated: r.get(3),
            enum_labels: r.get(4),
            binary_ok: r.get(5),
            typed_hash: r.get::<_, Option<u32>>(6).and_then(TypedHash::of),
            default: r.get(7),
            same_type_as_peer: false,
        })
        .collect::<Vec<_>>();
    let unique_keys: Vec<(bool, Vec<String>)> = db
        .query(
            "SELECT i.indisprimary,
                    array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord)
             FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indimmediate
               AND i.indpred IS NULL AND i.indexprs IS NULL
             ORDER BY NOT i.indisprimary",
            &[&oid],
        )
        .await
        .map_err(on_node(node, "reading indexes"))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let key = choose_key(node, table, &columns, &unique_keys)?;
    // What this node's chunks list: every column but generated ones (change::COLUMNS_SQL).
    let all_columns: Vec<Ident> = columns
        .iter()
        .filter(|c| !c.generated)
        .map(|c| c.name.clone())
        .collect();
    let signature: String = db
        .query_one(
            &format!(
                "SELECT {} FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
                crate::change::SIGNATURE_SQL
            ),
            &[&oid],
        )
        .await
        .map_err(on_node(node, "reading columns"))?
        .get(0);
    // Columns the config leaves out are not synced, not compared, and not drift.
    let columns: Vec<Column> = columns
        .into_iter()
        .filter(|c| table.syncs(&c.synced_as) || key.contains(&c.name))
        .collect();
    let mut unique: Vec<Vec<String>> = unique_keys
        .iter()
        .map(|(_, cols)| {
            let mut cols: Vec<String> = cols
                .iter()
                .map(|c| table.config_name(node, &Ident::new(c)).as_str().to_string())
                .collect();
            cols.sort();
            cols
        })
        .collect();
    unique.sort();
    unique.dedup();
    // The apply side writes the table as this role, and `up` creates triggers on it. All that is
    // missing is named at once.
    let lacking: Vec<String> = db
        .query_one(
            "SELECT array(SELECT p FROM unnest($2::text[]) p WHERE NOT has_table_privilege($1::oid, p))",
            &[&oid, &vec!["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "TRIGGER"]],
        )
        .await
        .map_err(on_node(node, "checking privileges"))?
        .get(0);
    if !lacking.is_empty() {
        let user: String = db
            .query_one("SELECT current_user::text", &[])
            .await
            .map_err(on_node(node, "reading the role"))?
            .get(0);
        bail!(
            "role {user} lacks {} on table {name} on node {node}: run GRANT {} ON {name} TO {}; as its owner, or run pgtwin as the table's owner",
            lacking.join(", "),
            lacking.join(", "),
            Ident::new(user.as_str())
        );
    }
    let key_sequences = key_sequences(node, db, oid, &key).await?;
    Ok(TableInfo {
        name: name.clone(),
        synced_name: table.name.clone(),
        all_columns,
        signature,
        peer_header: String::new(),
        peer_renames: Vec::new(),
        only_columns: table
            .columns
            .as_ref()
            .map(|cols| cols.iter().map(|c| table.column_on(node, c)).collect()),
        excluded_columns: table
            .exclude_columns
            .iter()
            .map(|c| table.column_on(node, c))
            .collect(),
        columns,
        key,
        key_sequences,
        unique,
    })
}

/// The key is the primary key unless the config names columns, which must be exactly the columns of a
/// unique index and NOT NULL (ON CONFLICT needs that index, and NULLs are never equal).
fn choose_key(
    node: &str,
    table: &Table,
    columns: &[Column],
    unique_keys: &[(bool, Vec<String>)],
) -> Result<Vec<Ident>> {
    let name = table.name_on(node);
    let key = table.key.as_ref().map(|k| {
        k.iter()
            .map(|c| table.column_on(node, c))
            .collect::<Vec<_>>()
    });
    match &key {
        None => match unique_keys.iter().find(|(primary, _)| *primary) {
            Some((_, cols)) => Ok(cols.iter().map(Ident::new).collect()),
            None => bail!("table {name} has no primary key on node {node}: add one, or set key = [...] to columns with a unique index in pgtwin.toml"),
        },
        Some(key) => {
            for k in key {
                match columns.iter().find(|c| &c.name == k) {
                    None => bail!("table {name} on node {node} has no column {k} named in key: fix key in pgtwin.toml"),
                    Some(c) if !c.not_null => bail!("column {k} of table {name} on node {node} is in key but allows NULL: make it NOT NULL"),
                    Some(_) => {}
                }
            }
            let mut wanted: Vec<&str> = key.iter().map(Ident::as_str).collect();
            wanted.sort_unstable();
            let found = unique_keys.iter().any(|(_, cols)| {
                let mut have: Vec<&str> = cols.iter().map(String::as_str).collect();
                have.sort_unstable();
                have == wanted
            });
            if !found {
                bail!("table {name} on node {node} has no unique index on exactly the key columns ({}): create one", crate::sql::ident::comma_list(key));
            }
            Ok(key.clone())
        }
    }
}

/// Sequences behind key columns: serial/bigserial (dependency 'a') and identity (dependency 'i').
async fn key_sequences(
    node: &str,
    db: &Client,
    table_oid: u32,
    key: &[Ident],
) -> Result<Vec<KeySequence>> {
    let rows = db
        .query(
            "SELECT a.attname::text, n.nspname::text, s.relname::text, pg_has_role(s.relowner, 'USAGE')
             FROM pg_depend d
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             JOIN pg_namespace n ON n.oid = s.relnamespace
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = $1 AND d.deptype IN ('a', 'i')
             ORDER BY a.attnum",
            &[&table_oid],
        )
        .await
        .map_err(on_node(node, "reading sequences"))?;
    let mut out = Vec::new();
    for r in rows {
        let column = Ident::new(r.get::<_, String>(0));
        if !key.contains(&column) {
            continue;
        }
        let sequence = QualName::new(r.get::<_, String>(1), r.get::<_, String>(2));
        let may_alter: bool = r.get(3);
        if !may_alter {
            // Reading its state needs privileges we may lack; interleaving refuses such a sequence.
            out.push(KeySequence {
                column,
                sequence,
                increment: 0,
                next_value: 0,
                start: 0,
                cycle: false,
                may_alter,
            });
            continue;
        }
        let state = db
            .query_one(
                &format!(
                    "SELECT s.last_value + CASE WHEN s.is_called THEN p.increment_by ELSE 0 END, p.increment_by,
                            p.start_value, p.cycle
                     FROM {sequence} s, pg_sequences p WHERE p.schemaname = $1 AND p.sequencename = $2"
                ),
                &[&sequence.schema.as_str(), &sequence.name.as_str()],
            )
            .await
            .map_err(on_node(node, &format!("reading sequence {sequence}")))?;
        out.push(KeySequence {
            column,
            sequence,
            next_value: state.get(0),
            increment: state.get(1),
            start: state.get(2),
            cycle: state.get(3),
            may_alter,
        });
    }
    Ok(out)
}

/// Largest value of an integer column, or None for an empty table.
pub async fn max_value(
    node: &str,
    db: &Client,
    table: &QualName,
    column: &Ident,
) -> Result<Option<i64>> {
    let row = db
        .query_one(&format!("SELECT max({column})::bigint FROM {table}"), &[])
        .await
        .map_err(on_node(node, &format!("reading max({column}) of {table}")))?;
    Ok(row.get(0))
}

/// Largest value of an integer key column in one residue (`value ≡ position mod count`): the largest
/// id a node's interleaved sequence handed out, looked for among the 1,000 largest keys.
pub async fn max_in_residue(
    node: &str,
    db: &Client,
    table: &QualName,
    column: &Ident,
    count: i64,
    position: i64,
) -> Result<Option<i64>> {
    let residue = position.rem_euclid(count);
    // Among the top keys only (bounded work, whatever the table's size): a node that mostly receives
    // rows has many of the other residue on top. None when none of them is in this residue.
    let row = db
        .query_opt(
            &format!(
                "SELECT k FROM (SELECT {column}::bigint AS k FROM {table} ORDER BY {column} DESC LIMIT 1000) top
                 WHERE mod(k, $1) IN ($2, $2 - $1) ORDER BY k DESC LIMIT 1"
            ),
            &[&count, &residue],
        )
        .await
        .map_err(on_node(node, &format!("reading max({column}) of {table}")))?;
    Ok(row.map(|r| r.get(0)))
}

/// Tables that carry pgtwin's capture triggers on this node (found by the trigger function's schema, so
/// even objects left from an older config are found).
pub async fn captured_tables(node: &str, db: &Client) -> Result<Vec<(QualName, Vec<Ident>)>> {
    let rows = db
        .query(
            "SELECT n.nspname::text, c.relname::text, array_agg(t.tgname::text ORDER BY t.tgname)
             FROM pg_trigger t
             JOIN pg_proc p ON p.oid = t.tgfoid
             JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
               AND n.nspname <> $1 AND t.tgenabled <> 'D'
             GROUP BY 1, 2 ORDER BY 1, 2",
            &[&names::SCHEMA],
        )
        .await
        .map_err(on_node(node, "reading triggers"))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let triggers: Vec<String> = r.get(2);
            (
                QualName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                triggers.into_iter().map(Ident::new).collect(),
            )
        })
        .collect())
}

impl NodeInfo {
    /// The installation here was made in another database, or another cluster: this one is a copy
    /// (a restored dump).
    pub fn is_copy(&self) -> bool {
        self.installed.as_ref().is_some_and(|i| {
            i.database_oid.is_some_and(|oid| oid != self.database_oid)
                || i.system_identifier
                    .is_some_and(|id| id != self.system_identifier)
        })
    }
}
