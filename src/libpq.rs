//! Where a node's connection parameters come from, by libpq's rules, so a config may hold no password:
//! the string (a URL or keyword/value pairs) first, then the service file, then PG* environment
//! variables, then libpq's defaults; a password still missing comes from the password file. Everything
//! outside the string is read through `Env`, so these rules are tested without touching the machine.
//! (PostgreSQL manual: 32.1.1 Connection Strings, 32.15 Environment Variables, 32.16 The Password
//! File, 32.17 The Connection Service File; libpq's `fe-connect.c`.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::db::ConnInfo;

/// What libpq reads besides the connection string. `System` is the machine; tests bring their own.
pub trait Env {
    /// An environment variable.
    fn var(&self, name: &str) -> Option<String>;
    /// A file's kind and permission bits; None when it does not exist.
    fn stat(&self, path: &Path) -> Option<Stat>;
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// The name of the OS user running pgtwin: libpq's default user name.
    fn os_user(&self) -> Option<String>;
    /// That user's home directory in the user database, where libpq looks when `$HOME` is unset.
    fn user_home(&self) -> Option<PathBuf>;
    /// Something the person running pgtwin should know (libpq prints it on stderr).
    fn warn(&self, message: &str);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub plain_file: bool,
    /// Permission bits (`st_mode & 0o777`).
    pub mode: u32,
}

/// The machine's environment, files and user.
pub struct System;

impl Env for System {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn stat(&self, path: &Path) -> Option<Stat> {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Stat {
            plain_file: m.is_file(),
            mode: m.permissions().mode() & 0o777,
        })
    }

    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn os_user(&self) -> Option<String> {
        // getpwuid(geteuid()), as libpq.
        whoami::username().ok()
    }

    fn user_home(&self) -> Option<PathBuf> {
        // libpq asks getpwuid; /etc/passwd answers the same for local users, which is where a process
        // without $HOME (a service) usually runs.
        let user = self.os_user()?;
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 6 && fields[0] == user).then(|| PathBuf::from(fields[5]))
        })
    }

    fn warn(&self, message: &str) {
        // Both nodes usually share one password file: one warning about it is enough.
        static SAID: std::sync::Mutex<std::collections::BTreeSet<String>> =
            std::sync::Mutex::new(std::collections::BTreeSet::new());
        if SAID
            .lock()
            .map_or(true, |mut said| said.insert(message.to_string()))
        {
            tracing::warn!("{message}");
        }
    }
}

/// A closure is an environment of variables alone: no files, no OS user (as `Config::parse` is called
/// for generated configs and in tests).
impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
    fn stat(&self, _: &Path) -> Option<Stat> {
        None
    }
    fn read(&self, _: &Path) -> std::io::Result<String> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn os_user(&self) -> Option<String> {
        None
    }
    fn user_home(&self) -> Option<PathBuf> {
        None
    }
    fn warn(&self, message: &str) {
        tracing::warn!("{message}");
    }
}

/// Debian builds libpq with its socket directory here (upstream's default is /tmp): psql with no host
/// connects to /var/run/postgresql/.s.PGSQL.5432.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// Debian's libpq looks for the system-wide pg_service.conf here when PGSYSCONFDIR is unset.
const SYSCONFDIR: &str = "/etc/postgresql-common";
const DEFAULT_PORT: &str = "5432";

