//! Connections to a node: its connection parameters (found by `libpq`), connecting with bounded waits,
//! and the session settings every pgtwin connection runs with.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio_postgres::Client;

/// A node's libpq connection parameters, resolved (see `libpq::resolve`). Parameters other than the ones
/// named here pass through to postgres_fdw unchanged (sslmode, sslrootcert, target_session_attrs, ...).
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub params: BTreeMap<String, String>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnInfo({self})")
    }
}

/// Shows the URL with the password masked: safe for any output or log.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pw = if self.password.is_some() {
            ":********"
        } else {
            ""
        };
        write!(
            f,
            "postgres://{}{pw}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

impl ConnInfo {
    /// A connection string (URL or keyword/value pairs) taken alone: no environment, no service or
    /// password file. Config files go through `libpq::resolve` with the machine's environment.
    pub fn parse(text: &str) -> Result<ConnInfo, String> {
        crate::libpq::resolve(text, &|_: &str| None)
    }

    fn pg_config(&self, connect_timeout: Duration) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("pgtwin")
            .connect_timeout(connect_timeout);
        // libpq ignores sslmode on a Unix socket.
        let socket = self.host.starts_with('/');
        if let (false, Ok((mode, _))) = (
            socket,
            crate::tls::mode(self.params.get("sslmode").map(String::as_str)),
        ) {
            c.ssl_mode(mode);
        }
        if let Some(p) = &self.password {
            c.password(p);
        }
        if let Some(o) = self.params.get("options") {
            c.options(o);
        }
        // A connection whose peer vanished without a reset (network cut, host frozen) is noticed
        // within seconds, not after the kernel's two hours.
        // A URL's own values win, as on the foreign server.
        let param = |name: &str, default: u64| -> u64 {
            self.params
                .get(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        c.keepalives_idle(Duration::from_secs(param(
            "keepalives_idle",
            KEEPALIVE.idle_s,
        )))
        .keepalives_interval(Duration::from_secs(param(
            "keepalives_interval",
            KEEPALIVE.interval_s,
        )))
        .keepalives_retries(param("keepalives_count", KEEPALIVE.count.into()) as u32)
        .tcp_user_timeout(Duration::from_millis(param(
            "tcp_user_timeout",
            KEEPALIVE.tcp_user_timeout_ms,
        )));
        c
    }
}

/// TCP keepalive and unacknowledged-data limits on every connection to a node: pgtwin's own, and the
/// foreign server's (a write waiting on a peer that vanished fails, then queues, instead of hanging).
pub struct Keepalive {
    pub idle_s: u64,
    pub interval_s: u64,
    pub count: u32,
    pub tcp_user_timeout_ms: u64,
}

pub const KEEPALIVE: Keepalive = Keepalive {
    idle_s: 10,
    interval_s: 5,
    count: 3,
    tcp_user_timeout_ms: 30_000,
};

impl Keepalive {
    /// The same limits as libpq connection parameters.
    pub fn libpq_params(&self) -> [(&'static str, String); 4] {
        [
            ("keepalives_idle", self.idle_s.to_string()),
            ("keepalives_interval", self.interval_s.to_string()),
            ("keepalives_count", self.count.to_string()),
            ("tcp_user_timeout", self.tcp_user_timeout_ms.to_string()),
        ]
    }
}

/// Settings on every pgtwin session. `search_path` is pinned so catalog output (format_type, regclass)
/// comes back fully qualified; UTC and fixed date, interval and bytea styles make text output (keys, rows)
/// the same on both nodes; `pgtwin.origin` marks the session so the capture triggers do not ship
/// pgtwin's own writes (repair, merge) to the peer a second time. No JIT: pgtwin's statements are short,
/// or scans whose row estimates mislead it (`check` re-reading 100 buckets, estimated at 11 million
/// rows for 49,000, spent 100 of its 145 ms compiling).
const SESSION_SETUP: &str = "SET search_path = pg_catalog, pg_temp; SET TimeZone = 'UTC'; \
     SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'; \
     SET extra_float_digits = 3; SET lock_timeout = '5s'; SET jit = off; SET pgtwin.origin = 'pgtwin'";

type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
        tokio_postgres::Socket,
    >>::Stream,
>;

/// Opens a connection, bounded in time even against a peer that accepts TCP but never answers. The
/// caller drives the returned connection.
pub async fn open(node: &str, info: &ConnInfo, timeout: Duration) -> Result<(Client, Connection)> {
    let tls = crate::tls::connector(info).map_err(|e| anyhow!("node {node}: {e:#}"))?;
    tokio::time::timeout(timeout, info.pg_config(timeout).connect(tls))
        .await
        .map_err(|_| {
            anyhow!(
                "node {node}: no answer from {info} within {}s: check host and port",
                timeout.as_secs()
            )
        })?
        .map_err(|e| {
            let mut msg = pg_message(&e);
            if info.password.is_none() && msg.contains("password missing") {
                msg.push_str(": give it in the url, PGPASSWORD, the password file (~/.pgpass) or a service file");
            }
            anyhow!("node {node}: cannot connect to {info}: {msg}")
        })
}

/// Applies pgtwin's session settings (see SESSION_SETUP).
pub async fn setup_session(node: &str, client: &Client, timeout: Duration) -> Result<()> {
    // The server's side of the same limits: a session whose client host vanished (a runner's host
    // crashed or cut off) ends, and frees its locks, within seconds rather than the kernel's hours.
    let keepalive = format!(
        "{SESSION_SETUP}; SET tcp_keepalives_idle = {}; SET tcp_keepalives_interval = {}; \
         SET tcp_keepalives_count = {}; SET tcp_user_timeout = {}",
        KEEPALIVE.idle_s, KEEPALIVE.interval_s, KEEPALIVE.count, KEEPALIVE.tcp_user_timeout_ms
    );
    tokio::time::timeout(timeout, client.batch_execute(&keepalive))
        .await
        .map_err(|_| anyhow!("node {node}: no answer within {}s", timeout.as_secs()))?
        .map_err(on_node(node, "session setup"))
}

/// Connects to a node with pgtwin's session settings.
pub async fn connect(node: &str, info: &ConnInfo, timeout: Duration) -> Result<Client> {
    let (client, connection) = open(node, info, timeout).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection closed: {e}");
        }
    });
    setup_session(node, &client, timeout).await?;
    Ok(client)
}

