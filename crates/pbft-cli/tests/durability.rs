//! Durability with real `pbft replica` processes: `kill -9` at random instants under load (one replica, then all
//! of them), a replica down for many checkpoints, and a replica refusing a journal it cannot trust.
//!
//! The randomness is seeded: every test prints its seed, and `PBFT_SEED=N` replays it (the schedule of kills, not
//! the operating system's timing, so a replay is close to the run, not identical).
//!
//! The clients' model of the store: for every key, the last acknowledged value and the values written after it
//! whose put was not acknowledged (it timed out: it may or may not have been executed). A read must return the
//! last acknowledged value or one of those; anything else is a lost acknowledged write.

#![allow(clippy::unwrap_used)] // tests

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, OP_DEADLINE, PATIENCE, PBFT};
use pbft_apps::{KvOp, KvResult};
use pbft_node::config::ParamsFile;

/// Port ranges (e2e.rs uses 21000..23400).
const KILL_ONE: u16 = 24000;
const KILL_ONE_LONG: u16 = 24300;
const KILL_ALL: u16 = 24600;
const LAGGARD: u16 = 24900;
const BAD_JOURNAL: u16 = 25200;
const LAGGARD_IDLE: u16 = 25500;

/// splitmix64: small, seeded, good enough to pick victims and instants.
struct Rng(u64);

impl Rng {
    /// The seed of `PBFT_SEED`, or a fresh one; printed either way.
    fn from_env(test: &str) -> Rng {
        let seed = std::env::var("PBFT_SEED")
            .ok()
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|_| panic!("PBFT_SEED={s} is not a u64"))
            })
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: seed {seed} (replay with PBFT_SEED={seed})");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, min: u64, max: u64) -> Duration {
        Duration::from_millis(min + self.below(max - min + 1))
    }
}

/// What the clients know of one key.
#[derive(Debug, Default)]
struct KeyState {
    acked: Option<String>,
    /// Values put after `acked` whose put was not acknowledged.
    unsure: Vec<String>,
}

#[derive(Debug, Default)]
struct Model {
    keys: BTreeMap<String, KeyState>,
}

impl Model {
    /// Whether `read` is a value `key` may hold; `None` (not found) only if no put of it was ever acknowledged.
    fn allows(&self, key: &str, read: &Option<String>) -> bool {
        let Some(state) = self.keys.get(key) else {
            return read.is_none();
        };
        *read == state.acked
            || read
                .as_ref()
                .is_some_and(|value| state.unsure.contains(value))
    }
}

/// Every value put in this test binary is distinct.
static NEXT_VALUE: AtomicU64 = AtomicU64::new(0);