/// libpq's keywords (up to PostgreSQL 18), each with its environment variable.
const KEYWORDS: [(&str, Option<&str>); 50] = [
    ("service", Some("PGSERVICE")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("dbname", Some("PGDATABASE")),
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("client_encoding", Some("PGCLIENTENCODING")),
    ("options", Some("PGOPTIONS")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("tcp_user_timeout", None),
    ("sslmode", Some("PGSSLMODE")),
    ("sslnegotiation", Some("PGSSLNEGOTIATION")),
    ("sslcompression", Some("PGSSLCOMPRESSION")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslcertmode", Some("PGSSLCERTMODE")),
    ("sslpassword", None),
    ("sslkeylogfile", None),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcrl", Some("PGSSLCRL")),
    ("sslcrldir", Some("PGSSLCRLDIR")),
    ("sslsni", Some("PGSSLSNI")),
    ("requirepeer", Some("PGREQUIREPEER")),
    ("require_auth", Some("PGREQUIREAUTH")),
    ("min_protocol_version", Some("PGMINPROTOCOLVERSION")),
    ("max_protocol_version", Some("PGMAXPROTOCOLVERSION")),
    ("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    ("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    ("gssencmode", Some("PGGSSENCMODE")),
    ("krbsrvname", Some("PGKRBSRVNAME")),
    ("gsslib", Some("PGGSSLIB")),
    ("gssdelegation", Some("PGGSSDELEGATION")),
    ("replication", None),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
    ("scram_client_key", None),
    ("scram_server_key", None),
    ("oauth_issuer", None),
    ("oauth_client_id", None),
    ("oauth_client_secret", None),
    ("oauth_scope", None),
];

/// Keywords pgtwin does not take from the environment although libpq does: pgtwin names its sessions
/// and sets their encoding itself, and its own connections cannot present client certificates or read
/// revocation lists, so those variables count as little as libpq's default files under ~/.postgresql,
/// which pgtwin does not read either. (Written in the string or a service entry, they are refused.)
const NOT_FROM_ENV: [&str; 6] = [
    "client_encoding",
    "application_name",
    "sslcert",
    "sslkey",
    "sslcrl",
    "sslcrldir",
];

/// Every environment variable libpq reads for a connection (the ones pgtwin ignores included): a test
/// that wants none of the developer's clears these.
pub fn environment_variables() -> impl Iterator<Item = &'static str> {
    KEYWORDS
        .iter()
        .filter_map(|(_, var)| *var)
        .chain(["PGSERVICEFILE", "PGSYSCONFDIR"])
}

/// Whether `word` is one of libpq's connection keywords (`host`, `dbname`, ...).
pub fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|(k, _)| *k == word)
}

/// Keywords and their values, as a connection string or service entry sets them.
type Params = BTreeMap<String, String>;

/// Resolves a node's connection string into everything pgtwin needs, as libpq would. Errors never
/// echo the string or a password.
pub fn resolve(text: &str, env: &impl Env) -> Result<ConnInfo, String> {
    let mut p = parse(text)?;
    apply_service(&mut p, env)?;
    for (keyword, var) in KEYWORDS {
        if let (Some(var), false) = (var, NOT_FROM_ENV.contains(&keyword)) {
            if !p.contains_key(keyword) {
                if let Some(value) = env.var(var) {
                    p.insert(keyword.to_string(), value);
                }
            }
        }
    }
    // As libpq, an empty value counts as none from here on (`host=''` still kept PGHOST out, above).
    let take = |p: &mut Params, k: &str| p.remove(k).filter(|v| !v.is_empty());
    p.remove("service");
    let passfile = take(&mut p, "passfile");
    // A host-less string with hostaddr connects (and finds its password) by that address.
    let hostaddr = p.get("hostaddr").filter(|a| !a.is_empty()).cloned();
    let host = take(&mut p, "host")
        .or(hostaddr)
        .unwrap_or_else(|| DEFAULT_SOCKET_DIR.to_string());
    let port_text = take(&mut p, "port").unwrap_or_else(|| DEFAULT_PORT.to_string());
    if host.contains(',') || port_text.contains(',') {
        return Err("several hosts or ports are not supported: name one host and one port".into());
    }
    let port = port_text
        .parse()
        .map_err(|_| format!("port {port_text:?} is not a number"))?;
    let user = match take(&mut p, "user") {
        Some(u) => u,
        None => env
            .os_user()
            .ok_or("no user name: write user=NAME (or postgres://USER@HOST/DB), or set PGUSER")?,
    };
    let dbname = take(&mut p, "dbname").unwrap_or_else(|| user.clone());
    let password = match take(&mut p, "password") {
        Some(pw) => Some(pw),
        None => passfile
            .map(PathBuf::from)
            .or_else(|| home(env).map(|h| h.join(".pgpass")))
            .and_then(|file| password_from_file(&file, [&host, &port_text, &dbname, &user], env)),
    };
    crate::tls::mode(p.get("sslmode").map(String::as_str))?;
    for reserved in ["client_encoding", "fallback_application_name"] {
        if p.contains_key(reserved) {
            return Err(format!("parameter {reserved} is set by pgtwin: remove it"));
        }
    }
    Ok(ConnInfo {
        host,
        port,
        user,
        password,
        dbname,
        params: p,
    })
}

/// libpq's home: `$HOME`, else the user database's.
fn home(env: &impl Env) -> Option<PathBuf> {
    env.var("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| env.user_home())
}

/// A URL (`postgres://` or `postgresql://`) or else keyword/value pairs, as libpq tells them apart.
fn parse(text: &str) -> Result<Params, String> {
    for prefix in ["postgresql://", "postgres://"] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return parse_url(rest);
        }
    }
    if let Some((scheme, _)) = text.trim_start().split_once("://") {
        if !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        {
            return Err(format!(
                "scheme {scheme:?} is not postgres:// or postgresql://"
            ));
        }
    }
    parse_kv(text)
}

/// libpq's whitespace (C `isspace`).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

const KV_HELP: &str = "write keyword=value pairs separated by spaces; a value with spaces goes in single quotes, with \\' for a quote and \\\\ for a backslash";

