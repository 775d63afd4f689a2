//! Two schemas that evolve apart, against real servers: the nodes' tables are built differently (column
//! order, dropped-column gaps, one-sided columns, constraints of their own), and migrations run on one
//! node at a time, as two applications on their own release schedules do.

mod common;

use common::Pair;

async fn exec(p: &Pair, i: usize, sql: &str) {
    p.owner[i]
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("node {}: {sql}: {e:?}", common::NODES[i]));
}

/// The bug this format fixes: columns added in another order on each node (and one of them a
/// timestamp), a dropped column's gap on one side, a column on one side only. Values land in their
/// own columns, both ways, for every kind of write.
#[tokio::test]
async fn columns_in_another_physical_order_sync_by_name() {
    let p = Pair::new().await;
    exec(
        &p,
        0,
        "CREATE TABLE items (id bigint PRIMARY KEY, name text);
                 ALTER TABLE items ADD COLUMN sku text;
                 ALTER TABLE items ADD COLUMN seen timestamptz;
                 ALTER TABLE items ADD COLUMN only_a int DEFAULT 7",
    )
    .await;
    exec(
        &p,
        1,
        "CREATE TABLE items (legacy_flag boolean, seen timestamptz, id bigint PRIMARY KEY);
                 ALTER TABLE items DROP COLUMN legacy_flag;
                 ALTER TABLE items ADD COLUMN sku text, ADD COLUMN only_b text DEFAULT 'b';
                 ALTER TABLE items ADD COLUMN name text",
    )
    .await;
    exec(&p, 1, "SET timezone = 'Asia/Kathmandu'").await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    exec(&p, 0, "INSERT INTO items (id, name, sku, seen, only_a) VALUES
                 (1, 'kettle', 'K-1', '2024-01-02 03:04:05.123456+00', 70), (2, 'mug', 'M-2', NULL, 71)").await;
    exec(&p, 1, "INSERT INTO items (id, name, sku, seen, only_b) VALUES (3, 'hat', 'H-3', '2024-05-06 07:08:09+05:45', 'x')").await;
    exec(
        &p,
        1,
        "UPDATE items SET sku = 'K-1b', name = 'kettle 2' WHERE id = 1",
    )
    .await;
    exec(&p, 0, "UPDATE items SET seen = '2025-01-01 00:00:00+00' WHERE id = 3; DELETE FROM items WHERE id = 2").await;
    let shared = "SELECT id, name, sku, seen FROM items ORDER BY id";
    assert_eq!(
        p.assert_same_rows_of(shared).await,
        [
            "(1,\"kettle 2\",K-1b,\"2024-01-02 03:04:05.123456+00\")",
            "(3,hat,H-3,\"2025-01-01 00:00:00+00\")"
        ]
    );
    // One-sided columns keep their node's values; rows from the peer get the default.
    assert_eq!(
        p.rows_of(0, "SELECT id, only_a FROM items ORDER BY id")
            .await,
        ["(1,70)", "(3,7)"]
    );
    assert_eq!(
        p.rows_of(1, "SELECT id, only_b FROM items ORDER BY id")
            .await,
        ["(1,b)", "(3,x)"]
    );
    // A key changed by an UPDATE and a TRUNCATE travel by name too.
    exec(&p, 1, "UPDATE items SET id = 30 WHERE id = 3").await;
    assert_eq!(
        p.assert_same_rows_of("SELECT id FROM items ORDER BY id")
            .await,
        ["(1)", "(30)"]
    );
    exec(&p, 0, "TRUNCATE items").await;
    assert!(p.assert_same_rows_of(shared).await.is_empty());
}

/// A Rails team's year, on one pair of nodes: migrations on the new app's node first, the legacy node
/// later or never, and both applications writing throughout.
#[tokio::test]
async fn rails_migrations_on_one_node_never_break_either_applications_writes() {
    let p = Pair::new().await;
    exec(
        &p,
        0,
        "CREATE TABLE products (id bigserial PRIMARY KEY, name text NOT NULL, price int, qty int)",
    )
    .await;
    exec(
        &p,
        1,
        "CREATE TABLE products (qty int, price int, name text NOT NULL, id bigserial PRIMARY KEY)",
    )
    .await;
    p.config("[[tables]]\nname = \"products\"");
    p.pgtwin(&["up"]).ok();
    let writes = |round: i32| {
        let p = &p;
        async move {
            for i in 0..2 {
                exec(
                    p,
                    i,
                    &format!("INSERT INTO products (name, qty) VALUES ('r{round}n{i}', {i}), ('r{round}n{i}old', {i})"),
                )
                .await;
                exec(
                    p,
                    i,
                    &format!(
                        "UPDATE products SET qty = coalesce(qty, 0) + 1 WHERE name = 'r{round}n{}'",
                        1 - i
                    ),
                )
                .await;
            }
            exec(
                p,
                0,
                &format!("DELETE FROM products WHERE name = 'r{round}n0'"),
            )
            .await;
            // The legacy app deletes too: a row of its own and one the new app wrote.
            exec(
                p,
                1,
                &format!("DELETE FROM products WHERE name LIKE 'r{round}n_old'"),
            )
            .await;
        }
    };
    let shared = "SELECT id, name, qty FROM products ORDER BY id";
    writes(1).await;
    exec(&p, 1, "UPDATE products SET price = 5").await;
    p.assert_same_rows_of("SELECT id, price FROM products ORDER BY id")
        .await;

    // add_column on the new app: both apps keep writing; the column stays on its node.
    exec(
        &p,
        0,
        "ALTER TABLE products ADD COLUMN description text NOT NULL DEFAULT 'none'",
    )
    .await;
    writes(2).await;
    p.assert_same_rows_of(shared).await;
    assert_eq!(p.pgtwin(&["status"]).code, 1);

    // The new app fills in its column while legacy has none; then legacy adds the same column, and
    // it syncs from the next write on, no `up` needed.
    exec(
        &p,
        0,
        "UPDATE products SET description = 'typed in the new app'",
    )
    .await;
    exec(
        &p,
        1,
        "ALTER TABLE products ADD COLUMN description text NOT NULL DEFAULT 'none'",
    )
    .await;
    exec(
        &p,
        0,
        "UPDATE products SET description = 'new text' WHERE name = 'r1n1'",
    )
    .await;
    let description = "SELECT name, description FROM products ORDER BY id";
    assert_eq!(
        p.rows_of(1, description).await,
        ["(r1n1,\"new text\")", "(r2n1,none)"]
    );
    // The rows written before hold different values in it: a plain `up` refuses, naming the key;
    // `up --prefer a` fills legacy's column from the new app's, this once.
    let key = p
        .rows_of(0, "SELECT id FROM products WHERE name = 'r2n1'")
        .await;
    p.pgtwin(&["up"]).fails_with(&[
        "products",
        "1 key(s) hold different rows",
        &key[0],
        "--prefer",
    ]);
    let up = p.pgtwin(&["up", "--prefer", "a"]).ok();
    assert!(
        up.stdout
            .contains(&format!("key {}: a wins, b's row overwritten", key[0]))
            && up.stdout.contains("description"),
        "{}",
        up.stdout
    );
    assert_eq!(
        p.assert_same_rows_of(description).await,
        ["(r1n1,\"new text\")", "(r2n1,\"typed in the new app\")"]
    );
    p.pgtwin(&["up"]).ok();
    p.pgtwin(&["check"]).ok();
    p.pgtwin(&["status"]).ok();

    // remove_column on one node, rename_column on the other: every write still succeeds.
    exec(&p, 1, "ALTER TABLE products DROP COLUMN description").await;
    exec(&p, 0, "ALTER TABLE products RENAME COLUMN price TO amount").await;
    writes(3).await;
    p.assert_same_rows_of(shared).await;
    let status = p.pgtwin(&["status"]);
    assert_eq!(status.code, 1, "{}", status.stdout);
    for expected in [
        "column \"description\" (text) exists on node a only",
        "column \"amount\" (integer) exists on node a only",
        "column \"price\" (integer) exists on node b only",
    ] {
        assert!(
            status.stdout.contains(expected),
            "{expected}: {}",
            status.stdout
        );
    }

    // change_column to bigint, on both nodes: a large value syncs (sync keeps going meanwhile).
    exec(&p, 0, "ALTER TABLE products ALTER COLUMN qty TYPE bigint").await;
    writes(4).await;
    exec(&p, 1, "ALTER TABLE products ALTER COLUMN qty TYPE bigint").await;
    exec(
        &p,
        1,
        "UPDATE products SET qty = 9000000000 WHERE name = 'r4n1'",
    )
    .await;
    p.assert_same_rows_of(shared).await;
    assert_eq!(
        p.rows_of(0, "SELECT qty FROM products WHERE name = 'r4n1'")
            .await,
        ["(9000000000)"]
    );

    // create_table force: :cascade on legacy: the table comes back empty and without triggers.
    exec(&p, 1, "DROP TABLE products CASCADE;
                 CREATE TABLE products (id bigserial PRIMARY KEY, name text NOT NULL, qty bigint, price int)").await;
    let status = p.pgtwin(&["status"]);
    assert_eq!(status.code, 1, "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains("table \"public\".\"products\" on node b has 0 of pgtwin's 4 triggers")
            && status.stdout.contains("run pgtwin up"),
        "{}",
        status.stdout
    );
    // The new app's next write is refused rather than synced one way, and says what to run.
    let err = p.owner[0]
        .batch_execute("INSERT INTO products (name) VALUES ('lost?')")
        .await
        .unwrap_err();
    let text = format!("{err:?}");
    assert!(
        text.contains("products") && text.contains("node b") && text.contains("run pgtwin up"),
        "{text}"
    );
    p.pgtwin(&["up"]).ok();
    writes(5).await;
    p.assert_same_rows_of(shared).await;
    // Left: the one-sided columns of the migrations above, which are drift and nothing else.
    let status = p.pgtwin(&["status"]);
    assert_eq!(status.code, 1, "{}", status.stdout);
    assert!(!status.stdout.contains("triggers ("), "{}", status.stdout);
    exec(&p, 1, "TRUNCATE products").await;
    assert!(p.assert_same_rows_of(shared).await.is_empty());
}

/// A unique index on one node only: reported beforehand by `check` and `status`, a synced write that
/// it rejects fails naming the constraint, and every write it does not reject travels both ways.
#[tokio::test]
async fn a_unique_index_on_one_node_is_reported_and_named_when_it_rejects() {
    let p = Pair::new().await;
    exec(&p, 0, "CREATE TABLE users (id int PRIMARY KEY, email text)").await;
    exec(
        &p,
        1,
        "CREATE TABLE users (email text, id int PRIMARY KEY);
                 CREATE UNIQUE INDEX users_email_key ON users (email)",
    )
    .await;
    p.config("[[tables]]\nname = \"users\"");
    p.pgtwin(&["up"]).ok();
    let check = p.pgtwin(&["check"]);
    assert_eq!(check.code, 1);
    assert!(
        check
            .stdout
            .contains("unique constraint on (email) exists on node b only"),
        "{}",
        check.stdout
    );
    exec(&p, 0, "INSERT INTO users VALUES (1, 'kim@example.com')").await;
    let err = p.owner[0]
        .batch_execute("INSERT INTO users VALUES (2, 'kim@example.com')")
        .await
        .unwrap_err();
    // The peer's error, with its SQLSTATE, naming the node and the table as well as the constraint.
    assert_eq!(err.code().unwrap().code(), "23505");
    let message = err.as_db_error().unwrap().message();
    for needle in ["node b", "users", "users_email_key"] {
        assert!(message.contains(needle), "{message}");
    }
    let shared = "SELECT id, email FROM users ORDER BY id";
    p.assert_same_rows_of(shared).await;
    // Every write the index does not reject travels both ways.
    exec(
        &p,
        1,
        "INSERT INTO users (id, email) VALUES (3, 'lee@example.com'), (4, NULL), (5, 'ann@example.com')",
    )
    .await;
    exec(&p, 0, "INSERT INTO users VALUES (6, NULL); UPDATE users SET email = 'lee@example.org' WHERE id = 3; DELETE FROM users WHERE id = 5").await;
    exec(&p, 1, "UPDATE users SET email = 'kim@example.org', id = 10 WHERE id = 1; DELETE FROM users WHERE id = 4").await;
    assert_eq!(
        p.assert_same_rows_of(shared).await,
        ["(3,lee@example.org)", "(6,)", "(10,kim@example.org)"]
    );
    exec(&p, 0, "TRUNCATE users").await;
    assert!(p.assert_same_rows_of(shared).await.is_empty());
    exec(&p, 0, "INSERT INTO users VALUES (1, 'kim@example.com')").await;
    exec(&p, 1, "TRUNCATE users").await;
    assert!(p.assert_same_rows_of(shared).await.is_empty());
}

/// A synced table dropped on one node and not created again: `status` names it and the node, and the
/// other application's next write fails, saying what to run, instead of syncing one way.
#[tokio::test]
async fn a_table_dropped_on_one_node_is_reported_and_stops_the_peers_writes() {
    let p = Pair::new().await;
    exec(
        &p,
        0,
        "CREATE TABLE orders (id int PRIMARY KEY, total int, note text)",
    )
    .await;
    exec(&p, 1, "CREATE TABLE orders (total int, id int PRIMARY KEY)").await;
    p.config("[[tables]]\nname = \"orders\"");
    p.pgtwin(&["up"]).ok();
    exec(&p, 1, "DROP TABLE orders").await;
    let status = p.pgtwin(&["status"]);
    assert_eq!(status.code, 1, "{}\n{}", status.stdout, status.stderr);
    for expected in [
        "table \"public\".\"orders\" on node b has 0 of pgtwin's 4 triggers",
        "table \"public\".\"orders\" does not exist on node b",
        "run pgtwin up",
    ] {
        assert!(
            status.stdout.contains(expected),
            "{expected}: {}",
            status.stdout
        );
    }
    let err = p.owner[0]
        .batch_execute("INSERT INTO orders VALUES (1, 10, 'lost?')")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "PT404", "{db:?}");
    assert!(db.message().contains("\"orders\" on node b"), "{db:?}");
    assert!(
        db.hint().unwrap_or_default().contains("run pgtwin up"),
        "{db:?}"
    );
    assert!(p.rows_of(0, "SELECT id FROM orders").await.is_empty());
}

