use std::process::ExitCode;

use anyhow::Result;

use crate::cli::ConflictsArgs;
use crate::config::Config;
use crate::db::on_node;
use crate::sql::names;
use crate::twin;

/// One recorded conflict: a key both nodes changed while apart, and which change won.
#[derive(Debug, serde::Serialize)]
struct Conflict {
    node: String,
    id: i64,
    resolved_at: String,
    table: String,
    key: serde_json::Value,
    winner: String,
    /// Each change as `{"op": "U" | "D", "row": {column: value, ...}}`.
    this_node: serde_json::Value,
    peer: serde_json::Value,
}

/// Text that holds JSON becomes that JSON; anything else stays text.
fn as_json(text: Option<String>) -> serde_json::Value {
    match text {
        None => serde_json::Value::Null,
        Some(t) => serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)),
    }
}

pub async fn run(cfg: &Config, args: &ConflictsArgs) -> Result<ExitCode> {
    let nodes = twin::connect_both(cfg).await?;
    let mut all = Vec::new();
    for n in &nodes {
        if n.info.installed.is_none() {
            continue;
        }
        let rows = n
            .db
            .query(
                &format!(
                    "SELECT id, resolved_at::text, table_name, key, winner, local_change, remote_change
                     FROM {} ORDER BY id",
                    names::conflicts_table()
                ),
                &[],
            )
            .await
            .map_err(on_node(n.name(), "reading the conflicts"))?;
        let listed: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        for r in rows {
            all.push(Conflict {
                node: n.name().to_string(),
                id: r.get(0),
                resolved_at: r.get(1),
                table: r.get(2),
                key: as_json(r.get(3)),
                winner: r.get(4),
                this_node: as_json(r.get(5)),
                peer: as_json(r.get(6)),
            });
        }
        // Only what was read is cleared: a conflict recorded meanwhile stays for the next look.
        if args.ack && !listed.is_empty() {
            n.db.execute(
                &format!(
                    "DELETE FROM {} WHERE id = ANY($1)",
                    names::conflicts_table()
                ),
                &[&listed],
            )
            .await
            .map_err(on_node(n.name(), "clearing the conflicts"))?;
        }
    }
    // Changes the peer refused, set aside by `pgtwin run` (cleared by `repair`, not by --ack: the
    // tables differ until then).
    let mut set_aside = Vec::new();
    for n in &nodes {
        if n.info.installed.is_none() {
            continue;
        }
        let rows =
            n.db.query(
                &format!(
                    "SELECT seq, set_aside_at::text, table_tag, reason, batch FROM {} ORDER BY seq",
                    names::set_aside_table()
                ),
                &[],
            )
            .await
            // An install older than this binary has no such table until its next `up`.
            .unwrap_or_default();
        for r in rows {
            let batch: String = r.get(4);
            set_aside.push(serde_json::json!({
                "node": n.name(),
                "seq": r.get::<_, i64>(0),
                "set_aside_at": r.get::<_, String>(1),
                "table_tag": r.get::<_, String>(2),
                "reason": r.get::<_, String>(3),
                "op": batch.get(..1).unwrap_or(""),
                "change": as_json(batch.get(1..).map(str::to_string)),
            }));
        }
    }
    if args.json {
        super::print_json(
            &serde_json::json!({ "conflicts": all, "set_aside": set_aside, "acknowledged": args.ack }),
        );
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("no conflicts recorded");
    }
    for s in &set_aside {
        println!(
            "set aside on node {} at {}: {}",
            s["node"].as_str().unwrap_or(""),
            s["set_aside_at"].as_str().unwrap_or(""),
            s["reason"].as_str().unwrap_or("")
        );
        println!("  {} {}", s["op"].as_str().unwrap_or(""), s["change"]);
    }
    for c in &all {
        println!(
            "{} on node {} at {}: key {} of {}, {} won",
            c.id, c.node, c.resolved_at, c.key, c.table, c.winner
        );
        println!("  {:<8} {}", c.node, c.this_node);
        println!("  {:<8} {}", "peer", c.peer);
    }
    if args.ack && !all.is_empty() {
        println!("{} conflict(s) cleared", all.len());
    }
    Ok(ExitCode::SUCCESS)
}
