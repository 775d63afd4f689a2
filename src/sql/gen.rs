//! Pure SQL generators: (config, catalog facts) → ordered steps for one node. Nothing here talks to a
//! server, so every statement can be reviewed by `plan` and tested without one.

use crate::catalog::{Column, TableInfo};
use crate::change;
use crate::config::{Mode, OnPeerDown, Options};
use crate::db::ConnInfo;
use crate::plan::Step;
use crate::sql::ident::{comma_list, dollar_quote, Ident, Literal, QualName};
use crate::sql::names;

const ENQUEUE_TEMPLATE: &str = include_str!("templates/enqueue.sql");
const CAPTURE_TEMPLATE: &str = include_str!("templates/capture.sql");
const SHIP_TEMPLATE: &str = include_str!("templates/ship.sql");
const FLUSH_TEMPLATE: &str = include_str!("templates/flush.sql");
const APPLY_TEMPLATE: &str = include_str!("templates/apply.sql");
const RESOLVE_TEMPLATE: &str = include_str!("templates/resolve.sql");
const FORGOTTEN_TEMPLATE: &str = include_str!("templates/forgotten.sql");

/// Everything that decides what `up` installs on one node.
pub struct Install<'a> {
    pub node: &'a str,
    pub peer: &'a str,
    pub peer_conn: &'a ConnInfo,
    pub options: &'a Options,
    /// The synced tables as read on this node.
    pub tables: &'a [TableInfo],
    pub create_extension: bool,
    /// Tables that carry pgtwin triggers but are no longer in the config.
    pub stale_tables: &'a [QualName],
    pub sequences: &'a [SequenceChange],
    /// This database's OID and its cluster's system identifier: the capture functions do nothing in
    /// any other database (a restored copy).
    pub database_oid: i64,
    pub system_identifier: i64,
    /// Whether schema pgtwin existed when `up` checked who owns what is in it.
    pub schema_exists: bool,
}

/// Interleaving of one key sequence: node i of n hands out i, i+n, i+2n, ...
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceChange {
    pub sequence: QualName,
    pub original_increment: i64,
    pub increment: i64,
    pub restart: i64,
}

/// Where the next value lies: the smallest v above `floor` with v ≡ position (mod count), position 1-based.
/// The settings of extensions that record nested statements (as the `CREATE USER MAPPING` that holds the
/// peer's password is) whose current value would record it: columns `name` and `quiet` (a value that
/// records no nested statement). `pg_stat_statements.track = 'all'` keeps it where `pg_monitor` members
/// read it; pgaudit logs it under its `ddl` class. Superuser-only settings: a role may lower them if a
/// superuser ran `GRANT SET ON PARAMETER`.
pub const LOUD_RECORDERS_SQL: &str = "
    SELECT name, quiet FROM (VALUES ('pg_stat_statements.track', 'top'), ('pgaudit.log', 'none')) s(name, quiet)
    WHERE CASE name
          WHEN 'pg_stat_statements.track' THEN current_setting(name, true) = 'all'
          ELSE (SELECT coalesce(bool_or(item IN ('all', 'ddl')) AND NOT bool_or(item = '-ddl'), false)
                FROM unnest(string_to_array(replace(lower(current_setting(name, true)), ' ', ''), ',')) item)
          END";

pub fn interleaved_start(floor: i64, position: i64, count: i64) -> i64 {
    let v = floor + 1;
    v + (position - v).rem_euclid(count)
}

