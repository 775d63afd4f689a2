//! Two real PostgreSQL servers per test binary (started once, stopped when the binary exits), and a fresh
//! pair of databases per test. Nodes are named `a` and `b`; pgtwin runs as `twin`, a non-superuser that
//! owns the tables; `app` is an application role that may only write them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgtwin::localpg::LocalServer;
use tokio_postgres::{Client, NoTls};

pub const TWIN_PW: &str = "twin-pw-S3cr3t";
pub const APP_PW: &str = "app-pw";

pub struct Servers {
    pub nodes: [LocalServer; 2],
    /// The CA that signed the servers' TLS certificate (which names `localhost` only). The servers
    /// accept TLS, and pgtwin's connections and the foreign servers use it, as libpq's default
    /// sslmode=prefer does.
    pub tls_cert: PathBuf,
    /// A CA that signed nothing the servers use.
    pub other_ca: PathBuf,
    _dir: tempfile::TempDir,
}

static SERVERS: OnceLock<Servers> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn servers() -> &'static Servers {
    SERVERS.get_or_init(|| {
        // Started on a plain thread: this may be called from inside a test's tokio runtime.
        std::thread::spawn(|| {
            let dir = tempfile::Builder::new().prefix("pgtwin-test-").tempdir().unwrap();
            let (tls_cert, server_cert, server_key) = test_certificates(dir.path());
            let tls = [
                "ssl = on".to_string(),
                format!("ssl_cert_file = '{}'", server_cert.display()),
                format!("ssl_key_file = '{}'", server_key.display()),
            ];
            let start = |name: &str| {
                // The extensions that record nested statements, for the test that turns them on in
                // its own database (tests/security.rs; it fails where pgaudit is missing).
                let preload = if has_pgaudit() {
                    "shared_preload_libraries = 'pg_stat_statements, pgaudit'"
                } else {
                    "shared_preload_libraries = 'pg_stat_statements'"
                };
                // Prepared transactions on, for the test that tries two-phase commit on synced tables.
                let mut settings = vec![
                    "fsync = off",
                    "max_connections = 300",
                    "max_prepared_transactions = 10",
                    preload,
                ];
                settings.extend(tls.iter().map(String::as_str));
                let s = LocalServer::start(&dir.path().join(name), &settings)
                    .expect("start test server (are PostgreSQL server binaries installed? run ./scripts/test)");
                s.stop_when_process_ends(std::process::id()).unwrap();
                s
            };
            let nodes = [start("a"), start("b")];
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                for s in &nodes {
                    let admin = s.connect("postgres").await.unwrap();
                    admin
                        .batch_execute(&format!(
                            "CREATE ROLE twin LOGIN PASSWORD '{TWIN_PW}'; CREATE ROLE app LOGIN PASSWORD '{APP_PW}'"
                        ))
                        .await
                        .unwrap();
                }
            });
            remove_when_process_ends(dir.path());
            let other_ca = dir.path().join("other-ca.crt");
            Servers { nodes, tls_cert, other_ca, _dir: dir }
        })
        .join()
        .expect("test servers")
    })
}

/// Dumps database `db` of `from` with pg_dump and restores it into database `into` of `to` (which
/// must exist), as a user would: the whole dump, pgtwin's objects and the peer's user mapping included.
pub fn copy_database(from: &LocalServer, db: &str, to: &LocalServer, into: &str) {
    restore_dump(to, into, &dump_database(from, db, &[]));
}

/// A plain-format pg_dump of database `db` of `server`, as the superuser, with `args` added.
pub fn dump_database(server: &LocalServer, db: &str, args: &[&str]) -> Vec<u8> {
    let bin = pgtwin::localpg::find_bin_dir().unwrap();
    let dump = Command::new(bin.join("pg_dump"))
        .args(["-h", "127.0.0.1", "-p"])
        .arg(server.port.to_string())
        .args(["-U", "postgres"])
        .args(args)
        .arg(db)
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    dump.stdout
}

