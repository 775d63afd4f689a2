//! `pgtwin.toml`: serde types, `${VAR}` expansion and validation. Everything here is checked before any
//! node is contacted, and every error names the key at fault.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::sql::ident::{Ident, QualName};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    nodes: BTreeMap<String, RawNode>,
    #[serde(default)]
    tables: Vec<RawTable>,
    #[serde(default)]
    options: Options,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    key: Option<Vec<String>>,
    newest_by: Option<String>,
    columns: Option<Vec<String>>,
    exclude_columns: Option<Vec<String>>,
    prefer: Option<String>,
    #[serde(default)]
    nodes: BTreeMap<String, RawTableOnNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTableOnNode {
    name: Option<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sync,
    Async,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPeerDown {
    Queue,
    Fail,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sequences {
    Interleave,
    None,
}

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    pub mode: Mode,
    pub on_peer_down: OnPeerDown,
    pub sequences: Sequences,
    /// How long a write applied on the peer may wait for a row lock there. Cross-server lock waits are
    /// deadlocks no server can detect, so this is what turns them into an error instead of a hang.
    pub lock_timeout_ms: u32,
    /// How long the peer-side session of a write may sit idle inside its transaction. It holds the row
    /// locks of the synced rows there; two transactions that each wait, on their own node, for a lock the
    /// other's peer-side session holds can only be untangled by ending one of those sessions.
    pub peer_idle_timeout_s: u32,
    /// How long a trigger (or pgtwin) waits for the peer to accept a connection.
    pub connect_timeout_s: u32,
    /// Oldest queued change allowed; past it, pgtwin stops queueing and marks the link as needing repair
    /// rather than let the queue grow without bound.
    pub max_queue_age_s: u32,
    /// Rows per round trip when shipping a statement's changes to the peer.
    pub batch_size: u32,
    /// The largest row (as text) that travels; a write of a larger one fails, naming the table and
    /// key. PostgreSQL holds no value over 1 GB, and a change is parsed again on the peer.
    pub max_row_mb: u32,
    /// Where `up` finds the same key with different rows on the two nodes: "NODE" (that node's row wins)
    /// or "newest" (by each table's `newest_by` column). Unset: `up` refuses such tables.
    pub prefer: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: Mode::Sync,
            on_peer_down: OnPeerDown::Queue,
            sequences: Sequences::Interleave,
            lock_timeout_ms: 2000,
            peer_idle_timeout_s: 60,
            connect_timeout_s: 5,
            batch_size: 1000,
            max_row_mb: 256,
            max_queue_age_s: 7 * 24 * 3600,
            prefer: None,
        }
    }
}

/// One node: its name and its connection parameters, resolved as libpq would.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub conn: crate::db::ConnInfo,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// The table's name as the config writes it: its name on every node that does not name it
    /// otherwise, and the name pgtwin's own objects for it are derived from (the same on both nodes).
    pub name: QualName,
    /// Key columns named in the config; `None` means the primary key.
    pub key: Option<Vec<Ident>>,
    /// Timestamp (or any ordered) column that decides `prefer = "newest"`.
    pub newest_by: Option<Ident>,
    /// Only these columns are synced (None: every column both nodes have).
    pub columns: Option<Vec<Ident>>,
    /// These columns are never synced.
    pub exclude_columns: Vec<Ident>,
    /// This table's merge policy for `up` (a node's name or "newest"); overrides `[options] prefer`.
    pub prefer: Option<String>,
    /// Per node: the table's own name there, and its columns named otherwise.
    pub on_node: BTreeMap<String, TableOnNode>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableOnNode {
    pub name: Option<QualName>,
    /// Column as the config names it → its name on this node.
    pub rename: BTreeMap<Ident, Ident>,
}

impl Table {
    /// The table's name on a node.
    pub fn name_on(&self, node: &str) -> &QualName {
        self.on_node
            .get(node)
            .and_then(|n| n.name.as_ref())
            .unwrap_or(&self.name)
    }