/// `keyword=value ...` as libpq's `conninfo_parse` reads it: spaces around `=` allowed, a value in
/// single quotes may hold spaces, a backslash takes the next character as it is (in quotes or not).
/// Errors count pairs rather than quote them: a misquoted value would show in the keyword.
fn parse_kv(text: &str) -> Result<Params, String> {
    let mut params = Params::new();
    let mut chars = text.chars().peekable();
    let skip_spaces = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        while chars.next_if(|c| is_space(*c)).is_some() {}
    };
    for n in 1.. {
        skip_spaces(&mut chars);
        if chars.peek().is_none() {
            break;
        }
        let mut keyword = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !is_space(*c)) {
            keyword.push(c);
        }
        skip_spaces(&mut chars);
        if chars.next() != Some('=') {
            return Err(format!("pair #{n} has no \"=\": {KV_HELP}"));
        }
        skip_spaces(&mut chars);
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("pair #{n}: its quote is never closed: {KV_HELP}")),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !is_space(*c)) {
                match c {
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        }
        if !is_keyword(&keyword) {
            return Err(format!(
                "pair #{n} is not a libpq keyword (host, port, dbname, user, password, sslmode, ...): fix its name"
            ));
        }
        params.insert(keyword, value);
    }
    Ok(params)
}

/// The part of a URL after `postgres://`, as libpq's `conninfo_uri_parse_options` reads it:
/// `[user[:password]@][host][:port][/dbname][?keyword=value&...]`, %-escapes decoded, a host in
/// brackets for IPv6.
fn parse_url(rest: &str) -> Result<Params, String> {
    let mut params = Params::new();
    let mut set = |k: &str, v: &str, what: &str| -> Result<(), String> {
        if !v.is_empty() {
            params.insert(k.to_string(), decode(v, what)?);
        }
        Ok(())
    };
    let end_of_authority = rest.find(['/', '?']).unwrap_or(rest.len());
    let (userinfo, hostport) = match rest[..end_of_authority].find('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        set("user", user, "the user name")?;
        if let Some(p) = password {
            set("password", p, "the password")?;
        }
    }
    let (host, after_host) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let close = bracketed
            .find(']')
            .ok_or("an IPv6 host has no closing \"]\"")?;
        if close == 0 {
            return Err("an IPv6 host in [] is empty".into());
        }
        (&bracketed[..close], &bracketed[close + 1..])
    } else {
        let end = hostport.find([':', '/', '?']).unwrap_or(hostport.len());
        (&hostport[..end], &hostport[end..])
    };
    if host.contains(',') || after_host.starts_with(',') {
        return Err("several hosts are not supported: name one host".into());
    }
    set("host", host, "the host")?;
    let after_port = match after_host.strip_prefix(':') {
        Some(p) => {
            let end = p.find(['/', '?']).unwrap_or(p.len());
            set("port", &p[..end], "the port")?;
            &p[end..]
        }
        None if after_host.is_empty() || after_host.starts_with(['/', '?']) => after_host,
        None => return Err("the host must be followed by :PORT, /DBNAME or ?".into()),
    };
    let query = match after_port.strip_prefix('/') {
        Some(path) => {
            let (db, query) = match path.split_once('?') {
                Some((db, q)) => (db, Some(q)),
                None => (path, None),
            };
            // An empty dbname is no dbname, so PGDATABASE still counts (as in libpq).
            set("dbname", db, "the database name")?;
            query
        }
        None => after_port.strip_prefix('?'),
    };
    for (n, pair) in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        let what = format!("query parameter #{}", n + 1);
        let (k, v) = pair
            .split_once('=')
            .filter(|(_, v)| !v.contains('='))
            .ok_or_else(|| format!("{what} is not keyword=value"))?;
        let (k, v) = (decode(k, &what)?, decode(v, &what)?);
        // libpq's one alias, for JDBC-style URLs.
        let (k, v) = if k == "ssl" && v == "true" {
            ("sslmode".to_string(), "require".to_string())
        } else {
            (k, v)
        };
        if !is_keyword(&k) {
            return Err(format!(
                "{what} is not a libpq keyword (sslmode, sslrootcert, connect_timeout, ...): fix its name"
            ));
        }
        params.insert(k, v);
    }
    Ok(params)
}

/// %XX escapes, as libpq: no other escape, no `+` for space, no %00.
fn decode(s: &str, what: &str) -> Result<String, String> {
    let bad = || format!("{what} has a bad %-escape (write %XX, XX hexadecimal, not 00)");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
            if b == 0 {
                return Err(bad());
            }
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{what} is not UTF-8 once decoded"))
}