/// Runs a plain-format dump into database `into` of `server` with psql, as the superuser, stopping at
/// the first error.
pub fn restore_dump(server: &LocalServer, into: &str, dump: &[u8]) {
    let bin = pgtwin::localpg::find_bin_dir().unwrap();
    let mut restore = Command::new(bin.join("psql"))
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
        .arg(server.port.to_string())
        .args(["-U", "postgres", "-d", into])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    restore.stdin.take().unwrap().write_all(dump).unwrap();
    let out = restore.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the servers' PostgreSQL has pgaudit (scripts/ensure-postgres installs it).
pub fn has_pgaudit() -> bool {
    pgtwin::localpg::find_bin_dir()
        .map(|bin| bin.join("../lib/pgaudit.so").exists())
        .unwrap_or(false)
}

/// Removes the servers' directory once this test binary has exited and the watchdogs stopped the
/// servers: a static's TempDir is never dropped, and hundreds of 400 MB data directories fill a disk.
fn remove_when_process_ends(dir: &std::path::Path) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {} 2>/dev/null; do sleep 0.3; done; sleep 5; rm -rf '{}'",
            std::process::id(),
            dir.display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// A fresh database on each server, owned by `twin`, with postgres_fdw created by the superuser.
pub struct Pair {
    pub db: String,
    /// Connections as `twin` (the tables' owner), plain: their writes are synced like an app's.
    pub owner: [Client; 2],
    pub admin: [Client; 2],
    pub dir: tempfile::TempDir,
}

pub const NODES: [&str; 2] = ["a", "b"];

async fn connect(url: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

impl Pair {
    pub async fn new() -> Pair {
        Pair::with_extension(true).await
    }

    pub async fn with_extension(create_extension: bool) -> Pair {
        let s = servers();
        let db = format!(
            "t{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut admins = Vec::new();
        let mut owners = Vec::new();
        for server in &s.nodes {
            let root = server.connect("postgres").await.unwrap();
            root.batch_execute(&format!("CREATE DATABASE {db} OWNER twin"))
                .await
                .unwrap();
            let admin = server.connect(&db).await.unwrap();
            if create_extension {
                admin
                    .batch_execute("CREATE EXTENSION postgres_fdw; GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO twin")
                    .await
                    .unwrap();
            }
            admins.push(admin);
            owners.push(connect(&server.url("twin", Some(TWIN_PW), &db)).await);
        }
        Pair {
            db,
            owner: owners.try_into().ok().unwrap(),
            admin: admins.try_into().ok().unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// New connections to node i (after its server was restarted).
    pub async fn reconnect(&mut self, i: usize) {
        self.admin[i] = servers().nodes[i].connect(&self.db).await.unwrap();
        self.owner[i] = connect(&self.url(i)).await;
    }

    pub fn url(&self, i: usize) -> String {
        servers().nodes[i].url("twin", Some(TWIN_PW), &self.db)
    }

    pub fn app_url(&self, i: usize) -> String {
        servers().nodes[i].url("app", Some(APP_PW), &self.db)
    }

    /// Changes waiting in node i's queue for its peer.
    /// Polls node i's rows of `table` until `done` holds for them, at most 15 s (a runner in the
    /// background carries them); returns them.
    pub async fn rows_until(
        &self,
        i: usize,
        table: &str,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let started = Instant::now();
        loop {
            let rows = self.rows(i, table).await;
            if done(&rows) {
                return rows;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "node {} {table}: {rows:?}",
                NODES[i]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Changes waiting in node i's queue, read as pgtwin reads them.
    pub async fn queued(&self, i: usize) -> i64 {
        pgtwin::state::queued_rows(NODES[i], &self.admin[i])
            .await
            .unwrap()
    }

    /// A new connection to node i as the tables' owner (for a task of its own).
    pub async fn owner_connection(&self, i: usize) -> Client {
        connect(&self.url(i)).await
    }

    pub async fn app(&self, i: usize) -> Client {
        connect(&self.app_url(i)).await
    }

    /// Runs the same SQL on both nodes as the owner (e.g. CREATE TABLE before `up`).
    pub async fn both(&self, sql: &str) {
        for c in &self.owner {
            c.batch_execute(sql).await.unwrap();
        }
    }

    /// Writes pgtwin.toml with both nodes and the given `[[tables]]`/`[options]` text; returns its path.
    pub fn config(&self, rest: &str) -> PathBuf {
        let text = format!(
            "[nodes.a]\nurl = \"{}\"\n[nodes.b]\nurl = \"{}\"\n\n{rest}\n",
            self.url(0),
            self.url(1)
        );
        self.config_text(&text)
    }

    pub fn config_text(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("pgtwin.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs the pgtwin binary with this pair's config, bounded in time.
    pub fn pgtwin(&self, args: &[&str]) -> Run {
        pgtwin(&self.dir.path().join("pgtwin.toml"), args)
    }

    /// `pgtwin conflicts --json`, and the reasons of the changes set aside, oldest first.
    pub fn set_aside(&self) -> (serde_json::Value, Vec<String>) {
        let listed: serde_json::Value =
            serde_json::from_str(&self.pgtwin(&["conflicts", "--json"]).ok().stdout).unwrap();
        let reasons = listed["set_aside"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        (listed, reasons)
    }

    /// Every row of a table on node i, as text, sorted: what "identical" means in these tests.
    pub async fn rows(&self, i: usize, table: &str) -> Vec<String> {
        self.admin[i]
            .query(
                &format!("SELECT row_::text FROM {table} row_ ORDER BY 1"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// The rows of a query on node i, each as text, in the query's order (a query naming its columns
    /// compares nodes whose columns are in another order).
    pub async fn rows_of(&self, i: usize, sql: &str) -> Vec<String> {
        self.admin[i]
            .query(&format!("SELECT row_::text FROM ({sql}) row_"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Asserts a query gives the same rows on both nodes; returns them.
    pub async fn assert_same_rows_of(&self, sql: &str) -> Vec<String> {
        let (a, b) = (self.rows_of(0, sql).await, self.rows_of(1, sql).await);
        assert_eq!(a, b, "{sql}: the nodes differ");
        a
    }

    /// Asserts both nodes hold the same rows; returns them.
    pub async fn assert_same(&self, table: &str) -> Vec<String> {
        let (a, b) = (self.rows(0, table).await, self.rows(1, table).await);
        assert_eq!(a, b, "{table} differs between the nodes");
        a
    }

    /// Asserts nothing pgtwin creates is left on either node.
    pub async fn assert_clean(&self) {
        for (i, admin) in self.admin.iter().enumerate() {
            let row = admin
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'pgtwin'),
                            (SELECT count(*) FROM pg_foreign_server WHERE srvname = 'pgtwin_peer'),
                            (SELECT count(*) FROM pg_user_mappings WHERE srvname = 'pgtwin_peer'),
                            (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgtwin%'),
                            (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgtwin'),
                            (SELECT count(*) FROM pg_foreign_table)",
                    &[],
                )
                .await
                .unwrap();
            let counts: Vec<i64> = (0..6).map(|c| row.get(c)).collect();
            assert_eq!(counts, vec![0; 6], "node {}: pgtwin objects left (schema, server, mapping, triggers, functions, foreign tables)", NODES[i]);
        }
    }

    /// Whether pgtwin is installed on node i.
    pub async fn installed(&self, i: usize) -> bool {
        self.admin[i]
            .query_one("SELECT to_regclass('pgtwin.installation') IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0)
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "pgtwin failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Exit 2 with exactly one line on stderr, which must contain every `needle`.
    #[track_caller]
    pub fn fails_with(self, needles: &[&str]) -> Run {
        assert_eq!(
            self.code, 2,
            "expected exit 2:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "stderr must be one line: {}",
            self.stderr
        );
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr lacks {n:?}: {}",
                self.stderr
            );
        }
        self.assert_no_password();
        self
    }
}

impl Run {
    #[track_caller]
    fn assert_no_password(&self) {
        for secret in [TWIN_PW, APP_PW] {
            assert!(
                !self.stderr.contains(secret) && !self.stdout.contains(secret),
                "password in output"
            );
        }
    }

    /// Exit 2 with one `error:` line per problem: as many lines as `problems`, each line holding every
    /// needle of one of them; no password anywhere.
    #[track_caller]
    pub fn fails_with_each(self, problems: &[&[&str]]) -> Run {
        assert_eq!(
            self.code, 2,
            "expected exit 2:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let lines: Vec<&str> = self.stderr.trim_end().lines().collect();
        assert_eq!(
            lines.len(),
            problems.len(),
            "one line per problem:\n{}",
            self.stderr
        );
        for needles in problems {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with("error: ") && needles.iter().all(|n| l.contains(n))),
                "no line holds {needles:?}:\n{}",
                self.stderr
            );
        }
        self.assert_no_password();
        self
    }
}

pub fn pgtwin(config: &std::path::Path, args: &[&str]) -> Run {
    pgtwin_env(config, args, &[])
}

/// Runs the pgtwin binary with none of the developer's libpq settings (every variable libpq reads is
/// removed, HOME names a directory that does not exist, so no ~/.pgpass or ~/.pg_service.conf), then
/// `env` set.
pub fn pgtwin_env(config: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let started = Instant::now();
    let mut cmd = pgtwin_command(config, args);
    cmd.envs(env.iter().copied());
    let out: Output = run_with_timeout(cmd, Duration::from_secs(60));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// The pgtwin binary with a config and arguments, in an environment without the developer's libpq
/// variables or home (a `~/.pgpass` or `PGSERVICE` there must not decide a test).
pub fn pgtwin_command(config: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = scrubbed_pgtwin();
    cmd.arg("-c").arg(config).args(args);
    cmd
}

/// The pgtwin binary without the developer's libpq variables or home (see pgtwin_command).
pub fn scrubbed_pgtwin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgtwin"));
    for var in pgtwin::libpq::environment_variables() {
        cmd.env_remove(var);
    }
    cmd.env("HOME", "/nonexistent");
    cmd
}

/// A `pgtwin` process in the background, killed if the test ends first. What it logs goes to a file
/// (`log()` reads it so far).
pub struct Runner {
    child: std::process::Child,
    log: PathBuf,
}

static RUNNERS: AtomicUsize = AtomicUsize::new(0);

impl Runner {
    pub fn start(p: &Pair, args: &[&str]) -> Runner {
        use std::process::Stdio;
        let log = p.dir.path().join(format!(
            "run-{}.log",
            RUNNERS.fetch_add(1, Ordering::Relaxed)
        ));
        let child = pgtwin_command(&p.dir.path().join("pgtwin.toml"), args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Runner { child, log }
    }

    /// A process started elsewhere (its log unread).
    pub fn adopt(child: std::process::Child) -> Runner {
        Runner {
            child,
            log: PathBuf::new(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle`, at most `limit`.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, limit: Duration) {
        let started = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                started.elapsed() < limit,
                "no {needle:?} logged within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(self) {
        drop(self);
    }

    /// SIGTERM, then waits for the process to exit, at most `limit`.
    pub fn terminate(self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").arg(pid).status().unwrap().success());
        self.wait(limit)
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait(mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "pgtwin did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command, killing it if it outlives `limit`: a hang is a test failure, not a stuck CI.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("pgtwin did not finish within {limit:?}");
        }
    }
}

/// A test CA, and a certificate it signed for `localhost` with its key, readable by the servers (which
/// run as `postgres` when the tests run as root; PostgreSQL wants the key private to its owner).
/// Returns (CA certificate, server certificate, server key).
fn test_certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        path("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    // The servers' CA, and one that signed nothing of theirs.
    for ca in ["ca", "other-ca"] {
        let (key, cert, subject) = (
            format!("{ca}.key"),
            format!("{ca}.crt"),
            format!("/CN=pgtwin test {ca}"),
        );
        openssl(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject,
            "-keyout", &key, "-out", &cert,
        ]);
    }
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    let is_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    for f in ["ca.crt", "server.crt", "server.key"] {
        if is_root {
            assert!(Command::new("chown")
                .arg("postgres")
                .arg(path(f))
                .status()
                .unwrap()
                .success());
        }
    }
    assert!(Command::new("chmod")
        .arg("600")
        .arg(path("server.key"))
        .status()
        .unwrap()
        .success());
    (path("ca.crt"), path("server.crt"), path("server.key"))
}
