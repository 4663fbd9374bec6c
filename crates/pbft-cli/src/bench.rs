//! `pbft bench`: drives a cluster of real replica processes with a closed- or open-loop load of key-value
//! requests and reports committed requests per second, latency percentiles, CPU and bytes per request, and
//! batches per second, as JSON, CSV and (for a sweep) a throughput-latency chart.
//!
//! Every request goes through the ordinary network client ([`NetClient`]): it is signed by its client, sent to
//! every replica over gRPC, and counts as committed once f+1 replicas sent matching signed replies. With
//! `--transport stream` (the default) the requests of the clients sharing a set of connections travel on one
//! long-lived stream per replica and the replicas answer in batches; `--transport unary` makes one gRPC call per
//! request and replica.

mod chart;
mod procfs;
mod report;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use pbft_apps::KvOp;
use pbft_client::net::{Connections, NetClient};
use pbft_node::config::{AppKind, ClientFile, ClientSetup, ParamsFile};
use pbft_node::testnet::{TestnetSpec, write};
use pbft_types::{ClientAuth, Params, ReplicaAuth, ReplicaId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{connect, connect_shared};
use crate::testnet::AuthChoice;
use report::{Failover, Latency, Raw, Report, RunConfig};

/// Cluster sizes the benchmark starts (n = 3f + 1 for f = 1, 2, 3, 5).
const SIZES: [usize; 4] = [4, 7, 10, 16];

/// How long one request may wait for its result before it counts as failed.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Replicas in the cluster the benchmark starts on loopback: 4, 7, 10 or 16 (n = 3f + 1).
    #[arg(long, default_value_t = 4, value_parser = parse_replicas)]
    replicas: usize,
    /// Drive a running cluster instead of starting one: the path of one of its client files (client-N.toml, as
    /// `pbft testnet` writes them). Every client-*.toml in that directory is used, one per network client, so it
    /// must hold at least clients x window of them (open loop: --pool). Replica CPU and bytes are measured only
    /// if the replica processes are found on this machine (`pbft replica --config <that directory>/...`).
    #[arg(long, value_name = "CLIENT_CONFIG", conflicts_with_all = ["replicas", "batch_size", "batch_delay_ms", "client_auth", "replica_auth", "base_port", "keep"])]
    attach: Option<PathBuf>,
    /// Closed loop: logical clients, each sending its next request as soon as one completes.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Closed loop: requests each logical client keeps outstanding. A network client has one request
    /// outstanding at a time, so a window of W is W network clients (distinct client ids and keys) per
    /// logical client: clients x window requests are in flight.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Open loop: requests per second, sent on a fixed schedule whether or not earlier ones completed. Latency
    /// is measured from each request's scheduled time (no coordinated omission).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: make the --sweep values request rates (without --rate).
    #[arg(long)]
    open: bool,
    /// Open loop: network clients available to send scheduled requests. A request whose time comes while all
    /// are busy waits for one, and the wait counts in its latency.
    #[arg(long, default_value_t = 128)]
    pool: usize,
    /// Bytes of each put's value (the request itself is a little larger: key, client id, timestamp, signature).
    #[arg(long, default_value_t = 512)]
    request_size: usize,
    /// Fraction of requests that are gets (0 to 1); the rest are puts. Gets are ordered like puts.
    #[arg(long, default_value_t = 0.0)]
    reads: f64,
    /// Seconds measured in each run (after the warm-up), e.g. 30 or 30s.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    duration: f64,
    /// Seconds of load before measuring starts in each run, e.g. 2 or 2s.
    #[arg(long, default_value = "2", value_parser = parse_seconds)]
    warmup: f64,
    /// The cluster's maximum batch size (requests per pre-prepare); the replicas' default if not given.
    #[arg(long)]
    batch_size: Option<usize>,
    /// How long the primary waits to fill a batch, in milliseconds; the replicas' default if not given.
    #[arg(long)]
    batch_delay_ms: Option<u64>,
    /// How clients authenticate requests and replicas their replies in the started cluster: MAC
    /// authenticators (the fast path the targets assume) or ed25519 signatures.
    #[arg(long, value_enum, default_value_t = AuthChoice::Macs)]
    client_auth: AuthChoice,
    /// How replicas authenticate their COMMITs in the started cluster: ed25519 signatures, or ("macs") only by
    /// the authenticated connection they travel on.
    #[arg(long, value_enum, default_value_t = AuthChoice::Signatures)]
    replica_auth: AuthChoice,
    /// Run one point per value, comma-separated: client counts (closed loop) or, with --rate or --open,
    /// request rates. Draws a throughput-latency chart (throughput-latency.svg) in --out.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<f64>,
    /// Directory for results.json, results.csv and the chart (created if needed; files are replaced).
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Replica i of the started cluster listens on BASE+i (peers), BASE+100+i (gRPC), BASE+200+i (HTTP);
    /// a free range is chosen if not given.
    #[arg(long)]
    base_port: Option<u16>,
    /// Keep the started cluster's directory (keys, configuration, journals, replica logs).
    #[arg(long)]
    keep: bool,
    /// Kill the primary's process this many seconds into the measured interval (a cluster the benchmark started,
    /// one run), and report how long throughput took to come back to 80% of its rate in the 2 s before.
    #[arg(long, value_parser = parse_seconds, conflicts_with_all = ["attach", "sweep"])]
    kill_primary_at: Option<f64>,
    /// Sets of connections (one HTTP/2 connection per replica each) the network clients share, round robin, as
    /// the clients of one application server would; 0 gives every network client its own. Sharing costs the
    /// replicas and the load generator less per request (see BENCHMARKS.md).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How requests travel to the replicas: `stream`, one long-lived `SubmitStream` per replica and set of
    /// connections, answered in batches; or `unary`, one `Submit` call per request and replica.
    #[arg(long, value_enum, default_value_t = Transport::Stream)]
    transport: Transport,
}

