use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::status;

pub async fn run(cfg: &Config, json: bool) -> Result<ExitCode> {
    let nodes = status::status(cfg).await;
    if json {
        super::print_json(&serde_json::json!({ "nodes": nodes }));
        return Ok(ExitCode::SUCCESS);
    }
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
    Ok(ExitCode::SUCCESS)
}
