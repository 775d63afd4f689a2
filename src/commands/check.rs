use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;
use crate::install;
use crate::twin;

pub async fn run(cfg: &Config, json: bool) -> Result<ExitCode> {
    let nodes = twin::connect_both(cfg).await?;
    // A table whose definition drifted apart cannot be compared row by row: say how, and go on.
    let (tables_info, problems) = twin::inspect_tolerant(cfg, &nodes).await;
    // Every difference of every table, in one run: the ones that stop a table from syncing, and the
    // drift of tables whose shared columns still sync.
    let drift: Vec<serde_json::Value> = problems
        .iter()
        .map(|(table, problem)| serde_json::json!({ "table": table.to_string(), "schema_drift": problem, "synced": false }))
        .chain(tables_info.iter().flat_map(|pair| {
            pair.drift.iter().map(|d| {
                serde_json::json!({ "table": pair.infos[0].synced_name.to_string(), "schema_drift": d, "synced": true })
            })
        }))
        .collect();
    let p = install::Prepared {
        nodes,
        tables: tables_info.into_iter().map(|pair| pair.infos).collect(),
    };
    let tables = install::diffs(&p, true, json).await?;
    let equal = drift.is_empty() && tables.iter().all(|t| t.is_equal());
    if json {
        super::print_json(
            &serde_json::json!({ "equal": equal, "tables": tables, "schema_drift": drift }),
        );
    } else {
        for d in &drift {
            println!(
                "{}: SCHEMA DRIFT: {}",
                d["table"].as_str().unwrap_or(""),
                d["schema_drift"].as_str().unwrap_or("")
            );
        }
        let [a, b] = [p.nodes[0].name(), p.nodes[1].name()];
        for t in &tables {
            if t.is_equal() {
                println!("{}: equal ({} rows)", t.table, t.rows[0]);
                continue;
            }
            println!(
                "{}: DIFFERENT: {} only on {a}, {} only on {b}, {} different",
                t.table, t.only_on[0], t.only_on[1], t.different
            );
            let show = |label: &str, keys: &[String], total: usize| {
                if !keys.is_empty() {
                    let more = if total > keys.len() {
                        format!(" (+{} more; --json lists all)", total - keys.len())
                    } else {
                        String::new()
                    };
                    println!("  {label}: {}{more}", keys.join(" "));
                }
            };
            show(&format!("only on {a}"), &t.keys.only_on[0], t.only_on[0]);
            show(&format!("only on {b}"), &t.keys.only_on[1], t.only_on[1]);
            show("different", &t.keys.different, t.different);
        }
        if !drift.is_empty() {
            println!("{}", super::DRIFT_ADVICE);
        }
        if tables.iter().any(|t| !t.is_equal()) {
            println!("to fix: pgtwin repair --prefer NODE (or --mirror NODE)");
        }
    }
    Ok(if equal {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
