//! The command-line contract against real servers: bad input is refused with one clear line, exit 2,
//! no password, and nothing changed on either node.

mod common;

use std::time::Duration;

use common::{Pair, TWIN_PW};

const PRODUCTS: &str = "CREATE TABLE products (id bigserial PRIMARY KEY, name text, price int)";
const TABLES: &str = "[[tables]]\nname = \"products\"";

async fn assert_nothing_installed(p: &Pair) {
    for i in 0..2 {
        assert!(
            !p.installed(i).await,
            "node {} has pgtwin installed",
            common::NODES[i]
        );
    }
    p.assert_clean().await;
}

#[tokio::test]
async fn plan_prints_masked_sql_and_changes_nothing() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.config(TABLES);
    let run = p.pgtwin(&["plan"]).ok();
    for needle in [
        "node a",
        "node b",
        "CREATE SERVER",
        "CREATE TRIGGER \"pgtwin_capture_insert\"",
        "password '********'",
        "equal",
    ] {
        assert!(
            run.stdout.contains(needle),
            "plan lacks {needle:?}:\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains(TWIN_PW));
    let json: serde_json::Value =
        serde_json::from_str(&p.pgtwin(&["plan", "--json"]).ok().stdout).unwrap();
    assert_eq!(json["nodes"].as_array().unwrap().len(), 2);
    assert!(json["nodes"][0]["steps"].as_array().unwrap().len() > 5);
    assert!(!json.to_string().contains(TWIN_PW));
    assert_nothing_installed(&p).await;
}

#[tokio::test]
async fn table_problems_name_node_table_and_column() {
    let p = Pair::new().await;
    p.config(TABLES);
    p.owner[0].batch_execute(PRODUCTS).await.unwrap();
    p.pgtwin(&["up"])
        .fails_with(&["products", "node b", "does not exist"]);

    p.owner[1]
        .batch_execute("CREATE TABLE products (id bigint, name text, price int)")
        .await
        .unwrap();
    p.pgtwin(&["up"])
        .fails_with(&["products", "node b", "no primary key"]);

    // Other columns may differ (they are drift: tests/schema.rs); the key may not.
    p.owner[1]
        .batch_execute(
            "DROP TABLE products; CREATE TABLE products (id int PRIMARY KEY, name varchar(10))",
        )
        .await
        .unwrap();
    p.pgtwin(&["up"]).fails_with(&[
        "key column \"id\"",
        "products",
        "bigint on node a",
        "integer on node b",
    ]);

    // A key of other columns on the legacy node: refused, naming both keys and nodes, no row copied.
    p.owner[0]
        .batch_execute("INSERT INTO products (name) VALUES ('kettle')")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute(
            "DROP TABLE products; CREATE TABLE products (code text PRIMARY KEY, id bigint, name text)",
        )
        .await
        .unwrap();
    p.pgtwin(&["up"])
        .fails_with(&["products", "key (\"id\") on node a", "(\"code\") on node b"]);
    let copied: i64 = p.admin[1]
        .query_one("SELECT count(*) FROM products", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, 0);
    assert_nothing_installed(&p).await;

    p.owner[1]
        .batch_execute("DROP TABLE products")
        .await
        .unwrap();
    p.admin[1]
        .batch_execute(&format!("{PRODUCTS}; REVOKE ALL ON products FROM twin"))
        .await
        .unwrap();
    p.pgtwin(&["up"])
        .fails_with(&["products", "node b", "lacks"]);

    p.admin[1]
        .batch_execute("DROP TABLE products")
        .await
        .unwrap();
    p.owner[1].batch_execute(PRODUCTS).await.unwrap();
    p.config("[[tables]]\nname = \"products\"\nkey = [\"name\"]");
    // Both nodes' problem with the table, one line each.
    p.pgtwin(&["up"]).fails_with_each(&[
        &["column \"name\"", "node a", "allows NULL"],
        &["column \"name\"", "node b", "allows NULL"],
    ]);
    assert_nothing_installed(&p).await;
}

#[tokio::test]
async fn different_data_is_refused_with_counts() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.both("INSERT INTO products VALUES (1, 'same', 1), (2, 'a', 1)")
        .await;
    p.owner[0]
        .batch_execute("INSERT INTO products VALUES (3, 'only a', 1), (4, 'only a', 1)")
        .await
        .unwrap();
    p.owner[1].batch_execute("UPDATE products SET price = 2 WHERE id = 2; INSERT INTO products VALUES (5, 'only b', 1)").await.unwrap();
    p.config(TABLES);
    // Rows on one node only would be merged, but a key with different rows needs a policy.
    p.pgtwin(&["up"])
        .fails_with(&["products", "1 key(s) hold different rows", "(2)", "prefer"]);
    let check = p.pgtwin(&["check"]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&p.pgtwin(&["check", "--json"]).stdout).unwrap();
    assert_eq!(json["equal"], false);
    assert_eq!(json["tables"][0]["only_on"], serde_json::json!([2, 1]));
    assert_eq!(json["tables"][0]["different"], 1);
    assert_eq!(
        json["tables"][0]["keys"]["only_on"],
        serde_json::json!([["(3)", "(4)"], ["(5)"]])
    );
    assert_eq!(
        json["tables"][0]["keys"]["different"],
        serde_json::json!(["(2)"])
    );
    assert_nothing_installed(&p).await;
    // A one-off choice for this run: b's row wins, and the choice is not kept for later runs.
    p.pgtwin(&["up", "--prefer", "nobody"])
        .fails_with(&["--prefer is neither a node (a or b) nor \"newest\""]);
    assert_nothing_installed(&p).await;
    p.pgtwin(&["up", "--prefer", "b"]).ok();
    assert_eq!(p.assert_same("products").await.len(), 5);
    assert!(p.rows(0, "products").await.contains(&"(2,a,2)".to_string()));
    p.both("ALTER TABLE products DISABLE TRIGGER USER; UPDATE products SET price = 10 + price WHERE id = 1; ALTER TABLE products ENABLE TRIGGER USER").await;
    p.owner[1].batch_execute("ALTER TABLE products DISABLE TRIGGER USER; UPDATE products SET price = 99 WHERE id = 1; ALTER TABLE products ENABLE TRIGGER USER").await.unwrap();
    p.pgtwin(&["down"]).ok();
    p.pgtwin(&["up"]).fails_with(&[
        "1 key(s) hold different rows",
        "(1)",
        "pgtwin up --prefer NODE",
    ]);
}

