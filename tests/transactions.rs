//! Application transactions behave on a synced table as they would without pgtwin: a transaction's
//! changes travel when it commits, whole, with the peer's deferrable constraints checked at its end; a
//! transaction PostgreSQL cancels at COMMIT leaves nothing on the peer; lock waits across the two
//! servers end at the lock timeout. The two nodes' tables are built differently in each test.

mod common;

use std::time::{Duration, Instant};

use common::Pair;
use tokio_postgres::Client;

/// Runs `statements` as one transaction on `c` until it commits, at most 20 tries; returns the
/// SQLSTATEs of the failed tries. Every failure must be one an application retries.
async fn retried(c: &Client, statements: &str, pause: Duration) -> Vec<String> {
    let mut failures = Vec::new();
    for _ in 0..20 {
        let r = c
            .batch_execute(&format!("BEGIN; {statements}; COMMIT"))
            .await;
        match r {
            Ok(()) => return failures,
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                assert!(
                    ["55P03", "40P01", "40001"].contains(&code.as_str()),
                    "not a retryable error: {e:?}"
                );
                failures.push(code);
                tokio::time::sleep(pause).await;
            }
        }
    }
    panic!("the transaction never committed: {failures:?}");
}

/// Ends a transaction that holds the first of `rows` (each gets `add`): the second row's update and
/// COMMIT; should that fail, the whole transaction again until it commits. Returns the failed tries.
async fn finish_or_retry(c: &Client, add: i32, rows: [i32; 2], pause: Duration) -> usize {
    let update = |id: i32| format!("UPDATE accounts SET balance = balance + {add} WHERE id = {id}");
    let Err(e) = c
        .batch_execute(&format!("{}; COMMIT", update(rows[1])))
        .await
    else {
        return 0;
    };
    // The cycle itself ends in an error the application retries, as any lock conflict.
    let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
    assert!(
        ["55P03", "40P01", "40001"].contains(&code.as_str()),
        "the cycle ended in an error that is not retryable: {e:?}"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    let whole = format!("{}; {}", update(rows[0]), update(rows[1]));
    retried(c, &whole, pause).await.len() + 1
}

/// Two transactions, one per node, update rows 1 and 2 in opposite order. Each takes its own node's
/// rows without waiting; at commit each sends its changes to the peer, where the other holds them: a
/// cycle no server sees. The peer's lock timeout ends it for at least one side, whose COMMIT fails
/// with a retryable error; retried, both commit, and the nodes agree. (When changes travelled per
/// statement, the peer's sessions sat idle in transaction holding the rows, and the cycle lasted
/// until peer_idle_timeout_s.)
#[tokio::test]
async fn a_lock_cycle_across_the_servers_ends_within_the_lock_timeout() {
    let p = Pair::new().await;
    p.owner[0]
        .batch_execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int, note text)")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute(
            "CREATE TABLE accounts (note text, balance int, id int PRIMARY KEY);
             ALTER TABLE accounts ADD COLUMN opened date DEFAULT '2026-01-01'",
        )
        .await
        .unwrap();
    p.both("INSERT INTO accounts (id, balance) VALUES (1, 100), (2, 100)")
        .await;
    p.config("[[tables]]\nname = \"accounts\"\n[options]\nlock_timeout_ms = 1000\npeer_idle_timeout_s = 60");
    p.pgtwin(&["up"]).ok();
    let (a, b) = (p.owner_connection(0).await, p.owner_connection(1).await);
    // Each holds its first row on its own node before either goes on.
    a.batch_execute("BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        .await
        .unwrap();
    b.batch_execute("BEGIN; UPDATE accounts SET balance = balance + 10 WHERE id = 2")
        .await
        .unwrap();
    let started = Instant::now();
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(
            finish_or_retry(&a, 1, [1, 2], Duration::from_millis(0)),
            finish_or_retry(&b, 10, [2, 1], Duration::from_millis(300))
        )
    })
    .await
    .expect("the crossing transactions hang");
    assert!(ra + rb >= 1, "one side must have met the other's locks");
    // The lock timeout (1 s) per failed try, and the retries: far below the idle timeout (60 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let synced = |rows: Vec<String>| -> Vec<(i32, i32)> {
        rows.iter()
            .map(|r| {
                let v: Vec<&str> = r
                    .trim_matches(|c| c == '(' || c == ')')
                    .split(',')
                    .collect();
                // id and balance, wherever each node keeps them.
                if v.len() == 3 {
                    (v[0].parse().unwrap(), v[1].parse().unwrap())
                } else {
                    (v[2].parse().unwrap(), v[1].parse().unwrap())
                }
            })
            .collect()
    };
    let (on_a, on_b) = (
        synced(p.rows(0, "accounts").await),
        synced(p.rows(1, "accounts").await),
    );
    let mut on_b = on_b;
    on_b.sort();
    assert_eq!(on_a, vec![(1, 111), (2, 111)]);
    assert_eq!(on_b, on_a);
}

