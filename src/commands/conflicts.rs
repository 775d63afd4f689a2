use std::process::ExitCode;

use anyhow::Result;

use crate::cli::ConflictsArgs;
use crate::config::Config;
use crate::state;
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
        let recorded = state::conflicts(n.name(), &n.db).await?;
        let listed: Vec<i64> = recorded.iter().map(|c| c.id).collect();
        for c in recorded {
            all.push(Conflict {
                node: n.name().to_string(),
                id: c.id,
                resolved_at: c.resolved_at,
                table: c.table,
                key: as_json(c.key),
                winner: c.winner,
                this_node: as_json(c.local_change),
                peer: as_json(c.remote_change),
            });
        }
        // Only what was read is cleared: a conflict recorded meanwhile stays for the next look.
        if args.ack {
            state::forget_conflicts(n.name(), &n.db, &listed).await?;
        }
    }
    // Changes the peer refused, set aside by `pgtwin run` (cleared by `repair`, not by --ack: the
    // tables differ until then).
    let mut set_aside = Vec::new();
    for n in &nodes {
        if n.info.installed.is_none() {
            continue;
        }
        for s in state::set_aside(&n.db).await {
            set_aside.push(serde_json::json!({
                "node": n.name(),
                "seq": s.seq,
                "set_aside_at": s.set_aside_at,
                "table_tag": s.table_tag,
                "reason": s.reason,
                "op": s.batch.get(..1).unwrap_or(""),
                "change": as_json(s.batch.get(1..).map(str::to_string)),
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
