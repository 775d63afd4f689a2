//! Command-line types only; their doc comments are the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Keeps tables in two PostgreSQL databases identical in both directions, using postgres_fdw and
/// triggers installed from one config file.
#[derive(Debug, Parser)]
#[command(name = "pgtwin", version, about)]
pub struct Cli {
    /// Config file.
    #[arg(
        short,
        long,
        global = true,
        default_value = "pgtwin.toml",
        env = "PGTWIN_CONFIG"
    )]
    pub config: PathBuf,
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines on stderr as text, or as one JSON object each (for log shippers).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the SQL that `up` would run on each node (passwords masked); changes nothing.
    Plan(JsonFlag),
    /// Install or upgrade the sync on both nodes (idempotent), merging rows that exist on either side.
    Up(UpArgs),
    /// Remove every object pgtwin installed on both nodes; table data is untouched.
    Down(DownArgs),
    /// Link health, installed version, tables, triggers and sequence settings per node.
    Status(JsonFlag),
    /// Compare every synced table on both nodes; exit 0 equal, 1 different, 2 error.
    Check(CheckArgs),
    /// Make the nodes equal: copy rows missing on a node, NODE's row winning where both differ.
    Repair(RepairArgs),
    /// Apply queued changes to the peer, in order; keep running, reconnecting after outages.
    Run(RunArgs),
    /// Start two throwaway local PostgreSQL servers and show two-way sync working.
    Demo(DemoArgs),
    /// List the conflicts recorded on both nodes (keys both changed while apart), both versions side by
    /// side with column names; --ack clears them.
    Conflicts(ConflictsArgs),
    /// This binary's version, and the version installed on each node.
    Version(JsonFlag),
    /// Write a starter pgtwin.toml (or --config PATH) from two connection URLs; needs no config.
    ///
    /// Lists the tables both databases have that pgtwin can sync, the others as comments saying why,
    /// and every option commented out with its default. Refuses to overwrite a file unless --force.
    Init(InitArgs),
    /// Print a shell completion script, e.g. `pgtwin completions bash > /etc/bash_completion.d/pgtwin`
    /// (needs no config).
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The first node: NAME=postgres://USER:PASSWORD@HOST:PORT/DB (a bare URL: node a). ${VAR} is
    /// read from the environment and written as given, e.g. 'shop=${SHOP_URL}'. A password in a URL
    /// is never written to the file: it reads ${PGTWIN_<NAME>_PASSWORD} instead.
    #[arg(value_name = "[NAME=]URL")]
    pub first: String,
    /// The second node, the same way (a bare URL: node b).
    #[arg(value_name = "[NAME=]URL")]
    pub second: String,
    /// Overwrite the config file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ConflictsArgs {
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
    /// Clear the conflicts listed (after reading them).
    #[arg(long)]
    pub ack: bool,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
    /// Report what the merge would do and change nothing: per table, the keys only on each node and
    /// each row it would overwrite, both versions side by side by column (the first 20 of each).
    #[arg(long)]
    pub dry_run: bool,
    /// For this run only: where both nodes hold a key with different rows, NODE's row wins (or the
    /// newer by each table's newest_by, with "newest"). Overrides prefer in pgtwin.toml; not kept.
    #[arg(long, value_name = "NODE|newest")]
    pub prefer: Option<String>,
    /// For this run only: make the other node's tables an exact copy of NODE's, deleting the rows NODE
    /// lacks (after a node was restored from a backup or a dump: mirror the live one).
    #[arg(long, value_name = "NODE", conflicts_with = "prefer")]
    pub mirror: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Machine-readable output on stdout, with every differing key.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("winner").required(true).args(["prefer", "mirror"])))]
pub struct RepairArgs {
    /// Where both nodes hold a key with different rows, this node's row wins. Never deletes.
    #[arg(long, value_name = "NODE")]
    pub prefer: Option<String>,
    /// Make the other node an exact copy of this one, deleting its extra rows.
    #[arg(long, value_name = "NODE")]
    pub mirror: Option<String>,
    /// List what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Print the SQL that would run on each node; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove pgtwin even where changes still wait in the queue (they are lost).
    #[arg(long)]
    pub force: bool,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Drain both queues and exit: 0 when both are empty, 2 when a node is unreachable.
    #[arg(long)]
    pub once: bool,
    /// With --once: machine-readable output on stdout.
    #[arg(long, requires = "once")]
    pub json: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics and the status verdict on /healthz
    /// (e.g. 127.0.0.1:9187).
    #[arg(long, value_name = "ADDR", conflicts_with = "once")]
    pub metrics: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the servers running and print how to connect to them.
    #[arg(long)]
    pub keep: bool,
}
