//! Ids that never collide over a table's whole life, against real servers: the restart paths of a key
//! sequence stay in the node's residue, sequences that would leave it are refused, and `down` leaves
//! every sequence above the largest key on either node.

mod common;

use common::Pair;

async fn insert_default(p: &Pair, i: usize, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let row = p.owner[i]
            .query_one("INSERT INTO items (v) VALUES ('x') RETURNING id", &[])
            .await
            .unwrap_or_else(|e| panic!("node {}: {e:?}", common::NODES[i]));
        ids.push(row.get(0));
    }
    ids
}

#[tokio::test]
async fn restarts_stay_in_each_nodes_residue() {
    let p = Pair::new().await;
    p.both("CREATE TABLE items (id bigserial PRIMARY KEY, v text)")
        .await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    insert_default(&p, 0, 2).await;
    insert_default(&p, 1, 2).await;
    // TRUNCATE … RESTART IDENTITY on b, ALTER SEQUENCE … RESTART on a: both go back to where `up`
    // started them, in their own residue.
    p.owner[1]
        .batch_execute("TRUNCATE items RESTART IDENTITY")
        .await
        .unwrap();
    p.owner[0]
        .batch_execute("ALTER SEQUENCE items_id_seq RESTART")
        .await
        .unwrap();
    let a = insert_default(&p, 0, 3).await;
    let b = insert_default(&p, 1, 3).await;
    assert!(a.iter().all(|id| id % 2 == 1), "{a:?}");
    assert!(b.iter().all(|id| id % 2 == 0), "{b:?}");
    assert_eq!(p.assert_same("items").await.len(), 6);
}

#[tokio::test]
async fn cycling_and_descending_key_sequences_are_refused() {
    let p = Pair::new().await;
    p.both("CREATE TABLE items (id bigserial PRIMARY KEY, v text)")
        .await;
    p.config("[[tables]]\nname = \"items\"");
    p.owner[1]
        .batch_execute("ALTER SEQUENCE items_id_seq CYCLE")
        .await
        .unwrap();
    p.pgtwin(&["up"])
        .fails_with(&["items_id_seq", "node b", "CYCLE", "NO CYCLE"]);
    p.owner[1]
        .batch_execute("ALTER SEQUENCE items_id_seq NO CYCLE INCREMENT BY -1 MAXVALUE 1000000 START WITH 1000000 RESTART")
        .await
        .unwrap();
    p.pgtwin(&["up"])
        .fails_with(&["items_id_seq", "node b", "counts down"]);
    assert!(!p.installed(0).await && !p.installed(1).await);
}

/// After `down`, each node's sequence is above the largest id either node handed out: the node the
/// peer wrote last does not collide on its next default ids.
#[tokio::test]
async fn after_down_default_ids_continue_above_both_nodes() {
    let p = Pair::new().await;
    p.both("CREATE TABLE items (id bigserial PRIMARY KEY, v text)")
        .await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    insert_default(&p, 0, 2).await;
    let b = insert_default(&p, 1, 5).await;
    p.pgtwin(&["down"]).ok();
    let a_after = insert_default(&p, 0, 3).await;
    let b_after = insert_default(&p, 1, 3).await;
    let top = *b.iter().max().unwrap();
    assert!(a_after.iter().all(|id| *id > top), "{a_after:?} vs {b:?}");
    assert!(b_after.iter().all(|id| *id > top), "{b_after:?} vs {b:?}");
    // Increment given back: consecutive ids again.
    assert_eq!(a_after[1] - a_after[0], 1);
}

/// `down` while applications insert on both nodes with default ids, and go on after it: it completes
/// on both, and every sequence it leaves is above the largest key either node held, so no insert,
/// before, during or after `down`, ever meets a duplicate key. A writer may meet a failed statement
/// (a lock timeout while `down` holds its tables), never a hang.
#[tokio::test]
async fn down_while_both_nodes_insert_leaves_every_sequence_above_both() {
    let p = Pair::new().await;
    p.both("CREATE TABLE items (id bigserial PRIMARY KEY, v text)")
        .await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..2 {
        let c = p.owner_connection(i).await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let (mut written, mut duplicates) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let insert = c.query_one("INSERT INTO items (v) VALUES ('busy') RETURNING id", &[]);
                match tokio::time::timeout(std::time::Duration::from_secs(20), insert)
                    .await
                    .expect("an insert hung during down")
                {
                    Ok(_) => written += 1,
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
                    {
                        duplicates.push(e.to_string())
                    }
                    Err(_) => {}
                }
            }
            (written, duplicates)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    p.pgtwin(&["down"]).ok();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (i, w) in writers.into_iter().enumerate() {
        let (written, duplicates) = w.await.unwrap();
        assert!(written > 0, "node {}: nothing written", common::NODES[i]);
        assert!(
            duplicates.is_empty(),
            "node {}: {duplicates:?}",
            common::NODES[i]
        );
    }
    assert!(!p.installed(0).await && !p.installed(1).await);
    p.assert_clean().await;
}