#[tokio::test]
async fn connection_problems_exit_2_quickly_without_secrets() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    let b_url = p.url(1);
    let write = |b: &str| {
        p.config_text(&format!(
            "[nodes.a]\nurl = \"{}\"\n[nodes.b]\nurl = \"{b}\"\n{TABLES}\n",
            p.url(0)
        ));
    };
    write(&b_url.replace(TWIN_PW, "wrong-password"));
    let run = p
        .pgtwin(&["up"])
        .fails_with(&["node b", "password authentication failed"]);
    assert!(!run.stderr.contains("wrong-password"));

    let closed = pgtwin::localpg::free_port().unwrap();
    let port = b_url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    write(&b_url.replace(&port, &closed.to_string()));
    let run = p.pgtwin(&["up"]).fails_with(&["node b"]);
    assert!(run.elapsed < Duration::from_secs(10));

    // A peer that accepts TCP connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    write(&b_url.replace(&port, &silent_port.to_string()));
    let run = p.pgtwin(&["up"]).fails_with(&["node b", "no answer"]);
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?}",
        run.elapsed
    );
    drop(silent);
    assert_nothing_installed(&p).await;

    write("${PGTWIN_TEST_UNSET_VARIABLE}");
    p.pgtwin(&["up"])
        .fails_with(&["[nodes.b]", "PGTWIN_TEST_UNSET_VARIABLE"]);
    p.config(&format!(
        "{TABLES}\n[options]\nmode = \"sync\"\nflavour = \"x\""
    ));
    p.pgtwin(&["plan"]).fails_with(&["flavour"]);
    p.config(&format!("{TABLES}\n[options]\nsequences = \"shuffle\""));
    p.pgtwin(&["plan"]).fails_with(&["shuffle"]);
}

