//! `pbft sim`: many seeded simulator runs of one or more cluster sizes, one summary line per size, and for every
//! failing seed its violation and the command that replays it.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use pbft_sim::{Byzantine, SimApp, SimConfig, SimReport, Simulation, Summary, run_seeds};
use pbft_types::{ClientAuth, Params, ReplicaAuth};

use crate::testnet::{AppChoice, AuthChoice};

/// When replicas crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CrashSchedule {
    None,
    /// Up to f replicas (drawn per seed) crash at a random time and restart from their disk later, before the
    /// faults heal; one seed in four also crashes every replica at once.
    Random,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// How many seeds to run. Defaults to 1 with --seed, to 100 without.
    #[arg(long)]
    seeds: Option<u64>,

    /// The first seed: alone, runs just this seed (to replay a failure); with --seeds N, runs S..S+N.
    #[arg(long)]
    seed: Option<u64>,

    /// Number of replicas, n >= 4 (tolerating f = (n-1)/3 faults). A comma-separated list runs each size.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    replicas: Vec<usize>,

    /// Number of clients, each with one request outstanding at a time.
    #[arg(long, default_value_t = 4)]
    clients: usize,

    /// Requests each client issues (random puts, gets and deletes over a few keys).
    #[arg(long, default_value_t = 20)]
    requests: usize,

    /// Probability that the network loses a message, until the faults heal.
    #[arg(long, default_value_t = 0.05)]
    drop: f64,

    /// Probability that the network delivers a message twice, until the faults heal.
    #[arg(long, default_value_t = 0.05)]
    duplicate: f64,

    /// Also cut off up to f backups from everyone for a random interval before the faults heal.
    #[arg(long)]
    partition: bool,

    /// Byzantine replicas: a comma-separated list of strategies, one faulty replica each (at most f), or
    /// "random": f faulty replicas with strategies drawn from each seed (fewer when --crash takes some of the
    /// budget). Which replicas are faulty is drawn from the seed too (the primary of view 0 half the time).
    /// Strategies: silent, mute-primary, equivocate, forge (corrupted signatures, refused at the boundary),
    /// corrupt (wrong digests, checkpoints, state chunks and results signed with the replica's own key),
    /// stale-view, future-view, out-of-window, replay, bad-view-change, bad-new-view, vote-all, flood, twins (two
    /// copies with the same key, each seeing a different half of the cluster). Faulty replicas keep misbehaving
    /// after the network heals; the checkers look only at the correct ones.
    #[arg(long, default_value = "none", value_parser = parse_byzantine)]
    byzantine: Byzantine,

    /// Crash schedule. "random": up to f replicas (together with the Byzantine ones, at most f down or faulty at
    /// once) crash at a random time and restart before the faults heal, and one seed in four also crashes the
    /// whole cluster at once. A crash loses what the replica did not persist (timers, queued requests, peers'
    /// votes); it restarts from its simulated disk (its journal: view, accepted PRE-PREPAREs, prepared
    /// certificates, executed batches, stable checkpoint), as the node does, and catches up from its peers. Once
    /// recovered it is checked like every correct replica.
    #[arg(long, value_enum, default_value = "none")]
    crash: CrashSchedule,

    /// The replicated application: the key-value store, or the ledger (transfers, some overdrawn, forged or with
    /// a stale nonce, and balance queries; every replica's block for each batch is checked against the block a
    /// replay of the history makes).
    #[arg(long, value_enum, default_value_t = AppChoice::Kv)]
    app: AppChoice,

    /// How clients authenticate requests and replicas their replies: signatures, or MAC authenticators (each
    /// replica then checks its own entry of a request's authenticator, also inside PRE-PREPAREs).
    #[arg(long, value_enum, default_value_t = AuthChoice::Signatures)]
    client_auth: AuthChoice,

    /// How replicas authenticate their COMMITs: signatures, or ("macs") only by the link they arrive on. Not
    /// with the ledger.
    #[arg(long, value_enum, default_value_t = AuthChoice::Signatures)]
    replica_auth: AuthChoice,

    /// Threads to run seeds on (each seed's run is deterministic whatever the number).
    #[arg(long, default_value_t = 2)]
    threads: usize,

    /// Print one line per seed, not only the summary and the failures.
    #[arg(long)]
    verbose: bool,

    /// Print every event of the run (messages sent, lost, delivered, refused; timers; commits). Needs a single
    /// seed and a single cluster size: use it on the replay command of a failing seed.
    #[arg(long)]
    trace: bool,
}

impl SimArgs {
    fn seed_range(&self) -> std::ops::Range<u64> {
        let start = self.seed.unwrap_or(0);
        let count = self
            .seeds
            .unwrap_or(if self.seed.is_some() { 1 } else { 100 });
        start..start.saturating_add(count)
    }

    fn config(&self, replicas: usize) -> SimConfig {
        let defaults = SimConfig::new(self.seed_range().start, replicas);
        let params = Params {
            client_auth: self.client_auth.into(),
            replica_auth: self.replica_auth.into(),
            ..defaults.params.clone()
        };
        SimConfig {
            params,
            clients: self.clients,
            requests: self.requests,
            drop: self.drop,
            duplicate: self.duplicate,
            partition: self.partition,
            byzantine: self.byzantine.clone(),
            crash: self.crash == CrashSchedule::Random,
            app: match self.app {
                AppChoice::Kv => SimApp::Kv,
                AppChoice::Ledger => SimApp::Ledger,
            },
            ..defaults
        }
    }
}