/// Node a's orders, whose key to customers is checked at the end of the transaction.
const DEFERRED_ON_A: &str = "CREATE TABLE customers (id int PRIMARY KEY, name text);
    CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers DEFERRABLE INITIALLY DEFERRED, total int)";

/// A foreign key checked at the end of the transaction (both forms: DEFERRABLE INITIALLY DEFERRED,
/// and SET CONSTRAINTS ALL DEFERRED on one DEFERRABLE INITIALLY IMMEDIATE) accepts an order inserted
/// before its customer, on the origin and on the peer alike. On the peer the key is declared the other
/// way round from the origin's, and the tables' columns lie in another order.
#[tokio::test]
async fn deferred_foreign_keys_hold_at_the_end_of_the_transaction_in_sync_mode() {
    let p = Pair::new().await;
    p.owner[0].batch_execute(DEFERRED_ON_A).await.unwrap();
    p.owner[1]
        .batch_execute(
            "CREATE TABLE customers (name text, id int PRIMARY KEY);
             CREATE TABLE orders (total int, customer_id int REFERENCES customers DEFERRABLE INITIALLY IMMEDIATE, id int PRIMARY KEY)",
        )
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"customers\"\n[[tables]]\nname = \"orders\"");
    p.pgtwin(&["up"]).ok();
    // On a, the key is deferred by its declaration.
    p.owner[0]
        .batch_execute(
            "BEGIN; INSERT INTO orders VALUES (10, 1, 99); INSERT INTO customers VALUES (1, 'kim'); COMMIT",
        )
        .await
        .unwrap();
    // On b, by SET CONSTRAINTS (its declaration is immediate).
    p.owner[1]
        .batch_execute(
            "BEGIN; SET CONSTRAINTS ALL DEFERRED; INSERT INTO orders VALUES (20, 2, 5); INSERT INTO customers VALUES ('lee', 2); COMMIT",
        )
        .await
        .unwrap();
    assert_eq!(p.rows(0, "orders").await, vec!["(10,1,99)", "(5,2,20)"]);
    assert_eq!(p.rows(1, "orders").await, vec!["(20,2,5)", "(99,1,10)"]);
    assert_eq!(p.rows(1, "customers").await, vec!["(kim,1)", "(lee,2)"]);
    // A transaction that breaks the deferred key fails at COMMIT on its node, and leaves nothing of
    // itself on the peer.
    let broken = p.owner[0]
        .batch_execute("BEGIN; INSERT INTO orders VALUES (11, 7, 1); INSERT INTO customers VALUES (3, 'max'); COMMIT")
        .await
        .unwrap_err();
    assert_eq!(broken.code().unwrap().code(), "23503", "{broken:?}");
    let _ = p.owner[0].batch_execute("ROLLBACK").await;
    assert_eq!(p.rows(1, "customers").await, vec!["(kim,1)", "(lee,2)"]);
    assert_eq!(p.rows(0, "customers").await, vec!["(1,kim)", "(2,lee)"]);
    // An application that makes its constraints immediate also has pgtwin send at each statement's
    // end (its trigger is deferrable too): every statement still arrives.
    p.owner[1]
        .batch_execute("BEGIN; SET CONSTRAINTS ALL IMMEDIATE; INSERT INTO customers VALUES ('max', 3); INSERT INTO customers VALUES ('ann', 4); COMMIT")
        .await
        .unwrap();
    assert_eq!(
        p.rows(0, "customers").await,
        vec!["(1,kim)", "(2,lee)", "(3,max)", "(4,ann)"]
    );
}

/// Two-phase commit is refused on a synced table in sync mode, with postgres_fdw's own words, as the
/// README says; nothing is left on either node.
#[tokio::test]
async fn prepare_transaction_is_refused_clearly_in_sync_mode() {
    let p = Pair::new().await;
    p.both("CREATE TABLE items (id int PRIMARY KEY)").await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    let refused = p.owner[0]
        .batch_execute("BEGIN; INSERT INTO items VALUES (1); PREPARE TRANSACTION 'pgtwin-2pc'")
        .await
        .unwrap_err();
    assert!(
        format!("{refused:?}").contains(
            "cannot PREPARE a transaction that has operated on postgres_fdw foreign tables"
        ),
        "{refused:?}"
    );
    let _ = p.owner[0].batch_execute("ROLLBACK").await;
    assert!(p.rows(0, "items").await.is_empty());
    assert!(p.rows(1, "items").await.is_empty());
}

