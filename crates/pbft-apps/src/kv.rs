//! The replicated key-value store: a map from byte strings to byte strings, ordered by key so that its digest and
//! snapshot are the same on every replica that holds the same entries.

mod op;

pub use op::{KvError, KvOp, KvResult};

use std::collections::BTreeMap;

use bytes::Bytes;
use pbft_core::{ExecContext, RestoreError, StateMachine};
use pbft_types::{Digest, wire};
use prost::Message;
use sha2::{Digest as _, Sha256};

/// Separates the store's digest from every other SHA-256 in the system, and from a future encoding of it.
const DIGEST_TAG: &[u8] = b"pbft/kv/v1";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    entries: BTreeMap<Bytes, Bytes>,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn apply(&mut self, op: KvOp) -> KvResult {
        match op {
            KvOp::Put { key, value } => {
                self.entries.insert(key, value);
                KvResult::Done
            }
            KvOp::Get { key } => match self.entries.get(&key) {
                Some(value) => KvResult::Value(value.clone()),
                None => KvResult::NotFound,
            },
            KvOp::Delete { key } => match self.entries.remove(&key) {
                Some(_) => KvResult::Done,
                None => KvResult::NotFound,
            },
        }
    }
}

impl StateMachine for KvStore {
    fn execute(&mut self, _ctx: ExecContext, operation: &[u8]) -> Bytes {
        let result = match KvOp::decode(operation) {
            Ok(op) => self.apply(op),
            // The client is authenticated but its bytes may still be garbage; it gets told so, in words of our
            // own: the result is replicated state, and the protobuf library's error text may differ between its
            // versions (and so between replicas built at different times).
            Err(KvError::Malformed(_)) => KvResult::Error("malformed protobuf".to_string()),
            Err(e) => KvResult::Error(e.to_string()),
        };
        result.encode()
    }

    fn digest(&self) -> Digest {
        // Every length is written before its bytes, so no two different stores hash the same byte stream:
        // without it ("ab" -> "c") and ("a" -> "bc") would.
        let mut hasher = Sha256::new();
        hasher.update(DIGEST_TAG);
        hasher.update(len_prefix(self.entries.len()));
        for (key, value) in &self.entries {
            hasher.update(len_prefix(key.len()));
            hasher.update(key);
            hasher.update(len_prefix(value.len()));
            hasher.update(value);
        }
        Digest(hasher.finalize().into())
    }