/// Every problem of both nodes in one run, one line each, naming the node and what to run; nothing
/// changed. Following the advice makes `up` pass.
#[tokio::test]
async fn every_preflight_problem_of_both_nodes_is_reported_at_once() {
    let p = Pair::with_extension(false).await;
    p.both(PRODUCTS).await;
    p.owner[0]
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY); REVOKE TRIGGER, TRUNCATE ON products FROM twin")
        .await
        .unwrap();
    // Node a: the extension without USAGE, no CREATE on the database, two table privileges missing.
    // Node b: no extension, no table orders.
    p.admin[0]
        .batch_execute(&format!(
            "CREATE EXTENSION postgres_fdw; REVOKE CREATE ON DATABASE {} FROM twin",
            p.db
        ))
        .await
        .unwrap();
    p.config(&format!("{TABLES}\n[[tables]]\nname = \"orders\""));
    let expected: &[&[&str]] = &[
        &[
            "node a",
            "GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO \"twin\"",
        ],
        &[
            "node a",
            "cannot create schema pgtwin",
            "GRANT CREATE ON DATABASE",
        ],
        &[
            "node a",
            "lacks TRUNCATE, TRIGGER on table \"public\".\"products\"",
            "GRANT TRUNCATE, TRIGGER",
        ],
        &[
            "node b",
            "CREATE EXTENSION postgres_fdw; GRANT USAGE",
            "superuser",
        ],
        &["orders", "does not exist on node b"],
    ];
    for command in ["plan", "up"] {
        p.pgtwin(&[command]).fails_with_each(expected);
    }
    assert_nothing_installed(&p).await;
    p.admin[0]
        .batch_execute(&format!(
            "GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO twin; GRANT CREATE ON DATABASE {} TO twin",
            p.db
        ))
        .await
        .unwrap();
    p.owner[0]
        .batch_execute("GRANT TRUNCATE, TRIGGER ON products TO twin")
        .await
        .unwrap();
    p.admin[1]
        .batch_execute("CREATE EXTENSION postgres_fdw; GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO twin")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY)")
        .await
        .unwrap();
    p.pgtwin(&["up"]).ok();
}

#[tokio::test]
async fn a_superuser_creates_the_extension_and_down_removes_it() {
    let p = Pair::with_extension(false).await;
    p.both(PRODUCTS).await;
    let s = common::servers();
    p.config_text(&format!(
        "[nodes.a]\nurl = \"{}\"\n[nodes.b]\nurl = \"{}\"\n{TABLES}\n",
        s.nodes[0].url("postgres", None, &p.db),
        s.nodes[1].url("postgres", None, &p.db)
    ));
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("INSERT INTO products (name) VALUES ('x')")
        .await
        .unwrap();
    p.assert_same("products").await;
    p.pgtwin(&["down"]).ok();
    p.assert_clean().await;
    for admin in &p.admin {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_extension WHERE extname = 'postgres_fdw'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "extension created by up is left after down");
    }
}

#[tokio::test]
async fn down_changes_nothing_when_a_node_is_gone_unless_forced() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.config(TABLES);
    p.pgtwin(&["up"]).ok();
    let dry = p.pgtwin(&["down", "--dry-run"]).ok();
    assert!(
        dry.stdout
            .contains("DROP SCHEMA IF EXISTS \"pgtwin\" CASCADE"),
        "{}",
        dry.stdout
    );
    assert!(p.installed(0).await && p.installed(1).await);

    let closed = pgtwin::localpg::free_port().unwrap();
    let b_url = p.url(1);
    let port = b_url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    p.config_text(&format!(
        "[nodes.a]\nurl = \"{}\"\n[nodes.b]\nurl = \"{}\"\n{TABLES}\n",
        p.url(0),
        b_url.replace(&port, &closed.to_string())
    ));
    // Both nodes or neither: with b away, down changes nothing...
    p.pgtwin(&["down", "--json"]).fails_with(&[
        "node b",
        "down changes nothing while node b is unreachable",
        "--force",
    ]);
    assert!(p.installed(0).await && p.installed(1).await);
    // ...unless forced: then the reachable node is cleaned alone, and the change it queued for b
    // meanwhile is reported as dropped.
    p.owner[0]
        .batch_execute(&format!(
            "ALTER SERVER pgtwin_peer OPTIONS (SET port '{closed}');
             INSERT INTO products (name, price) VALUES ('queued for b', 1)"
        ))
        .await
        .unwrap();
    assert_eq!(p.queued(0).await, 1);
    let run = p
        .pgtwin(&["down", "--force", "--json"])
        .fails_with(&["node b", "down again"]);
    let outcomes: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(outcomes[0]["node"], "a");
    assert!(outcomes[0]["error"].is_null(), "{outcomes}");
    assert_eq!(outcomes[0]["dropped_changes"], 1, "{outcomes}");
    assert!(outcomes[1]["error"].is_string(), "{outcomes}");
    assert!(!p.installed(0).await);
    assert!(p.installed(1).await);
    p.config(TABLES);
    p.pgtwin(&["down"]).ok();
    p.assert_clean().await;
}