/// Node a as a restore from a backup leaves it (the backup taken after its first insert): the rows it
/// made since are gone and its sequence is back, while b still holds them. Run as pgtwin's own
/// session, so nothing of it travels.
async fn restore_a_from_backup_after_first_id(p: &Pair) {
    p.owner[0]
        .batch_execute(
            "BEGIN; SET LOCAL pgtwin.origin = 'restore'; DELETE FROM items WHERE id > 1;
             SELECT setval('items_id_seq', 1); COMMIT",
        )
        .await
        .unwrap();
}

/// Node a is restored from last night's pg_dump of itself, into its database created anew: it is
/// told from the live node (a new database OID), so it captures nothing, and `status` says to run
/// `up --mirror b`. That makes a's table a copy of b's (the day's inserts arrive, and the row deleted
/// during the day, which the dump still holds, stays deleted: a plain merge, a union, would bring it
/// back), puts a's sequence above them, and a's next insert takes a new id and reaches b.
#[tokio::test]
async fn a_node_restored_from_a_dump_of_itself_is_installed_anew_by_up() {
    let mut p = Pair::new().await;
    p.both("CREATE TABLE items (id bigserial PRIMARY KEY, v text)")
        .await;
    p.config("[[tables]]\nname = \"items\"");
    p.pgtwin(&["up"]).ok();
    assert_eq!(insert_default(&p, 0, 1).await, vec![1]);
    // Last night's dump, into a scratch database; then the day's inserts.
    let server = &common::servers().nodes[0];
    let night = format!("{}_night", p.db);
    p.admin[0]
        .batch_execute(&format!("CREATE DATABASE {night} OWNER twin"))
        .await
        .unwrap();
    common::copy_database(server, &p.db, server, &night);
    assert_eq!(insert_default(&p, 0, 2).await, vec![3, 5]);
    p.owner[0]
        .batch_execute("DELETE FROM items WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(p.assert_same("items").await.len(), 2);
    // A runner saw a's mark after the dump.
    p.pgtwin(&["run", "--once"]).ok();
    // The restore: node a's database created anew from the dump.
    let root = server.connect("postgres").await.unwrap();
    root.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)", db = p.db))
        .await
        .unwrap();
    root.batch_execute(&format!("CREATE DATABASE {db} OWNER twin", db = p.db))
        .await
        .unwrap();
    common::copy_database(server, &night, server, &p.db);
    p.reconnect(0).await;
    assert_eq!(p.rows(0, "items").await.len(), 1);

    let status = p.pgtwin(&["status"]);
    assert_eq!(status.code, 2, "{}", status.stdout);
    assert!(
        status.stdout.contains(
            "node a: this database is a copy of one pgtwin was installed in (a restored dump): it captures and ships nothing; if it is node a itself, restored from a dump of its own, run pgtwin up --mirror b"
        ),
        "{}",
        status.stdout
    );
    p.pgtwin(&["up", "--mirror", "nobody"])
        .fails_with(&["--mirror is not a node: name a or b"]);
    p.pgtwin(&["up", "--mirror", "b"]).ok();
    assert_eq!(p.assert_same("items").await, vec!["(3,x)", "(5,x)"]);
    // Mirrored, a is b's equal again: not a node gone back, whose changes b refuses.
    p.pgtwin(&["run", "--once"]).ok();
    assert_eq!(insert_default(&p, 0, 1).await, vec![7]);
    assert_eq!(p.assert_same("items").await.len(), 3);
    assert_eq!(p.pgtwin(&["status"]).code, 0);
}

