//! libpq's ways of giving a password, end to end: a config whose node strings hold no password, the
//! password found in PGPASSWORD, a password file, a service file or a keyword/value string. `up`
//! succeeds, a row inserted on node a shows up on node b (so the peer's user mapping got the password
//! found), and nothing pgtwin prints holds it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{servers, Pair, Run, TWIN_PW};

/// Has every character libpq's formats escape: a quote, a space, a colon, a backslash.
const PASSWORD: &str = r"it's a:pass\word";

/// A role of this test's own, with PASSWORD, owning table `items` on both nodes, with what `up`
/// needs as a non-superuser (postgres_fdw then insists on the password). Returns its name.
async fn role_with_password(p: &Pair) -> String {
    let role = format!("{}_sync", p.db);
    for admin in &p.admin {
        admin
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD '{}';
                 GRANT CREATE ON DATABASE {db} TO {role};
                 GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO {role};
                 CREATE TABLE items (id int PRIMARY KEY, v text);
                 ALTER TABLE items OWNER TO {role};",
                PASSWORD.replace('\'', "''"),
                db = p.db
            ))
            .await
            .unwrap();
    }
    role
}

fn port(i: usize) -> u16 {
    servers().nodes[i].port
}

/// Writes the config with these two node strings (TOML literal strings: no escapes).
fn config(p: &Pair, a: &str, b: &str) -> PathBuf {
    p.config_text(&format!(
        "[nodes.a]\nurl = '''{a}'''\n[nodes.b]\nurl = '''{b}'''\n\n[[tables]]\nname = \"items\"\n"
    ))
}

fn write_private(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[track_caller]
fn assert_no_password(run: &Run) {
    for secret in [PASSWORD, TWIN_PW] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "a password in the output:\nstdout: {}\nstderr: {}",
            run.stdout,
            run.stderr
        );
    }
}

/// `plan` shows the password found for each peer's user mapping masked, `up` with this environment
/// works, and a write on node a reaches node b.
async fn up_and_sync(p: &Pair, config: &Path, env: &[(&str, &str)]) {
    let run = common::pgtwin_env(config, &["plan"], env).ok();
    assert_no_password(&run);
    assert_eq!(
        run.stdout.matches("password '********'").count(),
        2,
        "{}",
        run.stdout
    );
    let run = common::pgtwin_env(config, &["up"], env).ok();
    assert_no_password(&run);
    p.admin[0]
        .batch_execute("INSERT INTO items VALUES (1, 'from a')")
        .await
        .unwrap();
    assert_eq!(p.rows(1, "items").await, vec!["(1,\"from a\")"]);
    let run = common::pgtwin_env(config, &["status"], env).ok();
    assert_no_password(&run);
}