/// How the network clients send their requests (`--transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transport {
    Unary,
    Stream,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Unary => "unary",
            Transport::Stream => "stream",
        }
    }

    /// A set of connections to `addresses` for this transport.
    fn connections(self, addresses: &[SocketAddr]) -> Result<Connections, String> {
        match self {
            Transport::Unary => Connections::new(addresses),
            Transport::Stream => Connections::streamed(addresses),
        }
        .map_err(|e| e.to_string())
    }
}

fn parse_replicas(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if SIZES.contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} replicas: choose 4, 7, 10 or 16"))
    }
}

/// Seconds as `30`, `30s`, `1.5` or `500ms`.
fn parse_seconds(s: &str) -> Result<f64, String> {
    let (number, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(secs) = s.strip_suffix('s') {
        (secs, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 10, 10s, 500ms)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!(
            "{s:?}: seconds must be a finite number, at least 0"
        ));
    }
    Ok(v * scale)
}

/// One run of a plan: how many clients, or what rate.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Load {
    Closed { clients: usize, window: usize },
    Open { rate: f64, pool: usize },
}

impl Load {
    fn network_clients(self) -> usize {
        match self {
            Load::Closed { clients, window } => clients * window,
            Load::Open { pool, .. } => pool,
        }
    }
}

/// The checked arguments: the runs to make, in order.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    loads: Vec<Load>,
    /// Network clients the largest run needs (the testnet makes that many).
    clients_needed: usize,
}

fn plan(args: &BenchArgs) -> Result<Plan, String> {
    if args.clients == 0 || args.window == 0 || args.pool == 0 {
        return Err("--clients, --window and --pool must be at least 1".into());
    }
    if !(0.0..=1.0).contains(&args.reads) {
        return Err(format!(
            "--reads {} is not a fraction from 0 to 1",
            args.reads
        ));
    }
    if args.duration <= 0.0 {
        return Err("--duration must be more than 0 seconds".into());
    }
    if args.request_size == 0 || args.request_size > 60 * 1024 {
        return Err(format!(
            "--request-size {}: choose 1 to 61440 bytes (the replicas refuse requests over 64 KiB)",
            args.request_size
        ));
    }
    if args.batch_size == Some(0) {
        return Err("--batch-size must be at least 1".into());
    }
    let open = args.open || args.rate.is_some();
    let rate_ok = |r: f64| r.is_finite() && r > 0.0;
    if let Some(rate) = args.rate
        && !rate_ok(rate)
    {
        return Err(format!(
            "--rate {rate} must be a positive number of requests per second"
        ));
    }
    let loads: Vec<Load> = if args.sweep.is_empty() {
        match args.rate {
            Some(rate) => vec![Load::Open {
                rate,
                pool: args.pool,
            }],
            None if args.open => return Err("--open needs --rate or --sweep RATES".into()),
            None => vec![Load::Closed {
                clients: args.clients,
                window: args.window,
            }],
        }
    } else if open {
        args.sweep
            .iter()
            .map(|&rate| {
                if rate_ok(rate) {
                    Ok(Load::Open {
                        rate,
                        pool: args.pool,
                    })
                } else {
                    Err(format!("--sweep {rate}: a rate must be positive"))
                }
            })
            .collect::<Result<_, _>>()?
    } else {
        args.sweep
            .iter()
            .map(|&c| {
                if c >= 1.0 && c.fract() == 0.0 && c <= 100_000.0 {
                    Ok(Load::Closed {
                        clients: c as usize,
                        window: args.window,
                    })
                } else {
                    Err(format!("--sweep {c}: a client count must be a whole number, at least 1 (for rates add --open)"))
                }
            })
            .collect::<Result<_, _>>()?
    };
    let clients_needed = loads.iter().map(|l| l.network_clients()).max().unwrap_or(1);
    Ok(Plan {
        loads,
        clients_needed,
    })
}

pub fn run(args: &BenchArgs) -> ExitCode {
    let plan = match plan(args) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    crate::run_in_cluster_dir(
        "pbft-bench-",
        |succeeded| args.attach.is_none() && (args.keep || !succeeded),
        |dir| async move { bench(args, &plan, &dir).await },
    )
}

/// Replica processes the benchmark started. Dropping it kills them.
struct Replicas {
    children: Vec<Child>,
    /// Replicas killed on purpose (`--kill-primary-at`).
    killed: Vec<usize>,
}