#[tokio::test]
async fn status_reports_install_triggers_sequences_and_link() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.config(TABLES);
    let before = p.pgtwin(&["status", "--json"]);
    assert_eq!(before.code, 2, "not installed is down: {}", before.stdout);
    let before: serde_json::Value = serde_json::from_str(&before.stdout).unwrap();
    assert!(before["nodes"][0]["installed"].is_null());
    assert_eq!(before["healthy"], false);
    p.pgtwin(&["up"]).ok();
    let after: serde_json::Value =
        serde_json::from_str(&p.pgtwin(&["status", "--json"]).ok().stdout).unwrap();
    for (i, node) in after["nodes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(node["reachable"], true);
        assert_eq!(node["installed"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(node["link"]["ok"], true, "{node}");
        assert_eq!(node["tables"][0]["triggers"], 4);
        let seq = &node["tables"][0]["sequences"][0];
        assert_eq!(seq["increment"], 2);
        assert_eq!(seq["next_value"].as_i64().unwrap() % 2, (i as i64 + 1) % 2);
    }
    let text = p.pgtwin(&["status"]).ok().stdout;
    assert!(
        text.contains("link to peer: ok") && text.contains("triggers 4/4"),
        "{text}"
    );
    assert!(text.starts_with("healthy\n"), "{text}");
}

/// The demo runs from start to end on servers of its own: merge, sync both ways, an outage replayed,
/// check equal, down, and no password in what it prints.
#[test]
fn demo_runs_end_to_end() {
    let run = common::pgtwin(std::path::Path::new("no-config-needed.toml"), &["demo"]).ok();
    for expected in [
        "node shop: installed",
        "change(s) queued for its peer",
        "products: equal on both nodes",
        "pgtwin removed, table data kept",
        "servers stopped",
    ] {
        assert!(
            run.stdout.contains(expected),
            "{expected:?} missing:\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains("demo-secret") && !run.stderr.contains("demo-secret"));
}

/// The README's quick start is what CI runs, word for word: a fresh clone's first command cannot break
/// unnoticed again (it once stopped at "could not determine which binary to run").
#[test]
fn ci_runs_the_readme_quick_start_commands_exactly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let quick_start = readme
        .split("## Quick start")
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README has a quick start code block");
    let lines: Vec<&str> = quick_start
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let commands: Vec<&str> = lines
        .iter()
        .map(|l| l.split('#').next().unwrap().trim())
        .collect();
    assert_eq!(commands, ["./scripts/demo", "./scripts/test"]);
    // Each line as the README writes it, comment included, is a line of its own that CI runs, in
    // the same order.
    let ci_lines: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| lines.contains(l))
        .collect();
    assert_eq!(ci_lines, lines, ".ci/run must run the README's quick start");
}

/// The small things users expect of a CLI: `version` without and with a config, `repair` naming both
/// of its choices, and a reader that closes the pipe early ending the output quietly.
#[tokio::test]
async fn version_repair_choices_and_a_closed_pipe() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    let bare = common::pgtwin(
        std::path::Path::new("/nonexistent/pgtwin.toml"),
        &["version"],
    )
    .ok();
    assert_eq!(
        bare.stdout,
        format!("pgtwin {}\n", env!("CARGO_PKG_VERSION"))
    );
    p.config(TABLES);
    let before = p.pgtwin(&["version"]).ok().stdout;
    assert!(before.contains("node a: not installed"), "{before}");
    p.pgtwin(&["up"]).ok();
    let after: serde_json::Value =
        serde_json::from_str(&p.pgtwin(&["version", "--json"]).ok().stdout).unwrap();
    assert_eq!(after["nodes"][1]["installed"], env!("CARGO_PKG_VERSION"));

    let repair = p.pgtwin(&["repair"]);
    assert_eq!(repair.code, 2);
    assert!(
        repair.stderr.contains("--prefer") && repair.stderr.contains("--mirror"),
        "{}",
        repair.stderr
    );

    // `pgtwin check | head -0`: the reader is gone before anything is written.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgtwin"));
    cmd.args([
        "-c",
        p.dir.path().join("pgtwin.toml").to_str().unwrap(),
        "check",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

/// `pgtwin completions SHELL` needs no config and completes every subcommand.
#[test]
fn completions_name_the_subcommands() {
    let none = std::path::Path::new("/nonexistent/pgtwin.toml");
    let bash = common::pgtwin(none, &["completions", "bash"]).ok().stdout;
    for sub in [
        "plan",
        "up",
        "down",
        "status",
        "check",
        "repair",
        "conflicts",
        "completions",
    ] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert!(bash.contains("complete -F"), "{bash}");
    for shell in ["zsh", "fish"] {
        assert!(common::pgtwin(none, &["completions", shell])
            .ok()
            .stdout
            .contains("repair"));
    }
    assert_eq!(common::pgtwin(none, &["completions", "tcsh"]).code, 2);
}

/// `init` writes a starter config from two URLs: the tables both nodes can sync, the others commented
/// with the reason; no password in the file or the output; never over an existing file unless
/// --force. `plan` and `up` accept what it wrote.
#[tokio::test]
async fn init_writes_a_config_that_plan_and_up_accept() {
    let p = Pair::new().await;
    p.both(&format!(
        "{PRODUCTS}; CREATE TABLE keyless (id int, v text);
         CREATE TABLE codes (code text NOT NULL UNIQUE, v int);
         CREATE SCHEMA \"Sales Data\"; CREATE TABLE \"Sales Data\".\"Order Items\" (id int PRIMARY KEY)"
    ))
    .await;
    p.owner[0]
        .batch_execute(
            "CREATE TABLE only_a (id int PRIMARY KEY); ALTER TABLE products ADD COLUMN note text",
        )
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("CREATE TABLE only_b (id int PRIMARY KEY)")
        .await
        .unwrap();
    let path = p.dir.path().join("pgtwin.toml");
    let (a, b) = (format!("a={}", p.url(0)), format!("b={}", p.url(1)));
    let run = p.pgtwin(&["init", &a, &b]).ok();
    assert!(
        run.stdout.contains("3 table(s) to sync, 3 left out"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("PGTWIN_A_PASSWORD") && run.stderr.contains("PGTWIN_B_PASSWORD"),
        "{}",
        run.stderr
    );
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [TWIN_PW, common::APP_PW] {
        assert!(
            ![&text, &run.stdout, &run.stderr]
                .iter()
                .any(|t| t.contains(secret)),
            "password written"
        );
    }
    for needle in [
        "[[tables]]\nname = \"products\"\n",
        "its columns differ between the nodes in 1 way(s)",
        "# mode = \"sync\"",
        "# batch_size = 1000",
        "[[tables]]\nname = \"codes\"\n# no primary key both nodes share: keyed by a unique index of NOT NULL columns on both\nkey = [\"code\"]\n",
        "name = '\"Sales Data\".\"Order Items\"'",
        "has no primary key on node a",
        "in pgtwin.toml\n# table \"public\".\"keyless\" has no primary key on node b",
        "# [[tables]]\n# name = \"keyless\"\n",
        "\"public\".\"only_a\" exists on node a only: create it on node b",
        "\"public\".\"only_b\" exists on node b only",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    // Never over an existing file.
    p.pgtwin(&["init", &a, &b])
        .fails_with(&["pgtwin.toml exists", "--force", "--config"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    // The file reads the passwords from the environment.
    p.pgtwin(&["plan"])
        .fails_with(&["[nodes.a]", "PGTWIN_A_PASSWORD is not set"]);
    let env = [
        ("PGTWIN_A_PASSWORD", TWIN_PW),
        ("PGTWIN_B_PASSWORD", TWIN_PW),
    ];
    let plan = common::pgtwin_env(&path, &["plan"], &env).ok();
    assert!(
        plan.stdout.contains("\"codes\"") && plan.stdout.contains("Order Items"),
        "{}",
        plan.stdout
    );
    common::pgtwin_env(&path, &["up"], &env).ok();
    p.owner[0]
        .batch_execute("INSERT INTO codes VALUES ('x', 1)")
        .await
        .unwrap();
    p.assert_same("codes").await;
    common::pgtwin_env(&path, &["down"], &env).ok();
    // --force overwrites; ${VAR} is written as given.
    let env = [("A_URL", p.url(0)), ("B_URL", p.url(1))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = common::pgtwin_env(&path, &["init", "--force", "${A_URL}", "b=${B_URL}"], &env).ok();
    assert!(!run.stderr.contains("PASSWORD"), "{}", run.stderr);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("[nodes.a]\nurl = \"${A_URL}\"\n") && text.contains("url = \"${B_URL}\""),
        "{text}"
    );
    // Bad input: one line naming the node, nothing written.
    std::fs::remove_file(&path).unwrap();
    let bad = p.url(1).replace(TWIN_PW, "wrong-pw");
    let run = p
        .pgtwin(&["init", &a, &format!("b={bad}")])
        .fails_with(&["node b", "password authentication failed"]);
    assert!(!run.stderr.contains("wrong-pw") && !path.exists());
    p.pgtwin(&["init", &a, &a])
        .fails_with(&["both nodes are named a"]);
}
