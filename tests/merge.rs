//! Two populated tables made one by `up`, proven equal by `check`, fixed by `repair`, against real servers.

mod common;

use std::time::Duration;

use common::Pair;

const PRODUCTS: &str =
    "CREATE TABLE products (id int PRIMARY KEY, name text, price int, updated_at timestamptz)";

fn json(run: common::Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[tokio::test]
async fn up_merges_disjoint_and_equal_rows_without_a_policy() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.both("INSERT INTO products VALUES (10, 'same on both', 1, '2024-01-01')")
        .await;
    p.owner[0]
        .batch_execute("INSERT INTO products SELECT g, 'a', g, now() FROM generate_series(1, 3) g")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("INSERT INTO products SELECT g, 'b', g, now() FROM generate_series(4, 6) g")
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"products\"");
    let report = json(p.pgtwin(&["up", "--json"]).ok());
    assert_eq!(report["merges"][0]["copied_to"], serde_json::json!([3, 3]));
    assert_eq!(report["merges"][0]["conflicts"], 0);
    assert_eq!(p.assert_same("products").await.len(), 7);
    p.owner[1]
        .batch_execute("UPDATE products SET price = 0")
        .await
        .unwrap();
    assert!(p
        .assert_same("products")
        .await
        .iter()
        .all(|r| r.contains(",0,")));
}

#[tokio::test]
async fn into_an_empty_peer_the_whole_table_is_copied() {
    let p = Pair::new().await;
    p.both("CREATE TYPE mood AS ENUM ('sad', 'happy'); CREATE TABLE big (id bigint PRIMARY KEY, payload text, moods mood[], j jsonb)").await;
    p.owner[1]
        .batch_execute("INSERT INTO big SELECT g, md5(g::text), '{happy,sad}', jsonb_build_object('g', g) FROM generate_series(1, 20000) g")
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"big\"");
    let report = json(p.pgtwin(&["up", "--json"]).ok());
    assert_eq!(
        report["merges"][0]["copied_to"],
        serde_json::json!([20000, 0])
    );
    assert_eq!(p.assert_same("big").await.len(), 20000);
}

#[tokio::test]
async fn conflicting_rows_follow_the_policy_and_are_reported() {
    for (prefer, expect_1, expect_2) in [
        ("a", "a-old", "a-new"),
        ("b", "b-new", "b-old"),
        ("newest", "b-new", "a-new"),
    ] {
        let p = Pair::new().await;
        p.both(PRODUCTS).await;
        p.owner[0]
            .batch_execute("INSERT INTO products VALUES (1, 'a-old', 1, '2024-01-01'), (2, 'a-new', 1, '2024-03-01'), (3, 'only a', 1, NULL)")
            .await
            .unwrap();
        p.owner[1]
            .batch_execute("INSERT INTO products VALUES (1, 'b-new', 2, '2024-02-01'), (2, 'b-old', 2, NULL), (4, 'only b', 1, NULL)")
            .await
            .unwrap();
        p.config(&format!("[[tables]]\nname = \"products\"\nnewest_by = \"updated_at\"\n[options]\nprefer = \"{prefer}\""));
        // The dry run reports, side by side, and changes nothing.
        let dry = json(p.pgtwin(&["up", "--dry-run", "--json"]).ok());
        let m = &dry["merges"][0];
        assert_eq!(m["conflicts"], 2, "{dry}");
        assert_eq!(m["conflict_rows"][0]["key"], "(1)");
        assert_eq!(
            m["conflict_rows"][0]["columns"][1],
            serde_json::json!({ "column": "name", "values": ["a-old", "b-new"] })
        );
        assert!(!p.installed(0).await && p.rows(0, "products").await.len() == 3);
        let text = p.pgtwin(&["up"]).ok().stdout;
        assert!(text.contains("key (1):") && text.contains("wins"), "{text}");
        let rows = p.assert_same("products").await;
        assert_eq!(rows.len(), 4, "prefer {prefer}: {rows:?}");
        assert!(rows[0].contains(expect_1), "prefer {prefer}: {rows:?}");
        assert!(rows[1].contains(expect_2), "prefer {prefer}: {rows:?}");
    }
}

