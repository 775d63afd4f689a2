//! The load section: both nodes at the highest rate they take (single-row INSERTs, no pause, several
//! writers per node) with `pgtwin run` live, in sync and in async mode. First steady, then an outage
//! while the writers go on (async: the runner away; sync: each node's link to the other cut), then the
//! runner back: the backlog must drain while the writers still write (async: back to the depth it had
//! before the outage), and sync mode must return to shipping directly (empty queues). Prints the writers' rates, the queue depth over time, how long the backlog took
//! to drain, and the writers' longest statement.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{connect, Bench};

/// How the load section runs.
pub struct Plan {
    pub writers_per_node: usize,
    pub steady: Duration,
    pub outage: Duration,
    pub drain_limit: Duration,
    pub modes: Vec<&'static str>,
}

/// What one mode's run measured.
struct Report {
    mode: &'static str,
    steady_rates: [f64; 2],
    steady_depth_max: [i64; 2],
    /// The longest any queued change had waited, at the once-a-second samples (seconds).
    steady_oldest_max: [f64; 2],
    backlog: [i64; 2],
    drained_after: Option<Duration>,
    draining_rates: [f64; 2],
    longest: Duration,
    errors: u64,
    identical: bool,
    /// One sample a second.
    depths: Vec<Sample>,
}