    /// A column (as the config names it) as it is named on a node.
    pub fn column_on(&self, node: &str, column: &Ident) -> Ident {
        self.on_node
            .get(node)
            .and_then(|n| n.rename.get(column))
            .unwrap_or(column)
            .clone()
    }

    /// A node's column as the config names it (the inverse of `column_on`).
    pub fn config_name(&self, node: &str, local: &Ident) -> Ident {
        self.on_node
            .get(node)
            .and_then(|n| n.rename.iter().find(|(_, l)| *l == local).map(|(c, _)| c))
            .unwrap_or(local)
            .clone()
    }

    /// Whether a column (as the config names it) is synced at all.
    pub fn syncs(&self, column: &Ident) -> bool {
        self.columns
            .as_ref()
            .is_none_or(|only| only.contains(column))
            && !self.exclude_columns.contains(column)
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Exactly two nodes, in name order (which is also their order for sequence interleaving).
    pub nodes: [Node; 2],
    pub tables: Vec<Table>,
    pub options: Options,
    /// For one `up` (`up --mirror`): the merge makes the other node an exact copy of the preferred one,
    /// deleting its extra rows. Never from the file.
    pub mirror: bool,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Config::parse(&text, crate::libpq::System)
            .with_context(|| format!("config {}", path.display()))
    }

