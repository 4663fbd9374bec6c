//! A cluster of real `pbft replica` processes on loopback, for the end-to-end tests.
//!
//! Each test makes its own testnet in a temporary directory with its own port range (`base_port`: peers on
//! base+i, gRPC on base+100+i, HTTP on base+200+i), so tests run in parallel. The processes are killed and reaped
//! when the [`Cluster`] is dropped, also when a test panics; a failing test prints the end of every replica's log.
//! Nothing waits for a fixed time alone: conditions are polled with a deadline.

#![allow(dead_code)] // each test binary uses a different part of this module
#![allow(clippy::unwrap_used)] // tests

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pbft_apps::{KvOp, KvResult};
use pbft_client::net::{Connections, NetClient, NetClientConfig, NetError};
use pbft_crypto::KeyPair;
use pbft_node::config::{AppKind, ClientFile, ClientSetup, ParamsFile};
use pbft_node::testnet::TestnetSpec;
use pbft_types::ReplicaId;
use pbft_types::wire::ReplicaStatus;
use tempfile::TempDir;
use tokio::runtime::Runtime;

/// The `pbft` binary under test.
pub const PBFT: &str = env!("CARGO_BIN_EXE_pbft");

/// How long a cluster may take to start, or a condition to hold, before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How long one operation may take before the test fails (a view change takes about a second).
pub const OP_DEADLINE: Duration = Duration::from_secs(15);

pub struct Cluster {
    dir: TempDir,
    pub base_port: u16,
    pub n: usize,
    /// Client 0 of the testnet.
    pub setup: ClientSetup,
    children: Vec<Option<Child>>,
    pub rt: Runtime,
    /// Reads statuses (never submits).
    status_client: NetClient,
}

impl Cluster {
    /// A 4-replica testnet in a new temporary directory, every replica started and connected to every other.
    pub fn start(base_port: u16) -> Cluster {
        let mut cluster = Cluster::create(base_port);
        for i in 0..cluster.n {
            cluster.spawn(i);
        }
        cluster.wait_connected();
        cluster
    }

    /// The testnet files only (written by `pbft testnet`, with 2 clients and the default parameters); no replica
    /// started.
    pub fn create(base_port: u16) -> Cluster {
        let n = 4;
        check_ports_free(base_port, n);
        let dir = temp_dir();
        let out = Command::new(PBFT)
            .args([
                "testnet",
                "--replicas",
                "4",
                "--clients",
                "2",
                "--base-port",
            ])
            .arg(base_port.to_string())
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pbft testnet failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster::in_dir(dir, base_port, n)
    }

    /// The testnet files only, with `clients` clients and the protocol parameters `params` (which `pbft testnet`
    /// does not expose); no replica started.
    pub fn create_with(base_port: u16, clients: usize, params: ParamsFile) -> Cluster {
        Cluster::create_app(base_port, clients, params, AppKind::Kv)
    }

    /// As `create_with`, for the application `app` (a ledger gets 4 accounts, `account-J.key`).
    pub fn create_app(base_port: u16, clients: usize, params: ParamsFile, app: AppKind) -> Cluster {
        let n = 4;
        check_ports_free(base_port, n);
        let dir = temp_dir();
        let spec = TestnetSpec {
            replicas: n,
            clients,
            hosts: Vec::new(),
            base_port,
            params,
            app,
            accounts: 4,
        };
        pbft_node::testnet::write(&spec, dir.path()).unwrap();
        Cluster::in_dir(dir, base_port, n)
    }

    fn in_dir(dir: TempDir, base_port: u16, n: usize) -> Cluster {
        let setup = ClientFile::load(&dir.path().join("client-0.toml")).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let status_client = {
            let _guard = rt.enter();
            net_client(&setup, setup.key.clone(), Duration::from_secs(5))
        };
        Cluster {
            dir,
            base_port,
            n,
            setup,
            children: (0..n).map(|_| None).collect(),
            rt,
            status_client,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.path().join(format!("replica-{i}.log"))
    }

    /// What replica `i` logged so far (all its runs).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    pub fn peer_addr(&self, i: usize) -> SocketAddr {
        self.setup.cluster.addresses[i].peer
    }

    pub fn http_addr(&self, i: usize) -> SocketAddr {
        self.setup.cluster.addresses[i].http
    }

