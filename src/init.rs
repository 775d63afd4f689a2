//! `pgtwin init`: a starter pgtwin.toml from two connection URLs. The tables both databases share that
//! pgtwin can sync, by the rules `up` applies (twin::inspect_table), become `[[tables]]`; the others are
//! listed as comments saying why; every option is there, commented out, with its default.

use std::collections::BTreeSet;
use std::ops::Range;

use anyhow::{anyhow, bail, Result};

use crate::catalog;
use crate::config::{self, Node, Options, Table};
use crate::db::ConnInfo;
use crate::problems::Problems;
use crate::sql::ident::{Ident, QualName};
use crate::twin::{self, Connected};

/// A node as given to `init`: `NAME=URL`, or a bare URL with a default name.
pub struct NodeArg {
    pub name: String,
    /// The URL as it goes into the file: as given, with a literal password replaced by `${password_var}`.
    pub url: String,
    /// The environment variable the file reads the password from, where the URL held one literally.
    pub password_var: Option<String>,
    /// Where to connect now (`${VAR}` expanded, the password as given).
    pub conn: ConnInfo,
}

impl NodeArg {
    pub fn node(&self) -> Node {
        Node {
            name: self.name.clone(),
            conn: self.conn.clone(),
        }
    }
}

/// Reads one `[NAME=]URL` argument. `${VAR}` in it is expanded to connect and written as given.
///
/// A literal password is never written: a config file ends up in repositories, backups and
/// screenshots, and putting a secret there should be a decision made in an editor, not a side effect
/// of `init`. The file reads it from `${PGTWIN_<NAME>_PASSWORD}` instead, and the command says so.
pub fn parse_node(
    arg: &str,
    default_name: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<NodeArg> {
    // A URL's own `=` comes after its "://" (or inside a ${VAR}), and a keyword/value string starts
    // with a libpq keyword (`host=...`), so any other prefix without ':' is a name.
    let (name, given) = match arg.split_once('=') {
        Some((name, url))
            if !name.contains(':') && !name.contains('$') && !crate::libpq::is_keyword(name) =>
        {
            (name, url)
        }
        _ => (default_name, arg),
    };
    // The name is not echoed: a mistyped argument may hold a password.
    if !config::is_node_name(name) {
        bail!("node {default_name}: the name before = must be lower-case letters, digits and _, starting with a letter (NAME=postgres://...)");
    }
    let expanded = config::expand_env(given, &env).map_err(|e| anyhow!("node {name}: {e}"))?;
    let conn = ConnInfo::parse(&expanded).map_err(|e| anyhow!("node {name}: {e}"))?;
    let var = format!("PGTWIN_{}_PASSWORD", name.to_uppercase());
    let mut url = given.to_string();
    let mut password_var = None;
    for span in password_spans(given).into_iter().rev() {
        if !span.is_empty() && !given[span.clone()].contains("${") {
            url.replace_range(span, &format!("${{{var}}}"));
            password_var = Some(var.clone());
        }
    }
    Ok(NodeArg {
        name: name.to_string(),
        url,
        password_var,
        conn,
    })
}

/// Where a connection string's text holds a password: in a URL after `user:` in its authority and
/// `password=` in its query; in a keyword/value string, the value of `password`.
fn password_spans(url: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return keyword_password_spans(url);
    };
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    // The userinfo ends at the authority's last '@' (as URL parsers read it).
    if let Some(at) = url[start..end].rfind('@') {
        if let Some(colon) = url[start..start + at].find(':') {
            out.push(start + colon + 1..start + at);
        }
    }
    if let Some(q) = url.find('?') {
        let mut pos = q + 1;
        for param in url[q + 1..].split(['&', '#']) {
            if param.starts_with("password=") {
                out.push(pos + "password=".len()..pos + param.len());
            }
            pos += param.len() + 1;
        }
    }
    out.sort_by_key(|r| r.start);
    out
}

/// The values (quotes included) of `password` in a keyword/value string: `key = value` pairs apart by
/// spaces, a value quoted with `'` where it holds spaces, `\` escaping within.
fn keyword_password_spans(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &text[key_start..i];
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'=') {
            i += 1;
        }
        let value_start = i;
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = i.min(bytes.len());
        }
        if key == "password" {
            out.push(value_start..i);
        }
    }
    out
}

