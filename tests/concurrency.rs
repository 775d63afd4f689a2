//! Two applications writing at once: ids never collide, and cross-server lock waits end in an error
//! within seconds instead of a hang, with the nodes identical afterwards.

mod common;

use std::time::{Duration, Instant};

use common::Pair;

#[tokio::test]
async fn concurrent_inserts_with_default_ids_never_collide() {
    let p = Pair::new().await;
    p.both(
        "CREATE TABLE events (id bigserial PRIMARY KEY, node text, n int);
            CREATE TABLE marks (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text)",
    )
    .await;
    // Rows already present: new ids must start above them on both nodes.
    p.both("INSERT INTO events (node, n) SELECT 'seed', g FROM generate_series(1, 7) g")
        .await;
    p.config("[[tables]]\nname = \"events\"\n[[tables]]\nname = \"marks\"");
    p.pgtwin(&["up"]).ok();
    let mut tasks = Vec::new();
    for i in 0..2 {
        for w in 0..3 {
            let url = p
                .app_url(i)
                .replace("app:app-pw", &format!("twin:{}", common::TWIN_PW));
            tasks.push(tokio::spawn(async move {
                let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                for n in 0..60 {
                    c.execute(
                        "INSERT INTO events (node, n) VALUES ($1, $2)",
                        &[&format!("{i}/{w}"), &n],
                    )
                    .await
                    .unwrap();
                    c.execute(
                        "INSERT INTO marks (note) VALUES ($1)",
                        &[&format!("{i}/{w}/{n}")],
                    )
                    .await
                    .unwrap();
                }
            }));
        }
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("writers hung")
            .expect("a writer failed");
    }
    assert_eq!(p.assert_same("events").await.len(), 7 + 360);
    assert_eq!(p.assert_same("marks").await.len(), 360);
    let min_new: i64 = p.admin[0]
        .query_one("SELECT min(id) FROM events WHERE node <> 'seed'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(min_new > 7);
    p.pgtwin(&["down"]).ok();
    for admin in &p.admin {
        let incs: Vec<i64> = admin
            .query(
                "SELECT increment_by FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(incs, vec![1, 1], "down must restore the increments");
    }
}

/// Opens a plain client to node i as the owner.
async fn client(p: &Pair, i: usize) -> tokio_postgres::Client {
    let url = p.url(i);
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

#[tokio::test]
async fn crossing_updates_of_one_row_end_within_seconds_and_agree() {
    let p = Pair::new().await;
    p.both("CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
        .await;
    p.both("INSERT INTO accounts VALUES (1, 100), (2, 100)")
        .await;
    p.config("[[tables]]\nname = \"accounts\"\n[options]\nlock_timeout_ms = 1000");
    p.pgtwin(&["up"]).ok();
    let (a, b) = (client(&p, 0).await, client(&p, 1).await);
    // Each transaction locks row 1 on its own node first, then updates it and commits: each commit's
    // push to the peer waits for the other's local lock, a cycle no single server can see.
    a.batch_execute("BEGIN; SELECT FROM accounts WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    b.batch_execute("BEGIN; SELECT FROM accounts WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    let started = Instant::now();
    // Bounded here too: a regression must fail the test, not hang it.
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(
            a.batch_execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1; COMMIT"),
            b.batch_execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1; COMMIT")
        )
    })
    .await
    .expect("the crossing updates hang");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        ra.is_err() || rb.is_err(),
        "one of the crossing updates must fail"
    );
    for (c, r) in [(&a, &ra), (&b, &rb)] {
        if r.is_err() {
            c.batch_execute("ROLLBACK").await.unwrap();
        }
    }
    let err = ra.err().or(rb.err()).unwrap();
    assert!(format!("{err:?}").contains("lock timeout"), "{err:?}");
    p.assert_same("accounts").await;
}