/// Fills what the string left out from its service entry (`service=NAME`, else `PGSERVICE`): the
/// file `PGSERVICEFILE` names (which must exist) or `~/.pg_service.conf`, then
/// `$PGSYSCONFDIR/pg_service.conf`; the first file holding the entry is the only one read.
fn apply_service(p: &mut Params, env: &impl Env) -> Result<(), String> {
    let Some(name) = p.get("service").cloned().or_else(|| env.var("PGSERVICE")) else {
        return Ok(());
    };
    let mut searched = Vec::new();
    let user_file = match env.var("PGSERVICEFILE") {
        Some(file) => Some((PathBuf::from(file), true)),
        None => home(env).map(|h| (h.join(".pg_service.conf"), false)),
    };
    let sysconfdir = env
        .var("PGSYSCONFDIR")
        .unwrap_or_else(|| SYSCONFDIR.to_string());
    let files = user_file
        .into_iter()
        .chain([(Path::new(&sysconfdir).join("pg_service.conf"), false)]);
    for (file, must_exist) in files {
        if !must_exist && env.stat(&file).is_none() {
            continue;
        }
        let text = env.read(&file).map_err(|e| match must_exist {
            true => format!(
                "PGSERVICEFILE names {}, which cannot be read ({e}): fix the variable or the file",
                file.display()
            ),
            false => format!("service file {} cannot be read ({e})", file.display()),
        })?;
        if service_entry(&text, &name, &file, p)? {
            return Ok(());
        }
        searched.push(file.display().to_string());
    }
    Err(format!(
        "service {name:?} is not defined{}: add a [{name}] section to ~/.pg_service.conf (or the file PGSERVICEFILE names), or fix the name",
        if searched.is_empty() {
            " (no service file found)".to_string()
        } else {
            format!(" in {}", searched.join(" or "))
        }
    ))
}

/// Reads the `[name]` section of a service file into `p`, keeping what `p` already has; false if the
/// file has no such section. Lines are `keyword=value` exactly (no spaces around `=`, no quoting), as
/// libpq's `parseServiceFile` reads them. Errors name the file and line, never the line's text.
fn service_entry(text: &str, name: &str, file: &Path, p: &mut Params) -> Result<bool, String> {
    let mut found = false;
    for (n, line) in text.lines().enumerate() {
        let at = || format!("service file {}, line {}", file.display(), n + 1);
        let line = line.trim_matches(is_space);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(group) = line.strip_prefix('[') {
            if found {
                break;
            }
            found = group
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(']'));
            continue;
        }
        if !found {
            continue;
        }
        if line.starts_with("ldap") {
            return Err(format!(
                "{}: LDAP lookups are not supported by pgtwin: write the parameters there",
                at()
            ));
        }
        let Some((keyword, value)) = line.split_once('=') else {
            return Err(format!("{}: not keyword=value", at()));
        };
        if keyword == "service" {
            return Err(format!("{}: a service cannot name another service", at()));
        }
        if !is_keyword(keyword) {
            return Err(format!(
                "{}: not a libpq keyword (no spaces around \"=\")",
                at()
            ));
        }
        p.entry(keyword.to_string())
            .or_insert_with(|| value.to_string());
    }
    Ok(found)
}

/// The password of the first line of the password file matching host, port, database and user, as
/// libpq's `passwordFromFile` finds it. A file that group or others may access is ignored, with a
/// warning that names it.
fn password_from_file(path: &Path, wanted: [&str; 4], env: &impl Env) -> Option<String> {
    let [host, port, dbname, user] = wanted;
    // libpq: "localhost" matches the default socket directory (and only that socket directory).
    let host = if host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        host
    };
    let stat = env.stat(path)?;
    if !stat.plain_file {
        env.warn(&format!(
            "password file \"{}\" is not a plain file: ignored",
            path.display()
        ));
        return None;
    }
    if stat.mode & 0o077 != 0 {
        env.warn(&format!(
            "password file \"{}\" has group or world access: ignored; permissions should be u=rw (0600) or less (chmod 600 it)",
            path.display()
        ));
        return None;
    }
    // A file libpq cannot open is ignored in silence.
    let text = env.read(path).ok()?;
    pgpass_lookup(&text, [host, port, dbname, user]).filter(|pw| !pw.is_empty())
}

/// `hostname:port:database:username:password` lines; `*` matches anything, `\:` and `\\` stand for `:`
/// and `\`, `#` starts a comment line; the first match wins (even with an empty password).
fn pgpass_lookup(text: &str, wanted: [&str; 4]) -> Option<String> {
    'lines: for line in text.split('\n') {
        if line.starts_with('#') {
            continue;
        }
        let mut rest = line.trim_end_matches(['\r', '\n']).as_bytes();
        if rest.is_empty() {
            continue;
        }
        for field in wanted {
            match field_matches(rest, field.as_bytes()) {
                Some(after) => rest = after,
                None => continue 'lines,
            }
        }
        let mut password = Vec::new();
        let mut i = 0;
        while i < rest.len() && rest[i] != b':' {
            if rest[i] == b'\\' && i + 1 < rest.len() {
                i += 1;
            }
            password.push(rest[i]);
            i += 1;
        }
        return String::from_utf8(password).ok();
    }
    None
}