/// A table found on the nodes, and what init makes of it.
pub enum Found {
    /// Synced: `key` where the primary key does not do, `drift` how many ways its columns differ.
    Synced {
        name: QualName,
        key: Option<Vec<Ident>>,
        drift: usize,
    },
    /// Left out, and why (one line per problem).
    Left { name: QualName, why: Vec<String> },
}

/// Every table of either node, in name order, judged by the rules `up` applies.
pub async fn discover(nodes: &[Connected; 2]) -> Result<Vec<Found>> {
    let mut on = Vec::new();
    for n in nodes {
        on.push(catalog::user_tables(n.name(), &n.db).await?);
    }
    let all: BTreeSet<&QualName> = on.iter().flatten().collect();
    let mut out = Vec::new();
    for name in all {
        let has = [on[0].contains(name), on[1].contains(name)];
        if has != [true, true] {
            let (here, there) = match has[0] {
                true => (nodes[0].name(), nodes[1].name()),
                false => (nodes[1].name(), nodes[0].name()),
            };
            out.push(Found::Left {
                name: name.clone(),
                why: vec![format!("{name} exists on node {here} only: create it on node {there} with the same key, or name its counterpart there with [tables.nodes.{there}] name = \"...\"")],
            });
            continue;
        }
        out.push(judge(nodes, name).await?);
    }
    Ok(out)
}

/// A table both nodes have: synced by its primary key, else by a unique index of NOT NULL columns that
/// works on both nodes, else left out with `up`'s own reason.
async fn judge(nodes: &[Connected; 2], name: &QualName) -> Result<Found> {
    let table = |key: Option<Vec<Ident>>| Table {
        name: name.clone(),
        key,
        newest_by: None,
        columns: None,
        exclude_columns: Vec::new(),
        prefer: None,
        on_node: Default::default(),
    };
    let why = match twin::inspect_table(nodes, &table(None)).await {
        Ok(pair) => {
            return Ok(Found::Synced {
                name: name.clone(),
                key: None,
                drift: pair.drift.len(),
            })
        }
        Err(e) => {
            let mut each = Problems::default();
            each.push_error(e);
            each.0
        }
    };
    for key in catalog::key_candidates(nodes[0].name(), &nodes[0].db, name).await? {
        if let Ok(pair) = twin::inspect_table(nodes, &table(Some(key.clone()))).await {
            return Ok(Found::Synced {
                name: name.clone(),
                key: Some(key),
                drift: pair.drift.len(),
            });
        }
    }
    Ok(Found::Left {
        name: name.clone(),
        why,
    })
}

/// Every `[options]` key with what it does, in the order the file lists them. (A unit test checks that
/// each option of `config::Options` is here.)
const OPTION_DOCS: &[(&str, &str)] = &[
    ("mode", "\"sync\": a change reaches the peer inside the writing transaction; \"async\": it is queued, and `pgtwin run` applies it"),
    ("on_peer_down", "sync mode, peer unreachable: \"queue\" (the write succeeds; `pgtwin run` replays it) or \"fail\""),
    ("sequences", "\"interleave\": node i of 2 hands out ids i, i+2, ... so inserts on both nodes never collide; or \"none\""),
    ("prefer", "up: where both nodes hold a key with different rows, this node's row wins (or \"newest\", by each table's newest_by); unset: up refuses such tables"),
    ("lock_timeout_ms", "how long a write applied on the peer waits for a row lock (a cross-server deadlock ends here)"),
    ("peer_idle_timeout_s", "how long the peer-side session of a write may sit idle in its transaction"),
    ("connect_timeout_s", "how long pgtwin and the triggers wait for the peer to accept a connection"),
    ("batch_size", "rows per round trip to the peer (a chunk also ends at 16 MB)"),
    ("max_row_mb", "a larger row (as text) fails its write, naming the table and key"),
    ("max_queue_age_s", "the oldest queued change allowed; past it, queueing stops and status says the link needs repair"),
];

