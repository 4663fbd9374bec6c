//! One simulated run: n replicas and C clients exchanging bytes over the simulated network, in virtual time, with
//! the checkers looking at every step.
//!
//! The simulator is a driver of the core exactly as a node is: what a replica sends is encoded to bytes, what it
//! receives is decoded and verified at the boundary first, replies are signed by the driver, timers are set and
//! cancelled on request. Only the clock, the network and the randomness are simulated, and all randomness comes
//! from one generator seeded with the run's seed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use pbft_client::{Client, ClientOutput, Destination};
use pbft_core::{Dest, Input, Output, Replica, ReplicaStatus, Timer};
use pbft_crypto::{KeyPair, Keyring, SessionKeys, Signer};
use pbft_types::{
    ClientAuth, ClientId, ClientInfo, ClusterConfig, DecodeLimits, MAC_LEN, Principal, ReplicaId,
    Request, Seal, Signed,
};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::boundary::{Boundary, Sessions};
use crate::byzantine::{Action, Adversary, Fault, FaultyReplica, Strategy, draw_sides, fault_rng};
use crate::check::Checker;
use crate::check::history::HistoryEntry;
use crate::config::{SimConfig, SimError};
use crate::disk::Disk;
use crate::network::{Endpoint, Network, NetworkConfig, NetworkStats, Partition};
use crate::queue::EventQueue;
use crate::report::SimReport;
use crate::trace;
use crate::violation::Violation;
use crate::workload::{SimApp, Workload};

/// A run that takes more events than this is spinning without virtual time passing: a bug, reported as such.
const MAX_EVENTS: u64 = 20_000_000;

/// Where the lines of a trace go.
type TraceSink = Box<dyn FnMut(&str)>;

/// Rewrites what a replica asked for before the driver carries it out: how tests make a replica misbehave.
type Tamper = Box<dyn FnMut(ReplicaId, &mut Vec<Output>)>;