/// One line from a tokio-postgres error: the server's message plus its detail and hint, if any.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        let mut s = db.message().to_string();
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    match e.source() {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

/// Wraps a tokio-postgres error with the node and what was being done, in one line.
pub fn on_node<'a>(
    node: &'a str,
    what: &str,
) -> impl FnOnce(tokio_postgres::Error) -> anyhow::Error + 'a {
    let what = what.to_string();
    move |e| anyhow!("node {node}: {what}: {}", pg_message(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_keeps_libpq_params() {
        let c = ConnInfo::parse(
            "postgres://app:s%40cret@db.example:5433/shop?sslmode=require&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, 5433);
        assert_eq!(c.user, "app");
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        assert_eq!(c.dbname, "shop");
        assert_eq!(c.params.get("sslmode").map(String::as_str), Some("require"));
        let sock = ConnInfo::parse("postgresql://app@/shop?host=/var/run/postgresql").unwrap();
        assert_eq!(sock.host, "/var/run/postgresql");
        assert_eq!(sock.password, None);
    }

    #[test]
    fn keepalive_limits_default_and_yield_to_the_url() {
        let timeout = Duration::from_secs(5);
        let plain = ConnInfo::parse("postgres://a@h/db")
            .unwrap()
            .pg_config(timeout);
        assert_eq!(
            plain.get_keepalives_idle(),
            Duration::from_secs(KEEPALIVE.idle_s)
        );
        assert_eq!(
            plain.get_tcp_user_timeout(),
            Some(&Duration::from_millis(KEEPALIVE.tcp_user_timeout_ms))
        );
        let own = ConnInfo::parse("postgres://a@h/db?keepalives_idle=7&tcp_user_timeout=900")
            .unwrap()
            .pg_config(timeout);
        assert_eq!(own.get_keepalives_idle(), Duration::from_secs(7));
        assert_eq!(
            own.get_tcp_user_timeout(),
            Some(&Duration::from_millis(900))
        );
    }

    #[test]
    fn display_masks_the_password() {
        let c = ConnInfo::parse("postgres://app:secret@h/db").unwrap();
        assert_eq!(c.to_string(), "postgres://app:********@h:5432/db");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn bad_urls_are_refused_without_echo() {
        for bad in [
            "mysql://a:secret@h/db",
            "postgres://:secret@h/db",
            "postgres://a:secret@h:xx/db",
            "postgres://a:secret@h/db?sslmode=sometimes",
        ] {
            let e = ConnInfo::parse(bad).unwrap_err();
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