/// The starter config: nodes, the tables found, the ones left out, and every option commented out.
pub fn render(nodes: &[NodeArg; 2], found: &[Found]) -> String {
    let (a, b) = (&nodes[0].name, &nodes[1].name);
    let mut out = String::from(
        "# Written by pgtwin init. Each node's URL serves pgtwin and the other node's server (postgres_fdw),\n\
         # so its host must be reachable from both. ${VAR} is read from the environment.\n",
    );
    for n in nodes {
        out += &format!("\n[nodes.{}]\n", n.name);
        if let Some(var) = &n.password_var {
            out += &format!(
                "# the password is read from ${{{var}}} (percent-encoded), never kept here\n"
            );
        }
        out += &format!("url = {}\n", toml_string(&n.url));
    }
    out += "\n# The tables both nodes have that pgtwin can sync as they are.\n";
    let mut first = true;
    for f in found {
        let Found::Synced { name, key, drift } = f else {
            continue;
        };
        out += &format!("\n[[tables]]\nname = {}\n", toml_string(&config_name(name)));
        if let Some(key) = key {
            out += "# no primary key both nodes share: keyed by a unique index of NOT NULL columns on both\n";
            out += &format!("key = {}\n", toml_list(key));
        }
        if *drift > 0 {
            out += &format!("# its columns differ between the nodes in {drift} way(s): the shared ones sync (pgtwin check lists them)\n");
        }
        if first {
            out += &table_options(a, b);
            first = false;
        }
    }
    if first {
        out += "# (none: add [[tables]] entries with a name)\n";
    }
    let left: Vec<(&QualName, &Vec<String>)> = found
        .iter()
        .filter_map(|f| match f {
            Found::Left { name, why } => Some((name, why)),
            Found::Synced { .. } => None,
        })
        .collect();
    if !left.is_empty() {
        out += "\n# Left out; uncomment an entry once what its comment says is settled.\n";
        for (name, why) in left {
            out += "\n";
            for line in why {
                out += &format!("# {line}\n");
            }
            out += &format!(
                "# [[tables]]\n# name = {}\n",
                toml_string(&config_name(name))
            );
        }
    }
    out += "\n[options]\n";
    let defaults = toml::Value::try_from(Options::default()).expect("options serialize");
    for (key, doc) in OPTION_DOCS {
        let value = match defaults.get(key) {
            Some(v) => v.to_string(),
            None => toml_string(a),
        };
        out += &format!("# {doc}\n# {key} = {value}\n");
    }
    out
}

/// The options a table may set, commented out (written once, under the first table).
fn table_options(a: &str, b: &str) -> String {
    format!(
        "# Options of a table (each table may set its own):\n\
         # the columns of a unique index of NOT NULL columns that name a row (default: the primary key)\n\
         # key = [\"id\"]\n\
         # the column whose later value wins for prefer = \"newest\"\n\
         # newest_by = \"updated_at\"\n\
         # up: this table's own prefer (a node, or \"newest\")\n\
         # prefer = \"{a}\"\n\
         # only these columns sync (or exclude_columns = [...]: all but these)\n\
         # columns = [\"id\", \"name\"]\n\
         # where node {b} names things otherwise: the table's name there, and columns as named above = there\n\
         # [tables.nodes.{b}]\n\
         # name = \"legacy.products\"\n\
         # rename = {{ name = \"title\" }}\n"
    )
}

/// A table's name as the config reads it: bare where SQL needs no quotes, schema `public` left out.
fn config_name(q: &QualName) -> String {
    match q.schema.as_str() {
        "public" => config_ident(&q.name),
        _ => format!("{}.{}", config_ident(&q.schema), config_ident(&q.name)),
    }
}