/// Chunks are cut by bytes as well as rows: one statement over rows that, as text, far exceed what a
/// single PostgreSQL value may hold (1 GB) still travels (sync mode).
#[tokio::test]
async fn a_bulk_update_of_large_rows_travels() {
    let p = Pair::new().await;
    p.both("CREATE TABLE docs (id int PRIMARY KEY, flag boolean, body text)")
        .await;
    p.config("[[tables]]\nname = \"docs\"");
    p.pgtwin(&["up"]).ok();
    // 600 rows of 2.5 MB: 1.5 GB of row text (compressed on disk, not in flight).
    exec(&p, 0, "INSERT INTO docs SELECT g, false, repeat(md5(g::text), 80000) FROM generate_series(1, 600) g").await;
    exec(&p, 0, "UPDATE docs SET flag = true").await;
    assert_eq!(
        p.assert_same_rows_of("SELECT count(*) FILTER (WHERE flag), sum(length(body)) FROM docs")
            .await,
        ["(600,1536000000)"]
    );
}

/// The article's setup: the legacy node names the table `legacy_products`, in its own schema, and a
/// column `title` where the new app says `name`; a cost column is private to each application. Merge,
/// sync both ways, the queue and `run`, `check` and `repair` all follow the mapping; so does a table
/// whose key column is named otherwise on legacy.
#[tokio::test]
async fn a_table_and_a_column_named_differently_per_node_sync_through_the_mapping() {
    let p: &'static Pair = Box::leak(Box::new(Pair::new().await));
    exec(
        p,
        0,
        "CREATE TABLE products (id int PRIMARY KEY, name text, price int, cost int);
                 INSERT INTO products VALUES (1, 'kettle', 29, 10)",
    )
    .await;
    exec(p, 1, "CREATE SCHEMA legacy;
                 CREATE TABLE legacy.legacy_products (cost numeric, price int, title text, id int PRIMARY KEY);
                 INSERT INTO legacy.legacy_products VALUES (99.5, 7, 'mug', 2)").await;
    // A second table whose key column itself is named otherwise on legacy.
    exec(p, 0, "CREATE TABLE stock (id int PRIMARY KEY, qty int)").await;
    exec(
        p,
        1,
        "CREATE TABLE stock (qty int, product_id int PRIMARY KEY)",
    )
    .await;
    p.config(
        "[[tables]]\nname = \"products\"\nexclude_columns = [\"cost\"]\n\
         [tables.nodes.b]\nname = \"legacy.legacy_products\"\nrename = { name = \"title\" }\n\
         [[tables]]\nname = \"stock\"\n[tables.nodes.b]\nrename = { id = \"product_id\" }",
    );
    p.pgtwin(&["up"]).ok();
    let a = "SELECT id, name, price FROM products ORDER BY id";
    let b = "SELECT id, title, price FROM legacy.legacy_products ORDER BY id";
    let both = |p: &'static Pair| async move {
        let rows = p.rows_of(0, a).await;
        assert_eq!(rows, p.rows_of(1, b).await);
        rows
    };
    assert_eq!(both(p).await, ["(1,kettle,29)", "(2,mug,7)"]);
    exec(p, 0, "INSERT INTO products VALUES (3, 'hat', 40, 1); UPDATE products SET name = 'teapot' WHERE id = 1").await;
    exec(
        p,
        1,
        "UPDATE legacy.legacy_products SET title = 'cup', cost = 1 WHERE id = 2;
                 UPDATE legacy.legacy_products SET id = 30 WHERE id = 3",
    )
    .await;
    assert_eq!(both(p).await, ["(1,teapot,29)", "(2,cup,7)", "(30,hat,40)"]);
    // The private columns keep their own values, never the peer's (a row that arrived from the peer,
    // or whose key changed there, has the default).
    assert_eq!(
        p.rows_of(0, "SELECT cost FROM products ORDER BY id").await,
        ["(10)", "()", "()"]
    );
    assert_eq!(
        p.rows_of(1, "SELECT cost FROM legacy.legacy_products WHERE id = 2")
            .await,
        ["(1)"]
    );
    exec(p, 0, "INSERT INTO stock VALUES (1, 5), (2, 6), (3, 7)").await;
    exec(
        p,
        1,
        "INSERT INTO stock (product_id, qty) VALUES (8, 4); UPDATE stock SET qty = 50 WHERE product_id = 1;
                 UPDATE stock SET product_id = 20 WHERE product_id = 2; DELETE FROM stock WHERE product_id = 3",
    )
    .await;
    exec(
        p,
        0,
        "UPDATE stock SET qty = 9, id = 40 WHERE id = 8; DELETE FROM stock WHERE id = 1",
    )
    .await;
    let stock = [
        "SELECT id, qty FROM stock ORDER BY id",
        "SELECT product_id, qty FROM stock ORDER BY product_id",
    ];
    assert_eq!(p.rows_of(0, stock[0]).await, ["(20,6)", "(40,9)"]);
    assert_eq!(p.rows_of(1, stock[1]).await, ["(20,6)", "(40,9)"]);
    p.pgtwin(&["check"]).ok();
    exec(p, 1, "TRUNCATE stock").await;
    assert!(p.rows_of(0, stock[0]).await.is_empty() && p.rows_of(1, stock[1]).await.is_empty());

    // Through the queue: async mode, a conflict on one key, `run` replays by the mapping.
    let text = std::fs::read_to_string(p.dir.path().join("pgtwin.toml")).unwrap();
    p.config_text(&format!("{text}\n[options]\nmode = \"async\"\n"));
    p.pgtwin(&["up"]).ok();
    exec(
        p,
        0,
        "UPDATE products SET name = 'older' WHERE id = 1; DELETE FROM products WHERE id = 2",
    )
    .await;
    exec(
        p,
        1,
        "UPDATE legacy.legacy_products SET title = 'newer' WHERE id = 1;
                 INSERT INTO legacy.legacy_products (id, title, price) VALUES (4, 'saucer', 4)",
    )
    .await;
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(
        both(p).await,
        ["(1,newer,29)", "(4,saucer,4)", "(30,hat,40)"]
    );
    // Repair finds and fixes a difference made behind pgtwin's back, by the mapping too.
    exec(
        p,
        1,
        "ALTER TABLE legacy.legacy_products DISABLE TRIGGER USER;
                 UPDATE legacy.legacy_products SET title = 'drifted' WHERE id = 4;
                 ALTER TABLE legacy.legacy_products ENABLE TRIGGER USER",
    )
    .await;
    assert_eq!(p.pgtwin(&["check"]).code, 1);
    p.pgtwin(&["repair", "--prefer", "a"]).ok();
    assert_eq!(both(p).await[1], "(4,saucer,4)");
    // A TRUNCATE on legacy travels through the queue to the table named otherwise.
    exec(p, 1, "TRUNCATE legacy.legacy_products").await;
    p.pgtwin(&["run", "--once"]).ok();
    assert!(both(p).await.is_empty());
    p.pgtwin(&["down"]).ok();
    p.assert_clean().await;
}