    /// Parses and validates config text; `env` resolves `${VAR}` references and gives each node what
    /// its url leaves out, as libpq would (environment, service and password files, defaults).
    pub fn parse(text: &str, env: impl crate::libpq::Env) -> Result<Config> {
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                // toml's own message spans several lines with a source excerpt (which may hold a
                // password); keep its first line, after the path of the key at fault.
                let msg = e.inner().message().lines().next().unwrap_or("invalid TOML");
                let msg = hide_urls(msg);
                match e.path().to_string().as_str() {
                    "" | "." => anyhow::anyhow!("{msg}"),
                    path => anyhow::anyhow!("{path}: {msg}"),
                }
            })?;
        if raw.nodes.len() != 2 {
            bail!(
                "[nodes] must name exactly two nodes, found {}: add [nodes.NAME] sections with a url",
                raw.nodes.len()
            );
        }
        let mut nodes = Vec::new();
        for (name, node) in raw.nodes {
            if !is_node_name(&name) {
                bail!("[nodes.{name}]: a node name must be lower-case letters, digits and _, starting with a letter");
            }
            let url = expand_env(&node.url, &env)
                .map_err(|e| anyhow::anyhow!("[nodes.{name}] url: {e}"))?;
            let conn = crate::libpq::resolve(&url, &env)
                .map_err(|e| anyhow::anyhow!("[nodes.{name}] url: {e}"))?;
            // A node's connection settings become its peer's foreign server options, which every
            // role there can read (pg_foreign_server); only the user and password go to the user
            // mapping, which is private.
            if conn.params.contains_key("sslpassword") {
                bail!("[nodes.{name}] url: sslpassword would be stored in the peer's foreign server options, which every role there can read: give pgtwin a client key without a passphrase instead");
            }
            nodes.push(Node { name, conn });
        }
        let mut tables: Vec<Table> = Vec::new();
        for (i, t) in raw.tables.into_iter().enumerate() {
            let name = QualName::parse(&t.name)
                .map_err(|e| anyhow::anyhow!("[[tables]] #{}: name {e}", i + 1))?;
            if tables.iter().any(|other| other.name == name) {
                bail!("[[tables]] lists {name} twice: keep one entry");
            }
            let key = match t.key {
                None => None,
                Some(cols) if cols.is_empty() => {
                    bail!("[[tables]] {name}: key is empty: name its columns or leave key out")
                }
                Some(cols) => Some(
                    cols.iter()
                        .map(|c| {
                            Ident::parse(c)
                                .map_err(|e| anyhow::anyhow!("[[tables]] {name}: key {e}"))
                        })
                        .collect::<Result<Vec<_>>>()?,
                ),
            };
            let newest_by = t
                .newest_by
                .as_deref()
                .map(|c| {
                    Ident::parse(c).map_err(|e| anyhow::anyhow!("[[tables]] {name}: newest_by {e}"))
                })
                .transpose()?;
            let idents = |list: Option<Vec<String>>, what: &str| {
                list.unwrap_or_default()
                    .iter()
                    .map(|c| {
                        Ident::parse(c)
                            .map_err(|e| anyhow::anyhow!("[[tables]] {name}: {what} {e}"))
                    })
                    .collect::<Result<Vec<_>>>()
            };
            let only = t.columns.is_some();
            let columns = idents(t.columns, "columns")?;
            let exclude_columns = idents(t.exclude_columns, "exclude_columns")?;
            if only && !exclude_columns.is_empty() {
                bail!("[[tables]] {name}: columns and exclude_columns both set: keep one");
            }
            let mut on_node = BTreeMap::new();
            for (node, o) in t.nodes {
                if !nodes.iter().any(|n: &Node| n.name == node) {
                    bail!("[[tables]] {name}: nodes.{node} is not a node of [nodes]: fix the name");
                }
                let local = o
                    .name
                    .as_deref()
                    .map(|n| {
                        QualName::parse(n).map_err(|e| {
                            anyhow::anyhow!("[[tables]] {name}: nodes.{node}.name {e}")
                        })
                    })
                    .transpose()?;
                let mut rename = BTreeMap::new();
                for (from, to) in &o.rename {
                    let parse = |c: &str| {
                        Ident::parse(c).map_err(|e| {
                            anyhow::anyhow!("[[tables]] {name}: nodes.{node}.rename {e}")
                        })
                    };
                    rename.insert(parse(from)?, parse(to)?);
                }
                on_node.insert(
                    node,
                    TableOnNode {
                        name: local,
                        rename,
                    },
                );
            }
            let table = Table {
                name,
                key,
                newest_by,
                columns: only.then_some(columns),
                exclude_columns,
                prefer: t.prefer,
                on_node,
            };
            for k in table.key.iter().flatten() {
                if !table.syncs(k) {
                    bail!("[[tables]] {}: key column {k} is left out by columns/exclude_columns: a key is always synced", table.name);
                }
            }
            tables.push(table);
        }
        if tables.is_empty() {
            bail!("no [[tables]] to sync: add at least one [[tables]] entry with a name");
        }
        let o = &raw.options;
        if o.lock_timeout_ms == 0 {
            bail!("[options] lock_timeout_ms must be above 0: without it, cross-server lock waits can hang forever");
        }
        if o.peer_idle_timeout_s == 0 {
            bail!("[options] peer_idle_timeout_s must be above 0: without it, a cross-server lock wait can hang forever");
        }
        if o.connect_timeout_s == 0 {
            bail!("[options] connect_timeout_s must be above 0: without it, a silent peer blocks writers");
        }
        if o.max_queue_age_s == 0 {
            bail!("[options] max_queue_age_s must be above 0");
        }
        if o.mode == Mode::Async && o.on_peer_down == OnPeerDown::Fail {
            bail!("[options] on_peer_down = \"fail\" contradicts mode = \"async\" (async always queues): remove one");
        }
        if o.batch_size == 0 {
            bail!("[options] batch_size must be above 0");
        }
        if o.max_row_mb == 0 || o.max_row_mb > 512 {
            bail!(
                "[options] max_row_mb must be from 1 to 512: PostgreSQL holds no value over 1 GB"
            );
        }
        check_prefer(o.prefer.as_deref(), "[options] prefer", &nodes, &tables)?;
        for t in &tables {
            check_prefer(
                t.prefer.as_deref(),
                &format!("[[tables]] {} prefer", t.name),
                &nodes,
                std::slice::from_ref(t),
            )?;
        }
        let [a, b]: [Node; 2] = nodes.try_into().expect("two nodes checked above");
        Ok(Config {
            nodes: [a, b],
            tables,
            options: raw.options,
            mirror: false,
        })
    }

    /// How `up` merges a table whose rows differ between the nodes (None: it refuses).
    pub fn merge_policy(&self, table: &Table) -> Option<crate::data::merge::Policy> {
        use crate::data::merge::{Policy, Winner};
        let prefer = table.prefer.as_deref().or(self.options.prefer.as_deref())?;
        let winner = match prefer {
            "newest" => Winner::Newest(table.newest_by.clone()?),
            node => Winner::Node(self.nodes.iter().position(|n| n.name == node)?),
        };
        Some(Policy {
            winner,
            mirror: self.mirror,
        })
    }

    /// This config with every table's merge policy set to `prefer`, for one `up` (`up --prefer`).
    pub fn preferring(&self, prefer: &str) -> Result<Config> {
        check_prefer(Some(prefer), "--prefer", &self.nodes, &self.tables)?;
        let mut cfg = self.clone();
        for t in &mut cfg.tables {
            t.prefer = Some(prefer.to_string());
        }
        Ok(cfg)
    }

    /// This config for one `up` that makes the other node's tables an exact copy of `node`'s (`up
    /// --mirror`): after a node was restored from a backup or a dump, the live one is the truth, and rows
    /// deleted since the backup must not come back as a union would bring them.
    pub fn mirroring(&self, node: &str) -> Result<Config> {
        if !self.nodes.iter().any(|n| n.name == node) {
            bail!(
                "--mirror is not a node: name {} or {}",
                self.nodes[0].name,
                self.nodes[1].name
            );
        }
        let mut cfg = self.preferring(node)?;
        cfg.mirror = true;
        Ok(cfg)
    }

    /// The node with the given name.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes.iter().find(|n| n.name == name).with_context(|| {
            format!(
                "no node named {name:?}: the nodes are {} and {}",
                self.nodes[0].name, self.nodes[1].name
            )
        })
    }
}

