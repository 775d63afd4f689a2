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