#[derive(Clone, Debug)]
enum Event {
    /// Bytes from replica `from` reach node `to` (a replica, or one copy of a twin).
    ReplicaMessage {
        to: usize,
        from: ReplicaId,
        bytes: Bytes,
    },
    /// A client's request reaches node `to`.
    Request {
        to: usize,
        bytes: Bytes,
    },
    /// A reply reaches client number `to`.
    Reply {
        to: usize,
        bytes: Bytes,
    },
    /// A node's timer expires, if it was not restarted or cancelled since (`generation` tells).
    ReplicaTimer {
        node: usize,
        timer: Timer,
        generation: u64,
    },
    /// A node crashes: it loses everything it has not sent, and its timers.
    Crash {
        node: usize,
    },
    /// A crashed node restarts from an empty state.
    Restart {
        node: usize,
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

/// A replica as the simulator runs it. Nodes 0..n are replicas 0..n; a Twins run appends the second copies.
struct ReplicaNode {
    id: ReplicaId,
    replica: Replica,
    /// Faulty replicas are left out of every check.
    faulty: bool,
    /// The strategy of a Byzantine replica (none for twins, which run two correct cores).
    adversary: Option<Adversary>,
    /// Whether this node is one copy of a twin: it exchanges messages only with the nodes of its side.
    twin: bool,
    side: u8,
    crashed: bool,
    /// What the replica persisted: it restarts from it after a crash.
    disk: Disk,
    /// The driver signs the replica's replies with it.
    key: KeyPair,
    /// With MAC authenticators, the driver seals the replica's replies with these instead.
    sessions: Option<SessionKeys>,
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
    limits: DecodeLimits,
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
    faults: Vec<FaultyReplica>,
    /// The highest view a correct replica entered.
    max_view: u64,
    /// When the last request completed.
    last_completion: Duration,
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

        let mut partitions = if config.partition {
            vec![draw_partition(&cluster, &config, &mut rng)]
        } else {
            Vec::new()
        };
        partitions.extend(config.partitions.iter().cloned());
        let network = Network::new(NetworkConfig {
            drop: config.drop,
            duplicate: config.duplicate,
            min_delay: config.min_delay,
            max_delay: config.max_delay,
            heal_at: config.heal_at,
            partitions,
        });

        let faults = config.faults();
        let twins: Vec<ReplicaId> = faults
            .iter()
            .filter(|x| x.fault == Fault::Byzantine(Strategy::Twins))
            .map(|x| x.replica)
            .collect();
        let sides = draw_sides(
            config.replicas,
            &twins,
            &mut fault_rng(config.seed, 1 << 20),
        );
        let mut replicas = replica_keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let id = ReplicaId(i as u64);
                let fault = faults.iter().find(|x| x.replica == id).map(|x| &x.fault);
                let adversary = match fault {
                    Some(Fault::Byzantine(strategy)) if *strategy != Strategy::Twins => {
                        Some(Adversary::new(
                            *strategy,
                            id,
                            key.clone(),
                            cluster.clone(),
                            config.seed,
                            config.heal_at,
                        ))
                    }
                    _ => None,
                };
                let mut node = new_node(&cluster, config.app, id, key.clone())?;
                // A crash is not a fault of the protocol's model once the replica recovers from its disk:
                // crashed replicas are checked like every correct one.
                node.faulty = matches!(fault, Some(Fault::Byzantine(_)));
                node.adversary = adversary;
                node.twin = twins.contains(&id);
                node.side = sides[i];
                Ok(node)
            })
            .collect::<Result<Vec<_>, SimError>>()?;
        for &id in &twins {
            let mut copy = new_node(&cluster, config.app, id, replica_keys[id.index()].clone())?;
            copy.faulty = true;
            copy.twin = true;
            copy.side = 1;
            replicas.push(copy);
        }
        let macs = cluster.params.client_auth == ClientAuth::Macs;
        let mut sessions = Sessions {
            replicas: Vec::new(),
            clients: HashMap::new(),
        };
        if macs {
            for (i, key) in replica_keys.iter().enumerate() {
                let keys = SessionKeys::for_replica(&cluster, ReplicaId(i as u64), key)?;
                sessions.replicas.push(keyring.clone().with_sessions(keys));
            }
        }
        let mut clients = Vec::new();
        for (i, key) in client_keys.into_iter().enumerate() {
            let mut client = Client::new(
                cluster.clone(),
                Signer::new(Principal::Client(client_id(i)), key.clone()),
                config.retransmit_after,
            );
            if macs {
                let keys = SessionKeys::for_client(&cluster, client_id(i), &key)?;
                client = client.with_sessions(keys.clone());
                let verifier = keyring.clone().with_sessions(keys);
                sessions.clients.insert(client_id(i), verifier);
            }
            clients.push(ClientNode {
                client,
                remaining: config.requests,
                timer: None,
            });
        }

        let limits = DecodeLimits {
            max_message_size: cluster.params.max_message_size,
            max_batch_size: cluster.params.max_batch_size,
        };
        let checker = Checker::new(
            &cluster,
            config.app,
            keyring.clone(),
            config.heal_at,
            config.liveness_bound,
        );
        let mut sim = Simulation {
            workload: Workload::new(config.app, config.key_space),
            boundary: match macs {
                true => Boundary::new(keyring.clone(), limits).with_sessions(sessions),
                false => Boundary::new(keyring.clone(), limits),
            },
            limits,
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
            faults,
            max_view: 0,
            last_completion: Duration::ZERO,
        };
        for x in sim.faults.clone() {
            if let Fault::Crash { at, restart } = x.fault {
                let node = x.replica.index();
                sim.queue.schedule(at, Event::Crash { node });
                sim.queue.schedule(restart, Event::Restart { node });
            }
        }
        if let Some((at, restarts)) = sim.config.cluster_crash() {
            for (node, restart) in restarts.into_iter().enumerate() {
                if node < sim.replicas.len() {
                    sim.queue.schedule(at, Event::Crash { node });
                    sim.queue.schedule(restart, Event::Restart { node });
                }
            }
        }
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

