//! The Merkle tree over a block's entries, and inclusion proofs in it.
//!
//! The rules are part of the ledger's verifiable format (stated in `proto/pbft.proto`), so they are written out
//! here rather than taken from a crate whose choices could change under us: leaves and inner nodes are hashed
//! with different prefixes (so an inner node can never pass for a leaf), and an odd node at the end of a level
//! moves up unchanged (duplicating it instead would let two different entry lists share a root).

use pbft_types::Digest;
use sha2::{Digest as _, Sha256};

/// One step of a path from a leaf to the root: the sibling's hash and which side it is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub sibling: Digest,
    pub sibling_on_left: bool,
}

pub fn empty_root() -> Digest {
    Digest(Sha256::digest(b"pbft/ledger/empty").into())
}

pub fn node(left: &Digest, right: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.as_bytes());
    h.update(right.as_bytes());
    Digest(h.finalize().into())
}

fn next_level(level: &[Digest]) -> Vec<Digest> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [left, right] => node(left, right),
            [odd] => *odd,
            _ => unreachable!("chunks(2) yields one or two items"),
        })
        .collect()
}

/// The root over `leaves` (already hashed as leaves).
pub fn root(leaves: &[Digest]) -> Digest {
    if leaves.is_empty() {
        return empty_root();
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

/// The path from leaf `index` to the root, or `None` if there is no such leaf.
pub fn path(leaves: &[Digest], index: usize) -> Option<Vec<Step>> {
    if index >= leaves.len() {
        return None;
    }
    let mut steps = Vec::new();
    let mut level = leaves.to_vec();
    let mut at = index;
    while level.len() > 1 {
        let sibling = at ^ 1;
        if let Some(s) = level.get(sibling) {
            steps.push(Step {
                sibling: *s,
                sibling_on_left: sibling < at,
            });
        }
        level = next_level(&level);
        at /= 2;
    }
    Some(steps)
}

/// For leaf `index` of `count`, the side of each sibling on its path, from the leaf up (`true`: on the left), or
/// `None` if there is no such leaf. A checker derives the path's shape from these rather than trusting a prover.
pub fn sides(index: u64, count: u64) -> Option<Vec<bool>> {
    if index >= count {
        return None;
    }
    let (mut at, mut len) = (index, count);
    let mut sides = Vec::new();
    while len > 1 {
        if at % 2 == 1 {
            sides.push(true);
        } else if at + 1 < len {
            sides.push(false);
        }
        at /= 2;
        len = len.div_ceil(2);
    }
    Some(sides)
}

/// The root a leaf and its path lead to.
pub fn root_from_path(leaf: Digest, path: &[Step]) -> Digest {
    path.iter().fold(leaf, |acc, step| {
        if step.sibling_on_left {
            node(&step.sibling, &acc)
        } else {
            node(&acc, &step.sibling)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u8) -> Vec<Digest> {
        (0..n).map(|i| Digest([i; 32])).collect()
    }

    #[test]
    fn every_leaf_of_every_size_proves_its_inclusion() {
        for n in 1..=17 {
            let leaves = leaves(n);
            let root = root(&leaves);
            for (i, leaf) in leaves.iter().enumerate() {
                let path = path(&leaves, i).expect("a leaf");
                assert_eq!(root_from_path(*leaf, &path), root, "leaf {i} of {n}");
                let derived = sides(i as u64, u64::from(n)).expect("a leaf");
                let given: Vec<bool> = path.iter().map(|s| s.sibling_on_left).collect();
                assert_eq!(derived, given, "leaf {i} of {n}");
            }
            assert!(sides(u64::from(n), u64::from(n)).is_none());
            assert!(path(&leaves, n as usize).is_none());
        }
    }

    #[test]
    fn a_wrong_leaf_or_step_leads_elsewhere() {
        let leaves = leaves(5);
        let root = root(&leaves);
        let mut path = path(&leaves, 2).expect("a leaf");
        assert_ne!(root_from_path(leaves[3], &path), root);
        path[0].sibling_on_left = !path[0].sibling_on_left;
        assert_ne!(root_from_path(leaves[2], &path), root);
    }

    #[test]
    fn the_odd_leaf_is_not_duplicated() {
        let three = leaves(3);
        let mut four = three.clone();
        four.push(three[2]);
        assert_ne!(root(&three), root(&four));
        assert_ne!(root(&[]), root(&leaves(1)));
    }
}
