use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::install;

pub async fn run(cfg: &Config, json: bool) -> Result<ExitCode> {
    let p = install::prepare(cfg).await?;
    let tables = install::diffs(&p).await?;
    let equal = tables.iter().all(|t| t.diff.is_equal());
    if json {
        super::print_json(&serde_json::json!({ "equal": equal, "tables": tables }));
    } else {
        let [a, b] = [p.nodes[0].name(), p.nodes[1].name()];
        for t in &tables {
            let d = &t.diff;
            if d.is_equal() {
                println!("{}: equal ({} rows)", t.table, d.rows[0]);
            } else {
                println!(
                    "{}: DIFFERENT: {} only on {a}, {} only on {b}, {} different; keys: {}",
                    t.table,
                    d.only_on[0],
                    d.only_on[1],
                    d.different,
                    d.sample_keys.join(" ")
                );
            }
        }
    }
    Ok(if equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
