//! One simulated run: n replicas and C clients exchanging bytes over the simulated network, in virtual time, with
//! the checkers looking at every step.
//!
//! The simulator is a driver of the core exactly as a node is: what a replica sends is encoded to bytes, what it
//! receives is decoded and verified at the boundary first, replies are signed by the driver, timers are set and
//! cancelled on request. Only the clock, the network and the randomness are simulated, and all randomness comes
//! from one generator seeded with the run's seed.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use pbft_apps::KvStore;
use pbft_client::{Client, ClientOutput, Destination};
use pbft_core::{Dest, Input, Output, Replica, Timer};
use pbft_crypto::{KeyPair, Keyring, Signer};
use pbft_types::{ClientId, ClientInfo, ClusterConfig, DecodeLimits, Principal, ReplicaId};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::boundary::Boundary;
use crate::check::Checker;
use crate::check::history::HistoryEntry;
use crate::config::{SimConfig, SimError};
use crate::network::{Endpoint, Network, NetworkConfig, NetworkStats, Partition};
use crate::queue::EventQueue;
use crate::report::SimReport;
use crate::trace;
use crate::violation::Violation;
use crate::workload::Workload;

/// A run that takes more events than this is spinning without virtual time passing: a bug, reported as such.
const MAX_EVENTS: u64 = 20_000_000;

/// Where the lines of a trace go.
type TraceSink = Box<dyn FnMut(&str)>;

/// Rewrites what a replica asked for before the driver carries it out: how tests make a replica misbehave.
type Tamper = Box<dyn FnMut(ReplicaId, &mut Vec<Output>)>;

#[derive(Clone, Debug)]
enum Event {
    /// Bytes from replica `from` reach replica `to`.
    ReplicaMessage {
        to: ReplicaId,
        from: ReplicaId,
        bytes: Bytes,
    },
    /// A client's request reaches replica `to`.
    Request {
        to: ReplicaId,
        bytes: Bytes,
    },
    /// A reply reaches client number `to`.
    Reply {
        to: usize,
        bytes: Bytes,
    },
    /// A replica's timer expires, if it was not restarted or cancelled since (`generation` tells).
    ReplicaTimer {
        replica: ReplicaId,
        timer: Timer,
        generation: u64,
    },
    ClientTimer {
        client: usize,
        generation: u64,
    },
    /// Client number `client` issues its next request.
    Submit {
        client: usize,
    },
}

struct ReplicaNode {
    replica: Replica,
    /// The driver signs the replica's replies with it.
    key: KeyPair,
    /// The generation of each running timer. Restarting a timer gives it a new generation, so the expiry
    /// scheduled for the earlier one is recognised as stale and ignored.
    timers: BTreeMap<Timer, u64>,
}

struct ClientNode {
    client: Client,
    /// Requests still to issue.
    remaining: usize,
    timer: Option<u64>,
}

pub struct Simulation {
    config: SimConfig,
    cluster: ClusterConfig,
    rng: ChaCha8Rng,
    queue: EventQueue<Event>,
    network: Network,
    boundary: Boundary,
    replicas: Vec<ReplicaNode>,
    clients: Vec<ClientNode>,
    checker: Checker,
    workload: Workload,
    next_generation: u64,
    completed: usize,
    core_rejections: u64,
    events: u64,
    violations: Vec<Violation>,
    trace: Option<TraceSink>,
    tamper: Option<Tamper>,
}

/// Runs one seed to its end.
pub fn run_one(config: SimConfig) -> Result<SimReport, SimError> {
    Ok(Simulation::new(config)?.run())
}

impl Simulation {
    pub fn new(config: SimConfig) -> Result<Simulation, SimError> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let replica_keys: Vec<KeyPair> = (0..config.replicas)
            .map(|_| KeyPair::from_seed(rng.random()))
            .collect();
        let client_keys: Vec<KeyPair> = (0..config.clients)
            .map(|_| KeyPair::from_seed(rng.random()))
            .collect();
        let cluster = ClusterConfig {
            replicas: replica_keys.iter().map(KeyPair::public_key).collect(),
            clients: client_keys
                .iter()
                .enumerate()
                .map(|(i, k)| ClientInfo {
                    id: client_id(i),
                    public_key: k.public_key(),
                })
                .collect(),
            params: config.params.clone(),
        };
        cluster.validate()?;
        let keyring = Keyring::new(&cluster)?;