pub fn install_steps(i: &Install) -> Vec<Step> {
    let mut steps = Vec::new();
    let schema = names::schema();
    if i.create_extension {
        // Unhashed, like every step that depends on what a node had before: the first `up` creates the
        // extension, the next finds it, and must still read as up to date.
        steps
            .push(Step::new("extension", "CREATE EXTENSION IF NOT EXISTS postgres_fdw").unhashed());
    }
    // A schema that did not exist when `up` looked is created here, not adopted: one that another
    // role created meanwhile (with objects of its own to run as the installer) fails the install.
    steps.push(
        Step::new(
            "schema",
            format!(
                "CREATE SCHEMA {}{schema};\nREVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
                if i.schema_exists {
                    "IF NOT EXISTS "
                } else {
                    ""
                }
            ),
        )
        .unhashed(),
    );
    steps.push(Step::new(
        "state tables",
        fill(&crate::state::migrations_sql(), &[]).trim(),
    ));
    steps.push(Step::new(
        "enqueue function",
        format!(
            // Before chunks recorded their keys, the function took none.
            "DROP FUNCTION IF EXISTS {}(text, text, integer);\n{}",
            names::enqueue_function(),
            function_sql(
                &names::enqueue_function(),
                "pgtwin_tag text, pgtwin_batch text, pgtwin_rows integer, pgtwin_keys text[]",
                "void",
                &fill(
                    ENQUEUE_TEMPLATE,
                    &[("max_age_s", i.options.max_queue_age_s.to_string())],
                ),
                Security::Invoker,
            )
        ),
    ));
    steps.push(Step::new(
        "queue forgotten trigger",
        format!(
            "{};\nDROP TRIGGER IF EXISTS {trigger} ON {queue};\nCREATE TRIGGER {trigger} AFTER DELETE ON {queue}\n    REFERENCING OLD TABLE AS pgtwin_gone FOR EACH STATEMENT EXECUTE FUNCTION {forgotten}()",
            function_sql(
                &names::queue_forgotten_function(),
                "",
                "trigger",
                &fill(FORGOTTEN_TEMPLATE, &[]),
                Security::Invoker,
            ),
            trigger = Ident::new(names::QUEUE_FORGOTTEN_TRIGGER),
            queue = names::queue_table(),
            forgotten = names::queue_forgotten_function(),
        ),
    ));
    steps.push(Step::new(
        "refuse row function",
        function_sql(
            &names::refuse_row_function(),
            "pgtwin_table text, pgtwin_key text, pgtwin_bytes integer",
            "text",
            "BEGIN\n    RAISE EXCEPTION 'pgtwin: a row of table % with key % is % MB as text, more than max_row_mb allows to travel', pgtwin_table, pgtwin_key, round(pgtwin_bytes / 1048576.0, 1)\n        USING ERRCODE = 'program_limit_exceeded', HINT = 'store such values outside the synced table, or raise max_row_mb (at most 512)';\nEND",
            Security::Invoker,
        ),
    ));
    for stale in i.stale_tables {
        steps.push(
            Step::new(
                format!("stale table {stale}: drop triggers"),
                drop_capture_triggers(stale),
            )
            .unhashed(),
        );
    }
    // Recreating the server drops (CASCADE) the user mapping and the foreign tables that depend on it, so
    // a changed peer address or password takes effect everywhere at once.
    let server = names::server();
    // Its options hold no secret (every role can read them; the config refuses sslpassword).
    steps.push(Step::new(
        "foreign server",
        format!(
            "DROP SERVER IF EXISTS {server} CASCADE;\nCREATE SERVER {server} FOREIGN DATA WRAPPER postgres_fdw\n    OPTIONS ({})",
            server_options(i)
        ),
    ));
    // The login travels in settings, not in the statement text (see Step::with_settings); the DO block
    // is the same on every node and holds nothing from the config.
    let password = i.peer_conn.password.clone().unwrap_or_default();
    let shown = format!(
        "CREATE USER MAPPING FOR CURRENT_USER SERVER {server}\n    OPTIONS (user {}{})",
        Literal(&i.peer_conn.user),
        if password.is_empty() {
            ""
        } else {
            ", password '********'"
        }
    );
    // The statement that holds the password is nested, where `log_statement` never sees it; the
    // extensions that do record nested statements are quieted for it (see LOUD_RECORDERS_SQL; preflight
    // made sure this role may) and set back after it.
    let run = format!(
        "DO $pgtwin$\nDECLARE\n    pgtwin_loud record;\n    pgtwin_names text[] := '{{}}';\n    pgtwin_values text[] := '{{}}';\nBEGIN\n    FOR pgtwin_loud IN {loud} LOOP\n        pgtwin_names := pgtwin_names || pgtwin_loud.name;\n        pgtwin_values := pgtwin_values || current_setting(pgtwin_loud.name);\n        PERFORM set_config(pgtwin_loud.name, pgtwin_loud.quiet, true);\n    END LOOP;\n    EXECUTE format('CREATE USER MAPPING FOR CURRENT_USER SERVER %I OPTIONS (user %L%s)',\n        {server_name}, current_setting({user_setting}),\n        CASE WHEN current_setting({password_setting}) = '' THEN ''\n             ELSE format(', password %L', current_setting({password_setting})) END);\n    FOR i IN 1 .. cardinality(pgtwin_names) LOOP\n        PERFORM set_config(pgtwin_names[i], pgtwin_values[i], true);\n    END LOOP;\nEXCEPTION WHEN OTHERS THEN\n    -- Raised anew: the error's context would quote the statement, password included.\n    RAISE EXCEPTION 'creating the user mapping: %', SQLERRM USING ERRCODE = SQLSTATE;\nEND\n$pgtwin$",
        loud = LOUD_RECORDERS_SQL.trim(),
        server_name = Literal(names::SERVER),
        user_setting = Literal(names::PEER_USER_SETTING),
        password_setting = Literal(names::PEER_PASSWORD_SETTING),
    );
    steps.push(Step::with_settings(
        "user mapping",
        run,
        shown,
        vec![
            (names::PEER_USER_SETTING, i.peer_conn.user.clone()),
            (names::PEER_PASSWORD_SETTING, password),
        ],
    ));
    for t in i.tables {
        steps.extend(table_steps(t, i));
    }
    steps.push(Step::new(
        "truncate function",
        function_sql(
            &names::truncate_function(),
            "pgtwin_tags json",
            "void",
            &truncate_body(i.tables, i),
            Security::Invoker,
        ),
    ));
    // SECURITY DEFINER: the flush fires at commit in the application's session, and sends through
    // the installing role's user mapping.
    steps.push(Step::new(
        "flush trigger",
        format!(
            "{};\nDROP TRIGGER IF EXISTS {trigger} ON {pending};\nCREATE CONSTRAINT TRIGGER {trigger} AFTER INSERT ON {pending}\n    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.flush) EXECUTE FUNCTION {flush}()",
            function_sql(
                &names::flush_function(),
                "",
                "trigger",
                &flush_body(i.tables),
                Security::Definer,
            ),
            trigger = Ident::new(names::FLUSH_TRIGGER),
            pending = names::pending_table(),
            flush = names::flush_function(),
        ),
    ));
    // Default privileges (ALTER DEFAULT PRIVILEGES for the installing role) may have granted others
    // access to what was just created: the queue and the conflicts hold row data, and the inbox
    // applies whatever it is given. Only the owner keeps any.
    steps.push(Step::new(
        "privileges",
        format!(
            "DO $pgtwin$\nDECLARE\n    r record;\nBEGIN\n    FOR r IN\n        SELECT 'SCHEMA ' || quote_ident(n.nspname) AS obj, a.grantee FROM pg_namespace n, aclexplode(n.nspacl) a\n         WHERE n.nspname = {schema} AND a.grantee <> n.nspowner\n        UNION ALL\n        SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE ' ELSE 'TABLE ' END || c.oid::regclass::text, a.grantee\n          FROM pg_class c, aclexplode(c.relacl) a\n         WHERE c.relnamespace = {schema}::regnamespace AND a.grantee <> c.relowner\n        UNION ALL\n        SELECT 'FUNCTION ' || p.oid::regprocedure::text, a.grantee FROM pg_proc p, aclexplode(p.proacl) a\n         WHERE p.pronamespace = {schema}::regnamespace AND a.grantee <> p.proowner\n        UNION ALL\n        SELECT 'TYPE ' || t.oid::regtype::text, a.grantee FROM pg_type t, aclexplode(t.typacl) a\n         WHERE t.typnamespace = {schema}::regnamespace AND a.grantee <> t.typowner AND t.typtype <> 'c'\n    LOOP\n        EXECUTE format('REVOKE ALL ON %s FROM %s', r.obj,\n            CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END);\n    END LOOP;\nEND\n$pgtwin$",
            schema = Literal(names::SCHEMA)
        ),
    ));
    for s in i.sequences {
        steps.push(
            Step::new(
                format!("sequence {}", s.sequence),
                format!(
                    "INSERT INTO {} VALUES ({}, {}, {}) ON CONFLICT DO NOTHING;\nALTER SEQUENCE {} INCREMENT BY {} START WITH {} RESTART WITH {}",
                    names::sequences_table(),
                    Literal(s.sequence.schema.as_str()),
                    Literal(s.sequence.name.as_str()),
                    s.original_increment,
                    s.sequence,
                    s.increment,
                    s.restart,
                    s.restart
                ),
            )
            .unhashed(),
        );
    }
    steps
}