/// Where a transaction is queued (async mode here), two-phase commit depends on the queue: the
/// transaction that finds it empty notifies `pgtwin run`, and PostgreSQL refuses to prepare it; one
/// queued behind another entry prepares, and is shipped once COMMIT PREPARED has committed it. As the
/// README says: not supported.
#[tokio::test]
async fn prepare_transaction_where_changes_queue_depends_on_the_queue() {
    let p = Pair::new().await;
    p.owner[0]
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("CREATE TABLE items (note text DEFAULT 'b alone', id int PRIMARY KEY)")
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"items\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    let refused = p.owner[0]
        .batch_execute(
            "BEGIN; INSERT INTO items VALUES (1); PREPARE TRANSACTION 'pgtwin-2pc-first'",
        )
        .await
        .unwrap_err();
    assert!(
        format!("{refused:?}")
            .contains("cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY"),
        "{refused:?}"
    );
    let _ = p.owner[0].batch_execute("ROLLBACK").await;
    assert_eq!(p.queued(0).await, 0);
    p.owner[0]
        .batch_execute("INSERT INTO items VALUES (2)")
        .await
        .unwrap();
    p.owner[0]
        .batch_execute(
            "BEGIN; INSERT INTO items VALUES (3); PREPARE TRANSACTION 'pgtwin-2pc-behind'",
        )
        .await
        .unwrap();
    p.owner[0]
        .batch_execute("COMMIT PREPARED 'pgtwin-2pc-behind'")
        .await
        .unwrap();
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(
        p.assert_same_rows_of("SELECT id FROM items ORDER BY id")
            .await,
        ["(2)", "(3)"]
    );
}

/// In async mode a writer's transaction of 150 changes, the order before its customer and another
/// transaction's changes interleaved, replays whole: the peer's key holds, nothing is set aside, and
/// the nodes agree. A replay that cut it at its batch size (100 entries) would commit orders without
/// their customer on the peer. The peer's key is deferrable but checked at once unless a transaction
/// defers it: the replay defers it, as the origin did.
#[tokio::test]
async fn a_transaction_queued_in_async_mode_replays_whole() {
    let p = Pair::new().await;
    p.owner[0].batch_execute(DEFERRED_ON_A).await.unwrap();
    p.owner[1]
        .batch_execute(
            "CREATE TABLE customers (id int PRIMARY KEY, dropped int, name text);
             ALTER TABLE customers DROP COLUMN dropped;
             CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers DEFERRABLE INITIALLY IMMEDIATE, total int)",
        )
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"customers\"\n[[tables]]\nname = \"orders\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    let (big, other) = (p.owner_connection(0).await, p.owner_connection(0).await);
    big.batch_execute("BEGIN").await.unwrap();
    for i in 1..=150 {
        big.batch_execute(&format!("INSERT INTO orders VALUES ({i}, 1, {i})"))
            .await
            .unwrap();
        if i % 30 == 0 {
            // Another writer's transaction commits in between: its entries interleave.
            other
                .batch_execute(&format!(
                    "INSERT INTO customers VALUES ({}, 'walk-in')",
                    100 + i
                ))
                .await
                .unwrap();
        }
    }
    big.batch_execute("INSERT INTO customers VALUES (1, 'kim'); COMMIT")
        .await
        .unwrap();
    assert_eq!(p.queued(0).await, 156);
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(p.queued(0).await, 0);
    p.assert_same("orders").await;
    assert_eq!(p.rows(1, "customers").await.len(), 6);
    let set_aside = || async {
        p.admin[0]
            .query("SELECT seq FROM pgtwin.set_aside ORDER BY seq", &[])
            .await
            .unwrap()
            .len()
    };
    assert_eq!(set_aside().await, 0);
    // A transaction b cannot take (b alone requires a total) is set aside whole, with its reason; the
    // transactions around it still arrive.
    p.owner[1]
        .batch_execute("ALTER TABLE orders ADD CHECK (total IS NOT NULL)")
        .await
        .unwrap();
    for transaction in [
        "INSERT INTO customers VALUES (2, 'lee')",
        "BEGIN; INSERT INTO customers VALUES (3, 'max'); INSERT INTO orders VALUES (200, 3, NULL); COMMIT",
        "INSERT INTO orders VALUES (201, 2, 1)",
    ] {
        p.owner[0].batch_execute(transaction).await.unwrap();
    }
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(p.queued(0).await, 0);
    assert_eq!(set_aside().await, 2);
    assert!(p
        .rows(1, "customers")
        .await
        .contains(&"(2,lee)".to_string()));
    assert!(!p
        .rows(1, "customers")
        .await
        .contains(&"(3,max)".to_string()));
    assert!(p.rows(1, "orders").await.contains(&"(201,2,1)".to_string()));
    let status = p.pgtwin(&["status"]);
    assert!(status.stdout.contains("set aside"), "{}", status.stdout);
}