/// A node restored from a backup hands out ids again that the peer holds (other rows): `status` names
/// it, its inserts of those ids fail instead of overwriting the peer's rows (sync mode) or are set
/// aside with the reason (async), and `repair --mirror b`, then `up`, settle it, without bringing back
/// the row deleted since the backup.
#[tokio::test]
async fn a_node_restored_from_a_backup_cannot_overwrite_the_peers_newer_rows() {
    for mode in ["sync", "async"] {
        let p = Pair::new().await;
        p.both("CREATE TABLE items (id bigserial PRIMARY KEY, v text)")
            .await;
        p.config(&format!(
            "[[tables]]\nname = \"items\"\n[options]\nmode = \"{mode}\""
        ));
        p.pgtwin(&["up"]).ok();
        assert_eq!(insert_default(&p, 0, 3).await, vec![1, 3, 5]);
        p.pgtwin(&["run", "--once"]).ok();
        p.owner[1]
            .batch_execute("DELETE FROM items WHERE id = 1")
            .await
            .unwrap();
        p.pgtwin(&["run", "--once"]).ok();
        assert_eq!(p.assert_same("items").await.len(), 2, "{mode}");
        // The backup still holds row 1.
        restore_a_from_backup_after_first_id(&p).await;
        p.owner[0]
            .batch_execute(
                "BEGIN; SET LOCAL pgtwin.origin = 'restore'; INSERT INTO items VALUES (1, 'x'); COMMIT",
            )
            .await
            .unwrap();

        let status = p.pgtwin(&["status"]);
        assert_eq!(status.code, 1, "{mode}: {}", status.stdout);
        assert!(
            status
                .stdout
                .contains("hands out ids node b already holds (next 3, node b holds 5): was node a restored from a backup?"),
            "{mode}: {}",
            status.stdout
        );
        let insert = p.owner[0]
            .query_one(
                "INSERT INTO items (v) VALUES ('after the restore') RETURNING id",
                &[],
            )
            .await;
        if mode == "sync" {
            let e = insert.unwrap_err();
            let message = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default();
            assert!(
                message.contains("node a inserted key (3)")
                    && message.contains("holds with other values"),
                "{e:?}"
            );
        } else {
            assert_eq!(insert.unwrap().get::<_, i64>(0), 3);
            p.pgtwin(&["run", "--once"]).ok();
            let listed: serde_json::Value =
                serde_json::from_str(&p.pgtwin(&["conflicts", "--json"]).ok().stdout).unwrap();
            let reason = listed["set_aside"][0]["reason"].as_str().unwrap_or("");
            assert!(reason.contains("holds with other values"), "{listed}");
        }
        assert_eq!(
            p.rows(1, "items").await,
            vec!["(3,x)", "(5,x)"],
            "{mode}: b's rows are untouched"
        );

        p.pgtwin(&["repair", "--mirror", "b"]).ok();
        p.pgtwin(&["up"]).ok();
        let status = p.pgtwin(&["status"]);
        assert_eq!(status.code, 0, "{mode}: {}", status.stdout);
        assert_eq!(
            p.assert_same("items").await,
            vec!["(3,x)", "(5,x)"],
            "{mode}"
        );
        let next = insert_default(&p, 0, 1).await;
        assert!(next[0] > 5, "{mode}: {next:?}");
        p.pgtwin(&["run", "--once"]).ok();
        assert_eq!(p.assert_same("items").await.len(), 3, "{mode}");
    }
}

/// The items by column name (the nodes order their columns differently).
const ITEMS: &str = "SELECT id, name, price FROM items ORDER BY id";

