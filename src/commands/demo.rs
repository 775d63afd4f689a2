//! `pgtwin demo`: two throwaway servers, the article's products table, and two-way sync shown step by step.

use std::process::ExitCode;

use anyhow::{Context, Result};
use tokio_postgres::{Client, NoTls};

use crate::config::Config;
use crate::install;
use crate::localpg::LocalServer;

const PASSWORD: &str = "demo-secret";
const PRODUCTS: &str = "CREATE TABLE products (
    id bigserial PRIMARY KEY,
    name varchar(255),
    description varchar(255),
    price integer,
    created_at timestamp NOT NULL,
    updated_at timestamp NOT NULL)";

pub async fn run(keep: bool) -> Result<ExitCode> {
    let dir = tempfile::Builder::new().prefix("pgtwin-demo-").tempdir()?;
    let nodes = ["shop", "legacy"];
    println!(
        "starting two PostgreSQL servers in {} ...",
        dir.path().display()
    );
    let mut servers = Vec::new();
    for name in nodes {
        let server = LocalServer::start(&dir.path().join(name), &[])?;
        if !keep {
            server.stop_when_process_ends(std::process::id())?;
        }
        let admin = server.connect("postgres").await?;
        admin
            .batch_execute(&format!("CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} OWNER app"))
            .await?;
        // postgres_fdw is not a trusted extension: a superuser creates it once, then `up` runs as `app`.
        let admin = server.connect(name).await?;
        admin
            .batch_execute("CREATE EXTENSION postgres_fdw; GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO app")
            .await?;
        let app = app_client(&server, name).await?;
        app.batch_execute(PRODUCTS).await?;
        // As in the article, each app starts with rows of its own.
        let rows = if name == "shop" {
            "(1, 'kettle', 'steel, 1.7 l', 25, '2024-01-05 10:00', '2024-01-05 10:00'),
             (2, 'teapot', 'porcelain', 18, '2024-02-11 09:30', '2024-02-11 09:30')"
        } else {
            "(2, 'teapot', 'porcelain', 18, '2024-02-11 09:30', '2024-02-11 09:30'),
             (3, 'hat', 'felt', 40, '2023-11-30 16:00', '2023-11-30 16:00')"
        };
        app.batch_execute(&format!(
            "INSERT INTO products (id, name, description, price, created_at, updated_at) VALUES {rows}"
        ))
        .await?;
        println!(
            "  node {name}: port {}, products table with 2 rows of its own",
            server.port
        );
        servers.push(server);
    }
    let config_text = format!(
        "[nodes.shop]\nurl = \"{}\"\n[nodes.legacy]\nurl = \"{}\"\n\n[[tables]]\nname = \"products\"\n",
        servers[0].url("app", Some(PASSWORD), "shop"),
        servers[1].url("app", Some(PASSWORD), "legacy")
    );
    let config_path = dir.path().join("pgtwin.toml");
    std::fs::write(&config_path, &config_text)?;
    let cfg = Config::parse(&config_text, |_: &str| None)?;

    let shop = app_client(&servers[0], "shop").await?;
    let mut legacy = app_client(&servers[1], "legacy").await?;
    side_by_side("before: two apps, two tables", &shop, &legacy).await?;

    println!("\n$ pgtwin up");
    let report = install::up(&cfg, false, false).await?;
    for m in &report.merges {
        super::print_merge(
            m,
            [cfg.nodes[0].name.as_str(), cfg.nodes[1].name.as_str()],
            false,
        );
    }
    for n in &report.nodes {
        println!("  node {}: installed ({} steps)", n.node, n.steps.len());
    }
    side_by_side("after up: one table, on both nodes", &shop, &legacy).await?;

    shop.batch_execute("INSERT INTO products (name, price, created_at, updated_at) VALUES ('mug', 7, now(), now())")
        .await?;
    legacy
        .batch_execute("INSERT INTO products (name, price, created_at, updated_at) VALUES ('saucer', 4, now(), now())")
        .await?;
    side_by_side("shop app inserts 'mug', legacy app inserts 'saucer' (default ids: legacy, first by name, takes odd ids, shop even)", &shop, &legacy).await?;

    shop.batch_execute("UPDATE products SET price = 29, updated_at = now() WHERE name = 'kettle'")
        .await?;
    side_by_side("shop app raises the kettle's price to 29", &shop, &legacy).await?;

    legacy
        .batch_execute("DELETE FROM products WHERE name = 'teapot'")
        .await?;
    side_by_side("legacy app deletes the teapot", &shop, &legacy).await?;

    println!("\nthe legacy server goes down (pg_ctl stop -m immediate)");
    servers[1].stop(true)?;
    shop.batch_execute("INSERT INTO products (name, price, created_at, updated_at) VALUES ('teacup', 9, now(), now())")
        .await?;
    println!("  shop app inserts 'teacup': the write succeeds, the change waits in shop's queue");
    for n in crate::status::report(&cfg).await.nodes {
        if let Some(q) = n.queue {
            println!(
                "  $ pgtwin status  ->  node {}: {} change(s) queued for its peer",
                n.node, q.rows
            );
        }
    }
    servers[1].start_again()?;
    legacy = app_client(&servers[1], "legacy").await?;
    println!("\nthe legacy server is back\n$ pgtwin run --once");
    let drained = crate::runner::run_once(&cfg).await?;
    println!(
        "  legacy -> shop: {} change(s), shop -> legacy: {} change(s)",
        drained[0].rows, drained[1].rows
    );
    side_by_side("after the replay", &shop, &legacy).await?;

    let p = install::prepare(&cfg).await?;
    let diffs = install::diffs(&p, false, false).await?;
    println!(
        "\n$ pgtwin check\n  products: {}",
        if diffs.iter().all(|d| d.is_equal()) {
            "equal on both nodes"
        } else {
            "DIFFERENT"
        }
    );
    drop(p);

    if keep {
        println!(
            "\nservers left running (the password is in {}). Try:",
            config_path.display()
        );
        for (s, name) in servers.iter().zip(nodes) {
            println!("  psql '{}'", s.url("app", None, name));
        }
        println!("  pgtwin -c {} status", config_path.display());
        println!(
            "stop them with: pg_ctl -D <dir>/data stop (dirs under {})",
            dir.path().display()
        );
        let _ = dir.keep();
        return Ok(ExitCode::SUCCESS);
    }
    println!("\n$ pgtwin down");
    for o in install::down(&cfg, false, false).await? {
        match o.error {
            None => println!("  node {}: pgtwin removed, table data kept", o.node),
            Some(e) => println!("  node {}: {e}", o.node),
        }
    }
    for s in &servers {
        s.stop(false)?;
    }
    println!("servers stopped");
    Ok(ExitCode::SUCCESS)
}

/// A plain application connection: no pgtwin session settings, so its writes are synced.
async fn app_client(server: &LocalServer, db: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(&server.url("app", Some(PASSWORD), db), NoTls)
        .await
        .with_context(|| format!("connecting to {db}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn rows(db: &Client) -> Result<Vec<String>> {
    Ok(db
        .query("SELECT id, name, price FROM products ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| {
            format!(
                "{:>3} {:<8} {:>4}",
                r.get::<_, i64>(0),
                r.get::<_, Option<String>>(1).unwrap_or_default(),
                r.get::<_, Option<i32>>(2)
                    .map_or("".into(), |p| p.to_string())
            )
        })
        .collect())
}

async fn side_by_side(title: &str, shop: &Client, legacy: &Client) -> Result<()> {
    println!("\n{title}");
    let (a, b) = (rows(shop).await?, rows(legacy).await?);
    println!("  {:<20}| legacy.products", "shop.products");
    for i in 0..a.len().max(b.len()) {
        println!(
            "  {:<20}| {}",
            a.get(i).map_or("", String::as_str),
            b.get(i).map_or("", String::as_str)
        );
    }
    Ok(())
}