    /// Starts replica `i`'s process; its output goes (appended) to `replica-i.log`.
    pub fn spawn(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "replica {i} is running already");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let child = Command::new(PBFT)
            .arg("replica")
            .arg("--config")
            .arg(self.path().join(format!("replica-{i}.toml")))
            // Anything a replica writes relative to its working directory stays in this test's directory.
            .current_dir(self.path())
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    /// Stops replica `i` abruptly (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// Replica `i`'s status through gRPC `GetStatus`, or `None` if it does not answer within 2 s.
    pub fn status(&self, i: usize) -> Option<ReplicaStatus> {
        self.rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(2),
                self.status_client.status(ReplicaId(i as u64)),
            )
            .await
            .ok()?
            .ok()
        })
    }

    /// Polls replica `i`'s status until `ok` holds, and returns that status; fails the test after [`PATIENCE`].
    pub fn wait_status(
        &self,
        i: usize,
        what: &str,
        ok: impl Fn(&ReplicaStatus) -> bool,
    ) -> ReplicaStatus {
        let start = Instant::now();
        let mut last = None;
        loop {
            if let Some(status) = self.status(i) {
                if ok(&status) {
                    return status;
                }
                last = Some(status);
            }
            assert!(
                start.elapsed() < PATIENCE,
                "replica {i}: not {what} after {PATIENCE:?}; last status: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running replica is connected to every other running replica.
    pub fn wait_connected(&self) {
        let running = self.children.iter().filter(|c| c.is_some()).count() as u64;
        for i in (0..self.n).filter(|&i| self.is_running(i)) {
            self.wait_status(i, "connected to its peers", |s| {
                s.peers_connected + 1 >= running
            });
        }
    }

    /// A network client for client 0 with the cluster's key.
    pub fn client(&self) -> NetClient {
        let _guard = self.rt.enter();
        net_client(&self.setup, self.setup.key.clone(), OP_DEADLINE)
    }

    /// A network client for client `j` of the testnet (`client-j.toml`), with the given deadline per operation.
    pub fn client_n(&self, j: usize, deadline: Duration) -> NetClient {
        let setup = ClientFile::load(&self.path().join(format!("client-{j}.toml"))).unwrap();
        let _guard = self.rt.enter();
        net_client(&setup, setup.key.clone(), deadline)
    }

    /// Streamed connections to the replicas (one `SubmitStream` each), for clients to share.
    pub fn streamed_connections(&self) -> Connections {
        let addresses: Vec<SocketAddr> =
            self.setup.cluster.addresses.iter().map(|a| a.api).collect();
        let _guard = self.rt.enter();
        Connections::streamed(&addresses).unwrap()
    }

    /// A network client for client `j` of the testnet whose requests travel over `connections`.
    pub fn client_over(&self, j: usize, connections: &Connections) -> NetClient {
        let setup = ClientFile::load(&self.path().join(format!("client-{j}.toml"))).unwrap();
        let _guard = self.rt.enter();
        NetClient::with_connections(
            settings(&setup, setup.key.clone(), OP_DEADLINE),
            connections,
        )
        .unwrap()
    }

    /// A network client that claims to be client 0 but signs with another key.
    pub fn impostor(&self, deadline: Duration) -> NetClient {
        let _guard = self.rt.enter();
        net_client(&self.setup, KeyPair::from_seed([0x5a; 32]), deadline)
    }

    pub fn submit(&self, client: &mut NetClient, op: KvOp) -> Result<KvResult, NetError> {
        let result = self.rt.block_on(client.submit(op.encode()))?;
        Ok(KvResult::decode(&result).unwrap())
    }

    /// Puts `key` = `value` and checks that it committed.
    pub fn put(&self, client: &mut NetClient, key: &str, value: &str) {
        let op = KvOp::Put {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
        };
        match self.submit(client, op) {
            Ok(KvResult::Done) => {}
            other => panic!("put {key}={value}: {other:?}"),
        }
    }

    /// Reads `key`.
    pub fn get(&self, client: &mut NetClient, key: &str) -> Option<String> {
        let op = KvOp::Get {
            key: key.as_bytes().to_vec().into(),
        };
        match self.submit(client, op) {
            Ok(KvResult::Value(v)) => Some(String::from_utf8(v.to_vec()).unwrap()),
            Ok(KvResult::NotFound) => None,
            other => panic!("get {key}: {other:?}"),
        }
    }

    /// Runs `pbft` with `args` and returns its standard output; fails the test if it fails.
    pub fn pbft(&self, args: &[&str]) -> String {
        let out = Command::new(PBFT).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "pbft {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.n {
            self.kill(i);
        }
        if std::thread::panicking() {
            for i in 0..self.n {
                let log = self.log(i);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- replica {i} log (last {} lines) ----", tail.len());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn check_ports_free(base_port: u16, n: usize) {
    for port in [0, 100, 200]
        .into_iter()
        .flat_map(|offset| (0..n as u16).map(move |i| base_port + offset + i))
    {
        if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
            panic!(
                "port {port} of this test's range is not free ({e}): is another test or cluster using it?"
            );
        }
    }
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("pbft-e2e-")
        .tempdir()
        .unwrap()
}

fn settings(setup: &ClientSetup, key: KeyPair, deadline: Duration) -> NetClientConfig {
    NetClientConfig {
        config: setup.cluster.config.clone(),
        id: setup.id,
        key,
        replicas: setup.cluster.addresses.iter().map(|a| a.api).collect(),
        retransmit_after: Duration::from_millis(300),
        deadline,
    }
}

fn net_client(setup: &ClientSetup, key: KeyPair, deadline: Duration) -> NetClient {
    NetClient::new(settings(setup, key, deadline)).unwrap()
}

/// One HTTP/1.1 exchange over a plain TCP connection: returns the status code and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {head:?}"));
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of a metric line `name value` (without labels) in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Bytes from a small seeded generator (xorshift), so that a failure can be replayed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