    /// What each replica (each copy of a twin) reports about itself now: after `run`, where the run left it.
    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        self.replicas.iter().map(|n| n.replica.status()).collect()
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
            view_changes: self.max_view,
            recovery: (self.completed == self.requests_total())
                .then(|| self.last_completion.saturating_sub(self.config.heal_at)),
            faults: crate::byzantine::describe(&self.faults),
        }
    }

    fn stall(&mut self, at: Duration) {
        let replicas = self
            .replicas
            .iter()
            .map(|node| {
                let s = node.replica.status();
                let mark = match (&node.adversary, node.twin, node.crashed, node.faulty) {
                    (Some(a), _, _, _) => format!(" {}", a.strategy()),
                    (None, true, _, _) => format!(" twin side {}", node.side),
                    (None, false, true, _) => " crashed".to_string(),
                    (None, false, false, true) => " restarted".to_string(),
                    _ => String::new(),
                };
                format!(
                    "[{}{mark} view {}{} executed {} h {} slots {} pending {}]",
                    s.id,
                    s.view,
                    if s.changing_view { " (changing)" } else { "" },
                    s.last_executed,
                    s.low_watermark,
                    s.log_slots,
                    s.pending_requests
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
            Event::ReplicaMessage { to, from, bytes } => {
                if self.replicas.get(to).is_none_or(|n| n.crashed) {
                    return;
                }
                let id = self.replicas[to].id;
                match self.boundary.replica_msg(id, from, &bytes) {
                    Ok(msg) => {
                        self.trace(|| {
                            format!("r{id} <- r{from} {}", trace::describe_verified(&msg))
                        });
                        self.step_replica(to, Input::Message { from, msg });
                    }
                    Err(e) => {
                        self.trace(|| format!("r{id} <- r{from} dropped at the boundary: {e}"))
                    }
                }
            }
            Event::Request { to, bytes } => {
                if self.replicas.get(to).is_none_or(|n| n.crashed) {
                    return;
                }
                let id = self.replicas[to].id;
                match self.boundary.request(id, &bytes) {
                    Ok(request) => {
                        self.trace(|| {
                            format!("r{id} <- client {} t {}", request.client, request.timestamp)
                        });
                        self.step_replica(to, Input::Request(request));
                    }
                    Err(e) => {
                        self.trace(|| format!("r{id} <- request dropped at the boundary: {e}"))
                    }
                }
            }
            Event::Reply { to, bytes } => self.deliver_reply(to, &bytes),
            Event::ReplicaTimer {
                node,
                timer,
                generation,
            } => {
                let Some(n) = self.replicas.get_mut(node) else {
                    return;
                };
                if !n.crashed && n.timers.get(&timer) == Some(&generation) {
                    n.timers.remove(&timer);
                    let id = n.id;
                    self.trace(|| format!("r{id} timer {timer:?} fires"));
                    self.step_replica(node, Input::TimerFired(timer));
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
            Event::Crash { node } => {
                if let Some(n) = self.replicas.get_mut(node) {
                    n.crashed = true;
                    n.timers.clear();
                    n.disk.crash();
                    let id = n.id;
                    self.trace(|| format!("r{id} CRASHES"));
                }
            }
            Event::Restart { node } => self.restart(node),
        }
    }

    fn step_replica(&mut self, node: usize, input: Input) {
        let now = self.queue.now();
        let Some(n) = self.replicas.get_mut(node) else {
            return;
        };
        if let Some(adversary) = &mut n.adversary {
            adversary.observe(&input);
        }
        let mut outputs = n.replica.step(input);
        let id = n.id;
        if let Some(tamper) = &mut self.tamper {
            tamper(id, &mut outputs);
        }
        let n = &mut self.replicas[node];
        let status = n.replica.status();
        let actions: Vec<Action> = match &mut n.adversary {
            Some(adversary) => adversary.act(now, &status, outputs),
            None => outputs.into_iter().map(Action::Output).collect(),
        };
        let waits = actions
            .iter()
            .any(|a| matches!(a, Action::Output(output) if output.waits_for_journal()));
        for action in actions {
            match action {
                Action::Output(output) => self.replica_output(node, output, waits),
                Action::Raw { to, bytes } => {
                    self.trace(|| format!("r{id} -> {to:?} {} bytes of junk", bytes.len()));
                    self.send_to_replicas(node, to, bytes);
                }
            }
        }
        if !self.replicas[node].faulty {
            let checked = self
                .checker
                .status(&status)
                .and_then(|()| check_pending(&status, self.config.clients));
            self.violation(checked);
        }
    }

    /// Whether nodes `a` and `b` can exchange messages: a copy of a twin talks only to the nodes of its side.
    fn linked(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.replicas[a], &self.replicas[b]);
        !(x.twin || y.twin) || x.side == y.side
    }

    /// Sends `bytes` from node `from` to the nodes that `to` names and that it is linked to.
    fn send_to_replicas(&mut self, from: usize, to: Dest, bytes: Bytes) {
        let id = self.replicas[from].id;
        let targets: Vec<usize> = (0..self.replicas.len())
            .filter(|&j| {
                let target = self.replicas[j].id;
                let named = match to {
                    Dest::AllReplicas => target != id,
                    Dest::Replica(r) => target == r,
                };
                named && self.linked(from, j)
            })
            .collect();
        for target in targets {
            let event = Event::ReplicaMessage {
                to: target,
                from: id,
                bytes: bytes.clone(),
            };
            let endpoint = Endpoint::Replica(self.replicas[target].id);
            self.send(Endpoint::Replica(id), endpoint, event);
        }
    }

    /// A crashed replica restarts: a fresh core recovered from what it persisted. Its recovery outputs (its
    /// VIEW-CHANGE again if it was changing view, a STATUS) are carried out like any step's.
    fn restart(&mut self, node: usize) {
        let Some(n) = self.replicas.get(node) else {
            return;
        };
        if !n.crashed {
            return;
        }
        let (id, key) = (n.id, n.key.clone());
        let entries = match n.disk.read(self.boundary.keyring_of(n.id), self.limits) {
            Ok(entries) => entries,
            Err(e) => {
                return self.violations.push(Violation::Driver(format!(
                    "replica {id} cannot read its own disk back: {e}"
                )));
            }
        };
        let recovered = new_node(&self.cluster, self.config.app, id, key)
            .map_err(|e| e.to_string())
            .and_then(|fresh| fresh.replica.recover(entries).map_err(|e| e.to_string()));
        let (replica, outputs) = match recovered {
            Ok(r) => r,
            Err(e) => {
                return self.violations.push(Violation::Driver(format!(
                    "replica {id} could not recover from its disk: {e}"
                )));
            }
        };
        let n = &mut self.replicas[node];
        n.replica = replica;
        n.timers.clear();
        n.crashed = false;
        let status = n.replica.status();
        if !n.faulty {
            let checked = self
                .checker
                .restarted(id, status.last_executed, n.disk.executed());
            self.violation(checked);
        }
        self.trace(|| {
            format!(
                "r{id} RESTARTS from its disk: view {}, executed {}",
                status.view, status.last_executed
            )
        });
        let waits = outputs.iter().any(Output::waits_for_journal);
        for output in outputs {
            self.replica_output(node, output, waits);
        }
    }

    /// Carries out one output of a step of replica `node`; `waits`: whether that step waits for the journal.
    fn replica_output(&mut self, node: usize, output: Output, waits: bool) {
        let now = self.queue.now();
        let id = self.replicas[node].id;
        let faulty = self.replicas[node].faulty;
        match output {
            // On the disk before the step's messages are sent if the step waits for the journal, as the node's
            // contract has it.
            Output::Persist(entry) => self.replicas[node].disk.persist(&entry, waits),
            Output::Send { to, msg } => {
                self.trace(|| format!("r{id} -> {to:?} {}", trace::describe(&msg)));
                self.send_to_replicas(node, to, Bytes::from(msg.encode()));
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
                let sealed = match &self.replicas[node].sessions {
                    Some(sessions) => sessions.seal_reply(reply),
                    None => Ok(self.replicas[node].key.sign(reply)),
                };
                let Ok(sealed) = sealed else {
                    // Every client of the simulation has a session with every replica.
                    return;
                };
                let bytes = Bytes::from(sealed.encode());
                self.send(
                    Endpoint::Replica(id),
                    Endpoint::Client(client),
                    Event::Reply { to, bytes },
                );
            }
            Output::SetTimer { timer, after } => {
                let generation = self.generation();
                self.replicas[node].timers.insert(timer, generation);
                self.queue.schedule(
                    now + after,
                    Event::ReplicaTimer {
                        node,
                        timer,
                        generation,
                    },
                );
            }
            Output::StateInstalled { seq, digest } => {
                self.trace(|| format!("r{id} INSTALLED state of n{seq} {digest:?}"));
                if !faulty {
                    let checked = self.checker.installed(id, seq);
                    self.violation(checked);
                }
            }
            Output::CancelTimer(timer) => {
                self.replicas[node].timers.remove(&timer);
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
                if !faulty {
                    let checked = self.checker.committed(id, &committed);
                    self.violation(checked);
                }
            }
            Output::EnteredView(view) => {
                self.trace(|| format!("r{id} ENTERED view {view}"));
                if !faulty {
                    self.max_view = self.max_view.max(view.0);
                }
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
            // low watermark) and with faulty replicas; they are counted, and any that matters shows up as a broken
            // invariant.
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
        let operation = self.workload.next_op(&mut self.rng, self.checker.ledger());
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
                    let request = match client {
                        0 => spoil_macs(request, &self.config.spoiled_macs),
                        _ => request,
                    };
                    let bytes = Bytes::from(request.encode());
                    // Every copy of a twin gets what is sent to its replica.
                    let targets: Vec<usize> = (0..self.replicas.len())
                        .filter(|&j| match to {
                            Destination::Replica(r) => self.replicas[j].id == r,
                            Destination::All => true,
                        })
                        .collect();
                    for target in targets {
                        let event = Event::Request {
                            to: target,
                            bytes: bytes.clone(),
                        };
                        let endpoint = Endpoint::Replica(self.replicas[target].id);
                        self.send(Endpoint::Client(id), endpoint, event);
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
                    let app = self.config.app;
                    self.trace(|| {
                        format!(
                            "client {client} completed t {timestamp}: {}",
                            app.describe_result(&result)
                        )
                    });
                    self.completed += 1;
                    self.last_completion = now;
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

/// `request` with the MACs of `replicas` in its authenticator spoiled, as a Byzantine client sends it.
fn spoil_macs(request: Signed<Request>, replicas: &[ReplicaId]) -> Signed<Request> {
    let Seal::Authenticator(authenticator) = request.seal() else {
        return request;
    };
    if replicas.is_empty() {
        return request;
    }
    let mut authenticator = authenticator.to_vec();
    for r in replicas {
        if let Some(byte) = authenticator.get_mut(r.index() * MAC_LEN) {
            *byte ^= 1;
        }
    }
    Signed::from_authenticated_parts(
        request.body().clone(),
        authenticator.into(),
        request.value().clone(),
    )
}

/// A replica at the initial state, with an empty disk.
fn new_node(
    cluster: &ClusterConfig,
    app: SimApp,
    id: ReplicaId,
    key: KeyPair,
) -> Result<ReplicaNode, SimError> {
    let signer = Signer::new(Principal::Replica(id), key.clone());
    let replica = Replica::new(cluster.clone(), id, signer, app.new_state_machine())?;
    Ok(ReplicaNode {
        id,
        replica,
        faulty: false,
        adversary: None,
        twin: false,
        side: 0,
        crashed: false,
        disk: Disk::default(),
        sessions: match cluster.params.client_auth {
            ClientAuth::Macs => Some(SessionKeys::for_replica(cluster, id, &key)?),
            ClientAuth::Signatures => None,
        },
        key,
        timers: BTreeMap::new(),
    })
}

/// Bounded resources: a replica holds at most one waiting request per client.
fn check_pending(status: &ReplicaStatus, clients: usize) -> Result<(), Violation> {
    if status.pending_requests > clients {
        return Err(Violation::UnboundedLog {
            replica: status.id,
            detail: format!(
                "holds {} waiting requests, more than one per client ({clients})",
                status.pending_requests
            ),
        });
    }
    Ok(())
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
        spares_clients: false,
    }
}
