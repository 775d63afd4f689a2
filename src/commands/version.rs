use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::twin;

/// The binary's version, and what each node has installed (None: not installed; an error: unreachable).
pub async fn run(cfg: Option<&Config>, json: bool) -> Result<ExitCode> {
    let binary = env!("CARGO_PKG_VERSION");
    let mut nodes = Vec::new();
    if let Some(cfg) = cfg {
        for node in &cfg.nodes {
            let installed = match twin::connect(cfg, node).await {
                Ok(n) => Ok(n.info.installed.map(|i| i.version)),
                Err(e) => Err(format!("{e:#}")),
            };
            nodes.push((node.name.clone(), installed));
        }
    }
    if json {
        let nodes: Vec<serde_json::Value> = nodes
            .iter()
            .map(|(name, v)| match v {
                Ok(version) => serde_json::json!({ "node": name, "installed": version }),
                Err(e) => serde_json::json!({ "node": name, "error": e }),
            })
            .collect();
        super::print_json(&serde_json::json!({ "binary": binary, "nodes": nodes }));
        return Ok(ExitCode::SUCCESS);
    }
    println!("pgtwin {binary}");
    for (name, v) in &nodes {
        match v {
            Ok(Some(version)) => println!("node {name}: pgtwin {version} installed"),
            Ok(None) => println!("node {name}: not installed"),
            Err(e) => println!("node {name}: unreachable ({e})"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
