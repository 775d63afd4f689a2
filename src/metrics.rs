//! `pgtwin run --metrics ADDR`: Prometheus text on `/metrics`, the status verdict on `/healthz`.
//!
//! Two sources. What the nodes hold (queues and their lag, set-aside changes, conflicts, links, the
//! verdict) is read as `pgtwin status` reads it, every REFRESH in the background: a scrape answers at
//! once from the last reading (its age is a metric), even while a node takes its connect timeout to
//! fail, and scrapes cost the nodes nothing. What only this process knows (changes it replayed, its
//! errors, whether it is the runner replaying or the one standing by) is recorded as it happens, in
//! [`RECORDER`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::config::Config;
use crate::status::{self, Severity};

/// What this process's runner did, since it started.
#[derive(Default)]
struct Recorder {
    /// Changes replayed, per (from, to, table).
    replayed: BTreeMap<(String, String, String), u64>,
    /// Replays of the last RATE_WINDOW, per direction, for the rate.
    recent: VecDeque<(Instant, (String, String), u64)>,
    errors: u64,
    last_error_at: Option<SystemTime>,
    /// Holds both nodes' runner locks (false: standing by, or not connected).
    active: bool,
}

static RECORDER: Mutex<Option<Recorder>> = Mutex::new(None);

/// The window over which the replay rate is averaged.
const RATE_WINDOW: Duration = Duration::from_secs(60);

fn record(f: impl FnOnce(&mut Recorder)) {
    let mut guard = RECORDER.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Recorder::default));
}

/// A replayed batch, committed on `to`: changes per table tag.
pub fn replayed(from: &str, to: &str, tables: &[(String, u64)]) {
    record(|r| {
        let now = Instant::now();
        for (table, rows) in tables {
            *r.replayed
                .entry((from.into(), to.into(), table.clone()))
                .or_default() += rows;
            r.recent.push_back((now, (from.into(), to.into()), *rows));
        }
        trim(r);
    });
}

pub fn error() {
    record(|r| {
        r.errors += 1;
        r.last_error_at = Some(SystemTime::now());
    });
}

pub fn active(active: bool) {
    record(|r| r.active = active);
}

/// Prometheus text exposition: each metric's samples in one group (as the format requires), after
/// its HELP and TYPE; metrics in the order first sampled.
#[derive(Default)]
struct Exposition {
    metrics: Vec<Family>,
}

struct Family {
    name: &'static str,
    head: String,
    samples: String,
}