impl Replicas {
    fn start(exe: &Path, dir: &Path, n: usize) -> Result<Replicas, String> {
        let mut children = Vec::new();
        for i in 0..n {
            let log_path = dir.join(format!("replica-{i}.log"));
            let log = std::fs::File::create(&log_path)
                .map_err(|e| format!("{}: {e}", log_path.display()))?;
            let err_log = log
                .try_clone()
                .map_err(|e| format!("{}: {e}", log_path.display()))?;
            let child = Command::new(exe)
                .arg("replica")
                .arg("--config")
                .arg(dir.join(format!("replica-{i}.toml")))
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err_log)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start replica {i}: {e}"))?;
            children.push(child);
        }
        Ok(Replicas {
            children,
            killed: Vec::new(),
        })
    }

    /// Kills replica `i` (SIGKILL), as a crash would.
    fn kill(&mut self, i: usize) -> Result<(), String> {
        let child = self
            .children
            .get_mut(i)
            .ok_or_else(|| format!("no replica {i} to kill"))?;
        child
            .start_kill()
            .map_err(|e| format!("cannot kill replica {i}: {e}"))?;
        self.killed.push(i);
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    fn check_alive(&mut self) -> Result<(), String> {
        for (i, child) in self.children.iter_mut().enumerate() {
            if self.killed.contains(&i) {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "replica {i} exited during the benchmark ({status})"
                ));
            }
        }
        Ok(())
    }

    async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
    }
}

/// The cluster under load: its client setups, its replicas' HTTP addresses, and the processes to measure.
struct Target {
    setups: Vec<ClientSetup>,
    http: Vec<SocketAddr>,
    pids: Vec<u32>,
    replicas: Option<Replicas>,
    n: usize,
    /// The cluster's parameters, as its cluster file says.
    params: Params,
}

async fn bench(args: &BenchArgs, plan: &Plan, dir: &Path) -> Result<(), String> {
    let mut target = match &args.attach {
        Some(client_file) => attach(client_file, plan.clients_needed)?,
        None => start_cluster(args, plan, dir).await?,
    };
    let monitor = connect(&target.setups[0], Duration::from_secs(5))?;
    wait_ready(&monitor, target.n, target.replicas.is_some()).await?;
    eprintln!(
        "cluster: {} replicas; {} replica processes measured; load average {}; transport {}, {}",
        target.n,
        target.pids.len(),
        procfs::loadavg(),
        args.transport.name(),
        match args.connections {
            0 => "a set of connections per network client".to_string(),
            k => format!("{k} sets of connections shared"),
        }
    );
    // Network clients share `--connections` sets of connections to the replicas, round robin (0: one set each).
    let addresses: Vec<SocketAddr> = target.setups[0]
        .cluster
        .addresses
        .iter()
        .map(|a| a.api)
        .collect();
    let shared = (0..args.connections)
        .map(|_| args.transport.connections(&addresses))
        .collect::<Result<Vec<_>, String>>()?;
    let mut clients = target
        .setups
        .iter()
        .take(plan.clients_needed)
        .enumerate()
        .map(|(i, s)| match shared.get(i % shared.len().max(1)) {
            Some(connections) => connect_shared(s, REQUEST_DEADLINE, connections),
            None => connect_shared(
                s,
                REQUEST_DEADLINE,
                &args.transport.connections(&addresses)?,
            ),
        })
        .collect::<Result<Vec<NetClient>, String>>()?;
    let value = Bytes::from(vec![b'v'; args.request_size]);
    let mut reports = Vec::new();
    for (index, &load) in plan.loads.iter().enumerate() {
        let config = RunConfig {
            mode: match load {
                Load::Closed { .. } => "closed".into(),
                Load::Open { .. } => "open".into(),
            },
            replicas: target.n,
            clients: load.network_clients() / args.window.max(1),
            window: args.window,
            target_rate: None,
            request_size: args.request_size,
            reads: args.reads,
            duration_s: args.duration,
            warmup_s: args.warmup,
            batch_size: args.batch_size,
            batch_delay_ms: args.batch_delay_ms,
            transport: args.transport.name().into(),
            connections: args.connections,
            client_auth: match target.params.client_auth {
                ClientAuth::Signatures => "signatures".into(),
                ClientAuth::Macs => "macs".into(),
            },
            replica_auth: match target.params.replica_auth {
                ReplicaAuth::Signatures => "signatures".into(),
                ReplicaAuth::Macs => "macs".into(),
            },
        };
        let config = match load {
            Load::Closed { clients, window } => RunConfig {
                clients,
                window,
                ..config
            },
            Load::Open { rate, pool } => RunConfig {
                clients: pool,
                window: 1,
                target_rate: Some(rate),
                ..config
            },
        };
        let label = format!("run {}/{}", index + 1, plan.loads.len());
        let used = clients.split_off(clients.len() - load.network_clients());
        let (back, report) =
            run_point(args, &mut target, load, config, used, &value, &label).await?;
        clients.extend(back);
        println!("{}", report.summary());
        reports.push(report);
        if let Some(replicas) = &mut target.replicas {
            replicas.check_alive()?;
        }
        report::write(&args.out, &reports)?;
    }
    if reports.len() > 1 {
        let title = format!(
            "pbft bench: n = {}, {} B requests, {:.0}% reads",
            target.n,
            args.request_size,
            args.reads * 100.0
        );
        chart::draw(&args.out.join("throughput-latency.svg"), &title, &reports)?;
    }
    eprintln!(
        "results: {}",
        args.out
            .join(if reports.len() > 1 {
                "results.{json,csv}, throughput-latency.svg"
            } else {
                "results.{json,csv}"
            })
            .display()
    );
    if let Some(replicas) = target.replicas.take() {
        replicas.stop().await;
    }
    Ok(())
}

