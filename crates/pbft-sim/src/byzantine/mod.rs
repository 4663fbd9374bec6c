//! Faulty replicas: named, seedable Byzantine strategies and crash schedules that a run gives to some replicas.
//!
//! A Byzantine replica runs the real core; its [`Adversary`] sees what the core receives and rewrites, suppresses
//! or augments what it asks to send, signing whatever it forges with the replica's own key (a faulty replica holds
//! its key, so the others' verification accepts the signature and their cores must refuse on protocol grounds).
//! Only a corrupted signature (`forge`) is refused at the boundary. Twins is the one strategy that needs the
//! driver: two copies of one replica, same key, each seeing a different half of the cluster.
//!
//! The checkers look only at correct replicas; a crashed replica is faulty for the whole run (see [`Fault`]).

mod adversary;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use pbft_types::ReplicaId;
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use adversary::{Action, Adversary};

/// A Byzantine behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// Sends nothing at all (from the start, or from a random time on): a crash that never recovers.
    Silent,
    /// Takes requests and votes like a correct backup, but as primary never proposes (no PRE-PREPARE, no
    /// NEW-VIEW).
    MutePrimary,
    /// As primary, sends different batches for the same sequence number to two halves of the backups and commits
    /// both; as backup, votes for its digest to some and for another to the rest.
    Equivocate,
    /// Corrupts the signature of what it sends, impersonates other replicas and forges nested certificates: all
    /// refused at the boundary.
    Forge,
    /// Signs wrong digests with its own key: votes, checkpoints, PRE-PREPAREs whose digest is not their batch's,
    /// bad state chunks and batch data, wrong results in replies.
    Corrupt,
    /// Sends its messages again with views that are over.
    StaleView,
    /// Sends its messages with views that have not come yet, and VIEW-CHANGEs for far views.
    FutureView,
    /// Sends votes, PRE-PREPAREs and checkpoints for sequence numbers outside the watermarks.
    OutOfWindow,
    /// Sends old messages of its own again, and forwards old client requests.
    Replay,
    /// Sends VIEW-CHANGEs with bad checkpoint proofs and bad prepared certificates.
    BadViewChange,
    /// As new primary, sends NEW-VIEWs with a bad V or a wrong O, a different one to each backup.
    BadNewView,
    /// Prepares, commits and checkpoints everything it sees, conflicting digests included.
    VoteAll,
    /// Floods the others with junk within the size limits: undecodable bytes, random votes, status, fetches.
    Flood,
    /// Two copies of the replica, same key, each seeing a different half of the others.
    Twins,
}

impl Strategy {
    pub const ALL: [Strategy; 14] = [
        Strategy::Silent,
        Strategy::MutePrimary,
        Strategy::Equivocate,
        Strategy::Forge,
        Strategy::Corrupt,
        Strategy::StaleView,
        Strategy::FutureView,
        Strategy::OutOfWindow,
        Strategy::Replay,
        Strategy::BadViewChange,
        Strategy::BadNewView,
        Strategy::VoteAll,
        Strategy::Flood,
        Strategy::Twins,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Silent => "silent",
            Strategy::MutePrimary => "mute-primary",
            Strategy::Equivocate => "equivocate",
            Strategy::Forge => "forge",
            Strategy::Corrupt => "corrupt",
            Strategy::StaleView => "stale-view",
            Strategy::FutureView => "future-view",
            Strategy::OutOfWindow => "out-of-window",
            Strategy::Replay => "replay",
            Strategy::BadViewChange => "bad-view-change",
            Strategy::BadNewView => "bad-new-view",
            Strategy::VoteAll => "vote-all",
            Strategy::Flood => "flood",
            Strategy::Twins => "twins",
        }
    }

    /// Every strategy's name, for help texts and error messages.
    pub fn names() -> String {
        Strategy::ALL
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Strategy, String> {
        Strategy::ALL
            .iter()
            .copied()
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown strategy {s:?}; one of: {}, or random",
                    Strategy::names()
                )
            })
    }
}

/// Which Byzantine replicas a run has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Byzantine {
    #[default]
    None,
    /// One faulty replica per strategy listed.
    Listed(Vec<Strategy>),
    /// f faulty replicas (fewer when crashes take some of the budget), each with a strategy drawn from the seed.
    Random,
}

impl fmt::Display for Byzantine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Byzantine::None => f.write_str("none"),
            Byzantine::Random => f.write_str("random"),
            Byzantine::Listed(list) => {
                f.write_str(&list.iter().map(|s| s.name()).collect::<Vec<_>>().join(","))
            }
        }
    }
}

impl FromStr for Byzantine {
    type Err = String;

    fn from_str(s: &str) -> Result<Byzantine, String> {
        match s {
            "" | "none" => Ok(Byzantine::None),
            "random" => Ok(Byzantine::Random),
            list => list
                .split(',')
                .map(|name| name.trim().parse())
                .collect::<Result<Vec<_>, _>>()
                .map(Byzantine::Listed),
        }
    }
}

/// What is wrong with a faulty replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Byzantine(Strategy),
    /// The replica stops at `at` (it receives, sends and times out nothing; its timers and everything it did not
    /// persist are lost) and restarts at `restart` from its disk, then catches up from its peers. Once recovered it
    /// is a correct replica and every checker looks at it; it counts among the f only for the budget of replicas
    /// that may be down at once.
    Crash {
        at: Duration,
        restart: Duration,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Byzantine(s) => write!(f, "{s}"),
            Fault::Crash { at, restart } => write!(
                f,
                "crash {:.3}s-{:.3}s",
                at.as_secs_f64(),
                restart.as_secs_f64()
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultyReplica {
    pub replica: ReplicaId,
    pub fault: Fault,
}

impl fmt::Display for FaultyReplica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{} {}", self.replica, self.fault)
    }
}

