//! `pbft demo`: a 4-replica cluster of real processes on loopback, a client workload, and the faults PBFT is made
//! for, explained on screen as they happen.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pbft_apps::{KvOp, KvResult};
use pbft_client::net::NetClient;
use pbft_node::config::{AppKind, ClientSetup, ParamsFile};
use pbft_node::testnet::{TestnetSpec, write};
use pbft_types::ReplicaId;
use pbft_types::wire::ReplicaStatus;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::client::connect;
use crate::testnet::AppChoice;

pub(crate) const REPLICAS: usize = 4;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds of client load in each scene.
    #[arg(long, default_value_t = 4)]
    scene_seconds: u64,
    /// Clients sending requests at the same time (each waits for its result before the next request).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Keep the cluster's directory (keys, configuration, replica logs) instead of deleting it at the end.
    #[arg(long)]
    keep: bool,
    /// The application: the key-value store, or the ledger (transfers committing as blocks, a replica catching
    /// up on the chain, and the chain verified offline).
    #[arg(long, value_enum, default_value_t = AppChoice::Kv)]
    app: AppChoice,
}

pub fn run(args: &DemoArgs) -> ExitCode {
    if args.clients == 0 || args.scene_seconds == 0 {
        eprintln!("error: --clients and --scene-seconds must be at least 1");
        return ExitCode::FAILURE;
    }
    crate::run_in_cluster_dir(
        "pbft-demo-",
        |succeeded| args.keep || !succeeded,
        |dir| async move {
            match args.app {
                AppChoice::Kv => demo(args, &dir).await,
                AppChoice::Ledger => crate::demo_ledger::demo(args.scene_seconds, &dir).await,
            }
        },
    )
}

/// The replica processes of the demo. Dropping it kills every one that is still running.
pub(crate) struct Cluster {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub children: Vec<Option<Child>>,
    pub monitor: NetClient,
}

impl Cluster {
    /// Starts every replica of the testnet in `dir` and waits until each is connected to the others; `monitor`
    /// is the client whose key reads their status.
    pub(crate) async fn launch(dir: &Path, monitor: &ClientSetup) -> Result<Cluster, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find the pbft binary: {e}"))?;
        let mut cluster = Cluster {
            exe,
            dir: dir.to_path_buf(),
            children: (0..REPLICAS).map(|_| None).collect(),
            monitor: connect(monitor, Duration::from_secs(5))?,
        };
        for i in 0..REPLICAS {
            cluster.start(i)?;
        }
        cluster
            .wait_for(Duration::from_secs(20), "starting the replicas", |s| {
                s.iter()
                    .all(|s| s.is_some_and(|s| s.peers_connected as usize == REPLICAS - 1))
            })
            .await?;
        Ok(cluster)
    }

    pub(crate) fn start(&mut self, i: usize) -> Result<(), String> {
        let log_path = self.dir.join(format!("replica-{i}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err_log = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(&self.exe)
            .arg("replica")
            .arg("--config")
            .arg(self.dir.join(format!("replica-{i}.toml")))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start replica {i}: {e}"))?;
        self.children[i] = Some(child);
        Ok(())
    }

    pub(crate) async fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill().await;
        }
    }

    pub(crate) async fn stop_all(&mut self) {
        for i in 0..self.children.len() {
            self.stop(i).await;
        }
    }

    pub(crate) async fn statuses(&self) -> Vec<Option<ReplicaStatus>> {
        let mut all = Vec::with_capacity(REPLICAS);
        for i in 0..REPLICAS {
            all.push(self.monitor.status(ReplicaId(i as u64)).await.ok());
        }
        all
    }

    /// Polls the replicas' status until `done` holds for the running ones, or `timeout` passes.
    pub(crate) async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Option<ReplicaStatus>]) -> bool,
    ) -> Result<Vec<Option<ReplicaStatus>>, String> {
        let give_up = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            if done(&statuses) {
                return Ok(statuses);
            }
            if Instant::now() >= give_up {
                return Err(format!("{what}: not done after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Any replica process that exited by itself (a crash) is an error.
    pub(crate) fn check_alive(&mut self) -> Result<(), String> {
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Some(child) = child
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("replica {i} exited unexpectedly ({status})"));
            }
        }
        Ok(())
    }
}