#[tokio::test]
async fn pguser_and_pgpassword_fill_a_url_without_them() {
    let p = Pair::new().await;
    p.both("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await;
    let config = config(
        &p,
        &format!("postgres://127.0.0.1:{}/{}", port(0), p.db),
        &format!("postgres://127.0.0.1:{}/{}", port(1), p.db),
    );
    let home = p.dir.path().to_str().unwrap();
    // Without PGPASSWORD there is no password: one line per node says so.
    common::pgtwin_env(&config, &["up"], &[("HOME", home), ("PGUSER", "twin")]).fails_with_each(&[
        &["node a", "password missing", "PGPASSWORD"],
        &["node b", "password missing", "PGPASSWORD"],
    ]);
    up_and_sync(
        &p,
        &config,
        &[("HOME", home), ("PGUSER", "twin"), ("PGPASSWORD", TWIN_PW)],
    )
    .await;
}

#[tokio::test]
async fn a_password_file_in_home_serves_both_nodes() {
    let p = Pair::new().await;
    let role = role_with_password(&p).await;
    let home = p.dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let escaped = PASSWORD.replace('\\', r"\\").replace(':', r"\:");
    write_private(
        &home.join(".pgpass"),
        &format!(
            "# comment\n127.0.0.1:{}:{db}:{role}:{escaped}\n127.0.0.1:*:*:nobody:wrong\n*:{}:*:{role}:{escaped}\n",
            port(0),
            port(1),
            db = p.db
        ),
        0o600,
    );
    let config = config(
        &p,
        &format!("postgres://{role}@127.0.0.1:{}/{}", port(0), p.db),
        &format!("postgres://{role}@127.0.0.1:{}/{}", port(1), p.db),
    );
    up_and_sync(&p, &config, &[("HOME", home.to_str().unwrap())]).await;
}

#[tokio::test]
async fn pgpassfile_is_refused_while_others_may_read_it() {
    let p = Pair::new().await;
    let role = role_with_password(&p).await;
    let passfile = p.dir.path().join("passwords");
    let escaped = PASSWORD.replace('\\', r"\\").replace(':', r"\:");
    write_private(
        &passfile,
        &format!("127.0.0.1:*:{}:{role}:{escaped}\n", p.db),
        0o640,
    );
    let config = config(
        &p,
        &format!(
            "host=127.0.0.1 port={} dbname={} user={role}",
            port(0),
            p.db
        ),
        &format!(
            "host=127.0.0.1 port={} dbname={} user={role}",
            port(1),
            p.db
        ),
    );
    let env = [("PGPASSFILE", passfile.to_str().unwrap())];
    let run = common::pgtwin_env(&config, &["up"], &env);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_no_password(&run);
    assert!(
        run.stderr.contains(&format!(
            "password file \"{}\" has group or world access",
            passfile.display()
        )),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.matches("has group or world access").count(), 1);
    assert!(
        run.stderr
            .contains("password missing: give it in the url, PGPASSWORD"),
        "{}",
        run.stderr
    );
    assert!(!p.installed(0).await && !p.installed(1).await);
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    up_and_sync(&p, &config, &env).await;
}

#[tokio::test]
async fn a_service_file_fills_what_the_string_leaves_out() {
    let p = Pair::new().await;
    let role = role_with_password(&p).await;
    let services = p.dir.path().join("services.conf");
    // Node a's entry names another database: the string's dbname wins over it.
    let entry = |name: &str, i: usize, db: &str| {
        format!(
            "[{name}]\nhost=127.0.0.1\nport={}\ndbname={db}\nuser={role}\npassword={PASSWORD}\n",
            port(i)
        )
    };
    std::fs::write(
        &services,
        format!(
            "# pgtwin's nodes\n{}\n{}",
            entry("node_a", 0, "postgres"),
            entry("node_b", 1, &p.db)
        ),
    )
    .unwrap();
    let config = config(&p, &format!("dbname={}", p.db), "service=node_b");
    up_and_sync(
        &p,
        &config,
        &[
            ("PGSERVICEFILE", services.to_str().unwrap()),
            ("PGSERVICE", "node_a"),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_keyword_value_string_carries_a_quoted_password() {
    let p = Pair::new().await;
    let role = role_with_password(&p).await;
    let quoted = PASSWORD.replace('\\', r"\\").replace('\'', r"\'");
    let node = |i: usize| {
        format!(
            "host=127.0.0.1 port={} dbname={} user={role} password='{quoted}' connect_timeout=4",
            port(i),
            p.db
        )
    };
    let config = config(&p, &node(0), &node(1));
    up_and_sync(&p, &config, &[]).await;
    // A broken string fails with one line naming the node, and shows nothing of the password.
    let config = config_with(&p, &node(0).replace("password='", "password="));
    let run = common::pgtwin_env(&config, &["status"], &[])
        .fails_with(&["[nodes.a] url: pair #6 has no \"=\"", "single quotes"]);
    assert_no_password(&run);
    assert!(!run.stderr.contains("pass\\word"), "{}", run.stderr);
}

fn config_with(p: &Pair, a: &str) -> PathBuf {
    config(
        p,
        a,
        &format!("host=127.0.0.1 port={} dbname={}", port(1), p.db),
    )
}