/// Write skew under SERIALIZABLE: two transactions on node a each read both rows and change a
/// different one; PostgreSQL cancels one of them (often only at COMMIT, after postgres_fdw would have
/// committed on the peer). The cancelled one is on neither node; the other reaches b.
#[tokio::test]
async fn a_serializable_transaction_cancelled_at_commit_leaves_nothing_on_the_peer() {
    let p = Pair::new().await;
    p.owner[0]
        .batch_execute("CREATE TABLE doctors (id int PRIMARY KEY, on_call boolean NOT NULL)")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("CREATE TABLE doctors (on_call boolean NOT NULL, id int PRIMARY KEY)")
        .await
        .unwrap();
    p.both("INSERT INTO doctors (id, on_call) VALUES (1, true), (2, true)")
        .await;
    p.config("[[tables]]\nname = \"doctors\"");
    p.pgtwin(&["up"]).ok();
    let (t1, t2) = (p.owner_connection(0).await, p.owner_connection(0).await);
    for t in [&t1, &t2] {
        t.batch_execute(
            "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM doctors WHERE on_call",
        )
        .await
        .unwrap();
    }
    let first = t1
        .batch_execute("UPDATE doctors SET on_call = false WHERE id = 1")
        .await;
    let second = t2
        .batch_execute("UPDATE doctors SET on_call = false WHERE id = 2")
        .await;
    let c1 = match first {
        Ok(()) => t1.batch_execute("COMMIT").await,
        Err(e) => Err(e),
    };
    let c2 = match second {
        Ok(()) => t2.batch_execute("COMMIT").await,
        Err(e) => Err(e),
    };
    assert!(c1.is_ok(), "{c1:?}");
    let cancelled = c2.unwrap_err();
    assert_eq!(cancelled.code().unwrap().code(), "40001", "{cancelled:?}");
    let _ = t2.batch_execute("ROLLBACK").await;
    // What committed travels through the queue, replayed by `pgtwin run`.
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(p.rows(0, "doctors").await, vec!["(1,f)", "(2,t)"]);
    assert_eq!(p.rows(1, "doctors").await, vec!["(f,1)", "(t,2)"]);
    // A SERIALIZABLE TRUNCATE is queued too, as the deletion of each key, never as a TRUNCATE.
    t1.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; TRUNCATE doctors; COMMIT")
        .await
        .unwrap();
    assert_eq!(p.queued(0).await, 2);
    p.pgtwin(&["run", "--once"]).ok();
    assert!(p.rows(1, "doctors").await.is_empty());
}

/// `UPDATE slots SET id = id + 1`, valid on the origin (its rows updated from the highest id down),
/// beside a second unique column: the peer takes it too, shipped at commit (sync mode) or replayed
/// from the queue (async). Sent as upserts in the origin's row order, the new row 6 would meet the
/// peer's row 5, still holding code c5.
#[tokio::test]
async fn an_update_that_shifts_keys_beside_a_unique_column_applies_on_the_peer() {
    for mode in ["sync", "async"] {
        let p = Pair::new().await;
        p.owner[0]
            .batch_execute("CREATE TABLE slots (id int PRIMARY KEY, code text UNIQUE)")
            .await
            .unwrap();
        p.owner[1]
            .batch_execute("CREATE TABLE slots (code text NOT NULL, id int PRIMARY KEY); CREATE UNIQUE INDEX ON slots (code)")
            .await
            .unwrap();
        p.owner[0]
            .batch_execute("INSERT INTO slots SELECT g, 'c' || g FROM generate_series(5, 1, -1) g")
            .await
            .unwrap();
        p.owner[1]
            .batch_execute("INSERT INTO slots SELECT 'c' || g, g FROM generate_series(1, 5) g")
            .await
            .unwrap();
        p.config(&format!(
            "[[tables]]\nname = \"slots\"\n[options]\nmode = \"{mode}\""
        ));
        p.pgtwin(&["up"]).ok();
        p.owner[0]
            .batch_execute("UPDATE slots SET id = id + 1")
            .await
            .unwrap();
        p.pgtwin(&["run", "--once"]).ok();
        assert_eq!(
            p.rows(1, "slots").await,
            vec!["(c1,2)", "(c2,3)", "(c3,4)", "(c4,5)", "(c5,6)"],
            "{mode}"
        );
        // And in a transaction with other changes around it, both ways.
        p.owner[1]
            .batch_execute("BEGIN; INSERT INTO slots VALUES ('c0', 1); UPDATE slots SET code = code || 'x' WHERE id > 3; COMMIT")
            .await
            .unwrap();
        p.pgtwin(&["run", "--once"]).ok();
        assert_eq!(
            p.rows(0, "slots").await,
            vec!["(1,c0)", "(2,c1)", "(3,c2)", "(4,c3x)", "(5,c4x)", "(6,c5x)"],
            "{mode}"
        );
        let status = p.pgtwin(&["status"]).stdout;
        assert!(!status.contains("set aside"), "{mode}: {status}");
    }
}

