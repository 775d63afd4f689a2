//! Two-way sync against two real servers: each test is a lifecycle
//! up → writes on both nodes → compare → down → nothing left → up again.

mod common;

use common::Pair;

const PRODUCTS: &str = "CREATE TABLE products (
    id bigserial PRIMARY KEY, name varchar(255), price integer,
    created_at timestamp NOT NULL DEFAULT clock_timestamp(), updated_at timestamp NOT NULL DEFAULT clock_timestamp())";

#[tokio::test]
async fn lifecycle_insert_update_delete_truncate_both_ways() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.both("INSERT INTO products (id, name, price, created_at, updated_at) VALUES (1, 'kettle', 25, '2024-01-01', '2024-01-01')").await;
    p.config("[[tables]]\nname = \"products\"");
    p.pgtwin(&["up"]).ok();

    // Default ids on both nodes, interleaved; values (timestamps from defaults) arrive unchanged.
    p.owner[0]
        .batch_execute("INSERT INTO products (name, price) VALUES ('mug', 7), ('cup', 5)")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("INSERT INTO products (name, price) VALUES ('saucer', 4)")
        .await
        .unwrap();
    let rows = p.assert_same("products").await;
    assert_eq!(rows.len(), 4);
    p.owner[1]
        .batch_execute("UPDATE products SET price = price * 2 WHERE name IN ('mug', 'kettle')")
        .await
        .unwrap();
    p.owner[0]
        .batch_execute("DELETE FROM products WHERE name = 'cup'")
        .await
        .unwrap();
    let rows = p.assert_same("products").await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().any(|r| r.contains("kettle,50")), "{rows:?}");
    // A primary-key change, several rows in one statement, including a swap of keys.
    p.owner[0]
        .batch_execute("UPDATE products SET id = id + 1000")
        .await
        .unwrap();
    p.assert_same("products").await;
    // Old and new keys overlap (2 → 3 first, then 1 → 2): only key 1 may be removed on the peer.
    // Old and new keys overlap (501 → 502 first, then 500 → 501): only key 500 may go on the peer.
    p.owner[0]
        .batch_execute("INSERT INTO products (id, name) VALUES (501, 'second'), (500, 'first')")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("UPDATE products SET id = id + 1 WHERE id IN (500, 501)")
        .await
        .unwrap();
    let rows = p.assert_same("products").await;
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        rows.iter().any(|r| r.starts_with("(501,first"))
            && rows.iter().any(|r| r.starts_with("(502,second")),
        "{rows:?}"
    );
    p.owner[0]
        .batch_execute("DELETE FROM products WHERE id IN (501, 502)")
        .await
        .unwrap();
    p.owner[1].batch_execute("TRUNCATE products").await.unwrap();
    assert!(p.assert_same("products").await.is_empty());
    p.owner[1]
        .batch_execute("INSERT INTO products (name) VALUES ('refill')")
        .await
        .unwrap();
    assert_eq!(p.assert_same("products").await.len(), 1);
    p.owner[0].batch_execute("TRUNCATE products").await.unwrap();
    assert!(p.assert_same("products").await.is_empty());
    p.pgtwin(&["check"]).ok();
    p.owner[0]
        .batch_execute("INSERT INTO products (name) VALUES ('kept by down')")
        .await
        .unwrap();

    p.pgtwin(&["down"]).ok();
    p.assert_clean().await;
    // down leaves the data as it was, on both nodes.
    assert_eq!(p.assert_same("products").await.len(), 1);
    p.both("DELETE FROM products").await;
    // After down, writes are no longer synced, and data stayed.
    p.owner[0]
        .batch_execute("INSERT INTO products (name) VALUES ('solo')")
        .await
        .unwrap();
    assert_eq!(p.rows(1, "products").await.len(), 0);
    p.owner[0]
        .batch_execute("DELETE FROM products")
        .await
        .unwrap();

    p.pgtwin(&["up"]).ok();
    p.owner[1]
        .batch_execute("INSERT INTO products (name) VALUES ('again')")
        .await
        .unwrap();
    assert_eq!(p.assert_same("products").await.len(), 1);
}

