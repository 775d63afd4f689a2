//! Throwaway local PostgreSQL servers (initdb + pg_ctl in a temp dir) for `demo`, the benchmark and the
//! tests. As root, the servers run as the `postgres` OS user, since PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// One running server. The superuser `postgres` logs in without a password over TCP from 127.0.0.1;
/// every other role must use a password (scram), as postgres_fdw requires for non-superusers.
pub struct LocalServer {
    pub port: u16,
    pub data_dir: PathBuf,
    bin: PathBuf,
}

/// Directory holding initdb and pg_ctl: `$PG_BIN`, else the newest /usr/lib/postgresql/*/bin.
pub fn find_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("no PostgreSQL server binaries found (initdb): install them (Debian: apt-get install postgresql postgresql-contrib) or set PG_BIN"),
    }
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false)
}

/// Runs a PostgreSQL program, as `postgres` when we are root.
fn pg_command(bin: &Path, program: &str) -> Command {
    let exe = bin.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (asked from the kernel, then released for the server to take).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalServer {
    /// initdb in `dir` (which must not exist yet) and start the server. `settings` are extra
    /// `postgresql.conf` lines.
    pub fn start(dir: &Path, settings: &[&str]) -> Result<LocalServer> {
        let bin = find_bin_dir()?;
        std::fs::create_dir_all(dir)?;
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres"]).arg(dir);
                    c
                },
                "chown",
            )?;
        }
        let data_dir = dir.join("data");
        let mut initdb = pg_command(&bin, "initdb");
        initdb.arg("-D").arg(&data_dir).args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        ]);
        run(initdb, "initdb")?;
        let hba = "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 100\nshared_buffers = 128MB\n",
            dir.display()
        );
        for s in settings {
            conf.push_str(s);
            conf.push('\n');
        }
        write_as_owner(&data_dir.join("pg_hba.conf"), hba)?;
        append_as_owner(&data_dir.join("postgresql.conf"), &conf)?;
        let mut server = LocalServer {
            port: 0,
            data_dir,
            bin,
        };
        server.port = free_port()?;
        server.start_again()?;
        Ok(server)
    }

    /// Starts the (stopped) server again on its port.
    pub fn start_again(&self) -> Result<()> {
        let mut c = pg_command(&self.bin, "pg_ctl");
        c.arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "60", "-l"])
            .arg(self.data_dir.join("server.log"))
            .arg("-o")
            .arg(format!("-p {}", self.port))
            .arg("start");
        run(c, "pg_ctl start")
    }

    /// Stops the server; `immediate` is a crash-like stop, as in a power loss.
    pub fn stop(&self, immediate: bool) -> Result<()> {
        let mut c = pg_command(&self.bin, "pg_ctl");
        c.arg("-D").arg(&self.data_dir).args([
            "-w",
            "-m",
            if immediate { "immediate" } else { "fast" },
            "stop",
        ]);
        run(c, "pg_ctl stop")
    }

    /// Stops the server when process `pid` ends, however it ends (tests have no reliable teardown).
    pub fn stop_when_process_ends(&self, pid: u32) -> Result<()> {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = format!(
            "{}{} -D '{}' -m immediate stop",
            if is_root() {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl.display(),
            self.data_dir.display()
        );
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 0.3; done; {stop} >/dev/null 2>&1"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the server watchdog")?;
        Ok(())
    }

    /// libpq URL for a role and database on this server.
    pub fn url(&self, user: &str, password: Option<&str>, db: &str) -> String {
        match password {
            Some(p) => format!("postgres://{user}:{p}@127.0.0.1:{}/{db}", self.port),
            None => format!("postgres://{user}@127.0.0.1:{}/{db}", self.port),
        }
    }

    /// A superuser connection to a database on this server.
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname={db}",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .with_context(|| format!("connecting to local server on port {}", self.port))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

fn write_as_owner(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    chown_postgres(path)
}

fn append_as_owner(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    chown_postgres(path)
}

fn chown_postgres(path: &Path) -> Result<()> {
    if is_root() {
        run(
            {
                let mut c = Command::new("chown");
                c.arg("postgres").arg(path);
                c
            },
            "chown",
        )?;
    }
    Ok(())
}