/// A single row too large to travel fails its write with an error naming the table and the key, and
/// nothing of it is applied or queued; rows under the limit travel.
#[tokio::test]
async fn a_row_too_large_to_travel_is_refused_by_table_and_key() {
    let p = Pair::new().await;
    p.both("CREATE TABLE docs (id int PRIMARY KEY, body text)")
        .await;
    p.config("[[tables]]\nname = \"docs\"\n[options]\nmax_row_mb = 1");
    p.pgtwin(&["up"]).ok();
    exec(&p, 0, "INSERT INTO docs VALUES (1, repeat('x', 1000000))").await;
    let err = p.owner[0]
        .batch_execute("INSERT INTO docs VALUES (2, 'small'), (3, repeat('y', 2000000))")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(
        db.message(),
        "pgtwin: a row of table \"public\".\"docs\" with key {\"id\" : 3} is 1.9 MB as text, more than max_row_mb allows to travel"
    );
    assert!(db.hint().unwrap().contains("max_row_mb"));
    assert_eq!(
        p.assert_same_rows_of("SELECT id FROM docs ORDER BY id")
            .await,
        ["(1)"]
    );
    assert_eq!(p.queued(0).await, 0);
}

/// A column one node had at `up` and the other adds later syncs both ways from then on: the node that
/// changed is not fooled by a change whose column list is still the one `up` saw.
#[tokio::test]
async fn a_column_added_later_on_one_node_joins_the_one_that_had_it() {
    let p = Pair::new().await;
    exec(&p, 0, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    exec(
        &p,
        1,
        "CREATE TABLE t (id int PRIMARY KEY, v text, colour text)",
    )
    .await;
    p.config("[[tables]]\nname = \"t\"");
    p.pgtwin(&["up"]).ok();
    exec(&p, 0, "ALTER TABLE t ADD COLUMN colour text").await;
    exec(&p, 1, "INSERT INTO t VALUES (1, 'x', 'red')").await;
    exec(&p, 0, "INSERT INTO t VALUES (2, 'y', 'blue')").await;
    assert_eq!(
        p.assert_same_rows_of("SELECT id, v, colour FROM t ORDER BY id")
            .await,
        ["(1,x,red)", "(2,y,blue)"]
    );
}

/// With `columns` naming only what to sync, the path by name still upserts by key after a migration
/// (the key is never left out, whatever the list says).
#[tokio::test]
async fn excluded_columns_and_a_migration_still_upsert_by_key() {
    let p = Pair::new().await;
    p.both("CREATE TABLE t (id serial PRIMARY KEY, v text, secret text)")
        .await;
    p.config("[[tables]]\nname = \"t\"\ncolumns = [\"v\"]");
    p.pgtwin(&["up"]).ok();
    exec(&p, 0, "ALTER TABLE t ADD COLUMN note text").await;
    exec(&p, 1, "INSERT INTO t (v, secret) VALUES ('x', 'b only')").await;
    exec(&p, 1, "UPDATE t SET v = 'y'").await;
    assert_eq!(
        p.assert_same_rows_of("SELECT id, v FROM t ORDER BY id")
            .await
            .len(),
        1
    );
    assert_eq!(p.rows_of(0, "SELECT secret FROM t").await, ["()"]);
}

/// Every way two tables differ is reported in one run, each with what it means, while the shared
/// columns keep syncing.
#[tokio::test]
async fn every_drift_of_a_table_is_listed_in_one_run() {
    let p = Pair::new().await;
    exec(&p, 0, "CREATE TYPE mood AS ENUM ('sad', 'ok');
                 CREATE TABLE t (id int PRIMARY KEY, n int, s text NOT NULL, d text DEFAULT 'x', m mood,
                                 g int GENERATED ALWAYS AS (n * 2) STORED, only_a int)").await;
    exec(&p, 1, "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
                 CREATE TABLE t (id int PRIMARY KEY, n bigint, s text, d text, m mood, g int, only_b int)").await;
    p.config("[[tables]]\nname = \"t\"");
    p.pgtwin(&["up"]).ok();
    let check = p.pgtwin(&["check"]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    for expected in [
        "column \"n\" is integer on node a but bigint on node b",
        "column \"s\" is NOT NULL on node a only",
        "column \"d\" has default 'x'::text on node a but NULL on node b",
        "column \"m\": enum public.mood has different labels",
        "column \"g\" is generated on node a only",
        "column \"only_a\" (integer) exists on node a only",
        "column \"only_b\" (integer) exists on node b only",
    ] {
        assert!(
            check.stdout.contains(expected),
            "{expected}:\n{}",
            check.stdout
        );
    }
    exec(
        &p,
        1,
        "INSERT INTO t (id, n, s, m, g) VALUES (1, 5, 'b', 'ok', 99)",
    )
    .await;
    assert_eq!(
        p.assert_same_rows_of("SELECT id, n, s, m FROM t").await,
        ["(1,5,b,ok)"]
    );
    // Generated columns never travel: each node keeps its own.
    assert_eq!(p.rows_of(0, "SELECT g FROM t").await, ["(10)"]);
    assert_eq!(p.rows_of(1, "SELECT g FROM t").await, ["(99)"]);
}

/// A column whose types differ between the nodes at `up` (numeric(10,2) on a, numeric on b) is not
/// compared with an update's old version: a rounds what b keeps, so the two never read back the same,
/// and every update from a would otherwise be refused. a's update goes through, and carries a's
/// rounding to b.
#[tokio::test]
async fn a_column_of_another_type_on_each_node_never_fails_an_update() {
    let p = Pair::new().await;
    exec(
        &p,
        0,
        "CREATE TABLE prices (id int PRIMARY KEY, name text, price numeric(10,2))",
    )
    .await;
    exec(
        &p,
        1,
        "CREATE TABLE prices (price numeric, id int PRIMARY KEY, name text)",
    )
    .await;
    p.config("[[tables]]\nname = \"prices\"");
    p.pgtwin(&["up"]).ok();
    exec(
        &p,
        1,
        "INSERT INTO prices (id, name, price) VALUES (1, 'tea', 1.234)",
    )
    .await;
    assert_eq!(p.rows_of(0, "SELECT price FROM prices").await, ["(1.23)"]);
    exec(&p, 0, "UPDATE prices SET name = 'green tea' WHERE id = 1").await;
    p.assert_same_rows_of("SELECT id, name, price FROM prices")
        .await;
}

/// Rows whose old and new versions together pass `max_row_mb` travel without the old version,
/// rather than be refused as too large where the new version alone is not.
#[tokio::test]
async fn an_update_of_a_row_over_half_the_row_limit_travels() {
    let p = Pair::new().await;
    p.both("CREATE TABLE docs (id int PRIMARY KEY, flag boolean, body text)")
        .await;
    p.config("[[tables]]\nname = \"docs\"\n[options]\nmax_row_mb = 1");
    p.pgtwin(&["up"]).ok();
    exec(
        &p,
        0,
        "INSERT INTO docs VALUES (1, false, repeat('x', 700000))",
    )
    .await;
    exec(&p, 0, "UPDATE docs SET flag = true").await;
    assert_eq!(
        p.assert_same_rows_of("SELECT flag, length(body) FROM docs")
            .await,
        ["(t,700000)"]
    );
}