/// Clients putting keys concurrently, each on its own keys, each one operation at a time.
struct Workload {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// Clients `0..clients` of the testnet, each cycling over `keys` keys of its own (`c{client}-k{i}`).
    fn start(
        cluster: &Cluster,
        model: &Arc<Mutex<Model>>,
        clients: usize,
        keys: usize,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|c| {
                let mut client = cluster.client_n(c, OP_DEADLINE);
                let (stop, acked, failed, model) =
                    (stop.clone(), acked.clone(), failed.clone(), model.clone());
                cluster.rt.spawn(async move {
                    let mut i: u64 = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let key = format!("c{c}-k{}", i % keys as u64);
                        let value = format!("c{c}-v{}", NEXT_VALUE.fetch_add(1, Ordering::SeqCst));
                        model
                            .lock()
                            .unwrap()
                            .keys
                            .entry(key.clone())
                            .or_default()
                            .unsure
                            .push(value.clone());
                        let op = KvOp::Put {
                            key: key.as_bytes().to_vec().into(),
                            value: value.as_bytes().to_vec().into(),
                        };
                        match client.submit(op.encode()).await {
                            Ok(result) => {
                                let result = KvResult::decode(&result).unwrap();
                                assert!(
                                    matches!(result, KvResult::Done),
                                    "put {key}={value}: {result:?}"
                                );
                                let mut model = model.lock().unwrap();
                                let state = model.keys.get_mut(&key).unwrap();
                                state.acked = Some(value);
                                state.unsure.clear();
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => {
                                eprintln!("client {c}: put {key}={value} not acknowledged: {e}");
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Workload {
            stop,
            acked,
            failed,
            tasks,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until `more` puts beyond `since` are acknowledged; fails the test after [`PATIENCE`].
    fn wait_acked(&self, since: u64, more: u64, what: &str) {
        let start = Instant::now();
        while self.acked() < since + more {
            assert!(
                start.elapsed() < PATIENCE,
                "{what}: {} puts acknowledged in {PATIENCE:?}, expected {more}",
                self.acked() - since
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the clients after their operation in flight; returns (acknowledged, not acknowledged).
    fn stop(mut self, cluster: &Cluster) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for task in std::mem::take(&mut self.tasks) {
            cluster.rt.block_on(task).unwrap();
        }
        (self.acked(), self.failed.load(Ordering::SeqCst))
    }
}

/// Waits until every running replica has executed the same sequence number, and returns it.
fn wait_converged(cluster: &Cluster) -> u64 {
    let start = Instant::now();
    loop {
        let executed: Vec<Option<u64>> = (0..cluster.n)
            .filter(|&i| cluster.is_running(i))
            .map(|i| cluster.status(i).map(|s| s.last_executed))
            .collect();
        if let Some(Some(first)) = executed.first()
            && executed.iter().all(|e| *e == Some(*first))
        {
            return *first;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "replicas not at the same last_executed after {PATIENCE:?}: {executed:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The highest last_executed among the running replicas other than `except`.
fn others_executed(cluster: &Cluster, except: usize) -> u64 {
    (0..cluster.n)
        .filter(|&i| i != except && cluster.is_running(i))
        .filter_map(|i| cluster.status(i).map(|s| s.last_executed))
        .max()
        .unwrap()
}

/// Reads every key of the model back (with client `reader`, not one of the workload's) and fails the test on any
/// value the model does not allow. Returns how many keys were read.
fn check_reads(cluster: &Cluster, model: &Arc<Mutex<Model>>, reader: usize) -> usize {
    let mut client = cluster.client_n(reader, OP_DEADLINE);
    let model = model.lock().unwrap();
    let mut lost = Vec::new();
    for (key, state) in &model.keys {
        let read = cluster.get(&mut client, key);
        if !model.allows(key, &read) {
            lost.push(format!(
                "{key}: read {read:?}, last acknowledged {:?}, unacknowledged since {:?}",
                state.acked, state.unsure
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} keys do not hold their last acknowledged value:\n{}",
        lost.len(),
        model.keys.len(),
        lost.join("\n")
    );
    model.keys.len()
}

/// `rounds` times: at a random instant under a 4-client workload, `kill -9` a random replica, leave it down for a
/// random while, restart it from its data directory, and wait until it has caught up and the cluster commits
/// again. Then all replicas reach the same last_executed and every acknowledged put reads back.
fn kill_one_at_random(base_port: u16, rounds: usize) {
    let started = Instant::now();
    let mut rng = Rng::from_env("kill_one_at_random");
    let clients = 4;
    let mut cluster = Cluster::create_with(base_port, clients + 1, ParamsFile::default());
    for i in 0..cluster.n {
        cluster.spawn(i);
    }
    cluster.wait_connected();
    let model = Arc::new(Mutex::new(Model::default()));
    let workload = Workload::start(&cluster, &model, clients, 16);
    workload.wait_acked(0, 10, "before the first kill");
    let mut catch_ups = Vec::new();
    for round in 0..rounds {
        std::thread::sleep(rng.millis(100, 1200));
        let victim = rng.below(cluster.n as u64) as usize;
        let acked_before = workload.acked();
        cluster.kill(victim);
        let down = rng.millis(0, 2500);
        std::thread::sleep(down);
        cluster.spawn(victim);
        let restarted = Instant::now();
        let target = others_executed(&cluster, victim);
        let status = cluster.wait_status(victim, "caught up after its restart", |s| {
            s.last_executed >= target
        });
        let catch_up = restarted.elapsed();
        workload.wait_acked(workload.acked(), 5, "after the restart");
        catch_ups.push(catch_up);
        eprintln!(
            "round {round}: killed replica {victim} ({acked_before} puts acknowledged), down {down:?}, caught up \
             to {} (others at {target}) in {catch_up:?}, view {}",
            status.last_executed, status.view
        );
    }
    let (acked, failed) = workload.stop(&cluster);
    let executed = wait_converged(&cluster);
    let keys = check_reads(&cluster, &model, clients);
    eprintln!(
        "{rounds} rounds: {acked} puts acknowledged, {failed} not acknowledged, all replicas at last_executed \
         {executed}, {keys} keys read back; longest catch-up {:?}; {:?} in all",
        catch_ups.iter().max().unwrap(),
        started.elapsed()
    );
}

#[test]
fn kill_one_replica_at_random_instants() {
    kill_one_at_random(KILL_ONE, 5);
}

/// The acceptance check: 20 rounds. `cargo test -p pbft-cli --test durability -- --ignored`.
#[test]
#[ignore = "20 rounds of kill -9 take about a minute"]
fn kill_one_replica_at_random_instants_20_rounds() {
    kill_one_at_random(KILL_ONE_LONG, 20);
}

/// `kill -9` of every replica at once under load, twice; after each restart every acknowledged put reads back with
/// its value and the cluster commits again.
#[test]
fn kill_all_replicas_at_once() {
    let mut rng = Rng::from_env("kill_all_replicas_at_once");
    let clients = 4;
    let mut cluster = Cluster::create_with(KILL_ALL, clients + 1, ParamsFile::default());
    for i in 0..cluster.n {
        cluster.spawn(i);
    }
    cluster.wait_connected();
    let model = Arc::new(Mutex::new(Model::default()));
    for round in 0..2 {
        let workload = Workload::start(&cluster, &model, clients, 16);
        workload.wait_acked(0, 20, "before the crash");
        std::thread::sleep(rng.millis(0, 1000));
        let acked_at_crash = workload.acked();
        for i in 0..cluster.n {
            cluster.kill(i);
        }
        std::thread::sleep(rng.millis(0, 500));
        // The clients stop after the put they are retransmitting, which the restarted cluster may still commit.
        workload.stop.store(true, Ordering::SeqCst);
        let restarted = Instant::now();
        for i in 0..cluster.n {
            cluster.spawn(i);
        }
        cluster.wait_connected();
        let (acked, failed) = workload.stop(&cluster);
        // Reads first: a replica that recovered without the last batches catches up only once new requests come
        // (see `a_replica_down_for_many_checkpoints_catches_up_when_idle`), and the reads are such requests.
        let keys = check_reads(&cluster, &model, clients);
        let executed = wait_converged(&cluster);
        eprintln!(
            "round {round}: {acked_at_crash} puts acknowledged at the crash, {acked} in all ({failed} not), \
             {keys} keys read back, all at last_executed {executed} {:?} after the restart",
            restarted.elapsed()
        );
    }
    // The cluster keeps committing.
    let workload = Workload::start(&cluster, &model, clients, 16);
    workload.wait_acked(0, 50, "after the restarts");
    workload.stop(&cluster);
    wait_converged(&cluster);
    check_reads(&cluster, &model, clients);
}

/// Replica 3 stays down for many checkpoints (K = 8, window 16) while two clients commit 300 puts; restarted, it
/// catches up by state transfer to the others' last_executed, and then the cluster commits without replica 2, so
/// replica 3 really takes part. With `idle`, nothing is submitted while it catches up and the others' last
/// executed batch lies between two checkpoints; otherwise the clients keep writing meanwhile.
fn laggard(base_port: u16, idle: bool) {
    let clients = 2;
    let checkpoint_interval = 8;
    let params = ParamsFile {
        checkpoint_interval: Some(checkpoint_interval),
        window: Some(16),
        ..ParamsFile::default()
    };
    let mut cluster = Cluster::create_with(base_port, clients + 1, params);
    for i in 0..cluster.n {
        cluster.spawn(i);
    }
    cluster.wait_connected();
    let model = Arc::new(Mutex::new(Model::default()));
    let mut client = cluster.client_n(clients, OP_DEADLINE);
    cluster.put(&mut client, "before", "0");

    cluster.kill(3);
    let load = Instant::now();
    let workload = Workload::start(&cluster, &model, clients, 32);
    workload.wait_acked(0, 300, "while replica 3 is down");
    let (acked, failed) = workload.stop(&cluster);
    let mut target = wait_converged(&cluster);
    if idle && target.is_multiple_of(checkpoint_interval) {
        cluster.put(&mut client, "between-checkpoints", "1");
        target = wait_converged(&cluster);
    }
    let stable = cluster.status(0).unwrap().stable_checkpoint;
    eprintln!(
        "replica 3 down: {acked} puts acknowledged ({failed} not) in {:?}; the others at last_executed {target}, \
         stable checkpoint {stable}",
        load.elapsed()
    );
    assert!(
        stable >= 16 * 4,
        "only {stable} executed: not enough for replica 3 to need a state transfer"
    );

    cluster.spawn(3);
    let restarted = Instant::now();
    let workload = (!idle).then(|| Workload::start(&cluster, &model, clients, 32));
    let status = cluster.wait_status(3, "caught up", |s| s.last_executed >= target);
    eprintln!(
        "replica 3 caught up from 1 to {} (stable checkpoint {}; the others were at {target} when it restarted) \
         in {:?}{}",
        status.last_executed,
        status.stable_checkpoint,
        restarted.elapsed(),
        if idle { ", idle" } else { ", under load" }
    );
    if let Some(workload) = workload {
        workload.stop(&cluster);
    }

    // Without replica 2, a quorum needs replica 3.
    cluster.kill(2);
    let workload = Workload::start(&cluster, &model, clients, 32);
    workload.wait_acked(0, 30, "with replica 2 down");
    workload.stop(&cluster);
    let executed = wait_converged(&cluster);
    assert!(executed > target, "nothing committed without replica 2");
    check_reads(&cluster, &model, clients);
    assert_eq!(cluster.get(&mut client, "before").as_deref(), Some("0"));
}

#[test]
fn a_replica_down_for_many_checkpoints_catches_up_under_load() {
    laggard(LAGGARD, false);
}

/// A replica restored to the last stable checkpoint by state transfer, with nothing in its log, has nothing
/// unfinished of its own: it catches up above the checkpoint because its peers answer its STATUS with theirs, and
/// once f+1 of them report being ahead it keeps asking until it is not behind.
#[test]
fn a_replica_down_for_many_checkpoints_catches_up_when_idle() {
    laggard(LAGGARD_IDLE, true);
}

/// Runs `pbft replica` for replica `i` expecting it to refuse to start: returns its standard error.
fn expect_refusal(cluster: &Cluster, i: usize, case: &str) -> String {
    let mut child = Command::new(PBFT)
        .arg("replica")
        .arg("--config")
        .arg(cluster.path().join(format!("replica-{i}.toml")))
        .current_dir(cluster.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{case}: replica {i} started on a bad journal; its output:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{case}: exit {status}; stderr: {}", stderr.trim());
    assert!(!status.success(), "{case}: exit status {status}");
    assert_eq!(
        status.code(),
        Some(1),
        "{case}: not a plain failure: {status}"
    );
    assert!(!stderr.contains("panicked"), "{case}: a panic: {stderr}");
    assert!(
        stderr.contains("refusing to start") || stderr.contains("cannot open"),
        "{case}: no clear reason on stderr: {stderr}"
    );
    stderr
}

/// The journal's log (a run this short fills one segment of it).
fn journal_path(cluster: &Cluster, i: usize) -> PathBuf {
    cluster
        .path()
        .join(format!("data/replica-{i}/replica-{i}.log.00000001"))
}

/// A replica refuses to start on a corrupted journal (flipped bytes in its records, a truncated file, noise) or on
/// another replica's, with a clear message and no panic, while the others keep committing; given its own journal
/// back it starts and catches up.
#[test]
fn a_replica_refuses_a_bad_journal() {
    let mut cluster = Cluster::create_with(BAD_JOURNAL, 2, ParamsFile::default());
    for i in 0..cluster.n {
        cluster.spawn(i);
    }
    cluster.wait_connected();
    let mut client = cluster.client();
    // A marker that lands in the journal's records (in the PRE-PREPAREs' requests and the executed batches).
    let marker = "journal-marker-7f3a9c";
    for i in 0..5 {
        cluster.put(&mut client, &format!("{marker}-{i}"), marker);
    }
    // Replica 2 has executed them all (and journalled them) before it stops.
    let target = others_executed(&cluster, 2);
    cluster.wait_status(2, "caught up", |s| s.last_executed >= target);
    cluster.kill(2);
    let path = journal_path(&cluster, 2);
    let original = std::fs::read(&path).unwrap();
    let mut commits = 0;
    let mut still_commits = |cluster: &Cluster, client: &mut pbft_client::net::NetClient| {
        commits += 1;
        cluster.put(client, &format!("while-2-is-refused-{commits}"), "x");
    };

    // Flipped bytes wherever the marker is stored (bytes flipped at an arbitrary offset may land in a free page, which
    // a replica may rightly ignore).
    let mut flipped = original.clone();
    let mut hits = 0;
    let needle = marker.as_bytes();
    let mut at = 0;
    // The segment is created at its full size; what was written is at its start.
    let written = flipped.len().min(4 << 20);
    while let Some(found) = flipped[at..written]
        .windows(needle.len())
        .position(|w| w == needle)
    {
        flipped[at + found + needle.len() / 2] ^= 0x55;
        hits += 1;
        at += found + needle.len();
    }
    assert!(hits > 0, "the marker is nowhere in {}", path.display());
    std::fs::write(&path, &flipped).unwrap();
    expect_refusal(&cluster, 2, &format!("{hits} records with flipped bytes"));
    still_commits(&cluster, &mut client);

    // Truncated to half its length.
    std::fs::write(&path, &original[..original.len() / 2]).unwrap();
    expect_refusal(&cluster, 2, "truncated to half");
    still_commits(&cluster, &mut client);

    // Noise of the same length.
    std::fs::write(&path, common::noise(0x2a, original.len())).unwrap();
    expect_refusal(&cluster, 2, "noise");
    still_commits(&cluster, &mut client);

    // Replica 1's journal under replica 2's name (copied while replica 1 runs idle).
    std::fs::copy(journal_path(&cluster, 1), &path).unwrap();
    let stderr = expect_refusal(&cluster, 2, "replica 1's journal");
    assert!(
        stderr.contains("belongs to replica 1, not to replica 2"),
        "replica 1's journal: the message does not say whose it is: {stderr}"
    );
    still_commits(&cluster, &mut client);

    // Its own journal back: it starts, recovers and catches up.
    std::fs::write(&path, &original).unwrap();
    cluster.spawn(2);
    cluster.put(&mut client, "after", "y");
    let target = others_executed(&cluster, 2);
    cluster.wait_status(2, "caught up with its own journal", |s| {
        s.last_executed >= target
    });
    assert_eq!(
        cluster.get(&mut client, &format!("{marker}-0")).as_deref(),
        Some(marker)
    );
}