async fn start_cluster(args: &BenchArgs, plan: &Plan, dir: &Path) -> Result<Target, String> {
    let base_port = match args.base_port {
        Some(base) => base,
        None => free_base_port(args.replicas)?,
    };
    let params = ParamsFile {
        max_batch_size: args.batch_size,
        batch_delay_ms: args.batch_delay_ms,
        client_auth: Some(args.client_auth.file()),
        replica_auth: Some(args.replica_auth.file()),
        ..ParamsFile::default()
    };
    let net = write(
        &TestnetSpec {
            replicas: args.replicas,
            clients: plan.clients_needed,
            hosts: Vec::new(),
            base_port,
            params,
            app: AppKind::Kv,
            accounts: 0,
        },
        dir,
    )
    .map_err(|e| e.to_string())?;
    let setups = net.client_setups().map_err(|e| e.to_string())?;
    let net_params = setups[0].cluster.config.params.clone();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the pbft binary: {e}"))?;
    let replicas = Replicas::start(&exe, dir, args.replicas)?;
    let http = setups[0].cluster.addresses.iter().map(|a| a.http).collect();
    Ok(Target {
        setups,
        http,
        pids: replicas.pids(),
        replicas: Some(replicas),
        n: args.replicas,
        params: net_params,
    })
}

fn attach(client_file: &Path, needed: usize) -> Result<Target, String> {
    let first = ClientFile::load(client_file).map_err(|e| e.to_string())?;
    let dir = client_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("client-") && n.ends_with(".toml"))
        })
        .collect();
    files.sort();
    let mut setups = vec![first];
    for path in files {
        let setup = ClientFile::load(&path).map_err(|e| e.to_string())?;
        if setup.id != setups[0].id {
            setups.push(setup);
        }
    }
    if setups.len() < needed {
        return Err(format!(
            "{} holds {} client files, and this load needs {needed} network clients (one per outstanding \
             request): make more with `pbft testnet --clients`",
            dir.display(),
            setups.len()
        ));
    }
    let pids = procfs::find_replicas(dir);
    let n = setups[0].cluster.config.n();
    if pids.len() != n {
        eprintln!(
            "note: found {} replica processes of {} on this machine; replica CPU and bytes are not measured",
            pids.len(),
            dir.display()
        );
    }
    let http = setups[0].cluster.addresses.iter().map(|a| a.http).collect();
    let params = setups[0].cluster.config.params.clone();
    Ok(Target {
        setups,
        http,
        pids: if pids.len() == n { pids } else { Vec::new() },
        replicas: None,
        n,
        params,
    })
}

/// Waits until every replica answers its status (and, for a cluster the benchmark started, is connected to
/// every other).
async fn wait_ready(monitor: &NetClient, n: usize, started: bool) -> Result<(), String> {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ready = 0;
        for i in 0..n {
            if let Ok(s) = monitor.status(ReplicaId(i as u64)).await
                && (!started || s.peers_connected as usize == n - 1)
            {
                ready += 1;
            }
        }
        if ready == n {
            return Ok(());
        }
        if Instant::now() >= give_up {
            return Err(format!("only {ready} of {n} replicas ready after 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A base port whose peer, gRPC and HTTP ports for `n` replicas are all free now: from 28000 to 32767, above the
/// ports the tests and the demo use and below Linux's ephemeral range (32768 on), so that no outgoing connection
/// takes one of them between this check and the replicas' start.
fn free_base_port(n: usize) -> Result<u16, String> {
    for base in (28000u16..32400).step_by(300) {
        let all_free = (0..n as u16)
            .flat_map(|i| [base + i, base + 100 + i, base + 200 + i])
            .map(|p| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], p))))
            .collect::<Result<Vec<_>, _>>()
            .is_ok();
        if all_free {
            return Ok(base);
        }
    }
    Err("no free range of loopback ports between 28000 and 32767".into())
}

/// The replicas' counters and the processes' usage at one instant.
struct Snapshot {
    replicas: Option<procfs::Usage>,
    loadgen: procfs::Usage,
    /// Per replica: its counters, `None` where the scrape failed.
    metrics: Vec<Option<Scraped>>,
}

async fn snapshot(target: &Target) -> Snapshot {
    let replicas = if target.pids.is_empty() {
        None
    } else {
        procfs::total_usage(&target.pids)
    };
    let loadgen = procfs::usage(None).unwrap_or_default();
    let mut metrics = Vec::new();
    for addr in &target.http {
        metrics.push(scrape(*addr).await);
    }
    Snapshot {
        replicas,
        loadgen,
        metrics,
    }
}

/// The primary of the highest view any replica reports (`pbft_view` in `/metrics`); replica 0 if none answers.
async fn current_primary(http: &[SocketAddr]) -> usize {
    let mut view = 0u64;
    for addr in http {
        if let Some(text) = metrics_text(*addr).await
            && let Some(v) = metric(&text, "pbft_view")
        {
            view = view.max(v as u64);
        }
    }
    usize::try_from(view).unwrap_or(0) % http.len().max(1)
}

