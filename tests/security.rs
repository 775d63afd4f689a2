//! No way in, against real servers: an application role cannot make pgtwin run its code, read or forge
//! pgtwin's queue through default privileges, or opt its writes out of the sync.

mod common;

use common::{servers, Pair, TWIN_PW};

const PRODUCTS: &str = "CREATE TABLE products (id bigserial PRIMARY KEY, name text, price int);
    GRANT SELECT, INSERT, UPDATE, DELETE ON products TO app; GRANT USAGE ON SEQUENCE products_id_seq TO app";

/// Schema `pgtwin` as an application role would prepare it to be adopted: a table pgtwin writes, with a
/// trigger that would make the role a superuser when the installer writes it.
const GRABBING_SCHEMA: &str = "CREATE SCHEMA pgtwin;
    CREATE TABLE pgtwin.link (singleton boolean PRIMARY KEY DEFAULT true, needs_repair_since timestamptz, reason text);
    CREATE FUNCTION pgtwin.grab() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN ALTER ROLE app SUPERUSER; RETURN NEW; END $$;
    CREATE TRIGGER grab BEFORE INSERT ON pgtwin.link FOR EACH ROW EXECUTE FUNCTION pgtwin.grab();";

async fn app_is_superuser(p: &Pair) -> bool {
    p.admin[0]
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'", &[])
        .await
        .unwrap()
        .get(0)
}

/// An application role that may create schemas prepares `pgtwin` with a trigger of its own: `up`
/// (run by a superuser) refuses, naming what it found, and runs none of it.
#[tokio::test]
async fn a_schema_prepared_by_another_role_is_refused_not_adopted() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    let db = p.db.clone();
    p.admin[0]
        .batch_execute(&format!("GRANT CREATE ON DATABASE {db} TO app"))
        .await
        .unwrap();
    let app = p.app(0).await;
    app.batch_execute(&format!(
        "{GRABBING_SCHEMA} CREATE TABLE pgtwin.installation (singleton boolean);"
    ))
    .await
    .unwrap();
    // `up` as the superuser of node a.
    let admin_url = common::servers().nodes[0].url("postgres", None, &db);
    let text = format!(
        "[nodes.a]\nurl = \"{admin_url}\"\n[nodes.b]\nurl = \"{}\"\n[[tables]]\nname = \"products\"\n",
        p.url(1)
    );
    p.config_text(&text);
    // Node b's own problem (a has no password for it to log in with) comes in the same run.
    p.pgtwin(&["up"]).fails_with_each(&[
        &[
            "node a",
            "role postgres did not create what pgtwin would use there",
            "trigger grab on pgtwin.link",
            "function pgtwin.grab()",
        ],
        &["node b", "must log in to node a with a password"],
    ]);
    assert!(
        !app_is_superuser(&p).await,
        "the application role became a superuser"
    );
}