/// The installation record, written last: its presence means the node's install completed. Its columns
/// are named: migrations add columns, so their order is the history of the installation.
pub fn record_step(
    node: &str,
    peer: &str,
    plan_hash: &str,
    created_extension: bool,
    tables: &[TableInfo],
) -> Step {
    let table_names = comma_list(
        tables
            .iter()
            .map(|t| Literal(&t.synced_name.to_string()).to_string()),
    );
    Step::new(
        "installation record",
        format!(
            "INSERT INTO {t} AS i (singleton, version, node, peer, plan_hash, created_extension, tables, installed_at, database_oid, system_identifier)\n    VALUES (true, {}, {}, {}, {}, {created_extension}, ARRAY[{table_names}]::text[], now(),\n    (SELECT oid FROM pg_database WHERE datname = current_database()), (SELECT system_identifier FROM pg_control_system()))\n    ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, node = EXCLUDED.node, peer = EXCLUDED.peer,\n    plan_hash = EXCLUDED.plan_hash, tables = EXCLUDED.tables, installed_at = EXCLUDED.installed_at,\n    created_extension = i.created_extension OR EXCLUDED.created_extension, database_oid = EXCLUDED.database_oid,\n    system_identifier = EXCLUDED.system_identifier",
            Literal(env!("CARGO_PKG_VERSION")),
            Literal(node),
            Literal(peer),
            Literal(plan_hash),
            t = names::installation_table(),
        ),
    )
    .unhashed()
}

/// libpq options for the connection from this node to its peer. `options` marks the session as pgtwin's
/// (so the peer's triggers do not echo) and bounds its lock waits: a lock wait that crosses servers is a
/// deadlock neither server can see (POSTGRES-NOTES 9). Connect timeout and keepalives bound the waits
/// on a peer that does not answer.
fn server_options(i: &Install) -> String {
    let c = i.peer_conn;
    let mut session = format!(
        "-c {}={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}s",
        names::ORIGIN_SETTING,
        i.node,
        i.options.lock_timeout_ms,
        i.options.peer_idle_timeout_s
    );
    let mut opts: Vec<(String, String)> = vec![
        ("host".into(), c.host.clone()),
        ("port".into(), c.port.to_string()),
        ("dbname".into(), c.dbname.clone()),
        ("application_name".into(), format!("pgtwin from {}", i.node)),
    ];
    for (k, v) in &c.params {
        match k.as_str() {
            "options" => {
                session = format!("{v} {session}");
            }
            "application_name" => {}
            _ => opts.push((k.clone(), v.clone())),
        }
    }
    let defaults = std::iter::once(("connect_timeout", i.options.connect_timeout_s.to_string()))
        .chain(crate::db::KEEPALIVE.libpq_params());
    for (k, v) in defaults {
        if !c.params.contains_key(k) {
            opts.push((k.into(), v));
        }
    }
    opts.push(("options".into(), session));
    comma_list(
        opts.iter()
            .map(|(k, v)| format!("{} {}", Ident::new(k.as_str()), Literal(v))),
    )
}

fn table_steps(t: &TableInfo, i: &Install) -> Vec<Step> {
    // pgtwin's objects are named from the config's name of the table (the same on both nodes); the
    // triggers go on the table as this node names it.
    let name = &t.synced_name;
    let table = &t.name;
    let inbox = names::inbox(name);
    let peer = names::peer_inbox(name);
    let batch = Ident::new(names::BATCH_COLUMN);
    let capture = names::capture_function(name);
    let apply = names::apply_function(name);
    let resolve = names::resolve_function(name);
    let ship = names::ship_function(name);
    let mut steps = vec![
        // Changes travelled as a composite type before they travelled by name: an older install's
        // type goes, and with it (CASCADE) the functions that took it.
        Step::new(
            format!("table {name}: no change type"),
            format!("DROP TYPE IF EXISTS {} CASCADE", names::change_type(name)),
        ),
        Step::new(
            format!("table {name}: conflict resolution"),
            function_sql(
                &resolve,
                "pgtwin_op text, pgtwin_rows json, pgtwin_at timestamptz",
                "json",
                &resolve_body(t, i),
                Security::Invoker,
            ),
        ),
        // Its fast path compiles the columns as both nodes have them now; a migration changes that
        // without changing what is installed, so the plan hash reads the function without them.
        // The comment records the table's shape the fast path was compiled for (`up` compares it).
        Step::new(
            format!("table {name}: apply function"),
            format!(
                "{};\nCOMMENT ON FUNCTION {apply}() IS {}",
                function_sql(&apply, "", "trigger", &apply_body(t, i), Security::Invoker),
                Literal(&t.signature)
            ),
        )
        .hashed_as(function_sql(
            &apply,
            "",
            "trigger",
            &apply_body(&t.without_shape(), i),
            Security::Invoker,
        )),
        // A one-row view: the peer UPDATEs it with a chunk, and the INSTEAD OF trigger applies it.
        Step::new(
            format!("table {name}: inbox"),
            format!(
                "CREATE OR REPLACE VIEW {inbox} AS SELECT NULL::text AS {batch};\nDROP TRIGGER IF EXISTS {trigger} ON {inbox};\nCREATE TRIGGER {trigger} INSTEAD OF UPDATE ON {inbox}\n    FOR EACH ROW EXECUTE FUNCTION {apply}()",
                trigger = Ident::new(names::APPLY_TRIGGER),
            ),
        ),
        Step::new(
            format!("table {name}: peer inbox"),
            format!(
                "CREATE FOREIGN TABLE {peer} ({batch} text) SERVER {} OPTIONS (schema_name {}, table_name {})",
                names::server(),
                Literal(inbox.schema.as_str()),
                Literal(inbox.name.as_str())
            ),
        ),
        Step::new(
            format!("table {name}: ship function"),
            format!(
                "DROP FUNCTION IF EXISTS {ship}(text, integer, boolean);\n{}",
                function_sql(
                    &ship,
                    "pgtwin_chunk text, pgtwin_rows integer, pgtwin_queue boolean, pgtwin_keys text[]",
                    "boolean",
                    &ship_body(t, i.options),
                    Security::Invoker,
                )
            ),
        ),
        // SECURITY DEFINER: application roles that write the table need no access to the foreign server,
        // the stored password or the queue; the function runs as the role that installed it.
        Step::new(
            format!("table {name}: capture function"),
            function_sql(&capture, "", "trigger", &capture_body(t, i), Security::Capture),
        ),
    ];
    let mut triggers = drop_capture_triggers(table);
    for (trigger, event) in names::TRIGGER_EVENTS {
        let referencing = match event {
            "AFTER INSERT" => format!("REFERENCING NEW TABLE AS {} ", Ident::new(names::NEW_ROWS)),
            "AFTER UPDATE" => format!(
                "REFERENCING OLD TABLE AS {} NEW TABLE AS {} ",
                Ident::new(names::OLD_ROWS),
                Ident::new(names::NEW_ROWS)
            ),
            "AFTER DELETE" => format!("REFERENCING OLD TABLE AS {} ", Ident::new(names::OLD_ROWS)),
            _ => String::new(),
        };
        triggers.push_str(&format!(
            ";\nCREATE TRIGGER {} {event} ON {table}\n    {referencing}FOR EACH STATEMENT EXECUTE FUNCTION {capture}()",
            Ident::new(trigger)
        ));
    }
    steps.push(Step::new(
        format!("table {name}: capture triggers"),
        triggers,
    ));
    steps
}

