use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::status;

pub async fn run(cfg: &Config, json: bool) -> Result<ExitCode> {
    let status::Report {
        nodes,
        pair,
        problems,
    } = status::report(cfg).await;
    let code = match problems.iter().map(|p| p.severity).max() {
        None => ExitCode::SUCCESS,
        Some(status::Severity::Degraded) => ExitCode::from(1),
        Some(status::Severity::Down) => ExitCode::from(2),
    };
    if json {
        super::print_json(&serde_json::json!({
            "healthy": problems.is_empty(),
            "summary": status::summary(&problems),
            "problems": problems,
            "nodes": nodes,
            "pair": pair,
        }));
        return Ok(code);
    }
    println!("{}", status::summary(&problems));
    for n in &nodes {
        println!("node {} ({})", n.node, n.url);
        if let Some(e) = &n.error {
            println!("  unreachable: {e}");
            continue;
        }
        match &n.installed {
            None => println!("  pgtwin: not installed (run pgtwin up)"),
            Some(i) => println!("  pgtwin {} installed, peer {}", i.version, i.peer),
        }
        if let Some(l) = &n.link {
            match &l.error {
                None => println!("  link to peer: ok ({} ms)", l.millis),
                Some(e) => println!("  link to peer: DOWN ({e})"),
            }
        }
        if let Some(q) = &n.queue {
            let age = q
                .oldest_age_s
                .map_or(String::new(), |a| format!(", oldest {a:.0} s old"));
            let replay = q
                .last_replay_from_peer
                .as_deref()
                .map_or(String::new(), |t| format!("; last replay from peer {t}"));
            println!(
                "  queue: {} change(s) in {} entr(ies){age}{replay}; conflicts resolved: {}",
                q.rows, q.entries, q.conflicts
            );
            if let Some(seen) = q.runner_seen_s_ago {
                let who = q
                    .runner
                    .as_deref()
                    .map_or(String::new(), |w| format!(" ({w})"));
                println!("  pgtwin run: seen {seen:.0} s ago{who}");
            }
            if let Some(since) = &q.needs_repair_since {
                println!(
                    "  NEEDS REPAIR since {since}: {}; changes are no longer recorded: run pgtwin repair",
                    q.needs_repair_reason.as_deref().unwrap_or("")
                );
            }
        }
        for t in &n.tables {
            let seqs: Vec<String> = t
                .sequences
                .iter()
                .map(|s| format!("{} next {} step {}", s.sequence, s.next_value, s.increment))
                .collect();
            println!(
                "  {}: triggers {}/{}{}",
                t.table,
                t.triggers,
                t.triggers_expected,
                if seqs.is_empty() {
                    String::new()
                } else {
                    format!("; {}", seqs.join(", "))
                }
            );
        }
    }
    if let Some(pair) = &pair {
        for d in &pair.schema_drift {
            println!("SCHEMA DRIFT in {}: {}", d.table, d.problem);
        }
        if !pair.schema_drift.is_empty() {
            println!("{}", super::DRIFT_ADVICE);
        }
    }
    if problems.len() > 1 {
        for p in &problems {
            println!("{}: {}", p.severity.word(), p.what);
        }
    }
    Ok(code)
}
