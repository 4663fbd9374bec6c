//! The replica's metrics, in a registry of its own (not a process-wide one, so that tests can run several
//! replicas in one process), served in the Prometheus text format at `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use pbft_core::ReplicaStatus;

use crate::transport::TransportStats;

/// Labels of a refused input: which message kind, and why.
type RefusalLabels = [(&'static str, &'static str); 2];

/// Counters of what the replica did, for status pages and tests (a copy of the metrics' current values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub batches_committed: u64,
    pub requests_executed: u64,
    pub view_changes: u64,
    pub inputs_refused: u64,
    pub messages_unauthenticated: u64,
}

/// Everything the replica measures. Cheap to update from any task: every metric is atomic.
pub struct Metrics {
    registry: Registry,
    requests_submitted: Counter,
    requests_executed: Counter,
    batches_committed: Counter,
    view_changes: Counter,
    messages_unauthenticated: Counter,
    refused: Family<RefusalLabels, Counter>,
    refused_total: Counter,
    view: Gauge,
    last_executed: Gauge,
    stable_checkpoint: Gauge,
    high_watermark: Gauge,
    changing_view: Gauge,
    peers_connected: Gauge,
    peer_auth_failures: Gauge,
    peer_garbage_connections: Gauge,
    frames_dropped: Gauge,
    peer_bytes_sent: Gauge,
    batch_size: Histogram,
    submit_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pbft");
        let requests_submitted = Counter::default();
        let requests_executed = Counter::default();
        let batches_committed = Counter::default();
        let view_changes = Counter::default();
        let messages_unauthenticated = Counter::default();
        let refused = Family::<RefusalLabels, Counter>::default();
        let refused_total = Counter::default();
        let (peer_auth_failures, peer_garbage_connections, frames_dropped, peer_bytes_sent) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        let (
            view,
            last_executed,
            stable_checkpoint,
            high_watermark,
            changing_view,
            peers_connected,
        ) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        // Requests per batch: 1 to 4096.
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        // Seconds from a client's submission to this replica's reply: 100 us to about 13 s.
        let submit_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "requests_submitted",
            "Client requests submitted through this replica's API",
            requests_submitted.clone(),
        );
        registry.register(
            "requests_executed",
            "Client requests executed (committed batches, null requests excluded)",
            requests_executed.clone(),
        );
        registry.register(
            "batches_committed",
            "Batches committed and executed",
            batches_committed.clone(),
        );
        registry.register(
            "view_changes",
            "Views this replica entered after the first",
            view_changes.clone(),
        );
        registry.register(
            "messages_unauthenticated",
            "Frames from peers that did not decode or whose signature did not verify",
            messages_unauthenticated.clone(),
        );
        registry.register(
            "inputs_refused_by_reason",
            "Authenticated inputs the protocol refused, by message kind and reason",
            refused.clone(),
        );
        registry.register(
            "inputs_refused",
            "Authenticated inputs the protocol refused",
            refused_total.clone(),
        );
        registry.register("view", "The current view", view.clone());
        registry.register(
            "last_executed_sequence",
            "The highest sequence number executed",
            last_executed.clone(),
        );
        registry.register(
            "stable_checkpoint_sequence",
            "The sequence number of the last stable checkpoint (the low watermark)",
            stable_checkpoint.clone(),
        );
        registry.register(
            "high_watermark_sequence",
            "The highest sequence number the replica accepts",
            high_watermark.clone(),
        );
        registry.register(
            "changing_view",
            "1 while the replica waits for a NEW-VIEW, else 0",
            changing_view.clone(),
        );
        registry.register(
            "peers_connected",
            "Replicas this one has an authenticated connection to",
            peers_connected.clone(),
        );
        registry.register(
            "peer_auth_failures",
            "Connections refused since start: the other side did not authenticate as a replica of the cluster",
            peer_auth_failures.clone(),
        );
        registry.register(
            "peer_garbage_connections",
            "Connections dropped since start: the other side sent something no replica sends, or never finished \
             its handshake",
            peer_garbage_connections.clone(),
        );
        registry.register(
            "frames_dropped",
            "Frames to peers dropped since start (a full queue, a lost connection)",
            frames_dropped.clone(),
        );
        registry.register(
            "peer_bytes_sent",
            "Bytes of frames written to peers since start, with their length prefixes (before TLS overhead)",
            peer_bytes_sent.clone(),
        );
        registry.register(
            "batch_size_requests",
            "Requests per committed batch",
            batch_size.clone(),
        );
        registry.register(
            "submit_latency_seconds",
            "Time from a client's submission through this replica's API to this replica's reply",
            submit_latency.clone(),
        );
        Metrics {
            registry,
            requests_submitted,
            requests_executed,
            batches_committed,
            view_changes,
            messages_unauthenticated,
            refused,
            refused_total,
            view,
            last_executed,
            stable_checkpoint,
            high_watermark,
            changing_view,
            peers_connected,
            peer_auth_failures,
            peer_garbage_connections,
            frames_dropped,
            peer_bytes_sent,
            batch_size,
            submit_latency,
        }
    }

    pub fn shared() -> Arc<Metrics> {
        Arc::new(Self::new())
    }

    pub fn batch_committed(&self, requests: usize) {
        self.batches_committed.inc();
        self.requests_executed.inc_by(requests as u64);
        self.batch_size.observe(requests as f64);
    }

    pub fn entered_view(&self) {
        self.view_changes.inc();
    }

    pub fn refused(&self, kind: &'static str, reason: &'static str) {
        self.refused_total.inc();
        self.refused
            .get_or_create(&[("kind", kind), ("reason", reason)])
            .inc();
    }

    pub fn unauthenticated(&self) {
        self.messages_unauthenticated.inc();
    }

    pub fn submitted(&self) {
        self.requests_submitted.inc();
    }

    pub fn answered(&self, latency: Duration) {
        self.submit_latency.observe(latency.as_secs_f64());
    }

    pub fn set_status(&self, status: &ReplicaStatus) {
        self.view.set(gauge_value(status.view.0));
        self.last_executed.set(gauge_value(status.last_executed.0));
        self.stable_checkpoint
            .set(gauge_value(status.low_watermark.0));
        self.high_watermark
            .set(gauge_value(status.high_watermark.0));
        self.changing_view.set(i64::from(status.changing_view));
    }

    pub fn set_transport(&self, stats: &TransportStats) {
        self.peers_connected
            .set(i64::try_from(stats.peers_connected).unwrap_or(i64::MAX));
        self.peer_auth_failures
            .set(gauge_value(stats.auth_failures));
        self.peer_garbage_connections
            .set(gauge_value(stats.garbage_connections));
        self.frames_dropped.set(gauge_value(stats.frames_dropped));
        self.peer_bytes_sent.set(gauge_value(stats.bytes_sent));
    }

    pub fn counters(&self) -> Counters {
        Counters {
            batches_committed: self.batches_committed.get(),
            requests_executed: self.requests_executed.get(),
            view_changes: self.view_changes.get(),
            inputs_refused: self.refused_total.get(),
            messages_unauthenticated: self.messages_unauthenticated.get(),
        }
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Gauges are signed 64-bit; sequence numbers and views beyond that are not reachable in practice.
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_counted() {
        let m = Metrics::new();
        m.batch_committed(3);
        m.refused("PREPARE", "wrong_view");
        m.refused("PREPARE", "wrong_view");
        m.unauthenticated();
        let text = m.render();
        assert!(text.contains("pbft_requests_executed_total 3"), "{text}");
        assert!(text.contains("pbft_batches_committed_total 1"), "{text}");
        assert!(
            text.contains(
                r#"pbft_inputs_refused_by_reason_total{kind="PREPARE",reason="wrong_view"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains("pbft_submit_latency_seconds_bucket"),
            "{text}"
        );
        assert_eq!(
            m.counters(),
            Counters {
                batches_committed: 1,
                requests_executed: 3,
                view_changes: 0,
                inputs_refused: 2,
                messages_unauthenticated: 1
            }
        );
    }
}