/// A merge policy must name a node, or be "newest" with newest_by on every table it covers. The value
/// itself is never echoed: a URL pasted there by mistake would show its password.
fn check_prefer(prefer: Option<&str>, what: &str, nodes: &[Node], tables: &[Table]) -> Result<()> {
    match prefer {
        None => Ok(()),
        Some("newest") => match tables.iter().find(|t| t.newest_by.is_none()) {
            Some(t) => bail!(
                "{what} = \"newest\" needs newest_by = \"COLUMN\" (e.g. updated_at) on table {}",
                t.name
            ),
            None => Ok(()),
        },
        Some(node) if nodes.iter().any(|n| n.name == node) => Ok(()),
        Some(_) => bail!(
            "{what} is neither a node ({} or {}) nor \"newest\"",
            nodes[0].name,
            nodes[1].name
        ),
    }
}

/// Replaces the values quoted in an error message ("..." or `...`, as toml and serde quote them) that
/// look like a connection string (a URL, user@host, or keyword=value): it may hold a password.
fn hide_urls(msg: &str) -> String {
    let mut out = String::new();
    let mut rest = msg;
    while let Some(open) = rest.find(['"', '`']) {
        let quote = rest.as_bytes()[open] as char;
        let Some(len) = rest[open + 1..].find(quote) else {
            break;
        };
        let value = &rest[open + 1..open + 1 + len];
        let secret = value.contains("://") || value.contains('@') || value.contains('=');
        out.push_str(&rest[..=open]);
        out.push_str(if secret { "(value hidden)" } else { value });
        out.push(quote);
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

pub(crate) fn is_node_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 40
}

/// Replaces every `${VAR}` with the variable's value; a missing variable is an error naming it.
pub(crate) fn expand_env(text: &str, env: &impl crate::libpq::Env) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed ${ (write ${VAR})".to_string())?;
        let var = &after[..end];
        let value = env
            .var(var)
            .ok_or_else(|| format!("environment variable {var} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(var: &str) -> Option<String> {
        (var == "LEGACY_URL").then(|| "postgres://u:p@db:5433/legacy?sslmode=disable".to_string())
    }

    const GOOD: &str = r#"
        [nodes.shop]
        url = "postgres://app:secret@127.0.0.1:5432/shop"
        [nodes.legacy]
        url = "${LEGACY_URL}"

        [[tables]]
        name = "products"
        [[tables]]
        name = '"Sales Data"."Order Items"'
        key = ["order_id", '"Line"']
    "#;

    #[test]
    fn parses_the_contract_example() {
        let c = Config::parse(GOOD, env).unwrap();
        assert_eq!(c.nodes[0].name, "legacy");
        assert_eq!(c.nodes[1].name, "shop");
        assert_eq!(c.nodes[0].conn.port, 5433);
        assert_eq!(c.tables[0].name, QualName::new("public", "products"));
        assert_eq!(c.tables[1].name, QualName::new("Sales Data", "Order Items"));
        assert_eq!(
            c.tables[1].key,
            Some(vec![Ident::new("order_id"), Ident::new("Line")])
        );
        assert_eq!(c.options.mode, Mode::Sync);
        assert_eq!(c.options.sequences, Sequences::Interleave);
    }

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text, env).unwrap_err())
    }

    const MAPPED: &str = r#"
        [[tables]]
        name = "products"
        exclude_columns = ["cost"]
        [tables.nodes.legacy]
        name = "old.legacy_products"
        rename = { name = "title" }
    "#;

    #[test]
    fn a_table_maps_its_name_and_columns_per_node() {
        let base = GOOD.split("[[tables]]").next().unwrap();
        let c = Config::parse(&format!("{base}{MAPPED}"), env).unwrap();
        let t = &c.tables[0];
        assert_eq!(t.name_on("shop"), &QualName::new("public", "products"));
        assert_eq!(
            t.name_on("legacy"),
            &QualName::new("old", "legacy_products")
        );
        let name = Ident::new("name");
        assert_eq!(t.column_on("legacy", &name), Ident::new("title"));
        assert_eq!(t.column_on("shop", &name), name);
        assert_eq!(t.config_name("legacy", &Ident::new("title")), name);
        assert!(!t.syncs(&Ident::new("cost")) && t.syncs(&name));
    }

    #[test]
    fn a_tables_own_prefer_wins_over_the_options() {
        let text = format!("{GOOD}\n[options]\nprefer = \"shop\"",).replacen(
            "name = \"products\"",
            "name = \"products\"\n        prefer = \"legacy\"",
            1,
        );
        let c = Config::parse(&text, env).unwrap();
        use crate::data::merge::Winner;
        let winner = |t: usize| c.merge_policy(&c.tables[t]).unwrap().winner;
        assert!(matches!(winner(0), Winner::Node(0)), "legacy is node 0");
        assert!(matches!(winner(1), Winner::Node(1)), "shop is node 1");
        let e = err(&GOOD.replacen(
            "name = \"products\"",
            "name = \"products\"\n        prefer = \"postgres://u:pw@h/db\"",
            1,
        ));
        assert!(
            e.contains("prefer is neither a node") && !e.contains("pw@"),
            "{e}"
        );
    }

    #[test]
    fn a_key_passphrase_is_refused_not_stored_where_every_role_reads_it() {
        let e = err(&GOOD.replacen("5432/shop", "5432/shop?sslpassword=hunter2", 1));
        assert!(
            e.contains("sslpassword would be stored in the peer's foreign server options")
                && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn a_connection_string_in_the_wrong_key_is_never_echoed() {
        for value in ["postgres://u:hunter2@h/db", "host=h password=hunter2"] {
            let e = err(&format!("{GOOD}\n[options]\nmode = \"{value}\""));
            assert!(
                e.contains("options.mode")
                    && e.contains("(value hidden)")
                    && !e.contains("hunter2"),
                "{e}"
            );
        }
        // Other values are named, so the user sees what to fix.
        let e = err(&format!("{GOOD}\n[options]\nmode = \"sycn\""));
        assert!(e.contains("`sycn`"), "{e}");
    }

    #[test]
    fn mapping_errors_name_the_table_and_key() {
        let base = GOOD.split("[[tables]]").next().unwrap();
        let e = err(&format!(
            "{base}{}",
            MAPPED.replace("tables.nodes.legacy", "tables.nodes.legasy")
        ));
        assert!(e.contains("products") && e.contains("nodes.legasy"), "{e}");
        let e = err(&format!(
            "{base}{}",
            MAPPED.replace(
                "exclude_columns = [\"cost\"]",
                "exclude_columns = [\"id\"]\n        key = [\"id\"]"
            )
        ));
        assert!(e.contains("key column \"id\" is left out"), "{e}");
        let e = err(&format!(
            "{base}{}",
            MAPPED.replace(
                "exclude_columns",
                "columns = [\"id\"]\n        exclude_columns"
            )
        ));
        assert!(e.contains("columns and exclude_columns"), "{e}");
    }

    #[test]
    fn errors_name_the_key_at_fault() {
        assert!(err(&GOOD.replace(
            "[[tables]]\n        name = \"products\"",
            "[[tables]]\n        name = \"products\"\n        colour = 1"
        ))
        .contains("colour"));
        let e = err(&format!("{GOOD}\n[options]\nmode = \"eventually\""));
        assert!(
            e.contains("options.mode") && e.contains("eventually"),
            "{e}"
        );
        let e = err(&format!("{GOOD}\n[options]\nbatch_size = \"many\""));
        assert!(e.contains("options.batch_size"), "{e}");
        assert!(err(&GOOD.replace("${LEGACY_URL}", "${NOPE}")).contains("NOPE"));
        assert!(
            err(&GOOD.replace("[nodes.legacy]\n        url = \"${LEGACY_URL}\"", ""))
                .contains("exactly two")
        );
        assert!(err(&GOOD.replace("nodes.shop", "nodes.Shop")).contains("[nodes.Shop]"));
        assert!(err(&GOOD.replace("\"products\"", "\"a b\"")).contains("quote"));
        assert!(err(&format!("{GOOD}\n[[tables]]\nname = \"PRODUCTS\"")).contains("twice"));
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = err(&GOOD.replace("127.0.0.1:5432", "127.0.0.1:notaport"));
        assert!(e.contains("[nodes.shop]"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn a_node_takes_what_its_url_leaves_out_from_the_environment() {
        let text = GOOD.replace(
            "postgres://app:secret@127.0.0.1:5432/shop",
            "host=127.0.0.1 dbname=shop",
        );
        let env = |var: &str| match var {
            "PGUSER" => Some("app".to_string()),
            "PGPASSWORD" => Some("from-env".to_string()),
            other => env(other),
        };
        let c = Config::parse(&text, env).unwrap();
        let shop = &c.node("shop").unwrap().conn;
        assert_eq!(shop.user, "app");
        assert_eq!(shop.password.as_deref(), Some("from-env"));
        assert_eq!(
            c.node("legacy").unwrap().conn.password.as_deref(),
            Some("p")
        );
        let e = err(&GOOD.replace(
            "postgres://app:secret@127.0.0.1:5432/shop",
            "host=127.0.0.1 port=x password='s3 cret'",
        ));
        assert!(e.contains("[nodes.shop] url: port \"x\""), "{e}");
        assert!(!e.contains("s3") && !e.contains("cret"), "{e}");
    }

    #[test]
    fn type_errors_do_not_echo_urls() {
        let e = err("[nodes]\nshop = \"postgres://u:hunter2@h/db\"\nlegacy = \"x\"");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("(value hidden)"), "{e}");
    }

    #[test]
    fn env_expansion() {
        assert_eq!(
            expand_env("a${LEGACY_URL}b", &env).unwrap(),
            "apostgres://u:p@db:5433/legacy?sslmode=disableb"
        );
        assert!(expand_env("${OPEN", &env).is_err());
    }
}