    fn snapshot(&self) -> Bytes {
        let entries = self
            .entries
            .iter()
            .map(|(key, value)| wire::KvEntry {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        wire::KvSnapshot { entries }.encode_to_vec().into()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let decoded = wire::KvSnapshot::decode(snapshot)
            .map_err(|e| RestoreError(format!("malformed key-value snapshot: {e}")))?;
        // A snapshot is checked against a certified digest, so any encoding of the right entries would pass;
        // insisting on the one canonical order means a duplicate key cannot silently overwrite another.
        let mut entries = BTreeMap::new();
        for entry in decoded.entries {
            if let Some((last, _)) = entries.last_key_value()
                && *last >= entry.key
            {
                return Err(RestoreError(format!(
                    "key-value snapshot keys are not strictly increasing at a key of {} bytes",
                    entry.key.len()
                )));
            }
            entries.insert(entry.key, entry.value);
        }
        // Replaced only now that the whole snapshot is known to be good.
        self.entries = entries;
        Ok(())
    }
}

fn len_prefix(len: usize) -> [u8; 8] {
    // usize is at most 64 bits on every target Rust supports.
    (len as u64).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbft_types::{ClientId, SeqNo, Timestamp};
    use proptest::prelude::*;

    fn ctx() -> ExecContext {
        ExecContext {
            seq: SeqNo(1),
            client: ClientId(7),
            timestamp: Timestamp(1),
        }
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn run(store: &mut KvStore, op: KvOp) -> KvResult {
        KvResult::decode(&store.execute(ctx(), &op.encode())).unwrap()
    }

    fn put(store: &mut KvStore, key: &'static str, value: &'static str) -> KvResult {
        run(
            store,
            KvOp::Put {
                key: b(key),
                value: b(value),
            },
        )
    }

    fn store_of(pairs: &[(&'static str, &'static str)]) -> KvStore {
        let mut store = KvStore::new();
        for (k, v) in pairs {
            put(&mut store, k, v);
        }
        store
    }

    fn snapshot_of(entries: &[(&'static str, &'static str)]) -> Vec<u8> {
        wire::KvSnapshot {
            entries: entries
                .iter()
                .map(|(k, v)| wire::KvEntry {
                    key: b(k),
                    value: b(v),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn put_stores_and_replaces() {
        let mut store = KvStore::new();
        assert_eq!(put(&mut store, "a", "1"), KvResult::Done);
        assert_eq!(store.get(b"a"), Some(&b("1")));
        assert_eq!(put(&mut store, "a", "2"), KvResult::Done);
        assert_eq!(store.get(b"a"), Some(&b("2")));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn get_returns_the_value_or_not_found() {
        let mut store = store_of(&[("a", "1"), ("e", "")]);
        assert_eq!(
            run(&mut store, KvOp::Get { key: b("a") }),
            KvResult::Value(b("1"))
        );
        assert_eq!(
            run(&mut store, KvOp::Get { key: b("e") }),
            KvResult::Value(b(""))
        );
        assert_eq!(
            run(&mut store, KvOp::Get { key: b("z") }),
            KvResult::NotFound
        );
        assert_eq!(store, store_of(&[("a", "1"), ("e", "")]));
    }

    #[test]
    fn delete_says_whether_the_key_existed() {
        let mut store = store_of(&[("a", "1")]);
        assert_eq!(
            run(&mut store, KvOp::Delete { key: b("z") }),
            KvResult::NotFound
        );
        assert_eq!(store.len(), 1);
        assert_eq!(
            run(&mut store, KvOp::Delete { key: b("a") }),
            KvResult::Done
        );
        assert!(store.is_empty());
        assert_eq!(store.get(b"a"), None);
        assert_eq!(
            run(&mut store, KvOp::Delete { key: b("a") }),
            KvResult::NotFound
        );
    }

    #[test]
    fn a_malformed_operation_is_an_error_and_changes_nothing() {
        let mut store = store_of(&[("a", "1")]);
        let before = store.digest();
        let truncated = KvOp::Put {
            key: b("b"),
            value: b("2"),
        }
        .encode();
        for garbage in [
            &[][..],
            &[0xff, 0xff, 0xff],
            &truncated[..truncated.len() - 1],
        ] {
            let result = KvResult::decode(&store.execute(ctx(), garbage)).unwrap();
            assert!(matches!(result, KvResult::Error(_)), "{result:?}");
            assert_eq!(store, store_of(&[("a", "1")]));
            assert_eq!(store.digest(), before);
        }
    }

    #[test]
    fn digest_depends_on_content_not_history() {
        let ab = store_of(&[("a", "1"), ("b", "2")]);
        let ba = store_of(&[("b", "2"), ("a", "1")]);
        assert_eq!(ab.digest(), ba.digest());

        let mut deleted = store_of(&[("a", "1"), ("c", "3"), ("b", "2")]);
        run(&mut deleted, KvOp::Delete { key: b("c") });
        assert_eq!(deleted.digest(), ab.digest());

        assert_ne!(ab.digest(), store_of(&[("a", "1"), ("b", "3")]).digest());
        assert_ne!(ab.digest(), store_of(&[("a", "1")]).digest());
        assert_ne!(KvStore::new().digest(), store_of(&[("", "")]).digest());
    }

    #[test]
    fn digest_separates_keys_from_values() {
        assert_ne!(
            store_of(&[("ab", "c")]).digest(),
            store_of(&[("a", "bc")]).digest()
        );
        assert_ne!(
            store_of(&[("a", "b"), ("c", "d")]).digest(),
            store_of(&[("a", "bc"), ("", "d")]).digest()
        );
    }

    #[test]
    fn snapshot_restores_an_equal_state() {
        let original = store_of(&[("b", "2"), ("a", "1"), ("", "empty key"), ("c", "")]);
        let mut restored = store_of(&[("stale", "x")]);
        restored.restore(&original.snapshot()).unwrap();
        assert_eq!(restored, original);
        assert_eq!(restored.digest(), original.digest());

        let mut emptied = store_of(&[("stale", "x")]);
        emptied.restore(&KvStore::new().snapshot()).unwrap();
        assert!(emptied.is_empty());
    }

    #[test]
    fn snapshot_lists_entries_in_key_order() {
        let decoded =
            wire::KvSnapshot::decode(store_of(&[("b", "2"), ("a", "1")]).snapshot()).unwrap();
        let keys: Vec<_> = decoded.entries.iter().map(|e| e.key.clone()).collect();
        assert_eq!(keys, [b("a"), b("b")]);
    }

    #[test]
    fn a_bad_snapshot_is_rejected_and_changes_nothing() {
        let good = snapshot_of(&[("a", "1"), ("b", "2")]);
        let bad = [
            good[..good.len() - 1].to_vec(),
            vec![0xff, 0xff, 0xff],
            snapshot_of(&[("b", "2"), ("a", "1")]),
            snapshot_of(&[("a", "1"), ("a", "2")]),
        ];
        for snapshot in bad {
            let mut store = store_of(&[("x", "9")]);
            assert!(store.restore(&snapshot).is_err(), "{snapshot:?}");
            assert_eq!(store, store_of(&[("x", "9")]));
        }
        // The hand-built good snapshot is accepted, so the rejections above are about what was broken.
        let mut store = KvStore::new();
        store.restore(&good).unwrap();
        assert_eq!(store, store_of(&[("a", "1"), ("b", "2")]));
    }

    fn small_op() -> impl Strategy<Value = KvOp> {
        // Few distinct keys, so that gets and deletes often hit keys that earlier puts wrote.
        let key = prop::sample::select(vec![b(""), b("a"), b("ab"), b("b")]);
        let value = prop::sample::select(vec![b(""), b("1"), b("22")]);
        prop_oneof![
            (key.clone(), value).prop_map(|(key, value)| KvOp::Put { key, value }),
            key.clone().prop_map(|key| KvOp::Get { key }),
            key.prop_map(|key| KvOp::Delete { key }),
        ]
    }

    proptest! {
        #[test]
        fn replicas_applying_the_same_operations_agree(ops in prop::collection::vec(small_op(), 0..40)) {
            let (mut one, mut two) = (KvStore::new(), KvStore::new());
            for op in &ops {
                let encoded = op.encode();
                prop_assert_eq!(one.execute(ctx(), &encoded), two.execute(ctx(), &encoded));
            }
            prop_assert_eq!(one.digest(), two.digest());

            // Equal digests must also mean equal states: a store rebuilt from the final entries alone agrees.
            let mut rebuilt = KvStore::new();
            for (key, value) in &one.entries {
                rebuilt.execute(ctx(), &KvOp::Put { key: key.clone(), value: value.clone() }.encode());
            }
            prop_assert_eq!(rebuilt.digest(), one.digest());

            let mut restored = KvStore::new();
            restored.restore(&one.snapshot()).unwrap();
            prop_assert_eq!(restored.digest(), one.digest());
        }

        #[test]
        fn restoring_arbitrary_bytes_never_panics(raw in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut store = store_of(&[("x", "9")]);
            if store.restore(&raw).is_err() {
                prop_assert_eq!(store, store_of(&[("x", "9")]));
            }
        }
    }
}