fn config_ident(i: &Ident) -> String {
    let s = i.as_str();
    let bare = s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    match bare {
        true => s.to_string(),
        false => i.to_string(),
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_list(idents: &[Ident]) -> String {
    toml::Value::Array(
        idents
            .iter()
            .map(|i| toml::Value::String(config_ident(i)))
            .collect(),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_literal_password_becomes_a_variable_and_the_rest_stays_as_given() {
        let n = parse_node(
            "shop=postgres://app:p%40ss@db:5433/shop?sslmode=require",
            "a",
            no_env,
        )
        .unwrap();
        assert_eq!(n.name, "shop");
        assert_eq!(
            n.url,
            "postgres://app:${PGTWIN_SHOP_PASSWORD}@db:5433/shop?sslmode=require"
        );
        assert_eq!(n.conn.password.as_deref(), Some("p@ss"));
        let n = parse_node(
            "postgres://app@db/shop?password=x&sslmode=disable",
            "b",
            no_env,
        )
        .unwrap();
        assert_eq!(n.name, "b");
        assert_eq!(
            n.url,
            "postgres://app@db/shop?password=${PGTWIN_B_PASSWORD}&sslmode=disable"
        );
        // Written as given: no password in the text, or one behind a variable already.
        let env = |v: &str| (v == "PW").then(|| "secret".to_string());
        let n = parse_node("a=postgres://app:${PW}@db/shop", "a", env).unwrap();
        assert_eq!(n.url, "postgres://app:${PW}@db/shop");
        assert!(n.password_var.is_none() && n.conn.password.as_deref() == Some("secret"));
        let n = parse_node("postgres://app@db/shop", "a", no_env).unwrap();
        assert!(n.password_var.is_none());
        // Errors name the node, never the text.
        for bad in [
            "Shop=postgres://u:hunter2@h/db",
            "postgres://u:hunter2@h:x/db",
        ] {
            let e = format!("{:#}", parse_node(bad, "a", no_env).err().unwrap());
            assert!(e.contains("node a") && !e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn a_keyword_value_string_is_not_taken_for_a_name_and_its_password_is_not_written() {
        let n = parse_node(
            "host=db1 user=app password='it\\'s x' dbname=shop",
            "a",
            no_env,
        )
        .unwrap();
        assert_eq!(n.name, "a");
        assert_eq!(
            n.url,
            "host=db1 user=app password=${PGTWIN_A_PASSWORD} dbname=shop"
        );
        assert_eq!(n.conn.password.as_deref(), Some("it's x"));
        let n = parse_node(
            "legacy=host=db2 user=u password=plain dbname=old",
            "b",
            no_env,
        )
        .unwrap();
        assert_eq!(n.name, "legacy");
        assert_eq!(
            n.url,
            "host=db2 user=u password=${PGTWIN_LEGACY_PASSWORD} dbname=old"
        );
        let n = parse_node("host=db3 dbname=x user=u", "b", no_env).unwrap();
        assert!(n.password_var.is_none() && n.url == "host=db3 dbname=x user=u");
    }

    fn arg(name: &str) -> NodeArg {
        parse_node(
            &format!("{name}=postgres://twin:pw@h/db{name}"),
            "x",
            no_env,
        )
        .unwrap()
    }

    #[test]
    fn the_starter_parses_with_every_option_at_its_default() {
        let found = vec![
            Found::Synced {
                name: QualName::new("public", "products"),
                key: None,
                drift: 0,
            },
            Found::Synced {
                name: QualName::new("Sales Data", "Order \"Items\""),
                key: Some(vec![Ident::new("code"), Ident::new("Line")]),
                drift: 2,
            },
            Found::Left {
                name: QualName::new("public", "audit"),
                why: vec!["table audit has no primary key".into()],
            },
        ];
        let text = render(&[arg("shop"), arg("legacy")], &found);
        assert!(!text.contains(":pw@"), "{text}");
        let env = |v: &str| v.ends_with("_PASSWORD").then(|| "pw".to_string());
        let c = Config::parse(&text, env).unwrap();
        assert_eq!(c.tables.len(), 2);
        assert_eq!(
            c.tables[1].name,
            QualName::new("Sales Data", "Order \"Items\"")
        );
        assert_eq!(
            c.tables[1].key,
            Some(vec![Ident::new("code"), Ident::new("Line")])
        );
        assert!(
            text.contains("# table audit has no primary key\n# [[tables]]\n# name = \"audit\"\n")
        );
        // Every option is documented, and uncommented it is the default.
        let defaults = toml::Value::try_from(Options::default()).unwrap();
        for key in defaults.as_table().unwrap().keys() {
            assert!(
                OPTION_DOCS.iter().any(|(k, _)| k == key),
                "option {key} missing from init's list"
            );
        }
        let options = text.split("[options]\n").nth(1).unwrap();
        let uncommented: String = options
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = ") && !l.starts_with("prefer"))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::parse(&text.replace(options, &uncommented), env).unwrap();
        assert_eq!(
            toml::Value::try_from(&c.options).unwrap(),
            defaults,
            "{uncommented}"
        );
    }
}