/// Throughput around the kill at `at`, from the completion counts sampled every 100 ms: the rate in the 2 s
/// before it, and when a 500 ms window after it first reached 80% of that rate again.
fn failover(timeline: &[(Instant, u64)], start: Instant, primary: usize, at: Instant) -> Failover {
    let rate = |a: &(Instant, u64), b: &(Instant, u64)| {
        let secs = (b.0 - a.0).as_secs_f64();
        (secs > 0.0).then(|| (b.1 - a.1) as f64 / secs)
    };
    let at_or_after = |t: Instant| timeline.iter().position(|s| s.0 >= t);
    let before_start = at
        .checked_sub(Duration::from_secs(2))
        .and_then(at_or_after)
        .unwrap_or(0);
    let kill_index = at_or_after(at).unwrap_or(timeline.len().saturating_sub(1));
    let rate_before = match (timeline.get(before_start), timeline.get(kill_index)) {
        (Some(a), Some(b)) => rate(a, b).unwrap_or(0.0),
        _ => 0.0,
    };
    let recovered_after_s = (kill_index..timeline.len()).find_map(|i| {
        let from = &timeline[i];
        let j = timeline[i..]
            .iter()
            .position(|s| s.0 >= from.0 + Duration::from_millis(500))?;
        let r = rate(from, &timeline[i + j])?;
        (r >= 0.8 * rate_before).then(|| (from.0 - at).as_secs_f64())
    });
    Failover {
        primary,
        killed_at_s: (at - start).as_secs_f64(),
        rate_before,
        recovered_after_s,
    }
}

/// The counters a run reads from each replica's `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Scraped {
    batches: f64,
    requests: f64,
    peer_bytes: f64,
}

/// `pbft_batches_committed_total`, `pbft_requests_executed_total` and `pbft_peer_bytes_sent` from a replica's
/// `/metrics`.
async fn scrape(addr: SocketAddr) -> Option<Scraped> {
    let text = metrics_text(addr).await?;
    Some(Scraped {
        batches: metric(&text, "pbft_batches_committed_total")?,
        requests: metric(&text, "pbft_requests_executed_total")?,
        peer_bytes: metric(&text, "pbft_peer_bytes_sent")?,
    })
}

/// A replica's `/metrics` page, or `None` if it does not answer within 2 s.
async fn metrics_text(addr: SocketAddr) -> Option<String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        Some(text)
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()?
}

/// The value of an unlabelled metric in the Prometheus text format.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The changes of a counter between two snapshots, for the replicas that answered twice.
fn deltas(
    before: &[Option<Scraped>],
    after: &[Option<Scraped>],
    pick: fn(Scraped) -> f64,
) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .filter_map(|(b, a)| Some(pick((*a)?) - pick((*b)?)))
        .collect()
}

/// The mean over replicas of the change of a counter between two snapshots (replicas that answered twice).
fn mean_delta(
    before: &[Option<Scraped>],
    after: &[Option<Scraped>],
    pick: fn(Scraped) -> f64,
) -> Option<f64> {
    let deltas = deltas(before, after, pick);
    (!deltas.is_empty()).then(|| deltas.iter().sum::<f64>() / deltas.len() as f64)
}

/// The sum over replicas of the change of a counter, if every replica answered twice.
fn total_delta(
    before: &[Option<Scraped>],
    after: &[Option<Scraped>],
    pick: fn(Scraped) -> f64,
) -> Option<f64> {
    let deltas = deltas(before, after, pick);
    (!deltas.is_empty() && deltas.len() == before.len()).then(|| deltas.iter().sum())
}

/// A tiny deterministic generator for the read/write mix and keys (splitmix64).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `reads`.
    fn read(&mut self, reads: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < reads
    }

    /// The next operation: a get with probability `reads`, otherwise a put of `value`, on one of 1024 keys.
    fn op(&mut self, reads: f64, value: &Bytes) -> Bytes {
        let key = Bytes::from(format!("bench-{:04}", self.next() % 1024));
        if self.read(reads) {
            KvOp::Get { key }.encode()
        } else {
            KvOp::Put {
                key,
                value: value.clone(),
            }
            .encode()
        }
    }
}

/// What the load generator's tasks counted.
#[derive(Default)]
struct Counts {
    /// Requests that completed within the measured interval.
    committed: AtomicU64,
    failed: AtomicU64,
    /// Every completion, for the progress bar.
    all: AtomicU64,
}

/// The measured interval of a run.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    t0: Instant,
    t1: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.t0 && t < self.t1
    }
}