/// Whether a line starts with a field matching `token`; returns what follows its `:`. libpq's
/// `pwdfMatchesString`.
fn field_matches<'a>(buf: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
    if buf.starts_with(b"*:") {
        return Some(&buf[2..]);
    }
    let (mut b, mut t) = (0, 0);
    while b < buf.len() {
        let escaped = buf[b] == b'\\';
        if escaped {
            b += 1;
        }
        let c = buf.get(b).copied();
        if c == Some(b':') && t == token.len() && !escaped {
            return Some(&buf[b + 1..]);
        }
        if t == token.len() || c != Some(token[t]) {
            return None;
        }
        b += 1;
        t += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// An environment in memory: variables, files with their permission bits, an OS user.
    #[derive(Default)]
    struct Fake {
        vars: BTreeMap<String, String>,
        files: BTreeMap<PathBuf, (String, Stat)>,
        user: Option<String>,
        passwd_home: Option<PathBuf>,
        warnings: RefCell<Vec<String>>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                user: Some("alice".into()),
                ..Fake::default()
            }
        }
        fn with_var(mut self, name: &str, value: &str) -> Fake {
            self.vars.insert(name.into(), value.into());
            self
        }
        fn with_file(mut self, path: &str, text: &str, mode: u32) -> Fake {
            let stat = Stat {
                plain_file: true,
                mode,
            };
            self.files.insert(path.into(), (text.into(), stat));
            self
        }
        fn warnings(&self) -> Vec<String> {
            self.warnings.borrow().clone()
        }
    }

    impl Env for Fake {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned()
        }
        fn stat(&self, path: &Path) -> Option<Stat> {
            self.files.get(path).map(|(_, s)| *s)
        }
        fn read(&self, path: &Path) -> std::io::Result<String> {
            self.files
                .get(path)
                .map(|(t, _)| t.clone())
                .ok_or_else(|| std::io::ErrorKind::NotFound.into())
        }
        fn os_user(&self) -> Option<String> {
            self.user.clone()
        }
        fn user_home(&self) -> Option<PathBuf> {
            self.passwd_home.clone()
        }
        fn warn(&self, message: &str) {
            self.warnings.borrow_mut().push(message.into());
        }
    }

    fn ok(text: &str, env: &Fake) -> ConnInfo {
        resolve(text, env).unwrap()
    }

    /// Fails, and the message holds none of the `secrets`.
    #[track_caller]
    fn err(text: &str, env: &Fake, secrets: &[&str]) -> String {
        let e = resolve(text, env).unwrap_err();
        for s in secrets {
            assert!(!e.contains(s), "{s:?} shown in: {e}");
        }
        e
    }

    fn param<'a>(c: &'a ConnInfo, k: &str) -> Option<&'a str> {
        c.params.get(k).map(String::as_str)
    }

    #[test]
    fn keyword_value_strings_follow_libpq_quoting() {
        let env = Fake::new();
        let c = ok(
            r"host=db1 port=5433 dbname=app user=sync password='it\'s a \\ pw' sslmode=require target_session_attrs=read-write",
            &env,
        );
        assert_eq!(
            (c.host.as_str(), c.port, c.dbname.as_str(), c.user.as_str()),
            ("db1", 5433, "app", "sync")
        );
        assert_eq!(c.password.as_deref(), Some(r"it's a \ pw"));
        assert_eq!(param(&c, "sslmode"), Some("require"));
        assert_eq!(param(&c, "target_session_attrs"), Some("read-write"));
        // Spaces around "=", tabs and newlines between pairs, a backslash outside quotes, a quote inside
        // an unquoted value, quotes right after another value; the last of a repeated keyword wins.
        let c = ok(
            "host = h\tuser= u\n password=a\\ b'c dbname=x dbname='y'options='-c a=1'",
            &env,
        );
        assert_eq!((c.host.as_str(), c.user.as_str()), ("h", "u"));
        assert_eq!(c.password.as_deref(), Some("a b'c"));
        assert_eq!(c.dbname, "y");
        assert_eq!(param(&c, "options"), Some("-c a=1"));
        // Doubled quotes are SQL's, not libpq's: 'don''t' ends at the second quote, and "t'" is no pair.
        let e = err("host=h password='don''t'", &env, &["don", "t'"]);
        assert!(
            e.contains("pair #3") && e.contains(r"\' for a quote"),
            "{e}"
        );
    }

    #[test]
    fn keyword_value_errors_count_pairs_and_show_no_value() {
        let env = Fake::new();
        for (bad, pair) in [
            (
                "host=h password='s3cret",
                "pair #2: its quote is never closed",
            ),
            ("host=h password=s3 cret", "pair #3 has no \"=\""),
            (
                "host=h password=s3 cret=x",
                "pair #3 is not a libpq keyword",
            ),
            (
                "host=h sslmod=require password=s3cret",
                "pair #2 is not a libpq keyword",
            ),
            ("s3cret", "pair #1 has no \"=\""),
        ] {
            let e = err(bad, &env, &["s3", "cret"]);
            assert!(e.contains(pair), "{bad}: {e}");
        }
        let e = err("host=h port=54x32 password=s3cret", &env, &["s3cret"]);
        assert!(e.contains("port \"54x32\" is not a number"), "{e}");
        let e = err("host=a,b password=s3cret", &env, &["s3cret"]);
        assert!(e.contains("several hosts"), "{e}");
        let e = err(
            "host=h password=s3cret sslmode=sometimes",
            &env,
            &["s3cret"],
        );
        assert!(e.contains("sslmode"), "{e}");
        let e = err(
            "host=h password=s3cret client_encoding=latin1",
            &env,
            &["s3cret"],
        );
        assert!(e.contains("client_encoding is set by pgtwin"), "{e}");
    }

    #[test]
    fn urls_follow_libpq() {
        let env = Fake::new();
        let c = ok("postgresql://u:p%40ss+word@[::1]:5433/d%20b?sslmode=require&ssl=true&connect_timeout=3", &env);
        assert_eq!(
            (c.host.as_str(), c.port, c.dbname.as_str()),
            ("::1", 5433, "d b")
        );
        // %-escapes decoded; "+" is no space in libpq.
        assert_eq!(c.password.as_deref(), Some("p@ss+word"));
        assert_eq!(param(&c, "sslmode"), Some("require"));
        assert_eq!(param(&c, "connect_timeout"), Some("3"));
        let c = ok("postgres://u@/db?host=%2Ftmp%2Fsock", &env);
        assert_eq!(c.host, "/tmp/sock");
        // A query parameter wins over the part it repeats.
        assert_eq!(ok("postgres://u@h/db?user=v&port=6000", &env).user, "v");
        assert_eq!(ok("postgres://h", &env).dbname, "alice");
        for (bad, says) in [
            (
                "postgres://u:s3cret@h/db?sslmod=require",
                "query parameter #1 is not a libpq keyword",
            ),
            (
                "postgres://u:s3cret@h/db?a=b=c",
                "query parameter #1 is not keyword=value",
            ),
            (
                "postgres://u:s3cret%zz@h/db",
                "the password has a bad %-escape",
            ),
            ("postgres://u:s3cret@[::1/db", "no closing"),
            ("postgres://u:s3cret@h1,h2/db", "several hosts"),
            ("mysql://u:s3cret@h/db", "scheme \"mysql\""),
        ] {
            let e = err(bad, &env, &["s3cret"]);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn defaults_are_debians_libpq() {
        let c = ok("", &Fake::new());
        assert_eq!(c.host, "/var/run/postgresql");
        assert_eq!(c.port, 5432);
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("alice", "alice"));
        assert_eq!(c.password, None);
        assert!(c.params.is_empty());
        // No OS user known (a closure environment): the user must be written.
        let e = resolve("host=h", &|_: &str| None).unwrap_err();
        assert!(e.contains("no user name") && e.contains("PGUSER"), "{e}");
        // Empty values count as none; a hostaddr stands in for a missing host.
        let c = ok("host='' port='' user='' hostaddr=10.0.0.9", &Fake::new());
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str()),
            ("10.0.0.9", 5432, "alice")
        );
        assert_eq!(param(&c, "hostaddr"), Some("10.0.0.9"));
    }

    const SERVICES: &str = "# shared services\n[other]\nhost=elsewhere\n\n  [app]  \n host=svc-host \nport=6000\nuser=svc-user\npassword=svc-pw\nsslmode=verify-full\ndbname=svc-db\nport=6001\n[next]\nhost=nope\n";

    fn layered() -> Fake {
        Fake::new()
            .with_var("HOME", "/home/alice")
            .with_file("/home/alice/.pg_service.conf", SERVICES, 0o644)
            .with_var("PGHOST", "env-host")
            .with_var("PGPORT", "7000")
            .with_var("PGUSER", "env-user")
            .with_var("PGDATABASE", "env-db")
            .with_var("PGPASSWORD", "env-pw")
            .with_var("PGSSLMODE", "disable")
            .with_var("PGTARGETSESSIONATTRS", "read-write")
    }

    #[test]
    fn precedence_is_string_then_service_then_environment_then_defaults() {
        let env = layered();
        let c = ok("service=app host=str-host", &env);
        assert_eq!(c.host, "str-host", "the string wins");
        assert_eq!(c.port, 6000, "then the service entry, its first port");
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("svc-user", "svc-db"));
        assert_eq!(c.password.as_deref(), Some("svc-pw"));
        assert_eq!(param(&c, "sslmode"), Some("verify-full"));
        assert_eq!(
            param(&c, "target_session_attrs"),
            Some("read-write"),
            "then the environment"
        );
        assert!(
            !c.params.contains_key("service"),
            "the service is resolved here, not on the peer"
        );
        // Without a service, the environment fills everything the string leaves out.
        let c = ok("postgres://h/db", &env);
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str()),
            ("h", 7000, "env-user")
        );
        assert_eq!(
            (c.dbname.as_str(), c.password.as_deref()),
            ("db", Some("env-pw"))
        );
        assert_eq!(param(&c, "sslmode"), Some("disable"));
        // PGSERVICE names the service when the string does not; an explicit empty host still keeps
        // PGHOST out (then defaults), as in libpq.
        let c = ok("host=''", &env.with_var("PGSERVICE", "app"));
        assert_eq!((c.host.as_str(), c.port), ("/var/run/postgresql", 6000));
    }

    #[test]
    fn some_variables_libpq_reads_are_left_to_pgtwin() {
        let env = Fake::new()
            .with_var("PGCLIENTENCODING", "LATIN1")
            .with_var("PGAPPNAME", "mine")
            .with_var("PGSSLCERT", "/c.crt")
            .with_var("PGSSLKEY", "/c.key")
            .with_var("PGOPTIONS", "-c work_mem=64MB");
        let c = ok("host=h", &env);
        assert_eq!(
            c.params.keys().collect::<Vec<_>>(),
            vec!["options"],
            "only the variables pgtwin can honour"
        );
    }

    #[test]
    fn service_files_are_searched_as_libpq_does() {
        let sys = "[app]\nhost=sys-host\n[sysonly]\nhost=sys-only\n";
        let env = Fake::new()
            .with_var("HOME", "/home/alice")
            .with_file("/home/alice/.pg_service.conf", SERVICES, 0o600)
            .with_file("/etc/postgresql-common/pg_service.conf", sys, 0o644);
        // The user's file holds [app]: the system file is not read for it.
        assert_eq!(ok("service=app", &env).host, "svc-host");
        assert_eq!(ok("service=sysonly", &env).host, "sys-only");
        let e = err("service=nope password=s3cret", &env, &["s3cret"]);
        assert!(
            e.contains("service \"nope\" is not defined in /home/alice/.pg_service.conf or /etc/postgresql-common/pg_service.conf"),
            "{e}"
        );
        // PGSERVICEFILE replaces ~/.pg_service.conf and must exist; PGSYSCONFDIR moves the other.
        let env = env
            .with_var("PGSERVICEFILE", "/srv/services")
            .with_file("/srv/services", "[app]\nhost=file-host\n", 0o600)
            .with_var("PGSYSCONFDIR", "/opt/pg")
            .with_file(
                "/opt/pg/pg_service.conf",
                "[sysonly]\nhost=opt-host\n",
                0o644,
            );
        assert_eq!(ok("service=app", &env).host, "file-host");
        assert_eq!(ok("service=sysonly", &env).host, "opt-host");
        let env = env.with_var("PGSERVICEFILE", "/srv/missing");
        let e = err("service=app", &env, &[]);
        assert!(
            e.contains("PGSERVICEFILE names /srv/missing, which cannot be read"),
            "{e}"
        );
        let e = err("service=app", &Fake::new(), &[]);
        assert!(
            e.contains("(no service file found)") && e.contains("[app]"),
            "{e}"
        );
    }

    #[test]
    fn service_file_errors_name_file_and_line_only() {
        for (text, says) in [
            ("[app]\nhost = h\n", "line 2: not a libpq keyword"),
            ("[app]\n\npassword s3cret\n", "line 3: not keyword=value"),
            (
                "[app]\nservice=other\n",
                "line 2: a service cannot name another service",
            ),
            (
                "[app]\nldap://ldap.example/s3cret\n",
                "line 2: LDAP lookups are not supported",
            ),
        ] {
            let env = Fake::new()
                .with_file("/s", text, 0o600)
                .with_var("PGSERVICEFILE", "/s");
            let e = err("service=app", &env, &["s3cret"]);
            assert!(e.contains(&format!("service file /s, {says}")), "{e}");
        }
        // Errors in other sections do not matter.
        let env = Fake::new()
            .with_file("/s", "[x]\nbad line\n[app]\nhost=h\n", 0o600)
            .with_var("PGSERVICEFILE", "/s");
        assert_eq!(ok("service=app", &env).host, "h");
    }

    const PGPASS: &str = "# comment:*:*:*:not-this\n\
        db.example:5432:shop:app:first\n\
        db.example:5432:shop:app:second\n\
        *:6000:*:app:any-host\n\
        h\\:x:5432:d\\\\b:u:escaped\\:pw\\\\x:ignored-field\r\n\
        localhost:5432:local:app:by-socket\n\
        /tmp/sock:5432:local:app:by-path\n\
        db.example:5432:empty:app:\n\
        db.example:5432:empty:*:never\n\
        *:*:*:*:fallback";

    fn with_pgpass(mode: u32) -> Fake {
        Fake::new()
            .with_var("HOME", "/home/alice")
            .with_file("/home/alice/.pgpass", PGPASS, mode)
    }

    fn found(text: &str, env: &Fake) -> Option<String> {
        ok(text, env).password
    }

    #[test]
    fn the_password_file_matches_as_libpq() {
        let env = with_pgpass(0o600);
        let pw = |text: &str| found(text, &env);
        assert_eq!(
            pw("host=db.example dbname=shop user=app").as_deref(),
            Some("first")
        );
        assert_eq!(
            pw("host=anything port=6000 dbname=x user=app").as_deref(),
            Some("any-host")
        );
        assert_eq!(
            pw(r"host=h:x dbname=d\\b user=u").as_deref(),
            Some(r"escaped:pw\x")
        );
        // The default socket directory is "localhost"; another socket directory is its own path.
        assert_eq!(pw("dbname=local user=app").as_deref(), Some("by-socket"));
        assert_eq!(
            pw("host=localhost dbname=local user=app").as_deref(),
            Some("by-socket")
        );
        assert_eq!(
            pw("host=/tmp/sock dbname=local user=app").as_deref(),
            Some("by-path")
        );
        // The first match wins even when its password is empty: then there is none.
        assert_eq!(pw("host=db.example dbname=empty user=app"), None);
        // Fields compare whole: a prefix or a longer value is no match.
        assert_eq!(
            pw("host=db.example dbname=sho user=app").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            pw("host=db.example dbname=shops user=app").as_deref(),
            Some("fallback")
        );
        // A password from the string, the service or PGPASSWORD comes first; an empty one does not.
        assert_eq!(
            pw("host=db.example dbname=shop user=app password=given").as_deref(),
            Some("given")
        );
        let env = with_pgpass(0o600).with_var("PGPASSWORD", "env-pw");
        assert_eq!(
            found("host=db.example dbname=shop user=app", &env).as_deref(),
            Some("env-pw")
        );
        assert_eq!(
            found(
                "host=db.example dbname=shop user=app password=''",
                &with_pgpass(0o600)
            )
            .as_deref(),
            Some("first")
        );
        assert!(env.warnings().is_empty());
    }

    #[test]
    fn the_password_file_is_found_where_libpq_looks() {
        let at = |path: &str| Fake::new().with_file(path, "*:*:*:*:pw", 0o600);
        let plain = "host=h dbname=d user=u";
        // passfile= beats PGPASSFILE, which beats ~/.pgpass; $HOME beats the user database's home.
        let env = at("/a/pass")
            .with_file("/b/pass", "*:*:*:*:from-b", 0o600)
            .with_var("PGPASSFILE", "/b/pass");
        assert_eq!(
            found("passfile=/a/pass host=h", &env).as_deref(),
            Some("pw")
        );
        assert_eq!(found(plain, &env).as_deref(), Some("from-b"));
        let mut env = at("/home/alice/.pgpass");
        env.passwd_home = Some("/home/alice".into());
        assert_eq!(found(plain, &env).as_deref(), Some("pw"));
        let env = env.with_var("HOME", "/elsewhere");
        assert_eq!(found(plain, &env), None);
        assert!(!ok("passfile=/a/pass host=h", &at("/a/pass"))
            .params
            .contains_key("passfile"));
    }

    #[test]
    fn a_password_file_others_may_read_is_ignored_with_a_warning() {
        for mode in [0o640, 0o604, 0o610, 0o700 | 0o001] {
            let env = with_pgpass(mode);
            assert_eq!(
                found("host=db.example dbname=shop user=app", &env),
                None,
                "{mode:o}"
            );
            let w = env.warnings();
            assert_eq!(w.len(), 1);
            assert!(
                w[0].contains("\"/home/alice/.pgpass\" has group or world access"),
                "{w:?}"
            );
            assert!(w[0].contains("chmod 600"), "{w:?}");
            assert!(
                !w[0].contains("first") && !w[0].contains("db.example"),
                "{w:?}"
            );
        }
        assert_eq!(
            found("host=db.example dbname=shop user=app", &with_pgpass(0o400)).as_deref(),
            Some("first")
        );
        let mut env = with_pgpass(0o600);
        env.files
            .get_mut(Path::new("/home/alice/.pgpass"))
            .unwrap()
            .1
            .plain_file = false;
        assert_eq!(found("host=db.example dbname=shop user=app", &env), None);
        assert!(env.warnings()[0].contains("is not a plain file"));
    }

    #[test]
    fn environment_variables_cover_the_files_too() {
        let vars: Vec<_> = environment_variables().collect();
        for v in [
            "PGPASSWORD",
            "PGPASSFILE",
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGSYSCONFDIR",
            "PGUSER",
        ] {
            assert!(vars.contains(&v), "{v}");
        }
    }
}