/// The peer's own triggers fire on the changes applied there, under the search_path an application's
/// session has: b's audit trigger, naming its table without a schema, records a's writes too. A
/// trigger that derives synced data (stock from orders) returns early where `pgtwin.origin` is set,
/// as the README says, since the derived row arrives from the origin: the stock goes down once. An
/// error of the peer's trigger reaches the writer as what it is, naming the node and the table. An
/// UPDATE arrives as an UPDATE: the peer's insert triggers do not fire for it.
#[tokio::test]
async fn the_peers_own_triggers_fire_as_for_an_application() {
    let p = Pair::new().await;
    let derive = "CREATE FUNCTION take_stock() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('pgtwin.origin', true) <> '' THEN
                RETURN NULL;
            END IF;
            UPDATE products SET stock = stock - NEW.qty WHERE id = NEW.product_id;
            RETURN NULL;
        END $$;
        CREATE TRIGGER take_stock AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION take_stock();";
    p.owner[0]
        .batch_execute(&format!(
            "CREATE TABLE products (id int PRIMARY KEY, stock int NOT NULL);
             CREATE TABLE orders (id int PRIMARY KEY, product_id int REFERENCES products, qty int);
             {derive}"
        ))
        .await
        .unwrap();
    p.owner[1]
        .batch_execute(&format!(
            "CREATE TABLE products (stock int NOT NULL, id int PRIMARY KEY);
             CREATE TABLE orders (qty int, id int PRIMARY KEY, product_id int REFERENCES products);
             {derive}
             CREATE TABLE audit_log (n serial, what text);
             CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.qty > 100 THEN
                     RAISE EXCEPTION 'order % is too large for this warehouse', NEW.id;
                 END IF;
                 INSERT INTO audit_log (what) VALUES ('order ' || NEW.id);
                 RETURN NULL;
             END $$;
             CREATE TRIGGER audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION audit();
             CREATE TABLE op_log (n serial, what text);
             CREATE FUNCTION log_op() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO op_log (what) VALUES (TG_OP || ' ' || NEW.id);
                 RETURN NEW;
             END $$;
             CREATE TRIGGER log_op BEFORE INSERT OR UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION log_op();"
        ))
        .await
        .unwrap();
    p.both("INSERT INTO products (id, stock) VALUES (1, 10)")
        .await;
    p.config("[[tables]]\nname = \"products\"\n[[tables]]\nname = \"orders\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("INSERT INTO orders VALUES (1, 1, 1)")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("INSERT INTO orders (id, product_id, qty) VALUES (2, 1, 2)")
        .await
        .unwrap();
    assert_eq!(p.rows(0, "products").await, vec!["(1,7)"]);
    assert_eq!(p.rows(1, "products").await, vec!["(7,1)"]);
    assert_eq!(
        p.rows(1, "audit_log").await,
        vec!["(1,\"order 1\")", "(2,\"order 2\")"]
    );
    let refused = p.owner[0]
        .batch_execute("INSERT INTO orders VALUES (3, 1, 500)")
        .await
        .unwrap_err();
    let message = refused.as_db_error().unwrap().message().to_string();
    assert_eq!(refused.code().unwrap().code(), "P0001");
    for needle in [
        "node b",
        "orders",
        "order 3 is too large for this warehouse",
    ] {
        assert!(message.contains(needle), "{message}");
    }
    assert_eq!(p.rows(0, "orders").await.len(), 2);
    assert_eq!(p.rows(0, "products").await, vec!["(1,7)"]);
    p.owner[0]
        .batch_execute("UPDATE orders SET qty = qty + 1")
        .await
        .unwrap();
    assert_eq!(p.rows(1, "orders").await, vec!["(2,1,1)", "(3,2,1)"]);
    let ops: Vec<String> = p.admin[1]
        .query("SELECT what FROM op_log ORDER BY what", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ops, ["INSERT 1", "INSERT 2", "UPDATE 1", "UPDATE 2"]);
}

const LINKED_A: &str = "CREATE TABLE customers (id int PRIMARY KEY, name text);
    CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers, total int)";
const LINKED_B: &str = "CREATE TABLE customers (name text, id int PRIMARY KEY);
    CREATE TABLE orders (total int, id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers)";
const LINKED_ROWS: &str = "INSERT INTO customers (id, name) VALUES (1, 'kim'), (2, 'lee');
    INSERT INTO orders (id, customer_id, total) VALUES (10, 1, 5), (11, 2, 6)";