/// One run: load for warm-up plus duration, snapshots at both ends of the measured interval.
async fn run_point(
    args: &BenchArgs,
    target: &mut Target,
    load: Load,
    config: RunConfig,
    clients: Vec<NetClient>,
    value: &Bytes,
    label: &str,
) -> Result<(Vec<NetClient>, Report), String> {
    let start = Instant::now();
    let t0 = start + Duration::from_secs_f64(args.warmup);
    let t1 = t0 + Duration::from_secs_f64(args.duration);
    let window = Window { start, t0, t1 };
    let counts = Arc::new(Counts::default());
    let histogram = Arc::new(Mutex::new(report::new_histogram()));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let loadavg_before = procfs::loadavg();
    let generator = {
        let (counts, histogram, first_error, value) = (
            counts.clone(),
            histogram.clone(),
            first_error.clone(),
            value.clone(),
        );
        let reads = args.reads;
        tokio::spawn(async move {
            match load {
                Load::Closed { .. } => {
                    closed_loop(
                        clients,
                        window,
                        reads,
                        value,
                        counts,
                        histogram,
                        first_error,
                    )
                    .await
                }
                Load::Open { rate, .. } => {
                    open_loop(
                        clients,
                        window,
                        rate,
                        reads,
                        value,
                        counts,
                        histogram,
                        first_error,
                    )
                    .await
                }
            }
        })
    };

    let total = t1 - start;
    let bar = ProgressBar::new(total.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:40} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    let mut before: Option<Snapshot> = None;
    let mut last = (Instant::now(), 0u64);
    let mut rate_now = 0.0;
    // Completions so far, every 100 ms, for the throughput around a killed primary.
    let mut timeline: Vec<(Instant, u64)> = Vec::new();
    let kill_at = args
        .kill_primary_at
        .map(|s| t0 + Duration::from_secs_f64(s));
    let mut killed: Option<(usize, Instant)> = None;
    let after = loop {
        let now = Instant::now();
        if before.is_none() && now >= t0 {
            before = Some(snapshot(target).await);
        }
        if now >= t1 {
            break snapshot(target).await;
        }
        let all = counts.all.load(Ordering::Relaxed);
        timeline.push((now, all));
        if killed.is_none()
            && kill_at.is_some_and(|at| now >= at)
            && let Some(replicas) = &mut target.replicas
        {
            let primary = current_primary(&target.http).await;
            replicas.kill(primary)?;
            killed = Some((primary, now));
            bar.println(format!("killed the primary, replica {primary}"));
        }
        if now - last.0 >= Duration::from_millis(500) {
            rate_now = (all - last.1) as f64 / (now - last.0).as_secs_f64();
            last = (now, all);
        }
        bar.set_position((now - start).as_millis() as u64);
        bar.set_message(format!(
            "{}: {all} done, {rate_now:.0}/s",
            if now < t0 { "warm-up" } else { "measuring" }
        ));
        let next = now + Duration::from_millis(100);
        let mut wake = next.min(if before.is_none() { t0 } else { t1 });
        if killed.is_none()
            && let Some(at) = kill_at
            && at > now
        {
            wake = wake.min(at);
        }
        tokio::time::sleep_until(wake).await;
    };
    bar.set_message("waiting for requests in flight".to_string());
    let (clients, unsent) = generator
        .await
        .map_err(|e| format!("the load generator failed: {e}"))?;
    bar.finish_and_clear();
    let before = before.unwrap_or_else(|| unreachable!("taken at t0, before t1"));
    if let Some(e) = first_error.lock().ok().and_then(|e| e.clone()) {
        eprintln!("a request failed: {e}");
    }
    let delta_usage = match (before.replicas, after.replicas) {
        (Some(b), Some(a)) => Some((
            a.cpu_seconds - b.cpu_seconds,
            a.wchar.zip(b.wchar).map(|(a, b)| a.saturating_sub(b)),
            a.write_bytes
                .zip(b.write_bytes)
                .map(|(a, b)| a.saturating_sub(b)),
        )),
        _ => None,
    };
    let raw = Raw {
        elapsed_s: args.duration,
        committed: counts.committed.load(Ordering::Relaxed),
        failed: counts.failed.load(Ordering::Relaxed),
        unsent,
        replica_cpu_s: delta_usage.map(|d| d.0),
        replica_wchar: delta_usage.and_then(|d| d.1),
        replica_storage_bytes: delta_usage.and_then(|d| d.2),
        loadgen_cpu_s: after.loadgen.cpu_seconds - before.loadgen.cpu_seconds,
        loadgen_wchar: after
            .loadgen
            .wchar
            .zip(before.loadgen.wchar)
            .map(|(a, b)| a.saturating_sub(b)),
        batches_committed: mean_delta(&before.metrics, &after.metrics, |m| m.batches),
        requests_executed: mean_delta(&before.metrics, &after.metrics, |m| m.requests),
        peer_bytes_sent: total_delta(&before.metrics, &after.metrics, |m| m.peer_bytes),
        replicas_with_pids: target.pids.len(),
    };
    let latency = histogram
        .lock()
        .map(|h| Latency::of(&h))
        .map_err(|_| "a load task panicked".to_string())?;
    let mut report = Report::compute(config, &raw, latency);
    if let Some((primary, at)) = killed {
        report.failover = Some(failover(&timeline, start, primary, at));
    }
    report.loadavg_before = loadavg_before;
    report.loadavg_after = procfs::loadavg();
    report.cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    Ok((clients, report))
}

fn record(histogram: &Mutex<Histogram<u64>>, latency: Duration) {
    let us = u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    if let Ok(mut h) = histogram.lock() {
        h.saturating_record(us);
    }
}

fn note_error(first_error: &Mutex<Option<String>>, e: &dyn std::fmt::Display) {
    if let Ok(mut slot) = first_error.lock() {
        slot.get_or_insert_with(|| e.to_string());
    }
}

/// Each client sends its next request as soon as the last completed, until the interval ends. A latency counts
/// if its request completed within the measured interval.
async fn closed_loop(
    clients: Vec<NetClient>,
    window: Window,
    reads: f64,
    value: Bytes,
    counts: Arc<Counts>,
    histogram: Arc<Mutex<Histogram<u64>>>,
    first_error: Arc<Mutex<Option<String>>>,
) -> (Vec<NetClient>, u64) {
    let mut tasks = JoinSet::new();
    for mut client in clients {
        let (counts, histogram, first_error, value) = (
            counts.clone(),
            histogram.clone(),
            first_error.clone(),
            value.clone(),
        );
        let mut mix = Mix(client.id().0 ^ 0x5eed);
        tasks.spawn(async move {
            while Instant::now() < window.t1 {
                let op = mix.op(reads, &value);
                let sent = Instant::now();
                let result = client.submit(op).await;
                let done = Instant::now();
                counts.all.fetch_add(1, Ordering::Relaxed);
                if !window.contains(done) {
                    continue;
                }
                match result {
                    Ok(_) => {
                        counts.committed.fetch_add(1, Ordering::Relaxed);
                        record(&histogram, done - sent);
                    }
                    Err(e) => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        note_error(&first_error, &e);
                    }
                }
            }
            client
        });
    }
    let mut back = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(client) = joined {
            back.push(client);
        }
    }
    (back, 0)
}