/// The same role creates `pgtwin`, with its trigger, while `up` (run by a superuser) waits for the
/// table lock, after `up` found no schema there: `up` fails instead of adopting it, and runs none of it.
#[tokio::test]
async fn a_schema_created_while_up_runs_is_not_adopted() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    let db = p.db.clone();
    p.admin[0]
        .batch_execute(&format!("GRANT CREATE ON DATABASE {db} TO app"))
        .await
        .unwrap();
    let urls: Vec<String> = (0..2)
        .map(|i| common::servers().nodes[i].url("postgres", None, &db))
        .collect();
    p.config_text(&format!(
        "[nodes.a]\nurl = \"{}\"\n[nodes.b]\nurl = \"{}\"\n[[tables]]\nname = \"products\"\n",
        urls[0], urls[1]
    ));
    // The application's transaction holds a lock that `up` waits for.
    let app = p.app(0).await;
    app.batch_execute("BEGIN; LOCK TABLE products IN ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let config = p.dir.path().join("pgtwin.toml");
    let up = std::thread::spawn(move || common::pgtwin(&config, &["up"]));
    // Until `up` waits for that lock: it has checked the schema by then.
    let waiting = || async {
        p.admin[0]
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'products'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let started = std::time::Instant::now();
    while waiting().await == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "up never waited for the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.batch_execute(&format!("{GRABBING_SCHEMA} COMMIT"))
        .await
        .unwrap();
    let run = up.join().unwrap();
    assert_ne!(run.code, 0, "up adopted the schema:\n{}", run.stdout);
    assert!(
        run.stderr.contains("node a") && run.stderr.contains("schema \"pgtwin\" already exists"),
        "{}",
        run.stderr
    );
    assert!(
        !app_is_superuser(&p).await,
        "the application role became a superuser"
    );
    assert!(!p.installed(1).await, "node b was installed alone");
}

/// Default privileges set by a DBA for pgtwin's role grant nothing on pgtwin's objects: the
/// application role can neither read the queue nor write into an inbox.
#[tokio::test]
async fn default_privileges_open_nothing_of_pgtwin() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    for admin in &p.admin {
        admin
            .batch_execute(
                "ALTER DEFAULT PRIVILEGES FOR ROLE twin GRANT ALL ON TABLES TO app;
                 ALTER DEFAULT PRIVILEGES FOR ROLE twin GRANT ALL ON FUNCTIONS TO app;
                 ALTER DEFAULT PRIVILEGES FOR ROLE twin GRANT ALL ON SEQUENCES TO app;
                 ALTER DEFAULT PRIVILEGES FOR ROLE twin GRANT ALL ON SCHEMAS TO app;",
            )
            .await
            .unwrap();
    }
    p.config("[[tables]]\nname = \"products\"");
    p.pgtwin(&["up"]).ok();
    let app = p.app(0).await;
    let open: Vec<String> = p.admin[0]
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c
              WHERE c.relnamespace = 'pgtwin'::regnamespace
                AND (c.relkind = 'S' AND has_sequence_privilege('app', c.oid, 'USAGE, SELECT, UPDATE')
                     OR c.relkind <> 'S' AND (has_table_privilege('app', c.oid,
                            'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                        OR has_any_column_privilege('app', c.oid, 'SELECT, INSERT, UPDATE, REFERENCES')))
             UNION ALL
             SELECT p.oid::regprocedure::text FROM pg_proc p
              WHERE p.pronamespace = 'pgtwin'::regnamespace AND has_function_privilege('app', p.oid, 'EXECUTE')
             UNION ALL
             SELECT 'schema' WHERE has_schema_privilege('app', 'pgtwin', 'USAGE, CREATE')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(open.is_empty(), "app may use: {open:?}");
    assert!(app
        .batch_execute("SELECT * FROM pgtwin.queue")
        .await
        .is_err());
    // Writes still sync as before.
    app.batch_execute("INSERT INTO products (name, price) VALUES ('a', 1)")
        .await
        .unwrap();
    assert_eq!(p.assert_same("products").await.len(), 1);
}

/// `SET pgtwin.origin` (or PGOPTIONS) in an application's session does not keep its writes from
/// the peer: only pgtwin's own role may mark a write as one pgtwin applied.
#[tokio::test]
async fn an_application_cannot_opt_its_writes_out_of_the_sync() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.config("[[tables]]\nname = \"products\"");
    p.pgtwin(&["up"]).ok();
    let app = p.app(0).await;
    app.batch_execute(
        "SET pgtwin.origin = 'b'; INSERT INTO products (name, price) VALUES ('sneaky', 1);
         BEGIN; SET LOCAL pgtwin.origin = 'b'; UPDATE products SET price = 2; COMMIT;",
    )
    .await
    .unwrap();
    assert_eq!(p.assert_same("products").await.len(), 1);
    assert!(p.rows(1, "products").await[0].ends_with(",2)"));
    // The same setting given at connection time (libpq's PGOPTIONS, here the URL's options).
    let (with_options, connection) = tokio_postgres::connect(
        &format!("{}?options=-c%20pgtwin.origin%3Db", p.app_url(0)),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let origin: String = with_options
        .query_one("SELECT current_setting('pgtwin.origin')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(origin, "b");
    with_options
        .batch_execute("INSERT INTO products (name, price) VALUES ('through options', 3)")
        .await
        .unwrap();
    assert_eq!(p.assert_same("products").await.len(), 2);
}

/// A dump of a synced database restored elsewhere (a staging copy) is not a live link: its writes
/// capture and ship nothing, and `status` against it says it is a copy and what to run.
#[tokio::test]
async fn a_restored_copy_ships_nothing_and_says_so() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.config("[[tables]]\nname = \"products\"");
    p.pgtwin(&["up"]).ok();
    let server = &common::servers().nodes[0];
    let copy = format!("{}_copy", p.db);
    p.admin[0]
        .batch_execute(&format!("CREATE DATABASE {copy} OWNER twin"))
        .await
        .unwrap();
    common::copy_database(&servers().nodes[0], &p.db, server, &copy);
    let staging = server.connect(&copy).await.unwrap();
    assert_ships_nothing(&p, &staging).await;
    // `status` with a config that points at the copy.
    let url = server.url("twin", Some(common::TWIN_PW), &copy);
    p.config_text(&format!(
        "[nodes.a]\nurl = \"{url}\"\n[nodes.b]\nurl = \"{}\"\n[[tables]]\nname = \"products\"\n",
        p.url(1)
    ));
    let status = p.pgtwin(&["status"]);
    assert_eq!(status.code, 2, "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains("node a: this database is a copy of one pgtwin was installed in"),
        "{}",
        status.stdout
    );
    // The cleanup status names (and the README gives) leaves nothing of pgtwin, nor the password.
    staging
        .batch_execute("DROP SCHEMA pgtwin CASCADE; DROP SERVER pgtwin_peer CASCADE;")
        .await
        .unwrap();
    let left: i64 = staging
        .query_one(
            "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgtwin%')
                  + (SELECT count(*) FROM pg_user_mappings WHERE srvname = 'pgtwin_peer')
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'pgtwin')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    staging
        .batch_execute("INSERT INTO products (name, price) VALUES ('after the cleanup', 2)")
        .await
        .unwrap();
}

/// The same, restored into a fresh cluster under the same database OID (a fresh cluster gives its
/// first database the same OID every time): the cluster tells the copy. Its queue, restored with it,
/// is never replayed: `run` there refuses.
#[tokio::test]
async fn a_copy_in_another_cluster_under_the_same_oid_ships_nothing() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.config("[[tables]]\nname = \"products\"");
    p.pgtwin(&["up"]).ok();
    let oid: u32 = p.admin[0]
        .query_one(
            "SELECT oid FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let staging_server =
        pgtwin::localpg::LocalServer::start(&p.dir.path().join("staging"), &["fsync = off"])
            .unwrap();
    staging_server
        .stop_when_process_ends(std::process::id())
        .unwrap();
    let root = staging_server.connect("postgres").await.unwrap();
    root.batch_execute(&format!(
        "CREATE ROLE twin LOGIN PASSWORD '{TWIN_PW}'; CREATE ROLE app LOGIN"
    ))
    .await
    .unwrap();
    root.batch_execute(&format!(
        "CREATE DATABASE {db} OWNER twin OID = {oid}",
        db = p.db
    ))
    .await
    .unwrap();
    common::copy_database(&servers().nodes[0], &p.db, &staging_server, &p.db);
    let staging = staging_server.connect(&p.db).await.unwrap();
    assert_ships_nothing(&p, &staging).await;
    let url = staging_server.url("twin", Some(TWIN_PW), &p.db);
    p.config_text(&format!(
        "[nodes.a]\nurl = \"{url}\"\n[nodes.b]\nurl = \"{}\"\n[[tables]]\nname = \"products\"\n",
        p.url(1)
    ));
    let status = p.pgtwin(&["status"]);
    assert_eq!(status.code, 2, "{}", status.stdout);
    assert!(
        status.stdout.contains("node a: this database is a copy"),
        "{}",
        status.stdout
    );
    p.pgtwin(&["run", "--once"])
        .fails_with(&["node a", "is a copy", "replays nothing"]);
    staging_server.stop(true).unwrap();
}

/// A write on the copy is neither queued there nor shipped to node b.
async fn assert_ships_nothing(p: &Pair, staging: &tokio_postgres::Client) {
    staging
        .batch_execute("INSERT INTO products (name, price) VALUES ('staging only', 1)")
        .await
        .unwrap();
    let queued: i64 = staging
        .query_one("SELECT count(*) FROM pgtwin.queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 0);
    assert!(
        p.rows(1, "products").await.is_empty(),
        "a staging insert reached the peer"
    );
}

/// pgtwin's lock key for `purpose` on node i, as a role that learnt it from `pg_locks` would know it.
async fn lock_key(p: &Pair, i: usize, purpose: &str) -> i64 {
    p.admin[i]
        .query_one(
            "SELECT key FROM pgtwin.locks WHERE purpose = $1",
            &[&purpose],
        )
        .await
        .unwrap()
        .get(0)
}

/// An application role holds pgtwin's advisory lock keys (the fixed ones, and ones it learnt from
/// `pg_locks`): `up`, `repair` and `run` still work, under new keys. A first install, before pgtwin has
/// keys of its own, goes on without the lock (and says so), and two first installs at once still end
/// in one whole installation.
#[tokio::test]
async fn an_application_holding_pgtwins_lock_keys_blocks_nothing() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    let config = p.config("[[tables]]\nname = \"products\"\n[options]\nmode = \"async\"");
    let app = p.app(0).await;
    // The keys pgtwin uses before its keys are its own ("pgtw", "pgtr").
    app.batch_execute("SELECT pg_advisory_lock(1885828215), pg_advisory_lock(1885828210)")
        .await
        .unwrap();
    let ups: Vec<_> = (0..2)
        .map(|_| {
            let cmd = common::pgtwin_command(&config, &["up"]);
            std::thread::spawn(move || {
                common::run_with_timeout(cmd, std::time::Duration::from_secs(60))
            })
        })
        .collect();
    let outs: Vec<std::process::Output> = ups.into_iter().map(|t| t.join().unwrap()).collect();
    let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap_or(-1)).collect();
    let stderr: Vec<String> = outs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    // Either the second found the first's installation (and had nothing to do), or it waited for the
    // first's schema and failed, naming the node; never both failed, never a hang.
    assert!(codes.contains(&0), "{codes:?} {stderr:?}");
    for (code, err) in codes.iter().zip(&stderr) {
        assert!(*code == 0 || *code == 2, "{code} {err}");
        if *code == 2 {
            let error = err.lines().find(|l| l.starts_with("error: ")).unwrap();
            assert!(error.contains("node a"), "{err}");
        }
    }
    assert!(
        stderr
            .iter()
            .any(|e| e.contains("role app") && e.contains("installing without it")),
        "{stderr:?}"
    );
    assert!(p.installed(0).await && p.installed(1).await);
    p.pgtwin(&["status"]).ok();
    app.batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();

    // Learnt from pg_locks while pgtwin held them; held now by the application.
    let (install, runner) = (
        lock_key(&p, 0, "install").await,
        lock_key(&p, 0, "runner").await,
    );
    app.execute(
        "SELECT pg_advisory_lock($1), pg_advisory_lock($2)",
        &[&install, &runner],
    )
    .await
    .unwrap();
    p.pgtwin(&["up"]).ok();
    p.pgtwin(&["repair", "--prefer", "a"]).ok();
    assert_ne!(lock_key(&p, 0, "install").await, install);
    let run = common::Runner::start(&p, &["run"]);
    run.wait_for_log(
        "replaying queues between a and b",
        std::time::Duration::from_secs(15),
    );
    assert!(run.log().contains("role app"), "{}", run.log());
    assert_ne!(lock_key(&p, 0, "runner").await, runner);
    p.app(0)
        .await
        .batch_execute("INSERT INTO products (name) VALUES ('through')")
        .await
        .unwrap();
    p.rows_until(1, "products", |rows| !rows.is_empty()).await;
    // The application cannot read the keys.
    let denied = app
        .query("SELECT key FROM pgtwin.locks", &[])
        .await
        .unwrap_err();
    let message = denied.as_db_error().unwrap().message();
    assert!(message.contains("permission denied"), "{message}");
    // `down` too, under the install key the application holds now.
    run.kill();
    let install = lock_key(&p, 0, "install").await;
    app.execute("SELECT pg_advisory_lock($1)", &[&install])
        .await
        .unwrap();
    p.pgtwin(&["down"]).ok();
    p.assert_clean().await;
}

/// pg_stat_statements with `track = 'all'` and pgaudit logging DDL record nested statements, as the
/// `CREATE USER MAPPING` that holds the peer's password is. `up` refuses a role that may not quiet them
/// (exit 2, one line per node and setting, naming the GRANT to run; nothing installed). Granted SET on
/// them, `up` quiets both for that one statement: the password is in neither, while both recorded the
/// rest of the install.
#[tokio::test]
async fn statement_recorders_never_keep_the_peer_password() {
    assert!(
        common::has_pgaudit(),
        "pgaudit is missing: run scripts/ensure-postgres"
    );
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    for admin in &p.admin {
        admin
            .batch_execute(&format!(
                "CREATE EXTENSION pg_stat_statements;
                 ALTER DATABASE {db} SET pg_stat_statements.track = 'all';
                 ALTER DATABASE {db} SET pgaudit.log = 'write, ddl';",
                db = p.db
            ))
            .await
            .unwrap();
    }
    p.config("[[tables]]\nname = \"products\"");
    let track = [
        "pg_stat_statements.track = 'all'",
        "GRANT SET ON PARAMETER pg_stat_statements.track TO \"twin\"",
    ];
    let audit = [
        "pgaudit.log = 'write, ddl'",
        "GRANT SET ON PARAMETER pgaudit.log TO \"twin\"",
    ];
    p.pgtwin(&["up"]).fails_with_each(&[
        &["node a", track[0], track[1]],
        &["node a", audit[0], audit[1]],
        &["node b", track[0], track[1]],
        &["node b", audit[0], audit[1]],
    ]);
    assert!(!p.installed(0).await && !p.installed(1).await);

    for admin in &p.admin {
        admin
            .batch_execute(
                "GRANT SET ON PARAMETER pg_stat_statements.track TO twin;
                 GRANT SET ON PARAMETER pgaudit.log TO twin;",
            )
            .await
            .unwrap();
    }
    p.pgtwin(&["up"]).ok();
    for (i, admin) in p.admin.iter().enumerate() {
        let recorded: Vec<String> = admin
            .query(
                "SELECT query FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            recorded.iter().any(|q| q.contains("CREATE TRIGGER")),
            "pg_stat_statements recorded nothing of the install: {recorded:?}"
        );
        assert!(
            !recorded.iter().any(|q| q.contains(TWIN_PW)),
            "node {i}: pg_stat_statements holds the password"
        );
        let log = std::fs::read_to_string(servers().nodes[i].data_dir.join("server.log")).unwrap();
        assert!(
            log.contains("AUDIT: SESSION") && log.contains("DDL,CREATE FUNCTION"),
            "node {i}: pgaudit logged nothing of the install"
        );
        assert!(
            !log.contains(TWIN_PW),
            "node {i}: the server log holds the password"
        );
    }
    // The link works: the mapping got the password.
    p.owner[0]
        .batch_execute("INSERT INTO products (name, price) VALUES ('audited', 1)")
        .await
        .unwrap();
    assert_eq!(p.assert_same("products").await.len(), 1);
}