/// Seconds since the start, phase, queue depth on a, on b.
type Sample = (u64, &'static str, i64, i64);

/// Samples both queues' depth; returns it.
async fn sample(
    watch: &[tokio_postgres::Client; 2],
    started: Instant,
    phase: &'static str,
    samples: &mut Vec<Sample>,
) -> (i64, i64) {
    let (a, b) = (depth(&watch[0]).await, depth(&watch[1]).await);
    samples.push((started.elapsed().as_secs(), phase, a, b));
    (a, b)
}

/// Writers of one node: each a connection inserting one row per transaction until `stop`. Counts the
/// transactions, the failed ones, and keeps the longest statement (in µs).
struct Writers {
    done: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    longest_us: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn start_writers(
    bench: &Bench,
    node: usize,
    db: &str,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Result<Writers> {
    let w = Writers {
        done: Arc::default(),
        errors: Arc::default(),
        longest_us: Arc::default(),
        tasks: Vec::new(),
    };
    let mut tasks = Vec::new();
    for k in 0..n {
        let c = connect(&bench.servers[node], db).await?;
        let (stop, done, errors, longest) = (
            stop.clone(),
            w.done.clone(),
            w.errors.clone(),
            w.longest_us.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0i32;
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_add(1);
                let t = Instant::now();
                let r = c
                    .execute(
                        "INSERT INTO items (name, price) VALUES ($1, $2)",
                        &[&format!("load {node}.{k}"), &i],
                    )
                    .await;
                longest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                match r {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    Ok(Writers { tasks, ..w })
}

/// How long the oldest change queued on this node has waited, in seconds (0 with the queue empty):
/// while `run` replays, the lag of that node's changes is below it.
async fn oldest_age(c: &tokio_postgres::Client) -> f64 {
    match c
        .query_one(
            "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(changed_at)), 0)::float8 FROM pgtwin.queue",
            &[],
        )
        .await
    {
        Ok(r) => r.get(0),
        Err(_) => -1.0,
    }
}

async fn depth(c: &tokio_postgres::Client) -> i64 {
    match c.query_one("SELECT count(*) FROM pgtwin.queue", &[]).await {
        Ok(r) => r.get(0),
        Err(_) => -1,
    }
}

async fn run_mode(bench: &Bench, mode: &'static str, plan: &Plan) -> Result<Report> {
    let db = format!("bench_load_{mode}");
    bench.fresh_databases(&db, super::TABLE).await?;
    let variant = if mode == "sync" {
        super::Variant::Sync
    } else {
        super::Variant::Async
    };
    let cfg = bench.config(&db, variant)?;
    pgtwin::install::up(&cfg, false, false).await?;
    let watch = [
        connect(&bench.servers[0], &db).await?,
        connect(&bench.servers[1], &db).await?,
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for node in 0..2 {
        writers.push(start_writers(bench, node, &db, plan.writers_per_node, &stop).await?);
    }
    let runner_cfg = cfg.clone();
    let mut runner = Some(tokio::spawn(async move {
        pgtwin::runner::run_forever(&runner_cfg).await
    }));
    let started = Instant::now();
    let mut samples = Vec::new();
    let counts = |w: &[Writers]| {
        [
            w[0].done.load(Ordering::Relaxed),
            w[1].done.load(Ordering::Relaxed),
        ]
    };

    // Steady, with the runner live.
    let before = counts(&writers);
    let phase_start = Instant::now();
    let mut steady_depth_max = [0i64; 2];
    let mut steady_oldest_max = [0f64; 2];
    while phase_start.elapsed() < plan.steady {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (a, b) = sample(&watch, started, "steady", &mut samples).await;
        steady_depth_max = [steady_depth_max[0].max(a), steady_depth_max[1].max(b)];
        for (max, c) in steady_oldest_max.iter_mut().zip(&watch) {
            *max = max.max(oldest_age(c).await);
        }
    }
    let after = counts(&writers);
    let secs = phase_start.elapsed().as_secs_f64();
    let steady_rates = [
        (after[0] - before[0]) as f64 / secs,
        (after[1] - before[1]) as f64 / secs,
    ];

    // The outage: every change queues while the writers go on.
    let closed = pgtwin::localpg::free_port()?;
    if mode == "sync" {
        for node in 0..2 {
            bench.set_link(node, &db, closed).await?;
        }
    }
    if let Some(r) = runner.take() {
        r.abort();
    }
    let phase_start = Instant::now();
    let mut backlog = [0i64; 2];
    while phase_start.elapsed() < plan.outage {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (a, b) = sample(&watch, started, "outage", &mut samples).await;
        backlog = [a, b];
    }

    // The runner (and the links) back, the writers still writing: until both queues are empty.
    if mode == "sync" {
        for node in 0..2 {
            bench
                .set_link(node, &db, bench.servers[1 - node].port)
                .await?;
        }
    }
    let runner_cfg = cfg.clone();
    runner = Some(tokio::spawn(async move {
        pgtwin::runner::run_forever(&runner_cfg).await
    }));
    let before = counts(&writers);
    let phase_start = Instant::now();
    let mut drained_after = None;
    while phase_start.elapsed() < plan.drain_limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (a, b) = sample(&watch, started, "draining", &mut samples).await;
        // Sync mode ships directly again: empty queues. Async mode queues every change: back to the
        // depth it had before the outage.
        let back = |depth: i64, steady: i64| match mode {
            "sync" => depth == 0,
            _ => depth <= steady.max(100),
        };
        if back(a, steady_depth_max[0]) && back(b, steady_depth_max[1]) {
            drained_after = Some(phase_start.elapsed());
            break;
        }
    }
    let after = counts(&writers);
    let secs = phase_start.elapsed().as_secs_f64();
    let draining_rates = [
        (after[0] - before[0]) as f64 / secs,
        (after[1] - before[1]) as f64 / secs,
    ];

    // The writers stop; what is left drains; both nodes compared.
    stop.store(true, Ordering::Relaxed);
    let mut longest = Duration::ZERO;
    let mut errors = 0;
    for w in writers {
        for t in w.tasks {
            let _ = t.await;
        }
        longest = longest.max(Duration::from_micros(w.longest_us.load(Ordering::Relaxed)));
        errors += w.errors.load(Ordering::Relaxed);
    }
    super::drained(&watch[0], Duration::from_secs(120)).await?;
    let wait_b = Instant::now();
    while depth(&watch[1]).await != 0 && wait_b.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(r) = runner.take() {
        r.abort();
    }
    let identical = bench.identical(&db).await?;
    Ok(Report {
        mode,
        steady_rates,
        steady_depth_max,
        steady_oldest_max,
        backlog,
        drained_after,
        draining_rates,
        longest,
        errors,
        identical,
        depths: samples,
    })
}

pub async fn load_section(bench: &Bench, plan: &Plan) -> Result<()> {
    eprintln!(
        "pgtwin-bench load: {} writers per node, single-row INSERTs at full speed; {} s steady, {} s outage, drain limit {} s",
        plan.writers_per_node,
        plan.steady.as_secs(),
        plan.outage.as_secs(),
        plan.drain_limit.as_secs()
    );
    for &mode in &plan.modes {
        eprintln!("  load, {mode} mode");
        let r = run_mode(bench, mode, plan).await?;
        println!(
            "\nload, {} mode ({} writers per node, no pause)",
            r.mode, plan.writers_per_node
        );
        println!(
            "  steady, pgtwin run live: {:.0}/s on a, {:.0}/s on b; queue depth at most {} on a, {} on b",
            r.steady_rates[0], r.steady_rates[1], r.steady_depth_max[0], r.steady_depth_max[1]
        );
        println!(
            "  steady: the oldest queued change had waited at most {:.0} ms on a, {:.0} ms on b (sampled each second)",
            r.steady_oldest_max[0] * 1000.0,
            r.steady_oldest_max[1] * 1000.0
        );
        println!(
            "  outage of {} s ({}): backlog {} on a, {} on b",
            plan.outage.as_secs(),
            if r.mode == "sync" {
                "links cut"
            } else {
                "runner away"
            },
            r.backlog[0],
            r.backlog[1]
        );
        match r.drained_after {
            Some(t) => println!(
                "  backlog drained in {:.0} s while the writers went on at {:.0}/s on a, {:.0}/s on b",
                t.as_secs_f64(),
                r.draining_rates[0],
                r.draining_rates[1]
            ),
            None => println!(
                "  backlog NOT drained within {} s (writers at {:.0}/s on a, {:.0}/s on b)",
                plan.drain_limit.as_secs(),
                r.draining_rates[0],
                r.draining_rates[1]
            ),
        }
        println!(
            "  writers' longest statement {:.0} ms; failed statements {}; both nodes identical: {}",
            r.longest.as_secs_f64() * 1000.0,
            r.errors,
            if r.identical { "yes" } else { "NO" }
        );
        let line: Vec<String> = r
            .depths
            .iter()
            .map(|(t, phase, a, b)| format!("{t}s {}:{a}/{b}", &phase[..1]))
            .collect();
        println!(
            "  queue depth a/b each second (s steady, o outage, d draining): {}",
            line.join(" ")
        );
    }
    Ok(())
}