/// Requests are due at start + k / rate. At its time a request takes an idle client from the pool (waiting for
/// one if all are busy) and is sent; its latency runs from the time it was due. Requests due within the measured
/// interval make the latency figures; completions within it make the throughput. Returns the clients and the
/// number of requests due within the interval that were never sent.
#[allow(clippy::too_many_arguments)]
async fn open_loop(
    clients: Vec<NetClient>,
    window: Window,
    rate: f64,
    reads: f64,
    value: Bytes,
    counts: Arc<Counts>,
    histogram: Arc<Mutex<Histogram<u64>>>,
    first_error: Arc<Mutex<Option<String>>>,
) -> (Vec<NetClient>, u64) {
    let pool = clients.len();
    // Each client runs on a task of its own for the whole run: the dispatcher hands an idle client the due time
    // of the next request through the client's own channel, and the client comes back to the idle queue when it
    // is done. A request costs two channel messages, not a task and timers of its own.
    let (idle_tx, mut idle_rx) = tokio::sync::mpsc::channel::<usize>(pool.max(1));
    let mut due_txs = Vec::with_capacity(pool);
    let mut tasks = JoinSet::new();
    for (index, mut client) in clients.into_iter().enumerate() {
        let (due_tx, mut due_rx) = tokio::sync::mpsc::channel::<(Instant, Bytes)>(1);
        due_txs.push(due_tx);
        let _ = idle_tx.try_send(index);
        let (counts, histogram, first_error, idle_tx) = (
            counts.clone(),
            histogram.clone(),
            first_error.clone(),
            idle_tx.clone(),
        );
        tasks.spawn(async move {
            while let Some((due, op)) = due_rx.recv().await {
                let result = client.submit(op).await;
                let done = Instant::now();
                counts.all.fetch_add(1, Ordering::Relaxed);
                let _ = idle_tx.send(index).await;
                match result {
                    Ok(_) => {
                        if window.contains(done) {
                            counts.committed.fetch_add(1, Ordering::Relaxed);
                        }
                        if window.contains(due) {
                            record(&histogram, done - due);
                        }
                    }
                    Err(e) => {
                        if window.contains(due) {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            note_error(&first_error, &e);
                        }
                    }
                }
            }
            client
        });
    }
    drop(idle_tx);
    let interval = 1.0 / rate;
    let mut mix = Mix(0x09e0_u64.wrapping_add(rate.to_bits()));
    let end = tokio::time::sleep_until(window.t1);
    tokio::pin!(end);
    let mut k: u64 = 0;
    let mut unsent = 0;
    loop {
        let due = window.start + Duration::from_secs_f64(k as f64 * interval);
        if due >= window.t1 {
            break;
        }
        // Requests already due go out at once, one after another; only a request due later waits for a timer.
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let idle = tokio::select! {
            // An idle client first: the end only stops a dispatcher that waits for one.
            biased;
            index = idle_rx.recv() => index,
            () = &mut end => None,
        };
        let Some(index) = idle else {
            // Out of time with every client busy: count what was due in the interval and not sent.
            let from = due.max(window.t0);
            unsent = ((window.t1 - from).as_secs_f64() / interval).ceil() as u64;
            break;
        };
        k += 1;
        let op = mix.op(reads, &value);
        // The client is idle, so its channel has room.
        if let Some(client) = due_txs.get(index) {
            let _ = client.try_send((due, op));
        }
    }
    // Closing the clients' channels ends their tasks once their last request is done.
    drop(due_txs);
    let mut back = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(client) = joined {
            back.push(client);
        }
    }
    (back, unsent)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn defaults_make_one_closed_loop_run() {
        let args = parse(&[]).unwrap();
        let p = plan(&args).unwrap();
        assert_eq!(
            p.loads,
            vec![Load::Closed {
                clients: 8,
                window: 1
            }]
        );
        assert_eq!(p.clients_needed, 8);
        assert_eq!(args.replicas, 4);
        assert_eq!(args.request_size, 512);
        assert_eq!(args.transport, Transport::Stream);
        assert_eq!(
            parse(&["--transport", "unary"]).unwrap().transport,
            Transport::Unary
        );
        assert!(parse(&["--transport", "carrier-pigeon"]).is_err());
    }

    #[test]
    fn only_cluster_sizes_of_3f_plus_1_are_accepted() {
        for n in ["4", "7", "10", "16"] {
            assert!(parse(&["--replicas", n]).is_ok(), "{n}");
        }
        for n in ["3", "5", "13", "x"] {
            assert!(parse(&["--replicas", n]).is_err(), "{n}");
        }
    }

    #[test]
    fn durations_take_an_optional_unit() {
        assert_eq!(parse_seconds("30").unwrap(), 30.0);
        assert_eq!(parse_seconds("30s").unwrap(), 30.0);
        assert_eq!(parse_seconds("1.5").unwrap(), 1.5);
        assert_eq!(parse_seconds("500ms").unwrap(), 0.5);
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("ten").is_err());
        assert!(parse(&["--duration", "0"]).is_ok_and(|a| plan(&a).is_err()));
    }

    #[test]
    fn a_window_multiplies_the_network_clients() {
        let p = plan(&parse(&["--clients", "4", "--window", "8"]).unwrap()).unwrap();
        assert_eq!(p.clients_needed, 32);
    }

    #[test]
    fn a_sweep_is_of_client_counts_unless_open_loop() {
        let p = plan(&parse(&["--sweep", "1,4,16", "--window", "2"]).unwrap()).unwrap();
        assert_eq!(p.loads.len(), 3);
        assert_eq!(p.clients_needed, 32);
        assert!(plan(&parse(&["--sweep", "1.5"]).unwrap()).is_err());

        let p = plan(&parse(&["--open", "--sweep", "100,200.5", "--pool", "16"]).unwrap()).unwrap();
        assert_eq!(
            p.loads,
            vec![
                Load::Open {
                    rate: 100.0,
                    pool: 16
                },
                Load::Open {
                    rate: 200.5,
                    pool: 16
                }
            ]
        );
        assert_eq!(p.clients_needed, 16);
        let p = plan(&parse(&["--rate", "300"]).unwrap()).unwrap();
        assert_eq!(
            p.loads,
            vec![Load::Open {
                rate: 300.0,
                pool: 128
            }]
        );
        assert!(plan(&parse(&["--open"]).unwrap()).is_err());
        assert!(plan(&parse(&["--rate", "0"]).unwrap()).is_err());
        assert!(plan(&parse(&["--open", "--sweep", "100,-1"]).unwrap()).is_err());
    }

    #[test]
    fn bad_mixes_sizes_and_counts_are_refused() {
        for bad in [
            &["--reads", "1.5"][..],
            &["--reads=-0.1"],
            &["--clients", "0"],
            &["--window", "0"],
            &["--request-size", "0"],
            &["--request-size", "70000"],
            &["--batch-size", "0"],
        ] {
            let args = parse(bad).unwrap();
            assert!(plan(&args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn attaching_excludes_the_started_clusters_options() {
        assert!(parse(&["--attach", "client-0.toml"]).is_ok());
        assert!(parse(&["--attach", "client-0.toml", "--batch-size", "8"]).is_err());
        assert!(parse(&["--attach", "client-0.toml", "--replicas", "7"]).is_err());
    }

    #[test]
    fn prometheus_counters_are_read_by_name() {
        let text = "# HELP pbft_batches_committed Batches\n\
                    # TYPE pbft_batches_committed counter\n\
                    pbft_batches_committed_total 42\n\
                    pbft_requests_executed_total 1000\n\
                    pbft_requests_executed_total_other 5\n";
        assert_eq!(metric(text, "pbft_batches_committed_total"), Some(42.0));
        assert_eq!(metric(text, "pbft_requests_executed_total"), Some(1000.0));
        assert_eq!(metric(text, "pbft_view"), None);
    }

    #[test]
    fn counter_deltas_are_averaged_over_replicas_that_answered_twice() {
        let s = |batches, requests, peer_bytes| {
            Some(Scraped {
                batches,
                requests,
                peer_bytes,
            })
        };
        let before = [s(10.0, 100.0, 5.0), s(12.0, 110.0, 7.0), None];
        let after = [s(20.0, 300.0, 15.0), s(24.0, 330.0, 27.0), s(1.0, 1.0, 1.0)];
        assert_eq!(mean_delta(&before, &after, |m| m.batches), Some(11.0));
        assert_eq!(mean_delta(&before, &after, |m| m.requests), Some(210.0));
        assert_eq!(mean_delta(&[None], &after[..1], |m| m.batches), None);
        // A sum needs every replica: one that did not answer would make it too small.
        assert_eq!(total_delta(&before, &after, |m| m.peer_bytes), None);
        assert_eq!(
            total_delta(&before[..2], &after[..2], |m| m.peer_bytes),
            Some(30.0)
        );
    }

    #[test]
    fn failover_measures_the_rate_before_and_the_time_to_get_back_to_80_percent() {
        // 100 requests per 100 ms, nothing for 1.2 s after the kill at 5 s, then 100 per 100 ms again.
        let start = Instant::now();
        let mut all = 0;
        let timeline: Vec<(Instant, u64)> = (0..100)
            .map(|i| {
                let t = i as f64 / 10.0;
                if !(5.0..6.2).contains(&t) && i > 0 {
                    all += 100;
                }
                (start + Duration::from_millis(i * 100), all)
            })
            .collect();
        let f = failover(&timeline, start, 0, start + Duration::from_secs(5));
        // The sample at the kill already missed its 100 requests: 19 of the 20 steps before it count.
        assert!((f.rate_before - 950.0).abs() < 1.0, "{f:?}");
        let back = f.recovered_after_s.expect("recovered");
        assert!((0.9..=1.3).contains(&back), "{f:?}");
        // Never back: no recovery time.
        let flat: Vec<(Instant, u64)> = (0..100)
            .map(|i| (start + Duration::from_millis(i * 100), i.min(50) * 100))
            .collect();
        assert_eq!(
            failover(&flat, start, 0, start + Duration::from_secs(5)).recovered_after_s,
            None
        );
    }

    #[test]
    fn the_mix_follows_the_read_fraction() {
        let value = Bytes::from_static(b"v");
        let mut mix = Mix(1);
        let gets = (0..10_000).filter(|_| mix.read(0.3)).count();
        assert!((2500..3500).contains(&gets), "{gets}");
        assert!((0..100).all(|_| !mix.read(0.0) && mix.read(1.0)));
        let put = mix.op(0.0, &Bytes::from(vec![b'v'; 512]));
        assert!(put.len() > 512, "{}", put.len());
        assert!(mix.op(1.0, &value).len() < 64);
    }
}