/// What the workload measured.
#[derive(Default)]
struct Tally {
    committed: u64,
    failed: u64,
    latencies: Vec<Duration>,
    busy: Duration,
    first_commit: Option<Instant>,
}

/// One workload client and the last value it wrote to each of its keys.
struct Worker {
    client: NetClient,
    index: usize,
    next: u64,
    last_written: Option<(String, String)>,
}

async fn demo(args: &DemoArgs, dir: &Path) -> Result<(), String> {
    let started = Instant::now();
    println!("PBFT demo: four replicas tolerate one faulty replica (n = 3f + 1 with f = 1).\n");
    let base_port = free_base_port()?;
    let net = write(
        &TestnetSpec {
            replicas: REPLICAS,
            clients: args.clients,
            hosts: Vec::new(),
            base_port,
            params: ParamsFile::default(),
            app: AppKind::Kv,
            accounts: 0,
        },
        dir,
    )
    .map_err(|e| e.to_string())?;
    println!(
        "1. Made a testnet in {}: a key pair per replica and per client, and the cluster file that lists \
         their public keys. Replica i talks to its peers on port {}+i (TLS, authenticated by the replica keys) \
         and to clients on {}+i (gRPC) and {}+i (HTTP).",
        dir.display(),
        base_port,
        base_port + 100,
        base_port + 200
    );
    let setups = net.client_setups().map_err(|e| e.to_string())?;
    let mut cluster = Cluster::launch(dir, &setups[0]).await?;
    println!(
        "2. Started {REPLICAS} replica processes; each is connected to the other three. Replica 0 is the \
         primary of view 0: it orders requests, the backups check and vote.\n"
    );
    let mut workers = setups
        .iter()
        .enumerate()
        .map(|(index, setup)| {
            Ok(Worker {
                client: connect(setup, Duration::from_secs(30))?,
                index,
                next: 0,
                last_written: None,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let scene = Duration::from_secs(args.scene_seconds);
    let mut total = Tally::default();

    println!(
        "Scene 1: normal operation. {} clients write keys. A result counts only when f+1 = 2 replicas \
         sent the same signed reply, so no single faulty replica can fool a client.",
        args.clients
    );
    workers = load(&mut cluster, workers, scene, "all replicas up", &mut total)
        .await?
        .workers;

    println!(
        "\nScene 2: replica 3, a backup, is stopped (killed). Three replicas are still a quorum (2f+1 = 3), \
         so the cluster keeps committing without it."
    );
    cluster.stop(3).await;
    workers = load(&mut cluster, workers, scene, "backup 3 down", &mut total)
        .await?
        .workers;

    println!(
        "\nScene 3: replica 3 comes back. It recovers what it had from its journal on disk, then learns from \
         its peers what it missed: their log, or a snapshot of a checkpoint that 2f+1 replicas signed."
    );
    cluster.start(3)?;
    let caught_up = catch_up(&mut cluster, 3).await?;
    println!("   Replica 3 caught up in {caught_up:.1?}.");

    println!(
        "\nScene 4: the primary, replica 0, is stopped. The backups notice that requests are not ordered, \
         agree on a new view whose primary is replica 1, carry over every request that may have committed, \
         and go on."
    );
    cluster.stop(0).await;
    let scene4 = load(&mut cluster, workers, scene, "primary 0 down", &mut total).await?;
    workers = scene4.workers;
    let statuses = cluster.statuses().await;
    let view = statuses.iter().flatten().map(|s| s.view).max().unwrap_or(0);
    if view == 0 {
        return Err("the replicas did not change view after the primary stopped".to_string());
    }
    let recovered = scene4
        .first_commit
        .ok_or("nothing committed after the primary stopped")?;
    println!(
        "   The cluster is in view {view} now (primary: replica {}); the first request after the stop \
         committed {recovered:.1?} after it.",
        view % REPLICAS as u64
    );

    println!(
        "\nScene 5: replica 0 comes back, learns that the cluster moved to view {view}, and catches up."
    );
    cluster.start(0)?;
    let caught_up = catch_up(&mut cluster, 0).await?;
    println!("   Replica 0 caught up in {caught_up:.1?}.");
    workers = load(
        &mut cluster,
        workers,
        scene,
        "all replicas up again",
        &mut total,
    )
    .await?
    .workers;

    println!("\nChecking: every client reads back the last value it wrote, through the cluster.");
    for worker in &mut workers {
        let Some((key, value)) = worker.last_written.clone() else {
            continue;
        };
        let result = worker
            .client
            .submit(
                KvOp::Get {
                    key: key.clone().into_bytes().into(),
                }
                .encode(),
            )
            .await
            .map_err(|e| format!("reading {key} back: {e}"))?;
        match KvResult::decode(&result) {
            Ok(KvResult::Value(v)) if v.as_ref() == value.as_bytes() => {}
            other => return Err(format!("reading {key} back gave {other:?}, not {value:?}")),
        }
    }
    let statuses = catch_up_all(&cluster).await?;
    cluster.check_alive()?;
    cluster.stop_all().await;

    summary(&total, &statuses, started.elapsed());
    let errors = count_errors(dir);
    if errors > 0 {
        return Err(format!("the replica logs hold {errors} ERROR lines"));
    }
    if total.failed > 0 {
        return Err(format!("{} requests failed", total.failed));
    }
    println!("\nAll replica processes are stopped. No errors.");
    Ok(())
}

/// Runs the workload for `duration` with a progress bar; returns the workers for the next scene.
async fn load(
    cluster: &mut Cluster,
    workers: Vec<Worker>,
    duration: Duration,
    label: &str,
    total: &mut Tally,
) -> Result<Scene, String> {
    let committed = Arc::new(AtomicU64::new(0));
    let scene_start = Instant::now();
    let until = scene_start + duration;
    let mut tasks: JoinSet<(Worker, Tally)> = JoinSet::new();
    for mut worker in workers {
        let committed = committed.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < until {
                let key = format!("client-{}/key-{}", worker.index, worker.next % 16);
                let value = format!("value-{}", worker.next);
                worker.next += 1;
                let op = KvOp::Put {
                    key: key.clone().into_bytes().into(),
                    value: value.clone().into_bytes().into(),
                };
                let sent = Instant::now();
                match worker.client.submit(op.encode()).await {
                    Ok(_) => {
                        tally.first_commit.get_or_insert_with(Instant::now);
                        tally.latencies.push(sent.elapsed());
                        tally.committed += 1;
                        worker.last_written = Some((key, value));
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tally.failed += 1;
                        eprintln!("   client {}: {e}", worker.index);
                    }
                }
            }
            (worker, tally)
        });
    }
    let bar = ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("   {bar:40} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    while !tasks.is_empty() && Instant::now() < until {
        let n = committed.load(Ordering::Relaxed);
        let secs = scene_start.elapsed().as_secs_f64().max(0.001);
        bar.set_position(scene_start.elapsed().as_millis() as u64);
        bar.set_message(format!("{label}: {n} committed, {:.0}/s", n as f64 / secs));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut workers = Vec::new();
    let mut first_commit: Option<Instant> = None;
    while let Some(joined) = tasks.join_next().await {
        let (worker, tally) = joined.map_err(|e| format!("a client task failed: {e}"))?;
        first_commit = match (first_commit, tally.first_commit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        total.committed += tally.committed;
        total.failed += tally.failed;
        total.latencies.extend(tally.latencies);
        workers.push(worker);
    }
    let elapsed = scene_start.elapsed();
    total.busy += elapsed;
    let n = committed.load(Ordering::Relaxed);
    let line = format!(
        "{label}: {n} committed in {:.1}s, {:.0}/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64().max(0.001)
    );
    bar.set_position(duration.as_millis() as u64);
    if bar.is_hidden() {
        // Not a terminal: no bar was drawn, so say what it would have shown.
        println!("   {line}");
    }
    bar.finish_with_message(line);
    cluster.check_alive()?;
    workers.sort_by_key(|w| w.index);
    Ok(Scene {
        workers,
        first_commit: first_commit.map(|t| t.duration_since(scene_start)),
    })
}

/// What a scene of load leaves: the workers for the next one, and how soon the first request committed.
struct Scene {
    workers: Vec<Worker>,
    first_commit: Option<Duration>,
}

/// Waits until replica `i` executed as far as the furthest replica; returns how long that took.
pub(crate) async fn catch_up(cluster: &mut Cluster, i: usize) -> Result<Duration, String> {
    let started = Instant::now();
    cluster
        .wait_for(
            Duration::from_secs(60),
            &format!("replica {i} catching up"),
            |s| {
                let furthest = s.iter().flatten().map(|s| s.last_executed).max();
                s[i].is_some_and(|me| Some(me.last_executed) == furthest && me.last_executed > 0)
            },
        )
        .await?;
    cluster.check_alive()?;
    Ok(started.elapsed())
}

/// Waits until every replica executed as far as the others and is in the same view.
async fn catch_up_all(cluster: &Cluster) -> Result<Vec<Option<ReplicaStatus>>, String> {
    cluster
        .wait_for(Duration::from_secs(60), "all replicas agreeing", |s| {
            let first = s[0];
            first.is_some()
                && s.iter().all(|x| {
                    x.is_some_and(|x| {
                        first
                            .is_some_and(|f| x.last_executed == f.last_executed && x.view == f.view)
                    })
                })
        })
        .await
}

fn summary(total: &Tally, statuses: &[Option<ReplicaStatus>], elapsed: Duration) {
    let mut latencies = total.latencies.clone();
    latencies.sort();
    let at = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    println!("\nSummary");
    println!("   requests committed   {}", total.committed);
    println!(
        "   throughput           {:.0} requests/s over {:.1}s of load",
        total.committed as f64 / total.busy.as_secs_f64().max(0.001),
        total.busy.as_secs_f64()
    );
    println!(
        "   latency              p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        at(0.5),
        at(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!("   demo wall time       {:.1}s", elapsed.as_secs_f64());
    println!("   replica  view  executed  checkpoint  view changes seen");
    for s in statuses.iter().flatten() {
        println!(
            "   {:>7}  {:>4}  {:>8}  {:>10}  {:>17}",
            s.replica, s.view, s.last_executed, s.stable_checkpoint, s.view_changes
        );
    }
}

/// ERROR lines in the replicas' logs.
pub(crate) fn count_errors(dir: &Path) -> usize {
    (0..REPLICAS)
        .filter_map(|i| std::fs::read_to_string(dir.join(format!("replica-{i}.log"))).ok())
        .map(|log| log.lines().filter(|l| l.contains("ERROR")).count())
        .sum()
}

/// A base port whose 3 x 4 ports (peers, gRPC, HTTP) are all free now.
pub(crate) fn free_base_port() -> Result<u16, String> {
    for base in (17000u16..27000).step_by(300) {
        let ports = (0..REPLICAS as u16).flat_map(|i| [base + i, base + 100 + i, base + 200 + i]);
        let all_free = ports
            .map(|p| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], p))))
            .collect::<Result<Vec<_>, _>>()
            .is_ok();
        if all_free {
            return Ok(base);
        }
    }
    Err("no free range of loopback ports between 17000 and 27000".to_string())
}