/// The faulty replicas of a run, in words.
pub fn describe(faults: &[FaultyReplica]) -> String {
    if faults.is_empty() {
        return "none".to_string();
    }
    faults
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A generator for the fault plan and the adversaries of run `seed`, independent of the network's, so that adding
/// faults to a configuration leaves its network draws alone.
pub fn fault_rng(seed: u64, salt: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(
        seed ^ 0x6279_7a61_6e74_696e ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    )
}

/// Draws the faulty replicas of a run: which replicas, which strategy, when crashes happen. At most f in all when
/// drawn at random; a listed strategy always gets a replica. The primary of view 0 is among them half the time.
pub fn draw_faults(
    n: usize,
    byzantine: &Byzantine,
    crash: bool,
    heal_at: Duration,
    seed: u64,
) -> Vec<FaultyReplica> {
    let f = n.saturating_sub(1) / 3;
    let mut rng = fault_rng(seed, 0);
    let (byzantine_count, crashes) = match (byzantine, crash) {
        (Byzantine::None, false) => return Vec::new(),
        (Byzantine::None, true) => (0, rng.random_range(1..=f.max(1))),
        (Byzantine::Listed(list), false) => (list.len(), 0),
        (Byzantine::Listed(list), true) => {
            let left = f.saturating_sub(list.len());
            (list.len(), rng.random_range(0..=left))
        }
        (Byzantine::Random, false) => (f, 0),
        (Byzantine::Random, true) => {
            let c = rng.random_range(0..=f);
            (f - c, c)
        }
    };
    let mut ids: Vec<u64> = (0..n as u64).collect();
    for i in (1..ids.len()).rev() {
        let j = rng.random_range(0..=i);
        ids.swap(i, j);
    }
    if rng.random_bool(0.5)
        && let Some(pos) = ids.iter().position(|&r| r == 0)
    {
        ids.swap(0, pos);
    }
    let mut faults = Vec::new();
    let mut ids = ids.into_iter().map(ReplicaId);
    for i in 0..byzantine_count {
        let strategy = match byzantine {
            Byzantine::Listed(list) => list[i],
            _ => Strategy::ALL[rng.random_range(0..Strategy::ALL.len())],
        };
        if let Some(replica) = ids.next() {
            faults.push(FaultyReplica {
                replica,
                fault: Fault::Byzantine(strategy),
            });
        }
    }
    let heal = heal_at.as_micros().max(10) as u64;
    for _ in 0..crashes {
        let Some(replica) = ids.next() else { break };
        let at = rng.random_range(0..heal * 3 / 4);
        let restart = rng.random_range(at + 1..=heal);
        faults.push(FaultyReplica {
            replica,
            fault: Fault::Crash {
                at: Duration::from_micros(at),
                restart: Duration::from_micros(restart),
            },
        });
    }
    faults
}

/// Draws which side of a Twins split each replica that is not a twin sees: both sides non-empty when possible.
/// Copy 0 of every twin sees side 0, copy 1 side 1.
pub fn draw_sides(n: usize, twins: &[ReplicaId], rng: &mut impl Rng) -> Vec<u8> {
    let mut others: Vec<usize> = (0..n)
        .filter(|i| !twins.contains(&ReplicaId(*i as u64)))
        .collect();
    for i in (1..others.len()).rev() {
        let j = rng.random_range(0..=i);
        others.swap(i, j);
    }
    let cut = if others.len() >= 2 {
        rng.random_range(1..others.len())
    } else {
        others.len()
    };
    let mut sides = vec![0u8; n];
    for (k, i) in others.into_iter().enumerate() {
        sides[i] = u8::from(k >= cut);
    }
    sides
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(s.name().parse::<Strategy>(), Ok(s));
        }
        assert!("nonsense".parse::<Strategy>().is_err());
        assert_eq!(
            "equivocate,twins".parse::<Byzantine>(),
            Ok(Byzantine::Listed(vec![
                Strategy::Equivocate,
                Strategy::Twins
            ]))
        );
        assert_eq!("random".parse::<Byzantine>(), Ok(Byzantine::Random));
        let listed = Byzantine::Listed(vec![Strategy::Forge, Strategy::VoteAll]);
        assert_eq!(listed.to_string().parse::<Byzantine>(), Ok(listed));
    }

    #[test]
    fn random_faults_stay_within_f_and_replay_from_the_seed() {
        let heal = Duration::from_secs(2);
        for seed in 0..200 {
            for n in [4, 7, 10] {
                let f = (n - 1) / 3;
                for crash in [false, true] {
                    let faults = draw_faults(n, &Byzantine::Random, crash, heal, seed);
                    assert_eq!(faults.len(), f, "seed {seed} n {n}");
                    let mut ids: Vec<_> = faults.iter().map(|x| x.replica).collect();
                    ids.sort();
                    ids.dedup();
                    assert_eq!(ids.len(), f);
                    assert_eq!(
                        faults,
                        draw_faults(n, &Byzantine::Random, crash, heal, seed)
                    );
                    for x in &faults {
                        if let Fault::Crash { at, restart } = x.fault {
                            assert!(at < restart && restart <= heal);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn sides_split_the_others_in_two() {
        let mut rng = fault_rng(1, 1);
        let sides = draw_sides(4, &[ReplicaId(0)], &mut rng);
        let ones = (1..4).filter(|i| sides[*i] == 1).count();
        assert!((1..=2).contains(&ones), "{sides:?}");
    }
}