impl Exposition {
    fn sample(
        &mut self,
        name: &'static str,
        kind: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let i = match self.metrics.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.metrics.push(Family {
                    name,
                    head: format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"),
                    samples: String::new(),
                });
                self.metrics.len() - 1
            }
        };
        let out = &mut self.metrics[i].samples;
        out.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(out, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(out, " {value}");
    }

    fn text(&self) -> String {
        self.metrics
            .iter()
            .map(|f| format!("{}{}", f.head, f.samples))
            .collect()
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The status verdict as a number: 0 healthy, 1 degraded, 2 down (as `status` exits).
fn verdict_code(severity: Option<Severity>) -> f64 {
    match severity {
        None => 0.0,
        Some(Severity::Degraded) => 1.0,
        Some(Severity::Down) => 2.0,
    }
}

/// Everything `/metrics` serves; `age`: how old the report is.
fn render(cfg: &Config, report: &status::Report, age: Duration) -> String {
    let mut m = Exposition::default();
    m.sample(
        "pgtwin_runner_up",
        "gauge",
        "1 while this pgtwin run process serves metrics.",
        &[],
        1.0,
    );
    m.sample(
        "pgtwin_report_age_seconds",
        "gauge",
        "Age of the figures read from the nodes (refreshed in the background).",
        &[],
        age.as_secs_f64(),
    );
    m.sample(
        "pgtwin_status",
        "gauge",
        "The status verdict: 0 healthy, 1 degraded, 2 down (as pgtwin status exits).",
        &[],
        verdict_code(report.severity()),
    );
    for n in &report.nodes {
        let node = n.node.as_str();
        m.sample(
            "pgtwin_node_up",
            "gauge",
            "1 when pgtwin can connect to the node.",
            &[("node", node)],
            flag(n.reachable),
        );
        if n.reachable {
            m.sample(
                "pgtwin_installed",
                "gauge",
                "1 when pgtwin is installed on the node (absent while it cannot be asked).",
                &[("node", node)],
                flag(n.installed.is_some()),
            );
        }
        if let Some(link) = &n.link {
            m.sample(
                "pgtwin_link_up",
                "gauge",
                "1 when the node reaches its peer through the foreign server, as its triggers do.",
                &[("node", node)],
                flag(link.ok),
            );
        }
        let Some(q) = &n.queue else { continue };
        m.sample(
            "pgtwin_needs_repair",
            "gauge",
            "1 once the node's queue outgrew its limit: only pgtwin repair joins the nodes again.",
            &[("node", node)],
            flag(q.needs_repair_since.is_some()),
        );
        if let Some(seen) = q.runner_seen_s_ago {
            m.sample(
                "pgtwin_runner_heartbeat_age_seconds",
                "gauge",
                "Seconds since a pgtwin run last wrote its heartbeat on the node.",
                &[("node", node)],
                seen,
            );
        }
        for t in &q.by_table {
            let labels = [("node", node), ("table", t.table.as_str())];
            m.sample(
                "pgtwin_queue_entries",
                "gauge",
                "Queue entries (chunks of changes) waiting on the node for its peer.",
                &labels,
                t.entries as f64,
            );
            m.sample(
                "pgtwin_queue_changes",
                "gauge",
                "Row changes waiting on the node for its peer.",
                &labels,
                t.rows as f64,
            );
            m.sample(
                "pgtwin_queue_oldest_age_seconds",
                "gauge",
                "Age of the oldest change waiting on the node for its peer.",
                &labels,
                t.oldest_age_s.unwrap_or(0.0),
            );
            m.sample(
                "pgtwin_set_aside_entries",
                "gauge",
                "Queue entries the peer refused for their data, set aside (pgtwin conflicts lists them).",
                &labels,
                t.set_aside as f64,
            );
            m.sample(
                "pgtwin_conflicts",
                "gauge",
                "Conflicts recorded on the node and not yet acknowledged (pgtwin conflicts --ack).",
                &labels,
                t.conflicts as f64,
            );
        }
    }
    let guard = RECORDER.lock().unwrap_or_else(|e| e.into_inner());
    let empty = Recorder::default();
    let r = guard.as_ref().unwrap_or(&empty);
    m.sample(
        "pgtwin_runner_active",
        "gauge",
        "1 while this process replays; 0 while it stands by for another pgtwin run, or cannot connect.",
        &[],
        flag(r.active),
    );
    // Every table and direction has its counter from the start (0): rate() needs the first value.
    let names = [&cfg.nodes[0].name, &cfg.nodes[1].name];
    let directions = [(names[0], names[1]), (names[1], names[0])];
    for (from, to) in directions {
        for t in &cfg.tables {
            let tag = crate::sql::names::table_tag(&t.name);
            let rows = r
                .replayed
                .get(&(from.clone(), to.clone(), tag))
                .copied()
                .unwrap_or(0);
            m.sample(
                "pgtwin_replayed_changes_total",
                "counter",
                "Row changes this process replayed from one node's queue on the other.",
                &[("from", from), ("to", to), ("table", &t.name.plain())],
                rows as f64,
            );
        }
    }
    let since = Instant::now().checked_sub(RATE_WINDOW);
    for (from, to) in directions {
        let rows: u64 = r
            .recent
            .iter()
            .filter(|(at, (f, t), _)| f == from && t == to && since.is_none_or(|s| *at >= s))
            .map(|(_, _, rows)| rows)
            .sum();
        m.sample(
            "pgtwin_replay_rate_changes_per_second",
            "gauge",
            "Row changes this process replayed per second, averaged over the last minute.",
            &[("from", from), ("to", to)],
            rows as f64 / RATE_WINDOW.as_secs_f64(),
        );
    }
    // How far each node's peer is behind it: the oldest change still waiting in its queue.
    for n in &report.nodes {
        let Some(q) = &n.queue else { continue };
        let Some(to) = names.iter().find(|name| **name != &n.node) else {
            continue;
        };
        let lag = q
            .by_table
            .iter()
            .filter_map(|t| t.oldest_age_s)
            .fold(0.0, f64::max);
        m.sample(
            "pgtwin_replay_lag_seconds",
            "gauge",
            "Age of the oldest change queued on a node for its peer (0 when none waits).",
            &[("from", &n.node), ("to", to)],
            lag,
        );
    }
    m.sample(
        "pgtwin_errors_total",
        "counter",
        "Errors this process met while connecting or replaying (each retried with backoff).",
        &[],
        r.errors as f64,
    );
    if let Some(at) = r.last_error_at {
        m.sample(
            "pgtwin_last_error_timestamp_seconds",
            "gauge",
            "When this process last met an error, in seconds since the Unix epoch.",
            &[],
            at.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        );
    }
    m.text()
}

/// Drops replays older than the rate window (called at each record, so memory stays bounded).
fn trim(r: &mut Recorder) {
    if let Some(since) = Instant::now().checked_sub(RATE_WINDOW) {
        while r.recent.front().is_some_and(|(at, _, _)| *at < since) {
            r.recent.pop_front();
        }
    }
}

/// How often the figures are read from the nodes.
const REFRESH: Duration = Duration::from_secs(3);

/// The last status report read, and when.
type Cache = Arc<tokio::sync::RwLock<Option<(Instant, status::Report)>>>;

/// Serves `/metrics` and `/healthz` on `addr` until the process ends, from a report refreshed every
/// REFRESH (one reading at a time, whatever the scrapers do). Binding fails here, at once, so a wrong
/// address is an error of `run`, not a silent absence of metrics.
pub async fn serve(cfg: Arc<Config>, addr: &str) -> Result<()> {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics {addr}: cannot listen there"))?;
    let cache: Cache = Arc::default();
    let (refresh_cfg, refreshed) = (cfg.clone(), cache.clone());
    tokio::spawn(async move {
        loop {
            let report = status::report(&refresh_cfg).await;
            *refreshed.write().await = Some((Instant::now(), report));
            tokio::time::sleep(REFRESH).await;
        }
    });
    let not_yet = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the nodes have not been read yet\n".to_string(),
        )
            .into_response()
    };
    let metrics_cache = cache.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let (cfg, cache) = (cfg.clone(), metrics_cache.clone());
                async move {
                    let guard = cache.read().await;
                    let Some((at, report)) = guard.as_ref() else {
                        return not_yet();
                    };
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        render(&cfg, report, at.elapsed()),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let cache = cache.clone();
                async move {
                    let guard = cache.read().await;
                    let Some((_, report)) = guard.as_ref() else {
                        return not_yet();
                    };
                    // Down is an outage (503); degraded still serves (200), the reason in the body.
                    let code = match report.severity() {
                        Some(Severity::Down) => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::OK,
                    };
                    (code, format!("{}\n", status::summary(&report.problems))).into_response()
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics endpoint stopped: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_metric_is_one_group_after_its_help_and_type() {
        let mut m = Exposition::default();
        m.sample("x", "gauge", "An x.", &[("node", "a")], 1.0);
        m.sample("y", "counter", "A y.", &[], 3.0);
        m.sample("x", "gauge", "An x.", &[("node", "b")], 2.5);
        assert_eq!(
            m.text(),
            "# HELP x An x.\n# TYPE x gauge\nx{node=\"a\"} 1\nx{node=\"b\"} 2.5\n\
             # HELP y A y.\n# TYPE y counter\ny 3\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_rate_window_forgets_old_replays() {
        let mut r = Recorder::default();
        let old = Instant::now().checked_sub(RATE_WINDOW * 2);
        if let Some(old) = old {
            r.recent.push_back((old, ("a".into(), "b".into()), 5));
        }
        r.recent
            .push_back((Instant::now(), ("a".into(), "b".into()), 7));
        trim(&mut r);
        assert_eq!(r.recent.len(), 1);
    }
}
