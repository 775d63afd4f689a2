use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::cli::InitArgs;
use crate::config::Options;
use crate::init::{self, Found};
use crate::problems::Problems;
use crate::twin;

pub async fn run(path: &Path, args: &InitArgs) -> Result<ExitCode> {
    let exists = || {
        anyhow!(
            "{} exists: run pgtwin init --force to overwrite it, or pgtwin --config OTHER.toml init to write another file",
            path.display()
        )
    };
    // Checked before connecting anywhere, and again as the file is created.
    if !args.force && path.exists() {
        return Err(exists());
    }
    let env = |var: &str| std::env::var(var).ok();
    let given = [
        init::parse_node(&args.first, "a", env)?,
        init::parse_node(&args.second, "b", env)?,
    ];
    if given[0].name == given[1].name {
        anyhow::bail!(
            "both nodes are named {}: give them names, as NAME=postgres://...",
            given[0].name
        );
    }
    let timeout = Duration::from_secs(Options::default().connect_timeout_s.into());
    let [node_a, node_b] = [given[0].node(), given[1].node()];
    let (a, b) = tokio::join!(
        twin::connect_node(&node_a, timeout),
        twin::connect_node(&node_b, timeout)
    );
    let nodes = match (a, b) {
        (Ok(a), Ok(b)) => [a, b],
        (a, b) => {
            let mut problems = Problems::default();
            for e in [a.err(), b.err()].into_iter().flatten() {
                problems.push_error(e);
            }
            return Err(problems.into());
        }
    };
    let found = init::discover(&nodes).await?;
    let text = init::render(&given, &found);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .create_new(!args.force)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => exists(),
            _ => anyhow!("cannot write {}: {e}", path.display()),
        })?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    for n in &given {
        if let Some(var) = &n.password_var {
            eprintln!(
                "note: the password of node {} is not written to {}: it is read from ${{{var}}}; set {var} (percent-encode any % / ? # in it) before running pgtwin",
                n.name,
                path.display()
            );
        }
    }
    let synced = found
        .iter()
        .filter(|f| matches!(f, Found::Synced { .. }))
        .count();
    if synced == 0 {
        eprintln!("warning: no table both nodes have can be synced as it is: add [[tables]] entries to {} by hand", path.display());
    }
    println!(
        "wrote {}: {synced} table(s) to sync, {} left out (its comments say why); next: pgtwin plan",
        path.display(),
        found.len() - synced
    );
    Ok(ExitCode::SUCCESS)
}