/// The night's backup of node a is restored in place (pg_dump --clean, run into the live database):
/// a's rows are last night's again, while b holds the day's changes (an update made on b, one made on
/// a, a row b deleted). `status` tells at once that a went back (its mark is below what b saw of it).
/// Before a runner has seen it, a's updates of those rows fail (sync mode) or are set aside (async)
/// instead of writing a's stale row over b's newer one, and a row nobody changed since the backup
/// still updates and syncs (sync mode). Once `pgtwin run` has seen it, b refuses every change of a,
/// deletions included: they queue on a and are set aside, listed with the reason. The nodes are built
/// differently (other column order, a dropped column's gap on a, a column b has alone), so the
/// versions are compared by name. `repair --mirror b` settles it.
#[tokio::test]
async fn a_node_restored_in_place_cannot_undo_the_peers_newer_rows() {
    for mode in ["sync", "async"] {
        let mut p = Pair::new().await;
        p.owner[0]
            .batch_execute(
                "CREATE TABLE items (id bigserial PRIMARY KEY, gone int, name text, price int);
                 ALTER TABLE items DROP COLUMN gone",
            )
            .await
            .unwrap();
        p.owner[1]
            .batch_execute(
                "CREATE TABLE items (price int, note text DEFAULT 'b alone', name text, id bigserial PRIMARY KEY)",
            )
            .await
            .unwrap();
        p.config(&format!(
            "[[tables]]\nname = \"items\"\n[options]\nmode = \"{mode}\""
        ));
        p.pgtwin(&["up"]).ok();
        p.owner[0]
            .batch_execute(
                "INSERT INTO items (name, price) VALUES ('kettle', 10), ('pot', 20), ('pan', 30), ('lid', 40)",
            )
            .await
            .unwrap();
        p.pgtwin(&["run", "--once"]).ok();
        assert_eq!(p.assert_same_rows_of(ITEMS).await.len(), 4, "{mode}");
        let server = &common::servers().nodes[0];
        let night = common::dump_database(server, &p.db, &["--clean", "--if-exists"]);
        // The day: b raises the kettle's price, a renames the pot, b sells the last pan.
        p.owner[1]
            .batch_execute(
                "UPDATE items SET price = 12 WHERE id = 1; DELETE FROM items WHERE id = 5",
            )
            .await
            .unwrap();
        p.owner[0]
            .batch_execute("UPDATE items SET name = 'big pot' WHERE id = 3")
            .await
            .unwrap();
        p.pgtwin(&["run", "--once"]).ok();
        let day = vec!["(1,kettle,12)", "(3,\"big pot\",20)", "(7,lid,40)"];
        assert_eq!(p.rows_of(1, ITEMS).await, day, "{mode}");
        assert_eq!(p.assert_same_rows_of(ITEMS).await.len(), 3, "{mode}");

        common::restore_dump(server, &p.db, &night);
        p.reconnect(0).await;
        assert_eq!(
            p.rows_of(0, ITEMS).await.len(),
            4,
            "{mode}: last night's rows"
        );
        // b saw a further on than a is now: status tells at once, before any runner does.
        let status = p.pgtwin(&["status"]);
        assert!(
            status.stdout.contains("node a went back to an earlier state of itself (restored from a backup?): node b saw it further on; node b will refuse its changes once pgtwin run sees this"),
            "{mode}: {}",
            status.stdout
        );
        // Until a runner has seen it, each update is written only over the version it replaced.
        for (id, what) in [
            (1, "b changed it"),
            (3, "a changed it"),
            (5, "b deleted it"),
        ] {
            let update = p.owner[0]
                .execute(
                    &format!("UPDATE items SET price = price + 1 WHERE id = {id}"),
                    &[],
                )
                .await;
            if mode == "sync" {
                let e = update.expect_err(what);
                let db = e.as_db_error().expect("a server error");
                assert_eq!(db.code().code(), "PT412", "{what}: {db:?}");
                assert!(
                    db.message().contains(&format!(
                        "node a updated key ({id}) of table \"public\".\"items\" from a version node b does not hold"
                    )),
                    "{what}: {db:?}"
                );
            } else {
                assert_eq!(update.unwrap(), 1, "{what}");
            }
        }
        p.owner[0]
            .batch_execute("UPDATE items SET price = 41 WHERE id = 7")
            .await
            .unwrap();
        let mut after = day.clone();
        if mode == "sync" {
            // A row nobody changed since the backup.
            after[2] = "(7,lid,41)";
        }
        // The runner sees it: b refuses a's changes from now on, deletions included (a deletion
        // carries no old version to compare). a's writers go on; their changes queue.
        p.pgtwin(&["run", "--once"]).ok();
        p.owner[0]
            .batch_execute("DELETE FROM items WHERE id = 1")
            .await
            .unwrap();
        p.pgtwin(&["run", "--once"]).ok();
        let (listed, reasons) = p.set_aside();
        // Async: the three refused updates, the lid's and the deletion, each its own transaction.
        assert_eq!(
            reasons.len(),
            if mode == "sync" { 1 } else { 5 },
            "{listed}"
        );
        assert!(
            reasons.iter().all(|r| r.contains(
                "node a went back to an earlier state of itself (restored from a backup?): node b refuses its changes until a repair"
            )),
            "{listed}"
        );
        let status = p.pgtwin(&["status"]);
        assert!(
            status.stdout.contains("node a went back to an earlier state of itself (restored from a backup?): node b saw it further on; node b refuses its changes (queued, then set aside by pgtwin run) until you run pgtwin repair --mirror b")
                && status.stdout.contains("change(s) set aside"),
            "{mode}: {}",
            status.stdout
        );
        assert_eq!(
            p.rows_of(1, ITEMS).await,
            after,
            "{mode}: b kept its newer rows"
        );

        p.pgtwin(&["repair", "--mirror", "b"]).ok();
        p.pgtwin(&["up"]).ok();
        assert_eq!(p.assert_same_rows_of(ITEMS).await.len(), 3, "{mode}");
        // Only b's column of its own remains to say (not synced, by design).
        let status = p.pgtwin(&["status"]);
        assert!(
            !status.stdout.contains("set aside")
                && !status.stdout.contains("went back")
                && status.stdout.contains("exists on node b only"),
            "{mode}: {}",
            status.stdout
        );
        p.owner[0]
            .batch_execute("UPDATE items SET price = 13 WHERE id = 1")
            .await
            .unwrap();
        p.pgtwin(&["run", "--once"]).ok();
        assert_eq!(p.rows_of(1, ITEMS).await[0], "(1,kettle,13)", "{mode}");
        assert_eq!(p.assert_same_rows_of(ITEMS).await.len(), 3, "{mode}");
    }
}