#[tokio::test]
async fn every_common_type_arrives_byte_identical() {
    let p = Pair::new().await;
    p.both("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
            CREATE TABLE kinds (
              id int PRIMARY KEY, s smallint, i int, b bigint, n numeric(20,6), nn numeric, r real, d double precision,
              t text, v varchar(10), ok boolean, day date, ts timestamp(6), tz timestamptz, u uuid, j jsonb,
              raw bytea, ints int[], texts text[], m mood, g int GENERATED ALWAYS AS (s * 2) STORED)").await;
    p.config("[[tables]]\nname = \"kinds\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0].batch_execute(r#"
        INSERT INTO kinds (id, s, i, b, n, nn, r, d, t, v, ok, day, ts, tz, u, j, raw, ints, texts, m) VALUES
        (1, -32768, 2147483647, -9223372036854775808, 12345678901234.123456, 0.1000000000000000000001, 3.4028235e38,
         0.1, 'tab	quote'' backslash\ nul-free ünï', 'x', true, '4713-01-01 BC', '2024-02-29 23:59:59.999999',
         '2024-06-01 12:00:00.123456+05:30', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": [1, 2.50], "a": null}',
         '\x00ff10', '{1,NULL,3}', '{"a,b","","NULL",null}', 'happy'),
        (2, NULL, NULL, NULL, 'NaN', '-0', '-0', '-Infinity', '', NULL, false, 'infinity', '-infinity', NULL, NULL,
         '"just a string"', '\x', '{}', '{{a,b},{c,d}}', NULL),
        (3, 1, 1, 1, 1, 1, 1.17549435e-38, 5e-324, NULL, NULL, NULL, NULL, NULL, 'epoch', NULL, NULL, NULL, NULL, NULL, 'sad')
    "#).await.unwrap();
    p.owner[1]
        .batch_execute(
            "UPDATE kinds SET d = d * 3, tz = tz + interval '1 microsecond', m = 'ok' WHERE id = 3",
        )
        .await
        .unwrap();
    let rows = p.assert_same("kinds").await;
    assert_eq!(rows.len(), 3);
    // Byte-identical, not just equal as text: compare the binary send form of every column.
    let bin = |i: usize| {
        let c = &p.admin[i];
        async move {
            c.query("SELECT id, md5(string_agg(coalesce(encode(x.b, 'hex'), 'null'), ',')) FROM kinds k,
                       LATERAL (VALUES (int2send(s)), (int4send(i)), (int8send(b)), (numeric_send(n)), (numeric_send(nn)),
                                       (float4send(r)), (float8send(d)), (textsend(t)), (textsend(v)), (boolsend(ok)),
                                       (date_send(day)), (timestamp_send(ts)), (timestamptz_send(tz)), (uuid_send(u)),
                                       (jsonb_send(j)), (byteasend(raw)), (array_send(ints)), (array_send(texts)), (enum_send(m)),
                                       (int4send(g))) x(b)
                     GROUP BY id ORDER BY id", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(1))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(bin(0).await, bin(1).await);
    p.pgtwin(&["down"]).ok();
    p.assert_clean().await;
}

#[tokio::test]
async fn awkward_names_composite_keys_and_many_tables() {
    let p = Pair::new().await;
    p.both(r#"
        CREATE SCHEMA "Sales Data";
        CREATE TABLE "Sales Data"."Order Items" (
            "Order" int, "Line" int, "select" text, "a""b" text, "ünï" numeric, "$pgtwin$" text, "{{peer}}" int,
            PRIMARY KEY ("Order", "Line"));
        CREATE SCHEMA inventory;
        CREATE TABLE inventory.stock (sku text PRIMARY KEY, qty int NOT NULL);
        CREATE TABLE "UPPER" ("ID" int PRIMARY KEY);
        CREATE TABLE odd_columns ("ordinality" int PRIMARY KEY, "new
line" text);
    "#).await;
    p.config(
        r#"
[[tables]]
name = '"Sales Data"."Order Items"'
[[tables]]
name = "inventory.stock"
[[tables]]
name = '"UPPER"'
[[tables]]
name = "odd_columns"
"#,
    );
    p.pgtwin(&["up"]).ok();
    p.owner[0].batch_execute(r#"
        INSERT INTO "Sales Data"."Order Items" VALUES (1, 1, 'x', 'q"uote', 1.5, '$$', 7), (1, 2, NULL, NULL, NULL, NULL, NULL), (2, 1, 'y', '', 0, '', 0);
        INSERT INTO inventory.stock VALUES ('A-1', 5), ('B-2', 0);
        INSERT INTO "UPPER" VALUES (1), (2);
    "#).await.unwrap();
    p.owner[1].batch_execute(r#"
        UPDATE "Sales Data"."Order Items" SET "Line" = "Line" + 10, "select" = 'moved' WHERE "Order" = 1;
        DELETE FROM "Sales Data"."Order Items" WHERE "Order" = 2;
        UPDATE inventory.stock SET qty = qty + 1;
        UPDATE "UPPER" SET "ID" = "ID" + 10;
    "#).await.unwrap();
    let items = p.assert_same(r#""Sales Data"."Order Items""#).await;
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|r| r.contains("moved")), "{items:?}");
    assert_eq!(
        p.assert_same("inventory.stock").await,
        vec!["(A-1,6)", "(B-2,1)"]
    );
    assert_eq!(p.assert_same(r#""UPPER""#).await, vec!["(11)", "(12)"]);
    // An update's old version is compared in columns of any name (a newline in one, a key named like
    // the ordinality column of the comparison's own query).
    p.owner[0]
        .batch_execute("INSERT INTO odd_columns VALUES (1, 'x'), (2, 'y')")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("UPDATE odd_columns SET \"new\nline\" = 'changed on b'")
        .await
        .unwrap();
    p.owner[0]
        .batch_execute("UPDATE odd_columns SET \"new\nline\" = 'and on a' WHERE \"ordinality\" = 1")
        .await
        .unwrap();
    assert_eq!(
        p.assert_same("odd_columns").await,
        vec!["(1,\"and on a\")", "(2,\"changed on b\")"]
    );

    // Dropping a table from the config removes its triggers on the next up; the others keep syncing.
    p.config("[[tables]]\nname = \"inventory.stock\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute(
            r#"INSERT INTO "UPPER" VALUES (9); INSERT INTO inventory.stock VALUES ('C-3', 1)"#,
        )
        .await
        .unwrap();
    assert_eq!(p.rows(1, r#""UPPER""#).await.len(), 2);
    assert_eq!(p.assert_same("inventory.stock").await.len(), 3);
    p.pgtwin(&["down"]).ok();
    p.assert_clean().await;
}

#[tokio::test]
async fn key_from_config_uses_a_unique_index() {
    let p = Pair::new().await;
    p.both("CREATE TABLE codes (code text NOT NULL UNIQUE, label text)")
        .await;
    p.config("[[tables]]\nname = \"codes\"\nkey = [\"code\"]");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("INSERT INTO codes VALUES ('a', 'one'), ('b', 'two')")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute(
            "UPDATE codes SET label = 'uno' WHERE code = 'a'; DELETE FROM codes WHERE code = 'b'",
        )
        .await
        .unwrap();
    assert_eq!(p.assert_same("codes").await, vec!["(a,uno)"]);
}

#[tokio::test]
async fn application_roles_sync_without_any_access_to_the_link() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.both("GRANT SELECT, INSERT, UPDATE, DELETE ON products TO app; GRANT USAGE ON SEQUENCE products_id_seq TO app").await;
    p.config("[[tables]]\nname = \"products\"");
    p.pgtwin(&["up"]).ok();
    let app = [p.app(0).await, p.app(1).await];
    app[0]
        .batch_execute("INSERT INTO products (name, price) VALUES ('from app a', 1)")
        .await
        .unwrap();
    app[1]
        .batch_execute("INSERT INTO products (name, price) VALUES ('from app b', 2)")
        .await
        .unwrap();
    app[1]
        .batch_execute("UPDATE products SET price = 3 WHERE name = 'from app a'")
        .await
        .unwrap();
    assert_eq!(p.assert_same("products").await.len(), 2);
    // The application role gained nothing: no use of the server, no password, no pgtwin objects.
    let row = app[0]
        .query_one(
            "SELECT has_server_privilege('pgtwin_peer', 'USAGE'),
                    (SELECT umoptions FROM pg_user_mappings WHERE srvname = 'pgtwin_peer') IS NULL,
                    has_schema_privilege('pgtwin', 'USAGE')",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "app may use the foreign server");
    assert!(
        row.get::<_, bool>(1),
        "app can read the user mapping's options"
    );
    assert!(!row.get::<_, bool>(2), "app may use schema pgtwin");
    let err = app[0]
        .batch_execute("SELECT pgtwin.capture_public_products_00000000()")
        .await;
    assert!(err.is_err());
    // Every function pgtwin made pins search_path.
    let unpinned: i64 = p.admin[0]
        .query_one(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'pgtwin' AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unpinned, 0);
}

#[tokio::test]
async fn up_is_idempotent_and_completes_a_half_done_install() {
    let p = Pair::new().await;
    p.both(PRODUCTS).await;
    p.config("[[tables]]\nname = \"products\"");
    p.pgtwin(&["up"]).ok();
    let again = p.pgtwin(&["up"]).ok();
    assert!(
        again.stdout.contains("node a: up to date") && again.stdout.contains("node b: up to date"),
        "{}",
        again.stdout
    );
    // One node loses its install (as if up died between the two commits): up again repairs it.
    p.admin[1]
        .batch_execute("DROP SCHEMA pgtwin CASCADE; DROP SERVER pgtwin_peer CASCADE")
        .await
        .unwrap();
    // Meanwhile a's writes queue (b has no inbox): the merge of the next up carries them over, and
    // their queue entries go with it, so nothing is replayed on top of the merge.
    p.owner[0]
        .batch_execute("INSERT INTO products (id, name) VALUES (100, 'while half installed')")
        .await
        .unwrap();
    assert_eq!(p.queued(0).await, 1);
    let repaired = p.pgtwin(&["up"]).ok();
    assert!(
        repaired.stdout.contains("node b: installed"),
        "{}",
        repaired.stdout
    );
    p.owner[1]
        .batch_execute("INSERT INTO products (name) VALUES ('x')")
        .await
        .unwrap();
    p.owner[0]
        .batch_execute("INSERT INTO products (name) VALUES ('y')")
        .await
        .unwrap();
    assert_eq!(p.assert_same("products").await.len(), 3);
    assert_eq!(
        p.queued(0).await,
        0,
        "the merged change must not wait for a replay"
    );
    // A trigger dropped by hand is noticed and put back.
    p.admin[0]
        .batch_execute("DROP TRIGGER pgtwin_capture_delete ON products")
        .await
        .unwrap();
    assert!(p.pgtwin(&["up"]).ok().stdout.contains("node a: installed"));
    p.owner[0]
        .batch_execute("DELETE FROM products")
        .await
        .unwrap();
    assert!(p.assert_same("products").await.is_empty());
}

#[tokio::test]
async fn large_statements_ship_in_chunks() {
    let p = Pair::new().await;
    p.both("CREATE TABLE big (a int, b int, payload text, PRIMARY KEY (a, b))")
        .await;
    p.config("[[tables]]\nname = \"big\"\n[options]\nbatch_size = 100");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute(
            "INSERT INTO big SELECT g % 7, g, repeat('x', g % 50) FROM generate_series(1, 1050) g",
        )
        .await
        .unwrap();
    assert_eq!(p.assert_same("big").await.len(), 1050);
    p.owner[1]
        .batch_execute("UPDATE big SET b = b + 5000, payload = 'moved' WHERE b % 3 = 0")
        .await
        .unwrap();
    p.owner[0]
        .batch_execute("UPDATE big SET payload = NULL WHERE b % 3 = 1")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("DELETE FROM big WHERE b % 5 = 0")
        .await
        .unwrap();
    assert_eq!(p.assert_same("big").await.len(), 1050 - 210);
    // A statement that changes nothing ships nothing, and does not fail.
    p.owner[0]
        .batch_execute("UPDATE big SET payload = 'none' WHERE false; DELETE FROM big WHERE false")
        .await
        .unwrap();
}

/// The statements postgres_fdw runs on node b for one single-row INSERT on node a, after a first
/// INSERT has opened the connection.
async fn peer_statements_for(options: &str, measured: &str) -> Vec<String> {
    let p = Pair::new().await;
    p.both("CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    p.config(&format!("[[tables]]\nname = \"t\"\n[options]\n{options}"));
    p.pgtwin(&["up"]).ok();
    // Log every statement of the sessions postgres_fdw opens on b (they log in as twin to this database).
    p.admin[1]
        .batch_execute(&format!(
            "ALTER ROLE twin IN DATABASE {} SET log_statement = 'all'",
            p.db
        ))
        .await
        .unwrap();
    let log = common::servers().nodes[1].data_dir.join("server.log");
    let a = &p.owner[0];
    a.batch_execute("INSERT INTO t VALUES (1, 'warm up the connection')")
        .await
        .unwrap();
    let before = std::fs::read_to_string(&log).unwrap().len();
    a.batch_execute(measured).await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap()[before..].to_string();
    p.assert_same("t").await;
    text.lines()
        .filter(|l| l.contains("LOG:  statement:") || l.contains("LOG:  execute"))
        .map(|l| l.split("LOG:  ").nth(1).unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_single_row_write_costs_one_statement_on_the_peer() {
    const ONE: &str = "INSERT INTO t VALUES (2, 'measured')";
    let statements = peer_statements_for("on_peer_down = \"fail\"", ONE).await;
    assert_eq!(
        statements.len(),
        3,
        "expected START, one UPDATE, COMMIT:\n{}",
        statements.join("\n")
    );
    assert!(statements[0].contains("START TRANSACTION"));
    assert!(statements[1].contains("UPDATE pgtwin.inbox_"));
    assert!(statements[2].contains("COMMIT TRANSACTION"));
    // Catching "peer down" takes a subtransaction, which postgres_fdw mirrors as a savepoint.
    let statements = peer_statements_for("on_peer_down = \"queue\"", ONE).await;
    assert_eq!(statements.len(), 5, "{}", statements.join("\n"));
    assert!(
        statements[1].starts_with("statement: SAVEPOINT")
            && statements[3].starts_with("statement: RELEASE SAVEPOINT")
    );
    // A transaction's changes travel at its commit: its ten inserts as one chunk, one statement.
    let ten: Vec<String> = (2..12)
        .map(|i| format!("INSERT INTO t VALUES ({i}, 'one of ten')"))
        .collect();
    let statements = peer_statements_for(
        "on_peer_down = \"queue\"",
        &format!("BEGIN; {}; COMMIT", ten.join("; ")),
    )
    .await;
    assert_eq!(statements.len(), 5, "{}", statements.join("\n"));
    // Updates of different keys join too: five statements, one chunk.
    let updates: Vec<String> = (2..7)
        .map(|i| format!("UPDATE t SET v = 'updated' WHERE id = {i}"))
        .collect();
    let statements = peer_statements_for(
        "on_peer_down = \"queue\"",
        &format!(
            "BEGIN; INSERT INTO t SELECT g, 'five' FROM generate_series(2, 6) g; {}; COMMIT",
            updates.join("; ")
        ),
    )
    .await;
    assert_eq!(statements.len(), 6, "{}", statements.join("\n"));
    assert_eq!(
        statements
            .iter()
            .filter(|s| s.contains("UPDATE pgtwin.inbox_"))
            .count(),
        2,
        "{}",
        statements.join("\n")
    );
    // A key updated twice is not joined (it must keep its last version, applied after the first),
    // and the savepoint is paid once per transaction: a second chunk goes without it.
    let statements = peer_statements_for(
        "on_peer_down = \"queue\"",
        "BEGIN; INSERT INTO t VALUES (2, 'one'); UPDATE t SET v = 'two' WHERE id = 2; UPDATE t SET v = 'three' WHERE id = 2; COMMIT",
    )
    .await;
    assert_eq!(statements.len(), 7, "{}", statements.join("\n"));
    assert!(statements[4].contains("UPDATE pgtwin.inbox_"));
    assert!(statements[5].contains("UPDATE pgtwin.inbox_"));
}

/// The peer's password reaches the user mapping as COPY data, so a server that logs every statement
/// records every statement of `up` but never the password.
#[tokio::test]
async fn the_password_stays_out_of_the_server_log() {
    let p = Pair::new().await;
    p.both("CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    p.config("[[tables]]\nname = \"t\"");
    let logs = common::servers()
        .nodes
        .iter()
        .map(|s| s.data_dir.join("server.log"))
        .collect::<Vec<_>>();
    let mut before = Vec::new();
    for (admin, log) in p.admin.iter().zip(&logs) {
        admin
            .batch_execute(&format!(
                "ALTER ROLE twin IN DATABASE {} SET log_statement = 'all'",
                p.db
            ))
            .await
            .unwrap();
        before.push(std::fs::read_to_string(log).unwrap().len());
    }
    p.pgtwin(&["up"]).ok();
    for (log, from) in logs.iter().zip(before) {
        let text = std::fs::read_to_string(log).unwrap()[from..].to_string();
        assert!(
            text.contains("CREATE SERVER"),
            "up's DDL should be in the log:\n{text}"
        );
        assert!(
            !text.contains(common::TWIN_PW),
            "password in the server log"
        );
    }
    let mapping: Vec<String> = p.admin[0]
        .query_one(
            "SELECT umoptions FROM pg_user_mappings WHERE srvname = 'pgtwin_peer'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        mapping,
        vec![
            "user=twin".to_string(),
            format!("password={}", common::TWIN_PW)
        ]
    );
    p.owner[0]
        .batch_execute("INSERT INTO t VALUES (1, 'through the mapping')")
        .await
        .unwrap();
    p.assert_same("t").await;
    // The login is compared with the config's, not just the masked plan: nothing to redo.
    let again = p.pgtwin(&["up"]).ok().stdout;
    assert!(again.contains("up to date"), "{again}");
}