        let partitions = if config.partition {
            vec![draw_partition(&cluster, &config, &mut rng)]
        } else {
            Vec::new()
        };
        let network = Network::new(NetworkConfig {
            drop: config.drop,
            duplicate: config.duplicate,
            min_delay: config.min_delay,
            max_delay: config.max_delay,
            heal_at: config.heal_at,
            partitions,
        });

        let replicas = replica_keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let id = ReplicaId(i as u64);
                let signer = Signer::new(Principal::Replica(id), key.clone());
                let replica = Replica::new(cluster.clone(), id, signer, Box::new(KvStore::new()))?;
                Ok(ReplicaNode {
                    replica,
                    key,
                    timers: BTreeMap::new(),
                })
            })
            .collect::<Result<Vec<_>, SimError>>()?;
        let clients = client_keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| ClientNode {
                client: Client::new(
                    cluster.clone(),
                    Signer::new(Principal::Client(client_id(i)), key),
                    config.retransmit_after,
                ),
                remaining: config.requests,
                timer: None,
            })
            .collect();

        let limits = DecodeLimits {
            max_message_size: cluster.params.max_message_size,
            max_batch_size: cluster.params.max_batch_size,
        };
        let checker = Checker::new(
            &cluster,
            keyring.clone(),
            config.heal_at,
            config.liveness_bound,
        );
        let mut sim = Simulation {
            workload: Workload::new(config.key_space),
            boundary: Boundary::new(keyring, limits),
            config,
            cluster,
            rng,
            queue: EventQueue::new(),
            network,
            replicas,
            clients,
            checker,
            next_generation: 0,
            completed: 0,
            core_rejections: 0,
            events: 0,
            violations: Vec::new(),
            trace: None,
            tamper: None,
        };
        for client in 0..sim.clients.len() {
            if sim.clients[client].remaining > 0 {
                let start = sim.think_time();
                sim.queue.schedule(start, Event::Submit { client });
            }
        }
        Ok(sim)
    }

    /// Sends a line to `sink` for every event and every message sent, lost or refused: the trace of a replay.
    pub fn trace_to(&mut self, sink: impl FnMut(&str) + 'static) {
        self.trace = Some(Box::new(sink));
    }

    /// Lets `tamper` rewrite every replica's outputs before they are carried out and checked. A replica whose
    /// outputs are tampered with is no longer a correct replica: tests use this to check that the checkers catch
    /// what a broken core would do.
    pub fn tamper_with(&mut self, tamper: impl FnMut(ReplicaId, &mut Vec<Output>) + 'static) {
        self.tamper = Some(Box::new(tamper));
    }

    /// What the network did so far.
    pub fn network_stats(&self) -> NetworkStats {
        self.network.stats()
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if let Some(sink) = &mut self.trace {
            let now = self.queue.now();
            sink(&format!("{:>12.6} {}", now.as_secs_f64(), line()));
        }
    }

    /// The executed history: what committed at each sequence number, first come.
    pub fn history(&self) -> &[HistoryEntry] {
        self.checker.history().entries()
    }

    pub fn partitions(&self) -> &[Partition] {
        &self.network.config().partitions
    }

    fn requests_total(&self) -> usize {
        self.config.clients * self.config.requests
    }

    /// Runs until every request completed (and the drain time passed), an invariant broke, or the run stalled.
    pub fn run(&mut self) -> SimReport {
        let mut drain_until = None;
        while self.violations.is_empty() {
            let next = self.queue.next_time();
            if let Some(until) = drain_until
                && next.is_none_or(|t| t > until)
            {
                break;
            }
            match (next, self.checker.liveness().next_deadline()) {
                (None, _) => {
                    if drain_until.is_none() {
                        self.stall(self.queue.now());
                    }
                    break;
                }
                (Some(t), Some(deadline)) if t > deadline => {
                    self.stall(deadline);
                    break;
                }
                _ => {}
            }
            let Some(event) = self.queue.pop() else { break };
            self.events += 1;
            if self.events > MAX_EVENTS {
                self.violations.push(Violation::Driver(format!(
                    "more than {MAX_EVENTS} events by {:?}: something loops without time passing",
                    self.queue.now()
                )));
                break;
            }
            self.handle(event);
            if drain_until.is_none() && self.completed == self.requests_total() {
                drain_until = Some(self.queue.now() + self.config.drain);
            }
        }
        self.report()
    }

    fn report(&self) -> SimReport {
        let net = self.network.stats();
        SimReport {
            seed: self.config.seed,
            replicas: self.config.replicas,
            clients: self.config.clients,
            requests_completed: self.completed,
            requests_total: self.requests_total(),
            committed_batches: self.checker.history().entries().len() as u64,
            simulated_time: self.queue.now(),
            messages_sent: net.sent,
            messages_dropped: net.dropped,
            messages_rejected: self.boundary.rejected(),
            inputs_refused: self.core_rejections,
            max_log_slots: self.checker.max_log_slots(),
            max_stable_checkpoint: self.checker.max_low_watermark(),
            history_hash: self.checker.history().head(),
            violations: self.violations.clone(),
            replay: self.config.replay_command(),
        }
    }

    fn stall(&mut self, at: Duration) {
        let replicas = self
            .replicas
            .iter()
            .map(|node| {
                let s = node.replica.status();
                format!(
                    "[{} view {} executed {} h {} slots {} pending {}]",
                    s.id, s.view, s.last_executed, s.low_watermark, s.log_slots, s.pending_requests
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        let mut outstanding = self.checker.liveness().describe(at);
        let unissued: usize = self.clients.iter().map(|c| c.remaining).sum();
        if unissued > 0 {
            outstanding.push_str(&format!("; {unissued} requests not yet issued"));
        }
        self.violations.push(Violation::Stall {
            at,
            heal_at: self.config.heal_at,
            outstanding,
            replicas,
        });
    }

    fn think_time(&mut self) -> Duration {
        let max = self.config.think_time.as_micros() as u64;
        Duration::from_micros(self.rng.random_range(0..=max))
    }

    fn violation(&mut self, result: Result<(), Violation>) {
        if let Err(v) = result {
            self.violations.push(v);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::ReplicaMessage { to, from, bytes } => match self
                .boundary
                .replica_msg(from, &bytes)
            {
                Ok(msg) => {
                    self.trace(|| format!("r{to} <- r{from} {}", trace::describe_verified(&msg)));
                    self.step_replica(to, Input::Message { from, msg });
                }
                Err(e) => self.trace(|| format!("r{to} <- r{from} dropped at the boundary: {e}")),
            },
            Event::Request { to, bytes } => match self.boundary.request(&bytes) {
                Ok(request) => {
                    self.trace(|| {
                        format!("r{to} <- client {} t {}", request.client, request.timestamp)
                    });
                    self.step_replica(to, Input::Request(request));
                }
                Err(e) => self.trace(|| format!("r{to} <- request dropped at the boundary: {e}")),
            },
            Event::Reply { to, bytes } => self.deliver_reply(to, &bytes),
            Event::ReplicaTimer {
                replica,
                timer,
                generation,
            } => {
                let Some(node) = self.replicas.get_mut(replica.index()) else {
                    return;
                };
                if node.timers.get(&timer) == Some(&generation) {
                    node.timers.remove(&timer);
                    self.trace(|| format!("r{replica} timer {timer:?} fires"));
                    self.step_replica(replica, Input::TimerFired(timer));
                }
            }
            Event::ClientTimer { client, generation } => {
                let Some(node) = self.clients.get_mut(client) else {
                    return;
                };
                if node.timer == Some(generation) {
                    node.timer = None;
                    let outputs = node.client.on_timeout();
                    self.trace(|| format!("client {client} timer fires"));
                    self.client_outputs(client, outputs);
                }
            }
            Event::Submit { client } => self.submit(client),
        }
    }

    fn step_replica(&mut self, id: ReplicaId, input: Input) {
        let Some(node) = self.replicas.get_mut(id.index()) else {
            return;
        };
        let mut outputs = node.replica.step(input);
        if let Some(tamper) = &mut self.tamper {
            tamper(id, &mut outputs);
        }
        for output in outputs {
            self.replica_output(id, output);
        }
        let status = self.replicas[id.index()].replica.status();
        let checked = self.checker.status(&status);
        self.violation(checked);
    }

    fn replica_output(&mut self, id: ReplicaId, output: Output) {
        let now = self.queue.now();
        match output {
            // The simulated replicas do not crash and restart from disk yet: their journal is not kept.
            Output::Persist(_) => {}
            Output::Send { to, msg } => {
                self.trace(|| format!("r{id} -> {to:?} {}", trace::describe(&msg)));
                let bytes = Bytes::from(msg.encode());
                let targets: Vec<ReplicaId> = match to {
                    Dest::AllReplicas => self.cluster.replica_ids().filter(|r| *r != id).collect(),
                    Dest::Replica(r) => vec![r],
                };
                for target in targets {
                    if !self.cluster.is_replica(target) {
                        continue;
                    }
                    let event = Event::ReplicaMessage {
                        to: target,
                        from: id,
                        bytes: bytes.clone(),
                    };
                    self.send(Endpoint::Replica(id), Endpoint::Replica(target), event);
                }
            }
            Output::Reply(reply) => {
                if reply.replica != id {
                    self.violations.push(Violation::Driver(format!(
                        "replica {id} emitted a reply in the name of replica {}",
                        reply.replica
                    )));
                    return;
                }
                let client = reply.client;
                self.trace(|| format!("r{id} -> client {client} REPLY t {}", reply.timestamp));
                let Some(to) = self.client_index(client) else {
                    return;
                };
                let bytes = Bytes::from(self.replicas[id.index()].key.sign(reply).encode());
                self.send(
                    Endpoint::Replica(id),
                    Endpoint::Client(client),
                    Event::Reply { to, bytes },
                );
            }
            Output::SetTimer { timer, after } => {
                let generation = self.generation();
                self.replicas[id.index()].timers.insert(timer, generation);
                self.queue.schedule(
                    now + after,
                    Event::ReplicaTimer {
                        replica: id,
                        timer,
                        generation,
                    },
                );
            }
            Output::StateInstalled { seq, digest } => {
                self.trace(|| format!("r{id} INSTALLED state of n{seq} {digest:?}"));
                let checked = self.checker.installed(id, seq);
                self.violation(checked);
            }
            Output::CancelTimer(timer) => {
                self.replicas[id.index()].timers.remove(&timer);
            }
            Output::Committed(committed) => {
                self.trace(|| {
                    format!(
                        "r{id} COMMITTED n{} v{} {:?} ({} requests)",
                        committed.seq,
                        committed.view,
                        committed.digest,
                        committed.batch.len()
                    )
                });
                let checked = self.checker.committed(id, &committed);
                self.violation(checked);
            }
            Output::EnteredView(view) => {
                self.trace(|| format!("r{id} ENTERED view {view}"));
            }
            Output::Evidence { first, second } => {
                self.trace(|| {
                    format!(
                        "r{id} EVIDENCE: primary {} signed v{} n{} as {:?} and {:?}",
                        first.replica, first.view, first.seq, first.digest, second.digest
                    )
                });
            }
            // Refusals are normal on a network that duplicates and reorders (a duplicate, a message below the
            // low watermark); they are counted, and any that matters shows up as a broken invariant.
            Output::Rejected(rejection) => {
                self.core_rejections += 1;
                self.trace(|| {
                    format!(
                        "r{id} refused {} from {}: {:?}",
                        rejection.kind, rejection.from, rejection.reason
                    )
                });
            }
        }
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn client_index(&self, client: ClientId) -> Option<usize> {
        usize::try_from(client.0)
            .ok()
            .filter(|i| *i < self.clients.len())
    }

    /// Hands a message to the network, which schedules its copies, if any.
    fn send(&mut self, from: Endpoint, to: Endpoint, event: Event) {
        let now = self.queue.now();
        let arrivals = self.network.route(from, to, now, &mut self.rng);
        match arrivals.len() {
            0 => self.trace(|| format!("  lost on the way to {to:?}")),
            1 => {}
            n => self.trace(|| format!("  {n} copies to {to:?}")),
        }
        for at in arrivals {
            self.queue.schedule(at, event.clone());
        }
    }

    fn submit(&mut self, client: usize) {
        let now = self.queue.now();
        let operation = self.workload.next_op(&mut self.rng).encode();
        let Some(node) = self.clients.get_mut(client) else {
            return;
        };
        // The clock is only a hint for the timestamp; virtual microseconds keep runs reproducible.
        match node.client.submit(operation, now.as_micros() as u64) {
            Ok(outputs) => {
                node.remaining -= 1;
                self.client_outputs(client, outputs);
            }
            Err(e) => self.violations.push(Violation::Driver(format!(
                "client {client} refused to issue a request: {e}"
            ))),
        }
    }

    fn deliver_reply(&mut self, client: usize, bytes: &Bytes) {
        let Ok(reply) = self.boundary.decode_reply(bytes) else {
            return;
        };
        let Some(node) = self.clients.get(client) else {
            return;
        };
        // A client verifies only replies it can use: answers to a request that already completed are dropped
        // before paying for a signature check.
        if node.client.outstanding() != Some(reply.value().timestamp) {
            return;
        }
        let Ok(reply) = self.boundary.verify_reply(reply) else {
            return;
        };
        self.trace(|| {
            format!(
                "client {client} <- r{} REPLY t {}",
                reply.replica, reply.timestamp
            )
        });
        let outputs = self.clients[client].client.on_reply(reply);
        self.client_outputs(client, outputs);
    }

    fn client_outputs(&mut self, client: usize, outputs: Vec<ClientOutput>) {
        let id = client_id(client);
        for output in outputs {
            let now = self.queue.now();
            match output {
                ClientOutput::Send { to, request } => {
                    self.trace(|| {
                        format!(
                            "client {client} -> {to:?} REQUEST t {}",
                            request.value().timestamp
                        )
                    });
                    self.checker.issued(request.value(), now);
                    let bytes = Bytes::from(request.encode());
                    let targets: Vec<ReplicaId> = match to {
                        Destination::Replica(r) => vec![r],
                        Destination::All => self.cluster.replica_ids().collect(),
                    };
                    for target in targets {
                        let event = Event::Request {
                            to: target,
                            bytes: bytes.clone(),
                        };
                        self.send(Endpoint::Client(id), Endpoint::Replica(target), event);
                    }
                }
                ClientOutput::SetTimer(after) => {
                    let generation = self.generation();
                    self.clients[client].timer = Some(generation);
                    self.queue
                        .schedule(now + after, Event::ClientTimer { client, generation });
                }
                ClientOutput::CancelTimer => self.clients[client].timer = None,
                ClientOutput::Completed { timestamp, result } => {
                    self.trace(|| format!("client {client} completed t {timestamp}"));
                    self.completed += 1;
                    let checked = self.checker.completed(id, timestamp, &result);
                    self.violation(checked);
                    if self.clients[client].remaining > 0 {
                        let pause = self.think_time();
                        self.queue.schedule(now + pause, Event::Submit { client });
                    }
                }
            }
        }
    }
}

fn client_id(index: usize) -> ClientId {
    ClientId(index as u64)
}

/// Cuts off between 1 and f backups for a random interval that ends by the heal time. The primary of view 0 is
/// never isolated: without view change (a later issue) a cluster with a cut-off primary cannot progress.
fn draw_partition(cluster: &ClusterConfig, config: &SimConfig, rng: &mut impl Rng) -> Partition {
    let mut backups: Vec<ReplicaId> = cluster.replica_ids().skip(1).collect();
    // Fisher-Yates on the backups, then take the first k.
    for i in (1..backups.len()).rev() {
        let j = rng.random_range(0..=i);
        backups.swap(i, j);
    }
    let k = rng.random_range(1..=cluster.f().max(1));
    let heal = config.heal_at.as_micros() as u64;
    let start = rng.random_range(0..=heal / 2);
    let length = rng.random_range(heal / 10..=heal / 2);
    Partition {
        isolated: backups.into_iter().take(k).collect(),
        start: Duration::from_micros(start),
        end: Duration::from_micros((start + length).min(heal)),
    }
}