fn drop_capture_triggers(table: &QualName) -> String {
    names::TRIGGER_EVENTS
        .iter()
        .map(|(trigger, _)| format!("DROP TRIGGER IF EXISTS {} ON {table}", Ident::new(*trigger)))
        .collect::<Vec<_>>()
        .join(";\n")
}

enum Security {
    Invoker,
    /// SECURITY DEFINER, with the settings that shape text output pinned.
    Capture,
    /// SECURITY DEFINER.
    Definer,
}

fn function_sql(
    name: &QualName,
    args: &str,
    returns: &str,
    body: &str,
    security: Security,
) -> String {
    // search_path is pinned: postgres_fdw's remote sessions run with search_path = pg_catalog, and a
    // SECURITY DEFINER function must never resolve names through a caller-controlled path. The capture
    // side also pins the settings that shape text output, so a chunk reads back exactly on the peer
    // whatever the application's session uses (postgres_fdw does the same for its own parameters).
    let settings = match security {
        Security::Invoker => "",
        Security::Capture => " SECURITY DEFINER\n    SET datestyle = 'ISO, MDY' SET intervalstyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex' SET timezone = 'UTC'",
        Security::Definer => " SECURITY DEFINER",
    };
    format!(
        "CREATE OR REPLACE FUNCTION {name}({args}) RETURNS {returns} LANGUAGE plpgsql{settings}\n    SET search_path = pg_catalog, pg_temp AS {};\nREVOKE ALL ON FUNCTION {name}({args}) FROM PUBLIC",
        dollar_quote(&format!("\n{body}"))
    )
}

fn capture_body(t: &TableInfo, i: &Install) -> String {
    let options = i.options;
    let new = Ident::new(names::NEW_ROWS);
    let old = Ident::new(names::OLD_ROWS);
    let keys = comma_list(&t.key);
    let key_list = Literal(&change::columns_json(&t.key)).to_string();
    let refuse_row = names::refuse_row_function().to_string();
    let table_name = Literal(&t.synced_name.to_string()).to_string();
    let chunking = change::Chunking {
        max_rows: options.batch_size,
        max_row_bytes: i64::from(options.max_row_mb) * 1024 * 1024,
        refuse_row: &refuse_row,
        table: &table_name,
        counted: None,
    };
    let deletes = |source: String| {
        let key = change::key_object(&t.key, "o");
        let key_text = change::key_text_of(&t.key, "o");
        change::chunks_query(
            change::DELETE,
            &key_list,
            &key,
            (&key, &key_text),
            (&source, "o"),
            &t.key,
            &chunking,
        )
    };
    let new_rows = |op| {
        change::chunks_query(
            op,
            "pgtwin_columns",
            // The alias is reserved (no user column starts with pgtwin_): a column named like a bare
            // alias would be taken for it.
            "row_to_json(pgtwin_row)",
            (
                &change::key_object(&t.key, "pgtwin_row"),
                &change::key_text_of(&t.key, "pgtwin_row"),
            ),
            (&format!("{new} pgtwin_row"), "pgtwin_row"),
            &t.key,
            &chunking,
        )
    };
    let updated_rows = change::chunks_query(
        change::UPSERT,
        "pgtwin_columns",
        "pgtwin_row.pgtwin_json",
        (
            &change::key_object(&t.key, "pgtwin_row"),
            &change::key_text_of(&t.key, "pgtwin_row"),
        ),
        (
            &change::updated_rows_source(
                &new.to_string(),
                &old.to_string(),
                &t.key,
                chunking.max_row_bytes,
                "pgtwin_row",
            ),
            "pgtwin_row",
        ),
        &t.key,
        &change::Chunking {
            counted: Some(&new.to_string()),
            ..chunking
        },
    );
    let tag = Literal(&names::table_tag(&t.synced_name)).to_string();
    let send = match options.mode {
        Mode::Async => format!(
            "PERFORM {}({tag}, pgtwin_chunk, pgtwin_rows, pgtwin_keys);",
            names::enqueue_function()
        ),
        // The transaction's first pending chunk also asks for the flush at commit. Known from the
        // pending table itself (a setting could be set by the application, and a savepoint's rollback
        // takes its rows along); after SET CONSTRAINTS ALL IMMEDIATE the flush runs at once and empties
        // it, so the next chunk asks again.
        Mode::Sync => format!(
                "pgtwin_flush := NOT EXISTS (SELECT FROM {pending} WHERE xid = pg_current_xact_id());\n            INSERT INTO {pending} (table_tag, rows, batch, keys, flush) VALUES ({tag}, pgtwin_rows, pgtwin_chunk, pgtwin_keys, pgtwin_flush);",
                pending = names::pending_table(),
            ),
    };
    fill(
        CAPTURE_TEMPLATE,
        &[
            ("always_queue", (options.mode == Mode::Async).to_string()),
            ("tag", tag.clone()),
            ("database_oid", i.database_oid.to_string()),
            ("system_identifier", i.system_identifier.to_string()),
            ("ship", names::ship_function(&t.synced_name).to_string()),
            ("send", send),
            ("columns_list", change::COLUMNS_SQL.to_string()),
            ("truncated_keys", deletes(format!("{} o", t.name))),
            (
                "keys_changed_away",
                format!("SELECT {keys} FROM {old} EXCEPT SELECT {keys} FROM {new}"),
            ),
            ("updated_keys", deletes(format!("{old} o"))),
            ("deleted_keys", deletes(format!("{old} o"))),
            ("inserted_rows", new_rows(change::INSERT)),
            ("new_rows", new_rows(change::UPSERT)),
            ("updated_rows", updated_rows),
        ],
    )
}

/// The deferred trigger that sends the committing transaction's pending chunks (sync mode), in order,
/// each through its table's ship function, and forgets them.
fn flush_body(tables: &[TableInfo]) -> String {
    let mut dispatch = String::from("CASE pgtwin_tag");
    for t in tables {
        dispatch.push_str(&format!(
            "\n        WHEN {} THEN pgtwin_queue := {}(pgtwin_batch, pgtwin_rows, pgtwin_queue, pgtwin_keys);",
            Literal(&names::table_tag(&t.synced_name)),
            names::ship_function(&t.synced_name)
        ));
    }
    dispatch.push_str("\n        ELSE\n            RAISE EXCEPTION 'pgtwin: a change of a table no longer synced (%) was made while pgtwin up ran', pgtwin_tag\n                USING HINT = 'run the transaction again';\n    END CASE;");
    fill(
        FLUSH_TEMPLATE,
        &[
            ("dispatch", dispatch.replace('\n', "\n        ")),
            ("rows_mark", Literal(change::ROWS_MARK).to_string()),
            ("rows_mark_length", change::ROWS_MARK.len().to_string()),
            ("joined_rows", change::JOINED_ROWS.to_string()),
            ("chunk_bytes", change::CHUNK_BYTES.to_string()),
        ],
    )
}