/// `up --dry-run` lists, per table, the keys each way and every row it would overwrite with both
/// versions side by side under the config's column names, bounded, in text and JSON; tables built
/// differently on the two nodes (column order, a renamed column, one-sided columns) compare by name.
#[tokio::test]
async fn a_dry_run_shows_the_rows_it_would_overwrite() {
    let p = Pair::new().await;
    p.owner[0]
        .batch_execute(
            "CREATE TABLE products (id int PRIMARY KEY, name text, price int, only_a text)",
        )
        .await
        .unwrap();
    p.owner[1]
        .batch_execute(
            "CREATE TABLE products (note text, price int, title text, id int PRIMARY KEY)",
        )
        .await
        .unwrap();
    // Keys 1-25 on both with different prices, 26-48 on a only, 100 on b only.
    p.owner[0]
        .batch_execute(
            "INSERT INTO products SELECT g, 'p' || g, 1, 'x' FROM generate_series(1, 48) g",
        )
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("INSERT INTO products SELECT 'n', 2, 'p' || g, g FROM generate_series(1, 25) g; INSERT INTO products VALUES (NULL, 5, 'only b', 100)")
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"products\"\n[tables.nodes.b]\nrename = { name = \"title\" }");
    // No policy: the rows are shown, then the refusal, as up itself would refuse.
    let refused = p.pgtwin(&["up", "--dry-run"]).fails_with(&[
        "products",
        "25 key(s) hold different rows",
        "--prefer",
    ]);
    assert!(
        refused
            .stdout
            .contains("key (1): no policy says which row wins"),
        "{}",
        refused.stdout
    );
    let text = p.pgtwin(&["up", "--dry-run", "--prefer", "b"]).ok().stdout;
    for needle in [
        "products\": would copy 26 row(s) to a, 23 to b; 25 key(s) with different rows",
        "only on a (to be copied to b): (26) (27)",
        "(45) ... and 3 more",
        "only on b (to be copied to a): (100)\n",
        "key (1): b wins, a's row would be overwritten\n      price  a: 1  |  b: 2\n",
        "\n    ... and 5 more key(s) with different rows\n",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    assert!(
        !text.contains("name  a:"),
        "equal columns are not listed:\n{text}"
    );
    let dry = json(
        p.pgtwin(&["up", "--dry-run", "--json", "--prefer", "b"])
            .ok(),
    );
    let m = &dry["merges"][0];
    assert_eq!(m["only_on"], serde_json::json!([23, 1]));
    assert_eq!(m["only_on_keys"][0].as_array().unwrap().len(), 20);
    assert_eq!(m["only_on_keys"][1], serde_json::json!(["(100)"]));
    assert_eq!(m["conflicts"], 25);
    let rows = m["conflict_rows"].as_array().unwrap();
    assert_eq!(rows.len(), 20);
    assert_eq!(
        rows[0],
        serde_json::json!({ "key": "(1)", "winner": "b", "columns": [
            { "column": "id", "values": ["1", "1"] },
            { "column": "name", "values": ["p1", "p1"] },
            { "column": "price", "values": ["1", "2"] },
        ] })
    );
    // Nothing changed.
    assert!(!p.installed(0).await && !p.installed(1).await);
    assert_eq!(p.rows(0, "products").await.len(), 48);
    assert_eq!(p.rows(1, "products").await.len(), 26);
}