fn parse_byzantine(s: &str) -> Result<Byzantine, String> {
    s.parse()
}

pub fn run(args: &SimArgs) -> ExitCode {
    if args.trace {
        return trace(args);
    }
    let mut ok = true;
    for &replicas in &args.replicas {
        let config = args.config(replicas);
        let started = Instant::now();
        let reports = match run_seeds(&config, args.seed_range(), args.threads) {
            Ok(reports) => reports,
            Err(e) => {
                eprintln!("pbft sim: {e}");
                return ExitCode::from(2);
            }
        };
        let wall = started.elapsed();
        if args.verbose {
            for r in &reports {
                println!("{r}");
            }
        }
        println!(
            "n={replicas} clients={} requests={} drop={} duplicate={}{}{}{}{}{}: {}, wall {:.1}s",
            config.clients,
            config.requests,
            config.drop,
            config.duplicate,
            if config.partition { " partition" } else { "" },
            match &config.byzantine {
                Byzantine::None => String::new(),
                b => format!(" byzantine={b}"),
            },
            if config.crash { " crash=random" } else { "" },
            match (config.app, config.params.client_auth) {
                (SimApp::Ledger, ClientAuth::Macs) => " app=ledger client-auth=macs",
                (SimApp::Ledger, ClientAuth::Signatures) => " app=ledger",
                (SimApp::Kv, ClientAuth::Macs) => " client-auth=macs",
                (SimApp::Kv, ClientAuth::Signatures) => "",
            },
            match config.params.replica_auth {
                ReplicaAuth::Macs => " replica-auth=macs",
                ReplicaAuth::Signatures => "",
            },
            Summary::of(&reports),
            wall.as_secs_f64()
        );
        let failures: Vec<&SimReport> = reports.iter().filter(|r| !r.passed()).collect();
        if !failures.is_empty() {
            ok = false;
            if !args.verbose {
                for r in failures {
                    println!("{r}");
                }
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the one seed of `args` with its trace on standard output.
fn trace(args: &SimArgs) -> ExitCode {
    let seeds = args.seed_range();
    let ([replicas], 1) = (args.replicas.as_slice(), seeds.end - seeds.start) else {
        eprintln!(
            "pbft sim: --trace runs one seed of one cluster size (use --seed S and a single --replicas N)"
        );
        return ExitCode::from(2);
    };
    let mut sim = match Simulation::new(args.config(*replicas)) {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("pbft sim: {e}");
            return ExitCode::from(2);
        }
    };
    sim.trace_to(|line| println!("{line}"));
    let report = sim.run();
    println!("{report}");
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: SimArgs,
    }

    fn parse(line: &[&str]) -> SimArgs {
        Wrapper::try_parse_from(std::iter::once("sim").chain(line.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn seed_alone_replays_one_seed_and_seeds_counts_from_it() {
        assert_eq!(parse(&["--seed", "17"]).seed_range(), 17..18);
        assert_eq!(
            parse(&["--seed", "17", "--seeds", "3"]).seed_range(),
            17..20
        );
        assert_eq!(parse(&["--seeds", "5"]).seed_range(), 0..5);
        assert_eq!(parse(&[]).seed_range(), 0..100);
    }

    #[test]
    fn flags_reach_the_configuration_and_the_replay_command_round_trips() {
        let args = parse(&[
            "--seed",
            "9",
            "--replicas",
            "7",
            "--clients",
            "3",
            "--requests",
            "11",
            "--drop",
            "0.1",
            "--duplicate",
            "0.2",
            "--partition",
            "--byzantine",
            "equivocate,twins",
            "--crash",
            "random",
            "--app",
            "ledger",
        ]);
        let config = args.config(7);
        assert_eq!(config.app, SimApp::Ledger);
        assert_eq!(
            (
                config.seed,
                config.replicas,
                config.clients,
                config.requests,
                config.partition
            ),
            (9, 7, 3, 11, true)
        );
        assert_eq!((config.drop, config.duplicate), (0.1, 0.2));
        assert_eq!(
            config.byzantine,
            Byzantine::Listed(vec![
                pbft_sim::Strategy::Equivocate,
                pbft_sim::Strategy::Twins
            ])
        );
        assert!(config.crash);
        // The replay command, parsed back, gives the same configuration.
        let replay = config.replay_command();
        let words: Vec<&str> = replay
            .split_whitespace()
            .skip_while(|w| *w != "sim")
            .skip(1)
            .collect();
        assert_eq!(parse(&words).config(7), config);
    }

    #[test]
    fn several_cluster_sizes_in_one_run() {
        assert_eq!(parse(&["--replicas", "4,7,10"]).replicas, vec![4, 7, 10]);
    }

    #[test]
    fn random_byzantine_round_trips_and_bad_names_are_refused() {
        let args = parse(&["--byzantine", "random", "--seed", "4"]);
        assert_eq!(args.byzantine, Byzantine::Random);
        let replay = args.config(4).replay_command();
        assert!(replay.contains("--byzantine random"), "{replay}");
        assert!(
            Wrapper::try_parse_from(["sim", "--byzantine", "sneaky"]).is_err(),
            "an unknown strategy is refused"
        );
    }
}