/// Truncates, in one statement, this node's tables of the synced tables whose tags it is given (a
/// TRUNCATE of several tables on the peer; tables linked by a foreign key can only go together).
fn truncate_body(tables: &[TableInfo], i: &Install) -> String {
    let mut cases = String::new();
    for t in tables {
        cases.push_str(&format!(
            " WHEN {} THEN {}",
            Literal(&names::table_tag(&t.synced_name)),
            Literal(&t.name.to_string())
        ));
    }
    format!(
        "DECLARE\n    pgtwin_tables text[];\nBEGIN\n    SELECT array_agg(CASE tag{cases} END ORDER BY n) INTO pgtwin_tables\n    FROM json_array_elements_text(pgtwin_tags) WITH ORDINALITY AS x(tag, n);\n    IF array_position(pgtwin_tables, NULL) IS NOT NULL THEN\n        RAISE EXCEPTION 'pgtwin: node % was sent a TRUNCATE of a table it does not sync: %', {node}, pgtwin_tags\n            USING HINT = 'the nodes were installed from different configs: run pgtwin up';\n    END IF;\n    EXECUTE 'TRUNCATE ' || array_to_string(pgtwin_tables, ', ');\nEND",
        node = Literal(i.node),
    )
}

/// The peer's name of each of this table's columns that the config renames on either node, as a JSON
/// object (this node's name → the peer's) for the apply function; from the config, so that a renamed
/// column added after `up` syncs too.
fn peer_names(t: &TableInfo) -> String {
    let renamed: std::collections::BTreeMap<&str, &str> = t
        .peer_renames
        .iter()
        .map(|(here, there)| (here.as_str(), there.as_str()))
        .collect();
    serde_json::to_string(&renamed).expect("names serialize")
}

/// The condition on a column `a` (pg_attribute) of the table that the config's `columns` or
/// `exclude_columns` put on what is synced.
fn column_filter(t: &TableInfo) -> String {
    let list = |cols: &[Ident]| {
        format!(
            "ARRAY[{}]::text[]",
            comma_list(cols.iter().map(|c| Literal(c.as_str())))
        )
    };
    match &t.only_columns {
        Some(only) => format!("a.attname::text = ANY ({})", list(only)),
        None if t.excluded_columns.is_empty() => "true".to_string(),
        None => format!("NOT a.attname::text = ANY ({})", list(&t.excluded_columns)),
    }
}

/// The apply function's query for the first row of an update chunk that this node does not hold as
/// the version the update replaced on the peer (see apply.sql): the key of that row, as text, or no
/// row. `rows` is the chunk's rows (json); `defs`, `t_text` and `o_text` are the shipped columns, as
/// the chunk's definitions, this node's values as text (`t.`) and the old version's (`o.`).
fn stale_row_query(
    t: &TableInfo,
    into: &str,
    rows: &str,
    defs: &str,
    t_text: &str,
    o_text: &str,
) -> String {
    let (key_defs, key_match) = peer_key_reading(t);
    let peer_key = |k: &Ident| t.column(k).map_or(k.clone(), |c| c.peer_name.clone());
    let b_keys = comma_list(t.key.iter().map(|k| format!("b.{}", peer_key(k))));
    let key_names = comma_list(t.key.iter().map(peer_key));
    format!(
        "SELECT row({b_keys})::text{into}\n\
         FROM (SELECT DISTINCT ON ({b_keys}) b.*\n\
               FROM ROWS FROM (pg_catalog.json_to_recordset({rows}) AS ({key_defs}, {before} pg_catalog.json)) WITH ORDINALITY AS b({key_names}, {before}, pgtwin_n)\n\
               ORDER BY {b_keys}, b.pgtwin_n) b\n\
         LEFT JOIN {table} t ON {key_match}\n\
         LEFT JOIN LATERAL pg_catalog.json_to_record(b.{before}) AS o({defs}) ON true\n\
         WHERE b.{before} IS NOT NULL AND (t.{first_key} IS NULL OR ({t_text}) IS DISTINCT FROM ({o_text}))\n\
         LIMIT 1",
        before = Ident::new(change::BEFORE),
        table = t.name,
        first_key = t.key[0],
    )
}

/// The one-pass write of an update's chunk (apply.sql): each row overwrites the row with its key where
/// that row still holds the version the peer replaced (`o_text` against `t_text`), or where the row
/// carries none. Its row count tells whether every row found its version. None for a table of key
/// columns alone: it has nothing to set (and an identity key could not be set to itself).
fn versioned_update(t: &TableInfo, defs: &str, t_text: &str, o_text: &str) -> Option<String> {
    let (_, key_match) = peer_key_reading(t);
    let non_key: Vec<&Column> = t
        .shipped_columns()
        .filter(|c| !t.key.contains(&c.name))
        .collect();
    if non_key.is_empty() {
        return None;
    }
    let set = comma_list(
        non_key
            .iter()
            .map(|c| format!("{} = b.{}", c.name, c.peer_name)),
    );
    Some(format!(
        "UPDATE {table} AS t SET {set}\n\
         FROM pg_catalog.json_to_recordset(pgtwin_rows) AS b({defs}, {before} pg_catalog.json)\n\
         LEFT JOIN LATERAL pg_catalog.json_to_record(b.{before}) AS o({defs}) ON true\n\
         WHERE {key_match} AND (b.{before} IS NULL OR ({t_text}) IS NOT DISTINCT FROM ({o_text}));",
        table = t.name,
        before = Ident::new(change::BEFORE),
    ))
}

/// `ON CONFLICT (key) DO ...` of an upsert: overwrite every non-key column (NOTHING if there is none).
pub fn upsert_action(t: &TableInfo) -> String {
    let non_key: Vec<&Ident> = t
        .shipped_columns()
        .map(|c| &c.name)
        .filter(|c| !t.key.contains(c))
        .collect();
    if non_key.is_empty() {
        return "NOTHING".into();
    }
    format!(
        "UPDATE SET {}",
        comma_list(non_key.iter().map(|c| format!("{c} = EXCLUDED.{c}")))
    )
}