#[tokio::test]
async fn writes_during_the_merge_are_not_lost() {
    let p = Pair::new().await;
    p.both("CREATE TABLE log (id bigserial PRIMARY KEY, node text, n int)")
        .await;
    p.owner[0]
        .batch_execute("INSERT INTO log (node, n) SELECT 'a0', g FROM generate_series(1, 30000) g")
        .await
        .unwrap();
    p.owner[1].batch_execute("INSERT INTO log (id, node, n) SELECT g, 'b0', g FROM generate_series(100001, 130000) g").await.unwrap();
    p.config("[[tables]]\nname = \"log\"");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..2 {
        let url = p.url(i);
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut n = 0;
            // Explicit ids, disjoint per node: the sequences are not interleaved before up.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.execute(
                    "INSERT INTO log (id, node, n) VALUES ($1, $2, $3)",
                    &[
                        &(1_000_000 * (i as i64 + 1) + n),
                        &format!("w{i}"),
                        &(n as i32),
                    ],
                )
                .await
                .unwrap();
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.pgtwin(&["up"]).ok();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    let rows = p.assert_same("log").await;
    assert_eq!(rows.len() as i64, 60000 + written);
}

#[tokio::test]
async fn check_finds_every_kind_of_difference_and_no_false_ones() {
    let p = Pair::new().await;
    p.both("CREATE TABLE t (id int PRIMARY KEY, s text, f float8, ts timestamp(6), j jsonb)")
        .await;
    p.both("INSERT INTO t SELECT g, 'row ' || g, g / 3.0, '2024-01-01'::timestamp + g * interval '1 second', jsonb_build_object('a', g, 'b', 'x') FROM generate_series(1, 50000) g").await;
    p.config("[[tables]]\nname = \"t\"");
    let equal = p.pgtwin(&["check"]).ok();
    assert!(
        equal.stdout.contains("equal (50000 rows)"),
        "{}",
        equal.stdout
    );
    // jsonb written with its keys in another order is the same value.
    p.owner[1]
        .batch_execute(r#"UPDATE t SET j = '{"b": "x", "a": 7}' WHERE id = 7"#)
        .await
        .unwrap();
    p.pgtwin(&["check"]).ok();
    // First, middle and last key; NULL vs ''; -0 vs 0; a microsecond; a missing and an extra row.
    p.owner[1]
        .batch_execute(
            "
        UPDATE t SET s = 'changed' WHERE id IN (1, 25000, 50000);
        UPDATE t SET s = NULL WHERE id = 100; UPDATE t SET s = '' WHERE id = 100 AND false;
        DELETE FROM t WHERE id = 300; INSERT INTO t VALUES (60000, 'extra', 0, NULL, NULL);",
        )
        .await
        .unwrap();
    p.owner[0].batch_execute("UPDATE t SET s = '' WHERE id = 100; UPDATE t SET f = '-0' WHERE id = 200; UPDATE t SET f = 0 WHERE id = 200 AND false").await.unwrap();
    p.owner[1].batch_execute("UPDATE t SET f = 0 WHERE id = 200; UPDATE t SET ts = ts + interval '1 microsecond' WHERE id = 400").await.unwrap();
    let run = p.pgtwin(&["check", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let r = json(run);
    let t = &r["tables"][0];
    assert_eq!(
        t["keys"]["only_on"],
        serde_json::json!([["(300)"], ["(60000)"]]),
        "{r}"
    );
    assert_eq!(
        t["keys"]["different"],
        serde_json::json!(["(1)", "(100)", "(200)", "(25000)", "(400)", "(50000)"]),
        "{r}"
    );
}

/// Differences that cancel out in a sum of row hashes are still found: two rows changed alike on one
/// node (an enum hashed by its text, as a status column), values swapped between two rows, and a
/// case-insensitive collation whose own hash folds case.
#[tokio::test]
async fn check_is_not_fooled_by_paired_or_swapped_changes_or_collations() {
    let p = Pair::new().await;
    p.both("CREATE TYPE state AS ENUM ('paid', 'shipped');
            CREATE COLLATION nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
            CREATE TABLE orders (id int PRIMARY KEY, status state, total numeric, who text COLLATE nocase)")
        .await;
    p.both("INSERT INTO orders SELECT g, 'paid', g * 10, 'Kim' FROM generate_series(1, 1000) g")
        .await;
    p.config("[[tables]]\nname = \"orders\"");
    p.pgtwin(&["check"]).ok();
    p.owner[1]
        .batch_execute("UPDATE orders SET status = 'shipped' WHERE id IN (10, 11)")
        .await
        .unwrap();
    let r = json(p.pgtwin(&["check", "--json"]));
    assert_eq!(
        r["tables"][0]["keys"]["different"],
        serde_json::json!(["(10)", "(11)"]),
        "{r}"
    );
    p.owner[1]
        .batch_execute("UPDATE orders SET status = 'paid' WHERE id IN (10, 11);
                        UPDATE orders SET total = CASE id WHEN 20 THEN 210 ELSE 200 END WHERE id IN (20, 21)")
        .await
        .unwrap();
    let r = json(p.pgtwin(&["check", "--json"]));
    assert_eq!(
        r["tables"][0]["keys"]["different"],
        serde_json::json!(["(20)", "(21)"]),
        "{r}"
    );
    p.owner[1]
        .batch_execute("UPDATE orders SET total = id * 10 WHERE id IN (20, 21); UPDATE orders SET who = 'KIM' WHERE id = 30")
        .await
        .unwrap();
    let r = json(p.pgtwin(&["check", "--json"]));
    assert_eq!(
        r["tables"][0]["keys"]["different"],
        serde_json::json!(["(30)"]),
        "{r}"
    );
}

/// Values that the types' own hash functions, as a record hash calls them, cannot tell apart: a bigint
/// 1 and 2^32, and timestamps and times 2^32 + 1 microseconds apart (PostgreSQL folds 64-bit values to
/// 32 bits before hashing them), an array and the same elements with other bounds, and a bpchar with
/// and without a trailing space (a `::text` cast drops it). And NULL against each type's placeholder
/// value. The two nodes are built differently (columns in another order, a
/// dropped column's gap, NOT NULL on one side only), and equal rows still read equal.
#[tokio::test]
async fn check_tells_apart_values_that_hash_functions_fold_together() {
    let p = Pair::new().await;
    p.both("CREATE TYPE pt AS (x int, y int)").await;
    p.owner[0]
        .batch_execute(
            "CREATE TABLE readings (id bigint PRIMARY KEY, total bigint NOT NULL, at timestamp,
                seen timestamptz NOT NULL, tod time, day date, flag boolean, ref uuid, blob bytea,
                tags int[], note varchar(20), spot pt NOT NULL, code bpchar)",
        )
        .await
        .unwrap();
    p.owner[1]
        .batch_execute(
            "CREATE TABLE readings (code bpchar, note varchar(20), gone int, tags int[], blob bytea,
                ref uuid, flag boolean, day date, tod time, seen timestamptz, at timestamp,
                spot pt, total bigint, id bigint PRIMARY KEY);
             ALTER TABLE readings DROP COLUMN gone",
        )
        .await
        .unwrap();
    // A composite whose fields are all NULL IS NULL to SQL, yet is a value (NOT NULL on node a).
    p.both(
        "INSERT INTO readings (id, total, at, seen, tod, day, flag, ref, blob, tags, note, spot, code)
         SELECT g, 1, '2000-01-01', '2000-01-01 00:00+00', '00:00', NULL, NULL, NULL, NULL, '{1,2}',
                NULL, '(,)', 'a'
         FROM generate_series(1, 200) g",
    )
    .await;
    p.config("[[tables]]\nname = \"readings\"");
    // The NOT NULLs node b lacks are reported as drift; the rows still compare equal.
    let r = json(p.pgtwin(&["check", "--json"]));
    assert_eq!(r["schema_drift"].as_array().map(Vec::len), Some(3), "{r}");
    assert_eq!(r["tables"][0]["rows"], serde_json::json!([200, 200]), "{r}");
    assert_eq!(
        r["tables"][0]["keys"],
        serde_json::json!({"different": [], "only_on": [[], []]}),
        "{r}"
    );
    p.owner[1]
        .batch_execute(
            "UPDATE readings SET total = 4294967296 WHERE id = 1;
             UPDATE readings SET at = '2000-01-01 01:11:34.967297' WHERE id = 2;
             UPDATE readings SET seen = '2000-01-01 01:11:34.967297+00' WHERE id = 3;
             UPDATE readings SET tod = '01:11:34.967297' WHERE id = 4;
             UPDATE readings SET tags = '[0:1]={1,2}' WHERE id = 5;
             UPDATE readings SET note = '' WHERE id = 6;
             UPDATE readings SET ref = '00000000-0000-0000-0000-000000000000' WHERE id = 7;
             UPDATE readings SET day = 'epoch' WHERE id = 8;
             UPDATE readings SET flag = false WHERE id = 9;
             UPDATE readings SET blob = '' WHERE id = 10;
             UPDATE readings SET code = 'a ' WHERE id = 11;",
        )
        .await
        .unwrap();
    let r = json(p.pgtwin(&["check", "--json"]));
    assert_eq!(
        r["tables"][0]["keys"]["different"],
        serde_json::json!([
            "(1)", "(10)", "(11)", "(2)", "(3)", "(4)", "(5)", "(6)", "(7)", "(8)", "(9)"
        ]),
        "{r}"
    );
}

#[tokio::test]
async fn repair_prefer_copies_and_keeps_mirror_deletes() {
    let p = Pair::new().await;
    p.both(r#"CREATE SCHEMA "Odd Schema"; CREATE TABLE "Odd Schema"."Line Items" ("Order" int, "Line" int, "select" text, PRIMARY KEY ("Order", "Line"))"#).await;
    let t = r#""Odd Schema"."Line Items""#;
    p.both(&format!(
        "INSERT INTO {t} SELECT g / 10, g % 10, 'v' || g FROM generate_series(1, 5000) g"
    ))
    .await;
    p.config(&format!("[[tables]]\nname = '{t}'"));
    p.pgtwin(&["up"]).ok();
    // Drift that the triggers did not see (as after a crash between the two commits).
    for (i, sql) in [
        (0, "UPDATE {t} SET \"select\" = 'a wins?' WHERE \"Order\" = 1; INSERT INTO {t} VALUES (9999, 1, 'only a')"),
        (1, "UPDATE {t} SET \"select\" = 'b wins?' WHERE \"Order\" = 1; INSERT INTO {t} VALUES (9999, 2, 'only b'); DELETE FROM {t} WHERE \"Order\" = 2"),
    ] {
        p.admin[i].batch_execute(&format!("SET session_replication_role = replica; {}", sql.replace("{t}", t))).await.unwrap();
    }
    assert_eq!(p.pgtwin(&["check"]).code, 1);
    let dry = json(
        p.pgtwin(&["repair", "--prefer", "b", "--dry-run", "--json"])
            .ok(),
    );
    assert_eq!(dry["tables"][0]["conflicts"], 10);
    assert_eq!(p.pgtwin(&["check"]).code, 1, "dry run changed something");

    let run = p.pgtwin(&["repair", "--prefer", "b"]).ok();
    assert!(run.stdout.contains("both nodes equal"), "{}", run.stdout);
    let rows = p.assert_same(t).await;
    assert!(rows.iter().filter(|r| r.contains("b wins?")).count() == 10);
    assert!(
        rows.iter().any(|r| r.contains("only a")) && rows.iter().any(|r| r.contains("only b")),
        "prefer never deletes"
    );
    p.pgtwin(&["check"]).ok();

    p.admin[1].batch_execute(&format!("SET session_replication_role = replica; INSERT INTO {t} VALUES (7777, 7, 'extra on b'); DELETE FROM {t} WHERE \"Order\" = 3")).await.unwrap();
    p.pgtwin(&["repair", "--mirror", "a"]).ok();
    let rows = p.assert_same(t).await;
    assert!(
        !rows.iter().any(|r| r.contains("extra on b")),
        "mirror deletes the other node's extra rows"
    );
    assert_eq!(rows.iter().filter(|r| r.starts_with("(3,")).count(), 10);
    // Still in sync afterwards, both ways.
    p.owner[1]
        .batch_execute(&format!("DELETE FROM {t} WHERE \"Order\" = 4"))
        .await
        .unwrap();
    p.assert_same(t).await;
    p.pgtwin(&["repair", "--prefer", "nobody"])
        .fails_with(&["no node named \"nobody\""]);
}

#[tokio::test]
async fn schema_drift_is_named_while_the_shared_columns_keep_syncing() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.config("[[tables]]\nname = \"products\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("ALTER TABLE products ADD COLUMN colour text")
        .await
        .unwrap();
    let check = p.pgtwin(&["check"]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains(r#"SCHEMA DRIFT: column "colour" (text) exists on node a only: not synced"#)
            && check.stdout.contains("add it on the other node too"),
        "{}",
        check.stdout
    );
    let status = p.pgtwin(&["status"]);
    assert_eq!(status.code, 1, "drift is degraded: {}", status.stdout);
    assert!(
        status
            .stdout
            .contains("SCHEMA DRIFT in \"public\".\"products\""),
        "{}",
        status.stdout
    );
    // Both applications keep writing; the shared columns sync.
    p.owner[0]
        .batch_execute("INSERT INTO products VALUES (1, 'hat', 1, now(), 'red')")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("UPDATE products SET price = 2 WHERE id = 1")
        .await
        .unwrap();
    let row = p.admin[0]
        .query_one("SELECT price, colour FROM products WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (2, "red".to_string())
    );
    // The same column on the other node syncs at once: no `up`, no config change.
    p.owner[1]
        .batch_execute("ALTER TABLE products ADD COLUMN colour text")
        .await
        .unwrap();
    let status = json(p.pgtwin(&["status", "--json"]).ok());
    assert_eq!(
        status["pair"]["up_to_date"],
        serde_json::json!([true, true]),
        "{status}"
    );
    p.owner[0]
        .batch_execute("UPDATE products SET colour = 'blue' WHERE id = 1")
        .await
        .unwrap();
    assert!(p.assert_same("products").await[0].contains("blue"));
    p.pgtwin(&["check"]).ok();
    // `up` compiles the new column into the apply function's fast path (until then it went by name).
    let fast_path_has_colour = |i: usize| {
        let p = &p;
        async move {
            p.admin[i]
                .query_one("SELECT bool_and(prosrc LIKE '%colour%') FROM pg_proc WHERE proname LIKE 'apply_%'", &[])
                .await
                .unwrap()
                .get::<_, bool>(0)
        }
    };
    assert!(!fast_path_has_colour(0).await);
    p.pgtwin(&["up"]).ok();
    assert!(fast_path_has_colour(0).await && fast_path_has_colour(1).await);
    p.owner[1]
        .batch_execute("UPDATE products SET colour = 'green' WHERE id = 1")
        .await
        .unwrap();
    assert!(p.assert_same("products").await[0].contains("green"));
}

#[tokio::test]
async fn keys_at_the_ends_of_bigint_and_text_keys_are_compared_too() {
    let p = Pair::new().await;
    p.both("CREATE TABLE extremes (id bigint PRIMARY KEY, v text); CREATE TABLE words (w text PRIMARY KEY, n int)").await;
    p.both("INSERT INTO extremes VALUES (-9223372036854775808, 'min'), (0, 'zero'), (9223372036854775807, 'max');
            INSERT INTO words SELECT 'word ' || g, g FROM generate_series(1, 3000) g").await;
    p.config("[[tables]]\nname = \"extremes\"\n[[tables]]\nname = \"words\"");
    p.pgtwin(&["check"]).ok();
    p.owner[1].batch_execute("UPDATE extremes SET v = 'MAX' WHERE id = 9223372036854775807; UPDATE words SET n = 0 WHERE w = 'word 2999'").await.unwrap();
    let r = json(p.pgtwin(&["check", "--json"]));
    assert_eq!(
        r["tables"][0]["keys"]["different"],
        serde_json::json!(["(9223372036854775807)"]),
        "{r}"
    );
    assert_eq!(
        r["tables"][1]["keys"]["different"],
        serde_json::json!(["(\"word 2999\")"]),
        "{r}"
    );
}

/// Writes in flight while `check` runs are not differences: the keys that differ at first are read
/// again after a pause, and only what still differs is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_under_continuous_writes_reports_no_false_differences() {
    let p = Pair::new().await;
    p.both("CREATE TABLE t (id int PRIMARY KEY, n int)").await;
    p.both("INSERT INTO t SELECT g, 0 FROM generate_series(1, 20000) g")
        .await;
    p.config("[[tables]]\nname = \"t\"");
    p.pgtwin(&["up"]).ok();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let (a, b) = (p.owner_connection(0).await, p.owner_connection(1).await);
        tokio::spawn(async move {
            let mut writes = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = (writes * 7919 % 20000 + 1) as i32;
                let node = if writes % 2 == 0 { &a } else { &b };
                node.execute("UPDATE t SET n = n + 1 WHERE id = $1", &[&id])
                    .await
                    .unwrap();
                writes += 1;
            }
            writes
        })
    };
    for _ in 0..3 {
        let check = p.pgtwin(&["check"]);
        assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 10, "the writer barely ran ({writes} writes)");
    p.assert_same("t").await;
}

/// A half-done removal: `down --force` while node b was unreachable cleaned a alone, so b went on
/// writing and queueing for an inbox that no longer exists. Its acknowledged deletion (and update)
/// must survive the next `up`: the deletion is applied on a before the merge, instead of the merge
/// bringing the row back from a, and only then is b's queue emptied.
#[tokio::test]
async fn an_acknowledged_delete_queued_while_half_installed_survives_the_next_up() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.config("[[tables]]\nname = \"products\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute(
            "INSERT INTO products VALUES (1, 'kept', 1, '2024-01-01'), (2, 'deleted on b', 2, '2024-01-01'),
                                         (3, 'renamed on b', 3, '2024-01-01')",
        )
        .await
        .unwrap();
    // A runner has seen both nodes: each recorded the other's mark.
    p.pgtwin(&["run", "--once"]).ok();
    let good = std::fs::read_to_string(p.dir.path().join("pgtwin.toml")).unwrap();
    let closed = pgtwin::localpg::free_port().unwrap();
    let b_port = common::servers().nodes[1].port;
    p.config_text(&good.replace(&format!(":{b_port}/"), &format!(":{closed}/")));
    p.pgtwin(&["down", "--force"]).fails_with(&["node b"]);
    assert!(!p.installed(0).await && p.installed(1).await);

    // b still captures: its peer has no inbox, so the changes queue.
    p.owner[1]
        .batch_execute(
            "DELETE FROM products WHERE id = 2; UPDATE products SET name = 'renamed' WHERE id = 3",
        )
        .await
        .unwrap();
    assert!(p.queued(1).await > 0);

    p.config_text(&good);
    let dry = json(
        p.pgtwin(&["up", "--dry-run", "--prefer", "b", "--json"])
            .ok(),
    );
    // The deletion is applied first: the row is on neither node, not a row only a holds.
    assert_eq!(
        dry["merges"][0]["only_on"],
        serde_json::json!([0, 0]),
        "{dry}"
    );
    assert!(p.queued(1).await > 0, "a dry run changes nothing: {dry}");
    p.pgtwin(&["up", "--prefer", "b"]).ok();
    assert_eq!(
        p.assert_same("products").await,
        vec![
            "(1,kept,1,\"2024-01-01 00:00:00+00\")",
            "(3,renamed,3,\"2024-01-01 00:00:00+00\")"
        ]
    );
    assert_eq!(p.queued(1).await, 0);
    p.pgtwin(&["check"]).ok();
    // a, installed anew, starts a new mark, which must not read as below what b saw of the old one
    // (a mark starting from 0 would): that is no node gone back, and a's writes still reach b.
    p.pgtwin(&["run", "--once"]).ok();
    let status = p.pgtwin(&["status"]);
    assert!(!status.stdout.contains("went back"), "{}", status.stdout);
    p.owner[0]
        .batch_execute("UPDATE products SET name = 'after up' WHERE id = 1")
        .await
        .unwrap();
    p.pgtwin(&["run", "--once"]).ok();
    p.assert_same("products").await;
}