/// In sync mode, a TRUNCATE of two tables linked by a foreign key (named together, or reached by
/// CASCADE) travels as one TRUNCATE of both: the peer refuses to truncate a referenced table alone.
/// It keeps its place among the transaction's other changes.
#[tokio::test]
async fn a_truncate_of_tables_linked_by_a_foreign_key_travels_as_one() {
    let p = Pair::new().await;
    p.owner[0].batch_execute(LINKED_A).await.unwrap();
    p.owner[1].batch_execute(LINKED_B).await.unwrap();
    p.config("[[tables]]\nname = \"customers\"\n[[tables]]\nname = \"orders\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0].batch_execute(LINKED_ROWS).await.unwrap();
    assert_eq!(p.rows(1, "orders").await.len(), 2);
    p.owner[0]
        .batch_execute("TRUNCATE orders, customers")
        .await
        .unwrap();
    assert!(p.rows(1, "customers").await.is_empty());
    assert!(p.rows(1, "orders").await.is_empty());
    p.owner[1].batch_execute(LINKED_ROWS).await.unwrap();
    p.owner[1]
        .batch_execute("BEGIN; UPDATE customers SET name = 'gone' WHERE id = 1; TRUNCATE customers CASCADE; INSERT INTO customers (id, name) VALUES (9, 'new'); COMMIT")
        .await
        .unwrap();
    assert_eq!(p.rows(0, "customers").await, vec!["(9,new)"]);
    assert!(p.rows(0, "orders").await.is_empty());
}

/// Queued (async mode), a TRUNCATE of linked tables is recorded as the deletion of every key of each,
/// in the order the statement names them: children named first, the peer's foreign key accepts it.
#[tokio::test]
async fn a_queued_truncate_of_linked_tables_replays_in_the_order_named() {
    let p = Pair::new().await;
    p.owner[0].batch_execute(LINKED_A).await.unwrap();
    p.owner[1].batch_execute(LINKED_B).await.unwrap();
    p.config("[[tables]]\nname = \"customers\"\n[[tables]]\nname = \"orders\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0].batch_execute(LINKED_ROWS).await.unwrap();
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(p.rows(1, "orders").await.len(), 2);
    p.owner[0]
        .batch_execute("TRUNCATE orders, customers")
        .await
        .unwrap();
    p.pgtwin(&["run", "--once"]).ok();
    assert!(p.rows(1, "customers").await.is_empty());
    assert!(p.rows(1, "orders").await.is_empty());
    assert_eq!(p.queued(0).await, 0);
}

/// Queued, a TRUNCATE that reaches the parent first (by CASCADE, or naming it first) deletes its
/// tables' keys parent first; the peer's foreign key, neither deferrable nor ON DELETE CASCADE, refuses
/// that order, and the replay applies the transaction again with its tables' deletions the other way
/// round: both tables empty on the peer, nothing set aside.
#[tokio::test]
async fn a_queued_truncate_that_reaches_the_parent_first_replays_children_first() {
    let p = Pair::new().await;
    p.owner[0].batch_execute(LINKED_A).await.unwrap();
    p.owner[1].batch_execute(LINKED_B).await.unwrap();
    p.config("[[tables]]\nname = \"customers\"\n[[tables]]\nname = \"orders\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    for truncate in ["TRUNCATE customers CASCADE", "TRUNCATE customers, orders"] {
        p.owner[0].batch_execute(LINKED_ROWS).await.unwrap();
        p.pgtwin(&["run", "--once"]).ok();
        assert_eq!(p.rows(1, "orders").await.len(), 2, "{truncate}");
        p.owner[0].batch_execute(truncate).await.unwrap();
        p.pgtwin(&["run", "--once"]).ok();
        assert!(p.rows(1, "customers").await.is_empty(), "{truncate}");
        assert!(p.rows(1, "orders").await.is_empty(), "{truncate}");
        assert!(p.set_aside().1.is_empty(), "{truncate}");
        assert_eq!(p.queued(0).await, 0, "{truncate}");
    }
}

/// A TRUNCATE opens the peer's transaction at once (it must know whether the peer is there while the
/// rows still are): a transaction that then idles longer than peer_idle_timeout_s loses that session
/// and fails at COMMIT, changing nothing, as the README says; run again, it goes through.
#[tokio::test]
async fn a_truncate_then_a_long_pause_fails_at_commit_and_goes_through_again() {
    let p = Pair::new().await;
    p.owner[0].batch_execute(LINKED_A).await.unwrap();
    p.owner[1].batch_execute(LINKED_B).await.unwrap();
    p.config("[[tables]]\nname = \"customers\"\n[[tables]]\nname = \"orders\"\n[options]\npeer_idle_timeout_s = 1");
    p.pgtwin(&["up"]).ok();
    p.owner[0].batch_execute(LINKED_ROWS).await.unwrap();
    let a = p.owner_connection(0).await;
    a.batch_execute("BEGIN; TRUNCATE orders").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(a.batch_execute("COMMIT").await.is_err());
    let _ = a.batch_execute("ROLLBACK").await;
    assert_eq!(p.rows(0, "orders").await.len(), 2);
    assert_eq!(p.rows(1, "orders").await.len(), 2);
    a.batch_execute("BEGIN; TRUNCATE orders; COMMIT")
        .await
        .unwrap();
    assert!(p.rows(0, "orders").await.is_empty());
    assert!(p.rows(1, "orders").await.is_empty());
}

const PEOPLE_ON_A: &str = "CREATE TABLE people (id int PRIMARY KEY, name text, age int)";

/// b's trigger that upper-cases names on every write, the rows applied from a included (it does not
/// return early where `pgtwin.origin` is set).
const NORMALIZE_NAME_ON_B: &str = "CREATE FUNCTION normalize_name() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.name := upper(NEW.name);
        RETURN NEW;
    END $$;
    CREATE TRIGGER normalize_name BEFORE INSERT OR UPDATE ON people FOR EACH ROW EXECUTE FUNCTION normalize_name();";

async fn name_on_b(p: &Pair) -> String {
    p.admin[1]
        .query_one("SELECT name FROM people WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0)
}

/// b's DBA adds a trigger that normalizes names on every write, forgetting the rows applied from a (it
/// does not return early where `pgtwin.origin` is set): a's `kim` is `KIM` on b. The nodes now differ
/// in that row, and a's next update of it would overwrite b's version: it fails instead (PT412),
/// naming the key, though b's column compares case-insensitively (the versions compare byte for byte).
/// A row that does not differ still updates. Once the trigger is fixed and `repair` has made the rows
/// equal, a's update goes through.
#[tokio::test]
async fn an_update_of_a_row_that_differs_between_the_nodes_fails_until_repair() {
    let p = Pair::new().await;
    p.owner[0].batch_execute(PEOPLE_ON_A).await.unwrap();
    p.owner[1]
        .batch_execute(&format!(
            "CREATE COLLATION nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE TABLE people (age int, name text COLLATE nocase, id int PRIMARY KEY);
             {NORMALIZE_NAME_ON_B}"
        ))
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"people\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("INSERT INTO people VALUES (1, 'kim', 30), (2, 'LEE', 40)")
        .await
        .unwrap();
    assert_eq!(name_on_b(&p).await, "KIM");

    let e = p.owner[0]
        .batch_execute("UPDATE people SET age = 31 WHERE id = 1")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "PT412", "{db:?}");
    assert!(
        db.message()
            .contains("node a updated key (1) of table \"public\".\"people\" from a version node b does not hold"),
        "{db:?}"
    );
    p.owner[0]
        .batch_execute("UPDATE people SET age = 41 WHERE id = 2")
        .await
        .unwrap();
    let check = p.pgtwin(&["check"]);
    assert_eq!(check.code, 1, "{}", check.stdout);

    p.owner[1]
        .batch_execute(
            "CREATE OR REPLACE FUNCTION normalize_name() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF current_setting('pgtwin.origin', true) <> '' THEN
                     RETURN NEW;
                 END IF;
                 NEW.name := upper(NEW.name);
                 RETURN NEW;
             END $$",
        )
        .await
        .unwrap();
    p.pgtwin(&["repair", "--prefer", "a"]).ok();
    assert_eq!(name_on_b(&p).await, "kim");
    p.owner[0]
        .batch_execute("UPDATE people SET age = 31 WHERE id = 1")
        .await
        .unwrap();
    let ages = "SELECT id, name, age FROM people ORDER BY id";
    let (a, b) = (
        p.admin[0].query(ages, &[]).await.unwrap(),
        p.admin[1].query(ages, &[]).await.unwrap(),
    );
    let text = |rows: &[tokio_postgres::Row]| {
        rows.iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.get::<_, i32>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i32>(2)
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(text(&a), ["1 kim 31", "2 LEE 41"]);
    assert_eq!(text(&b), text(&a));
}

/// The same rows apart in async mode: `run` sets a's update of the row that differs aside, with the
/// reason, and with it the rest of its transaction (the other row that transaction updated is not sent
/// either); an update of the other row in a transaction of its own arrives.
#[tokio::test]
async fn in_async_mode_an_update_of_a_row_that_differs_is_set_aside_with_its_transaction() {
    let p = Pair::new().await;
    p.owner[0].batch_execute(PEOPLE_ON_A).await.unwrap();
    p.owner[1]
        .batch_execute(&format!(
            "CREATE TABLE people (age int, name text, id int PRIMARY KEY); {NORMALIZE_NAME_ON_B}"
        ))
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"people\"\n[options]\nmode = \"async\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("INSERT INTO people VALUES (1, 'kim', 30), (2, 'LEE', 40), (3, 'PAT', 50)")
        .await
        .unwrap();
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(name_on_b(&p).await, "KIM");
    p.owner[0]
        .batch_execute(
            "BEGIN; UPDATE people SET age = 31 WHERE id = 1; UPDATE people SET age = 41 WHERE id = 2; COMMIT;
             UPDATE people SET age = 51 WHERE id = 3",
        )
        .await
        .unwrap();
    p.pgtwin(&["run", "--once"]).ok();
    let (listed, reasons) = p.set_aside();
    // The transaction's two entries, with the reason.
    assert_eq!(reasons.len(), 2, "{listed}");
    assert!(
        reasons.iter().all(|r| r.contains(
            "node a updated key (1) of table \"public\".\"people\" from a version node b does not hold"
        )),
        "{listed}"
    );
    assert_eq!(
        p.rows_of(1, "SELECT id, name, age FROM people ORDER BY id")
            .await,
        ["(1,KIM,30)", "(2,LEE,40)", "(3,PAT,51)"]
    );
}

/// b's own transaction has committed its part on a (postgres_fdw commits the peer first) and not yet on
/// b. a's next update of that row carries a's version, which b holds only once that transaction
/// commits: the apply waits for it instead of calling the row stale, then fails retryably (40001,
/// the snapshot predates it), and the retried update goes through. (A lock cycle under load hit this
/// window: its test failed with PT412.)
#[tokio::test]
async fn an_update_racing_the_peers_commit_fails_retryably_not_as_stale() {
    let p = Pair::new().await;
    p.owner[0].batch_execute(PEOPLE_ON_A).await.unwrap();
    p.owner[1]
        .batch_execute("CREATE TABLE people (age int, name text, id int PRIMARY KEY)")
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"people\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute("INSERT INTO people VALUES (1, 'kim', 30)")
        .await
        .unwrap();
    // b's transaction, between its two commits: its change on a, not yet on b (neither shipped).
    let unship = "SET LOCAL pgtwin.origin = 'test'; UPDATE people SET age = 31 WHERE id = 1";
    p.owner[0]
        .batch_execute(&format!("BEGIN; {unship}; COMMIT"))
        .await
        .unwrap();
    let b_open = p.owner_connection(1).await;
    b_open
        .batch_execute(&format!("BEGIN; {unship}"))
        .await
        .unwrap();
    let a = p.owner_connection(0).await;
    let update = tokio::spawn(async move {
        let r = a
            .batch_execute("UPDATE people SET name = 'kim k' WHERE id = 1")
            .await;
        (a, r)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !update.is_finished(),
        "a's update did not wait for b's transaction"
    );
    b_open.batch_execute("COMMIT").await.unwrap();
    let (a, r) = tokio::time::timeout(Duration::from_secs(20), update)
        .await
        .expect("a's update hangs")
        .unwrap();
    let e = r.expect_err("b's write came after the apply's snapshot");
    assert_eq!(
        e.code().map(|c| c.code()),
        Some("40001"),
        "a retryable error, not a stale row: {e:?}"
    );
    a.batch_execute("UPDATE people SET name = 'kim k' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        p.assert_same_rows_of("SELECT id, name, age FROM people")
            .await,
        ["(1,\"kim k\",31)"]
    );
}

/// The capture function's plans are cached from the first statement that runs them: a single-row
/// UPDATE first, then one of 100,000 rows, must not reuse a plan made for one row (a join of the
/// two transition tables as a nested loop never ends). Bounded by a statement timeout: a regression
/// fails, it does not hang.
#[tokio::test]
async fn a_large_update_after_a_single_row_one_takes_no_plan_made_for_one_row() {
    let p = Pair::new().await;
    p.both("CREATE TABLE counters (id int PRIMARY KEY, n int)")
        .await;
    p.config("[[tables]]\nname = \"counters\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute(
            "INSERT INTO counters SELECT g, 0 FROM generate_series(1, 100000) g;
             SET statement_timeout = '60s';
             UPDATE counters SET n = 1 WHERE id = 1;
             UPDATE counters SET n = n + 1",
        )
        .await
        .unwrap();
    let sums = "SELECT sum(n)::bigint FROM counters";
    for admin in &p.admin {
        assert_eq!(
            admin.query_one(sums, &[]).await.unwrap().get::<_, i64>(0),
            100_001
        );
    }
}

/// A table of key columns alone (an identity column among them) gives an update that keeps its keys
/// nothing to set on the peer: it still applies there (a one-pass write that set the identity key to
/// itself failed with "can only be updated to DEFAULT").
#[tokio::test]
async fn an_update_of_a_table_of_key_columns_alone_applies() {
    let p = Pair::new().await;
    p.owner[0]
        .batch_execute("CREATE TABLE tags (id bigint GENERATED ALWAYS AS IDENTITY, label text, PRIMARY KEY (id, label))")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute("CREATE TABLE tags (label text, id bigint GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (id, label))")
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"tags\"");
    p.pgtwin(&["up"]).ok();
    p.owner[0]
        .batch_execute(
            "INSERT INTO tags (label) VALUES ('red'), ('blue'); UPDATE tags SET label = label",
        )
        .await
        .unwrap();
    assert_eq!(
        p.assert_same_rows_of("SELECT label FROM tags ORDER BY label")
            .await,
        ["(blue)", "(red)"]
    );
}

/// In sync mode, a peer's trigger that names a table the peer lacks fails the writer's commit with
/// that error (42P01, naming node b and the table), and queues nothing: only a missing inbox means
/// "pgtwin is not installed there".
#[tokio::test]
async fn a_missing_table_inside_the_peers_trigger_fails_the_write_and_queues_nothing() {
    let p = Pair::new().await;
    p.owner[0]
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    p.owner[1]
        .batch_execute(
            "CREATE TABLE items (v text, id int PRIMARY KEY);
             CREATE FUNCTION log_item() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO item_log VALUES (NEW.id);
                 RETURN NULL;
             END $$;
             CREATE TRIGGER log_item AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION log_item();",
        )
        .await
        .unwrap();
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    let e = p.owner[0]
        .batch_execute("INSERT INTO items VALUES (1, 'logged')")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42P01", "{db:?}");
    for needle in ["node b", "items", "item_log"] {
        assert!(db.message().contains(needle), "{db:?}");
    }
    assert_eq!(p.queued(0).await, 0);
    assert!(p.rows(0, "items").await.is_empty());
}