/// How this node reads the keys of a chunk from the peer (which names the key columns as the peer
/// does): the column definitions for `json_to_recordset(...) AS b(defs)`, with this node's types, and
/// the condition matching a row `t` of the table to a row `b` of the chunk.
pub fn peer_key_reading(t: &TableInfo) -> (String, String) {
    let peer_key = |k: &Ident| t.column(k).map_or(k.clone(), |c| c.peer_name.clone());
    let key_defs = t.key.iter().map(|k| {
        let ty = t
            .column(k)
            .map(|c| c.ty.to_string())
            .unwrap_or_else(|| "text".into());
        format!("{} {ty}", peer_key(k))
    });
    let key_match = t
        .key
        .iter()
        .map(|k| format!("t.{k} = b.{}", peer_key(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    (comma_list(key_defs), key_match)
}

fn apply_body(t: &TableInfo, i: &Install) -> String {
    // A chunk from the peer names the key columns as the peer does.
    let peer_key = |k: &Ident| t.column(k).map_or(k.clone(), |c| c.peer_name.clone());
    let (key_defs, key_match) = peer_key_reading(t);
    let defs = comma_list(
        t.shipped_columns()
            .map(|c| format!("{} {}", c.peer_name, c.ty)),
    );
    // Values compare as text, byte for byte (COLLATE "C"): under a case-insensitive collation, `Kim`
    // and `KIM` would be equal.
    let t_text = comma_list(
        t.shipped_columns()
            .map(|c| format!("t.{}::text COLLATE \"C\"", c.name)),
    );
    let b_text = comma_list(
        t.shipped_columns()
            .map(|c| format!("b.{}::text COLLATE \"C\"", c.peer_name)),
    );
    // An update's old version is compared in the columns that had the same type on both nodes at
    // `up`: where the types differ, a value need not read back the same (numeric(10,2) rounds what
    // numeric keeps), and no repair could make the two agree. Never an empty list: a NULL stands in.
    let compared: Vec<_> = t
        .shipped_columns()
        .filter(|c| c.same_type_as_peer)
        .collect();
    let compared_list = |side: &str, name: fn(&Column) -> &Ident| {
        if compared.is_empty() {
            return "NULL::text".to_string();
        }
        comma_list(
            compared
                .iter()
                .map(|c| format!("{side}.{}::text COLLATE \"C\"", name(c))),
        )
    };
    let (t_compared, o_text) = (
        compared_list("t", |c| &c.name),
        compared_list("o", |c| &c.peer_name),
    );
    let one_pass = versioned_update(t, &defs, &t_compared, &o_text);
    fill(
        APPLY_TEMPLATE,
        &[
            ("table", t.name.to_string()),
            ("table_text", Literal(&t.name.to_string()).to_string()),
            (
                "table_text_quoted",
                Literal(&t.name.to_string()).to_string(),
            ),
            ("local", Literal(i.node).to_string()),
            ("truncate", names::truncate_function().to_string()),
            (
                "capture_trigger",
                Literal(names::TRIGGER_EVENTS[0].0).to_string(),
            ),
            (
                "not_captured",
                Literal(names::NOT_CAPTURED_SQLSTATE).to_string(),
            ),
            ("went_back", Literal(names::WENT_BACK_SQLSTATE).to_string()),
            (
                "tag",
                Literal(&names::table_tag(&t.synced_name)).to_string(),
            ),
            // Whether this node's queue holds a change of this table (a scan of the queue, the
            // planner's choice for EXISTS, walks every entry deleted since its last vacuum).
            (
                "queued_here",
                format!(
                    "(({}) IS NOT NULL)",
                    crate::state::first_queued_of_table_sql(&names::table_tag(&t.synced_name))
                ),
            ),
            (
                "resolve",
                names::resolve_function(&t.synced_name).to_string(),
            ),
            ("key_defs", key_defs),
            ("key_match", key_match.clone()),
            (
                "key_names",
                format!(
                    "ARRAY[{}]::text[]",
                    comma_list(t.key.iter().map(|k| Literal(k.as_str())))
                ),
            ),
            ("peer_names", Literal(&peer_names(t)).to_string()),
            ("column_filter", column_filter(t)),
            ("peer", Literal(i.peer).to_string()),
            ("expected_signature", Literal(&t.signature).to_string()),
            ("signature", change::SIGNATURE_SQL.to_string()),
            ("rows_mark", Literal(change::ROWS_MARK).to_string()),
            ("rows_mark_length", change::ROWS_MARK.len().to_string()),
            (
                "columns_prefix",
                Literal(change::COLUMNS_PREFIX).to_string(),
            ),
            (
                "columns_prefix_length",
                (1 + change::COLUMNS_PREFIX.len()).to_string(),
            ),
            ("expected_header", Literal(&t.peer_header).to_string()),
            ("cols", comma_list(t.shipped_columns().map(|c| &c.name))),
            (
                "b_cols",
                comma_list(t.shipped_columns().map(|c| format!("b.{}", c.peer_name))),
            ),
            ("defs", defs.clone()),
            (
                "names",
                comma_list(t.shipped_columns().map(|c| &c.peer_name)),
            ),
            (
                "b_keys",
                comma_list(t.key.iter().map(|k| format!("b.{}", peer_key(k)))),
            ),
            ("keys", comma_list(&t.key)),
            // An insert never overwrites (see apply.sql): it takes a conflicting key as a clash.
            ("conflict_action", {
                let action = upsert_action(t);
                if action == "NOTHING" {
                    action
                } else {
                    format!("{action} WHERE pgtwin_op <> 'I'")
                }
            }),
            ("key_match_text", Literal(&key_match).to_string()),
            (
                "b_keys_text",
                Literal(&comma_list(
                    t.key.iter().map(|k| format!("b.{}", peer_key(k))),
                ))
                .to_string(),
            ),
            ("keys_text", Literal(&comma_list(&t.key)).to_string()),
            (
                "stale_sqlstate",
                Literal(names::STALE_UPDATE_SQLSTATE).to_string(),
            ),
            (
                "compared_names",
                format!(
                    "ARRAY[{}]::text[]",
                    comma_list(compared.iter().map(|c| Literal(c.peer_name.as_str())))
                ),
            ),
            (
                "stale_check",
                // Not indented to its place: an identifier may hold a newline.
                format!(
                    "{};",
                    stale_row_query(
                        t,
                        " INTO pgtwin_clash",
                        "pgtwin_rows",
                        &defs,
                        &t_compared,
                        &o_text
                    )
                ),
            ),
            ("stale_check_text", {
                // For format(): its own text escaped, the column lists left to fill.
                let marks = ["\u{1}D", "\u{1}T", "\u{1}O"];
                let query =
                    stale_row_query(t, "", "$1", marks[0], marks[1], marks[2]).replace('%', "%%");
                let query = marks.iter().fold(query, |q, m| q.replace(m, "%s"));
                Literal(&query).to_string()
            }),
            ("one_pass", one_pass.is_some().to_string()),
            (
                "versioned_update",
                // Not indented to its place: an identifier may hold a newline.
                one_pass.unwrap_or("NULL;".into()),
            ),
            (
                "joined_setting",
                Literal(names::REPLAY_JOINED_SETTING).to_string(),
            ),
            (
                "undone_sqlstate",
                Literal(names::UNDONE_SQLSTATE).to_string(),
            ),
            ("defs_text", Literal(&defs).to_string()),
            ("t_text_text", Literal(&t_text).to_string()),
            ("b_text_text", Literal(&b_text).to_string()),
        ],
    )
}

fn ship_body(t: &TableInfo, options: &Options) -> String {
    let update = format!(
        "UPDATE {} SET {} = pgtwin_chunk;\n        RETURN false;",
        names::peer_inbox(&t.synced_name),
        Ident::new(names::BATCH_COLUMN)
    );
    let direct = match (options.mode, options.on_peer_down) {
        (Mode::Async, _) => "NULL; -- async mode: every change is queued".to_string(),
        (Mode::Sync, OnPeerDown::Fail) => update,
        // "Peer unavailable" is: unreachable (class 08), refusing pgtwin's login (class 28), without
        // its inbox (42P01: not installed there yet, as after an `up` that committed on one node only),
        // or refusing this node's changes because this node went back (a backup restored here).
        // Anything else (a lock timeout, a constraint on the peer) fails the write, as it must.
        // The subtransaction that catches it costs two round trips (postgres_fdw mirrors it as a
        // savepoint), so it is paid once per transaction: once the peer has taken part, its failure
        // loses the transaction's remote part anyway, and no savepoint could save the transaction.
        (Mode::Sync, OnPeerDown::Queue) => format!(
            "IF current_setting({reached}, true) = 'on' THEN\n            {update}\n        END IF;\n        BEGIN\n            {marked}\n        EXCEPTION WHEN connection_exception OR invalid_authorization_specification THEN\n            NULL; -- the peer is unavailable: queue this chunk and the rest\n        WHEN SQLSTATE {went_back} THEN\n            NULL; -- this node went back (a backup restored): queued, and set aside by pgtwin run\n        WHEN undefined_table THEN\n            -- Only a missing inbox means \"not installed there\": a relation missing inside the\n            -- peer's apply (its own trigger's, say) is an error of that write, reported as such.\n            GET STACKED DIAGNOSTICS pgtwin_message = MESSAGE_TEXT;\n            IF strpos(pgtwin_message, {inbox}) = 0 THEN\n                RAISE;\n            END IF;\n        END;",
            inbox = Literal(names::inbox(&t.synced_name).name.as_str()),
            went_back = Literal(names::WENT_BACK_SQLSTATE),
            reached = Literal(names::PEER_REACHED_SETTING),
            update = update.replace('\n', "\n    "),
            marked = update
                .replace(
                    "\n        RETURN false;",
                    &format!(
                        "\n            PERFORM set_config({}, 'on', true);\n            RETURN false;",
                        Literal(names::PEER_REACHED_SETTING)
                    )
                ),
        ),
    };
    fill(
        SHIP_TEMPLATE,
        &[
            ("direct", direct),
            (
                "tag",
                Literal(&names::table_tag(&t.synced_name)).to_string(),
            ),
        ],
    )
}

/// The key columns as the peer names them.
fn peer_key_names(t: &TableInfo) -> Vec<Ident> {
    t.key
        .iter()
        .map(|k| t.column(k).map_or(k.clone(), |c| c.peer_name.clone()))
        .collect()
}

fn resolve_body(t: &TableInfo, i: &Install) -> String {
    fill(
        RESOLVE_TEMPLATE,
        &[
            ("incoming_key", change::key_text(&peer_key_names(t), "b")),
            ("local_key", change::key_text(&t.key, "p")),
            (
                "tag",
                Literal(&names::table_tag(&t.synced_name)).to_string(),
            ),
            ("local_wins_ties", (i.node > i.peer).to_string()),
            (
                "table_name",
                Literal(&t.synced_name.to_string()).to_string(),
            ),
            ("local", Literal(i.node).to_string()),
            ("peer", Literal(i.peer).to_string()),
        ],
    )
}

/// The names every template may use: pgtwin's own tables, functions, channel and settings.
fn common_names() -> Vec<(&'static str, String)> {
    vec![
        ("installation", names::installation_table().to_string()),
        ("sequences", names::sequences_table().to_string()),
        ("queue", names::queue_table().to_string()),
        ("queue_latest", names::queue_latest_table().to_string()),
        // Whether the queue holds anything, through its key from the head: entries leave from there,
        // and a scan of the table (what the planner picks for EXISTS) walks every entry deleted since
        // the last vacuum before it finds one still there.
        (
            "queue_holds_any",
            format!(
                "((SELECT seq FROM {} ORDER BY seq LIMIT 1) IS NOT NULL)",
                names::queue_table()
            ),
        ),
        ("pending", names::pending_table().to_string()),
        (
            "app_path_setting",
            Literal(names::APP_PATH_SETTING).to_string(),
        ),
        ("probe", Literal(crate::change::PROBE).to_string()),
        ("applied", names::applied_table().to_string()),
        ("replayed", names::replayed_table().to_string()),
        ("conflicts", names::conflicts_table().to_string()),
        ("link", names::link_table().to_string()),
        ("runner", names::runner_table().to_string()),
        ("state_version", names::state_version_table().to_string()),
        ("locks", names::locks_table().to_string()),
        ("random_key", crate::locks::RANDOM_KEY_SQL.to_string()),
        ("set_aside", names::set_aside_table().to_string()),
        ("enqueue", names::enqueue_function().to_string()),
        ("channel", Literal(names::QUEUE_CHANNEL).to_string()),
        ("origin_setting", Literal(names::ORIGIN_SETTING).to_string()),
        (
            "replay_setting",
            Literal(names::REPLAY_AT_SETTING).to_string(),
        ),
        (
            "joined_setting",
            Literal(names::REPLAY_JOINED_SETTING).to_string(),
        ),
        (
            "retry_unjoined",
            Literal(names::RETRY_UNJOINED_SQLSTATE).to_string(),
        ),
        // An update's old version in a row of a chunk: the member's name, and how its text begins.
        ("before", Literal(crate::change::BEFORE).to_string()),
        (
            "before_mark",
            Literal(&format!("\"{}\":", crate::change::BEFORE)).to_string(),
        ),
    ]
}

/// Fills a template: its own values, then pgtwin's common names.
pub fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut all: Vec<(&str, String)> = values.to_vec();
    all.extend(common_names());
    render(template, &all)
}

/// Fills `{{name}}` placeholders in one pass, so text substituted in (identifiers may contain anything,
/// braces included) is never scanned again. A placeholder without a value is a bug: it panics.
pub fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("unclosed placeholder") + start;
        let key = &rest[start + 2..end];
        let value = values
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("template placeholder {key} has no value"));
        out.push_str(&value.1);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Steps that remove pgtwin from a node. `sequences` are (sequence, original increment) as recorded.
/// A sequence `down` gives back: its original increment, and the largest key on either node of the
/// column it feeds (None where unknown), which its next value must exceed.
pub struct RestoredSequence {
    pub sequence: QualName,
    pub increment: i64,
    pub floor: Option<i64>,
}

pub fn uninstall_steps(
    captured: &[QualName],
    sequences: &[RestoredSequence],
    drop_extension: bool,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for s in sequences {
        let seq = &s.sequence;
        // Interleaving left each node's sequence behind the ids the other node handed out: without
        // this, the next default id on the node the peer wrote last would collide.
        let above = match s.floor {
            None => String::new(),
            Some(floor) => format!(
                ";\nSELECT setval({}::regclass, greatest({floor}, (SELECT last_value FROM {seq})))",
                Literal(&seq.to_string())
            ),
        };
        steps.push(
            Step::new(
                format!("sequence {seq}: restore increment"),
                format!("ALTER SEQUENCE {seq} INCREMENT BY {}{above}", s.increment),
            )
            .unhashed(),
        );
    }
    for table in captured {
        steps.push(Step::new(
            format!("table {table}: drop triggers"),
            drop_capture_triggers(table),
        ));
    }
    steps.push(Step::new(
        "foreign server",
        format!("DROP SERVER IF EXISTS {} CASCADE", names::server()),
    ));
    steps.push(Step::new(
        "schema",
        format!("DROP SCHEMA IF EXISTS {} CASCADE", names::schema()),
    ));
    if drop_extension {
        steps.push(Step::new(
            "extension",
            "DROP EXTENSION IF EXISTS postgres_fdw",
        ));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::KeySequence;
    use crate::sql::ident::SqlType;

    fn column(name: &str, ty: &str) -> Column {
        Column {
            name: Ident::new(name),
            synced_as: Ident::new(name),
            peer_name: Ident::new(name),
            ty: SqlType(ty.into()),
            not_null: false,
            generated: false,
            enum_labels: None,
            binary_ok: true,
            typed_hash: None,
            default: None,
            same_type_as_peer: true,
        }
    }

    fn products() -> TableInfo {
        TableInfo {
            name: QualName::new("public", "products"),
            synced_name: QualName::new("public", "products"),
            all_columns: vec![],
            signature: String::new(),
            peer_header: String::new(),
            peer_renames: vec![],
            only_columns: None,
            excluded_columns: vec![],
            columns: vec![
                column("id", "bigint"),
                column("name", "character varying(255)"),
                column("price", "integer"),
                Column {
                    generated: true,
                    ..column("price_x2", "integer")
                },
            ],
            key: vec![Ident::new("id")],
            key_sequences: vec![KeySequence {
                column: Ident::new("id"),
                sequence: QualName::new("public", "products_id_seq"),
                increment: 1,
                next_value: 3,
                start: 1,
                cycle: false,
                may_alter: true,
            }],
            unique: vec![],
        }
    }

    fn awkward() -> TableInfo {
        TableInfo {
            name: QualName::new("Sales Data", "Order Items"),
            synced_name: QualName::new("Sales Data", "Order Items"),
            all_columns: vec![],
            signature: String::new(),
            peer_header: String::new(),
            peer_renames: vec![],
            only_columns: None,
            excluded_columns: vec![Ident::new("internal")],
            columns: vec![
                column("Order", "integer"),
                column("a\"b", "text"),
                column("$pgtwin$", "text"),
            ],
            key: vec![Ident::new("Order"), Ident::new("a\"b")],
            key_sequences: vec![],
            unique: vec![],
        }
    }

    fn steps(tables: &[TableInfo]) -> Vec<Step> {
        let peer =
            ConnInfo::parse("postgres://app:s3cret@legacy.example:5433/legacy?sslmode=require")
                .unwrap();
        install_steps(&Install {
            node: "shop",
            peer: "legacy",
            peer_conn: &peer,
            options: &Options::default(),
            tables,
            create_extension: true,
            stale_tables: &[QualName::new("public", "old")],
            database_oid: 16384,
            system_identifier: 7_000_000_000_000_000_001,
            schema_exists: false,
            sequences: &[SequenceChange {
                sequence: QualName::new("public", "products_id_seq"),
                original_increment: 1,
                increment: 2,
                restart: 4,
            }],
        })
    }

    #[test]
    fn install_sql_golden() {
        insta::assert_snapshot!(crate::plan::render(&steps(&[products(), awkward()])));
    }

    #[test]
    fn uninstall_sql_golden() {
        insta::assert_snapshot!(crate::plan::render(&uninstall_steps(
            &[QualName::new("public", "products")],
            &[RestoredSequence {
                sequence: QualName::new("public", "products_id_seq"),
                increment: 1,
                floor: Some(42)
            }],
            true
        )));
    }

    #[test]
    fn the_password_runs_but_is_never_shown() {
        let steps = steps(&[products()]);
        let mapping = steps.iter().find(|s| s.id == "user mapping").unwrap();
        // It runs, as a bound setting: in no statement text, so in no server log.
        assert!(mapping.settings.iter().any(|(_, v)| v == "s3cret"));
        assert!(!mapping.sql.contains("s3cret"));
        assert!(steps.iter().all(|s| !s.shown.contains("s3cret")));
        assert!(!serde_json::to_string(&steps).unwrap().contains("s3cret"));
    }

    #[test]
    fn generated_columns_are_not_shipped() {
        let sql = crate::plan::render(&steps(&[products()]));
        assert!(!sql.contains("price_x2"));
    }

    #[test]
    fn the_plan_hash_ignores_live_values() {
        let a = steps(&[products()]);
        let mut b = a.clone();
        let seq = b.iter_mut().find(|s| s.id.starts_with("sequence")).unwrap();
        seq.sql = seq.sql.replace("RESTART WITH 4", "RESTART WITH 40");
        assert_eq!(crate::plan::plan_hash(&a), crate::plan::plan_hash(&b));
        let c = steps(&[products(), awkward()]);
        assert_ne!(crate::plan::plan_hash(&a), crate::plan::plan_hash(&c));
    }

    #[test]
    fn interleaving_starts_above_the_floor_on_the_node_s_residue() {
        assert_eq!(interleaved_start(0, 1, 2), 1);
        assert_eq!(interleaved_start(0, 2, 2), 2);
        assert_eq!(interleaved_start(7, 1, 2), 9);
        assert_eq!(interleaved_start(7, 2, 2), 8);
        assert_eq!(interleaved_start(8, 2, 2), 10);
        assert_eq!(interleaved_start(-5, 1, 2), -3);
    }

    #[test]
    fn render_fills_placeholders_once() {
        assert_eq!(
            render(
                "a {{x}} b {{y}}",
                &[("x", "{{y}}".into()), ("y", "2".into())]
            ),
            "a {{y}} b 2"
        );
    }
}
