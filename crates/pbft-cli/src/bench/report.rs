//! What one benchmark run measured, computed from raw counts, and written as JSON and CSV.

use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, from 1 us to 10 minutes, with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

/// Latency percentiles of a run, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            samples: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// The configuration of one run (one point of a sweep).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunConfig {
    /// "closed" or "open".
    pub mode: String,
    pub replicas: usize,
    /// Closed loop: logical clients. Open loop: the size of the client pool.
    pub clients: usize,
    /// Closed loop: requests outstanding per logical client.
    pub window: usize,
    /// Open loop: the target rate, requests per second.
    pub target_rate: Option<f64>,
    pub request_size: usize,
    pub reads: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// The cluster's parameters as given (`None`: the cluster's own, e.g. when attached).
    pub batch_size: Option<usize>,
    pub batch_delay_ms: Option<u64>,
    /// How the requests travelled: "stream" (`SubmitStream`, answers batched) or "unary" (a `Submit` call each).
    pub transport: String,
    /// Sets of connections the network clients shared (0: one set each).
    pub connections: usize,
    /// How requests and replies are authenticated: "signatures" or "macs".
    pub client_auth: String,
    /// How replicas authenticate their COMMITs: "signatures", or "macs" (by the link only).
    pub replica_auth: String,
}

/// Raw counts over the measured interval, as the load generator and `/proc` saw them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Raw {
    pub elapsed_s: f64,
    pub committed: u64,
    pub failed: u64,
    /// Open loop: requests scheduled in the interval that were not even sent by its end.
    pub unsent: u64,
    pub replica_cpu_s: Option<f64>,
    pub replica_wchar: Option<u64>,
    pub replica_storage_bytes: Option<u64>,
    pub loadgen_cpu_s: f64,
    pub loadgen_wchar: Option<u64>,
    /// Deltas of the replicas' metrics, averaged over the replicas that answered at both ends.
    pub batches_committed: Option<f64>,
    pub requests_executed: Option<f64>,
    /// The change of `pbft_peer_bytes_sent`, summed over the replicas that answered at both ends.
    pub peer_bytes_sent: Option<f64>,
    pub replicas_with_pids: usize,
}

/// The figures of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub config: RunConfig,
    pub elapsed_s: f64,
    pub committed: u64,
    pub failed: u64,
    pub unsent: u64,
    /// Requests that completed (f+1 matching replies) per second.
    pub throughput_rps: f64,
    pub latency: Latency,
    /// CPU time of all replica processes together per committed request (`None`: their pids are unknown).
    pub replica_cpu_us_per_request: Option<f64>,
    /// Replica CPU time over the interval divided by its length: 2.0 means two cores busy.
    pub replica_cores_busy: Option<f64>,
    pub loadgen_cpu_us_per_request: Option<f64>,
    pub loadgen_cores_busy: f64,
    /// Bytes the replicas passed to write system calls per committed request: peer and client sockets (TLS
    /// records, gRPC frames) and the journal's file writes together. Not a count of network bytes alone.
    pub replica_bytes_written_per_request: Option<f64>,
    /// Bytes of the replicas' files that reached storage per committed request (`write_bytes`, in pages: the
    /// journal's share of the bytes written above, roughly).
    pub replica_storage_bytes_per_request: Option<f64>,
    /// Bytes the load generator wrote per committed request (its gRPC requests to every replica).
    pub loadgen_bytes_written_per_request: Option<f64>,
    /// Bytes of protocol messages all replicas sent one another per committed request (frames with their length
    /// prefixes, before TLS overhead), from `pbft_peer_bytes_sent`: network bytes between replicas alone.
    pub peer_bytes_per_request: Option<f64>,
    /// Batches committed per second, from the replicas' `pbft_batches_committed_total`.
    pub batches_per_s: Option<f64>,
    /// Requests executed per second from the replicas' `pbft_requests_executed_total` (a cross-check).
    pub executed_per_s: Option<f64>,
    pub mean_batch_size: Option<f64>,
    /// The machine's load averages (1, 5, 15 minutes) before and after the run: other work shares the cores.
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub cores: usize,
    pub notes: Vec<String>,
    /// With `--kill-primary-at`: the throughput around the killed primary.
    pub failover: Option<Failover>,
}

/// What happened to throughput when the primary's process was killed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Failover {
    /// The replica that was primary, and when (seconds from the start of the run, warm-up included).
    pub primary: usize,
    pub killed_at_s: f64,
    /// Completions per second in the 2 s before the kill.
    pub rate_before: f64,
    /// Seconds from the kill to the first 500 ms window with at least 80% of `rate_before` (`None`: not within
    /// the run).
    pub recovered_after_s: Option<f64>,
}

impl Report {
    pub fn compute(config: RunConfig, raw: &Raw, latency: Latency) -> Report {
        let per_request = |x: f64| (raw.committed > 0).then(|| x / raw.committed as f64);
        let per_second = |x: f64| (raw.elapsed_s > 0.0).then(|| x / raw.elapsed_s);
        let mut notes = Vec::new();
        if raw.replica_cpu_s.is_none() {
            notes.push(
                "replica CPU not measured: the replica processes' pids are unknown".to_string(),
            );
        }
        if let Some(rate) = config.target_rate {
            let achieved = per_second(raw.committed as f64).unwrap_or(0.0);
            if achieved < 0.95 * rate || raw.unsent > 0 {
                notes.push(format!(
                    "target rate not sustained: {achieved:.0}/s of {rate:.0}/s; {} requests were still \
                     waiting to be sent at the end (the latency of those sent counts their wait)",
                    raw.unsent
                ));
            }
        }
        Report {
            elapsed_s: raw.elapsed_s,
            committed: raw.committed,
            failed: raw.failed,
            unsent: raw.unsent,
            throughput_rps: per_second(raw.committed as f64).unwrap_or(0.0),
            latency,
            replica_cpu_us_per_request: raw.replica_cpu_s.and_then(|c| per_request(c * 1e6)),
            replica_cores_busy: raw.replica_cpu_s.and_then(per_second),
            loadgen_cpu_us_per_request: per_request(raw.loadgen_cpu_s * 1e6),
            loadgen_cores_busy: per_second(raw.loadgen_cpu_s).unwrap_or(0.0),
            replica_bytes_written_per_request: raw
                .replica_wchar
                .and_then(|b| per_request(b as f64)),
            replica_storage_bytes_per_request: raw
                .replica_storage_bytes
                .and_then(|b| per_request(b as f64)),
            loadgen_bytes_written_per_request: raw
                .loadgen_wchar
                .and_then(|b| per_request(b as f64)),
            peer_bytes_per_request: raw.peer_bytes_sent.and_then(per_request),
            batches_per_s: raw.batches_committed.and_then(per_second),
            executed_per_s: raw.requests_executed.and_then(per_second),
            mean_batch_size: match (raw.batches_committed, raw.requests_executed) {
                (Some(b), Some(r)) if b > 0.0 => Some(r / b),
                _ => None,
            },
            loadavg_before: String::new(),
            loadavg_after: String::new(),
            cores: 0,
            notes,
            config,
            failover: None,
        }
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let opt = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "not measured".to_string(), |v| format!("{v:.digits$}"))
        };
        let load = match self.config.target_rate {
            Some(rate) => format!(
                "open loop at {rate:.0}/s ({} clients in the pool)",
                self.config.clients
            ),
            None => format!(
                "closed loop, {} clients x {} outstanding",
                self.config.clients, self.config.window
            ),
        };
        let load = format!(
            "{load}, {} transport over {}",
            self.config.transport,
            match self.config.connections {
                0 => "a connection set per client".to_string(),
                k => format!("{k} shared connection sets"),
            }
        );
        let mut s = format!(
            "{load}, n = {}, {} B requests, {:.0}% reads, client auth: {}, replica auth: {}\n\
             \x20 committed       {} in {:.1}s = {:.0} requests/s ({} failed)\n\
             \x20 latency         p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\
             \x20 replica CPU     {} us per request ({} cores busy)\n\
             \x20 load gen. CPU   {} us per request ({:.2} cores busy)\n\
             \x20 bytes written   {} per request by the replicas (sockets and journal; {} reached the disk), {} by the load generator\n\
             \x20 peer bytes      {} per request between the replicas (protocol messages, before TLS)\n\
             \x20 batches         {} per second, {} requests each on average\n\
             \x20 load average    {} before, {} after ({} cores)",
            self.config.replicas,
            self.config.request_size,
            self.config.reads * 100.0,
            self.config.client_auth,
            self.config.replica_auth,
            self.committed,
            self.elapsed_s,
            self.throughput_rps,
            self.failed,
            self.latency.p50_ms,
            self.latency.p90_ms,
            self.latency.p99_ms,
            self.latency.max_ms,
            opt(self.replica_cpu_us_per_request, 0),
            opt(self.replica_cores_busy, 2),
            opt(self.loadgen_cpu_us_per_request, 0),
            self.loadgen_cores_busy,
            opt(self.replica_bytes_written_per_request, 0),
            opt(self.replica_storage_bytes_per_request, 0),
            opt(self.loadgen_bytes_written_per_request, 0),
            opt(self.peer_bytes_per_request, 0),
            opt(self.batches_per_s, 1),
            opt(self.mean_batch_size, 1),
            self.loadavg_before,
            self.loadavg_after,
            self.cores,
        );
        if let Some(f) = &self.failover {
            s.push_str(&format!(
                "\n  failover        primary (replica {}) killed at {:.1}s after {:.0} requests/s; back to 80% of that {}",
                f.primary,
                f.killed_at_s,
                f.rate_before,
                match f.recovered_after_s {
                    Some(t) => format!("after {t:.2}s"),
                    None => "not within the run".to_string(),
                }
            ));
        }
        for note in &self.notes {
            s.push_str(&format!("\n  note: {note}"));
        }
        s
    }
}

pub const CSV_HEADER: &str = "mode,replicas,clients,window,target_rate,request_size,reads,duration_s,warmup_s,\
batch_size,batch_delay_ms,client_auth,elapsed_s,committed,failed,unsent,throughput_rps,latency_samples,latency_mean_ms,\
latency_p50_ms,latency_p90_ms,latency_p99_ms,latency_max_ms,replica_cpu_us_per_request,replica_cores_busy,\
loadgen_cpu_us_per_request,loadgen_cores_busy,replica_bytes_written_per_request,\
replica_storage_bytes_per_request,loadgen_bytes_written_per_request,peer_bytes_per_request,batches_per_s,executed_per_s,mean_batch_size,loadavg_before,loadavg_after,cores,transport,connections,replica_auth";

/// One CSV row (no field needs quoting: load averages are space-separated numbers). Unknown values are empty.
pub fn csv_row(r: &Report) -> String {
    fn o<T: ToString>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }
    let f = |v: f64| format!("{v:.3}");
    let of = |v: Option<f64>| o(v.map(f));
    let c = &r.config;
    [
        c.mode.clone(),
        c.replicas.to_string(),
        c.clients.to_string(),
        c.window.to_string(),
        of(c.target_rate),
        c.request_size.to_string(),
        f(c.reads),
        f(c.duration_s),
        f(c.warmup_s),
        o(c.batch_size),
        o(c.batch_delay_ms),
        c.client_auth.clone(),
        f(r.elapsed_s),
        r.committed.to_string(),
        r.failed.to_string(),
        r.unsent.to_string(),
        f(r.throughput_rps),
        r.latency.samples.to_string(),
        f(r.latency.mean_ms),
        f(r.latency.p50_ms),
        f(r.latency.p90_ms),
        f(r.latency.p99_ms),
        f(r.latency.max_ms),
        of(r.replica_cpu_us_per_request),
        of(r.replica_cores_busy),
        of(r.loadgen_cpu_us_per_request),
        f(r.loadgen_cores_busy),
        of(r.replica_bytes_written_per_request),
        of(r.replica_storage_bytes_per_request),
        of(r.loadgen_bytes_written_per_request),
        of(r.peer_bytes_per_request),
        of(r.batches_per_s),
        of(r.executed_per_s),
        of(r.mean_batch_size),
        r.loadavg_before.clone(),
        r.loadavg_after.clone(),
        r.cores.to_string(),
        c.transport.clone(),
        c.connections.to_string(),
        c.replica_auth.clone(),
    ]
    .join(",")
}

/// Writes `results.json` (every report, pretty) and `results.csv` (a header and a row per report) into `dir`.
pub fn write(dir: &Path, reports: &[Report]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(reports).map_err(|e| e.to_string())?;
    let json_path = dir.join("results.json");
    std::fs::write(&json_path, json + "\n").map_err(|e| format!("{}: {e}", json_path.display()))?;
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    for r in reports {
        csv.push_str(&csv_row(r));
        csv.push('\n');
    }
    let csv_path = dir.join("results.csv");
    std::fs::write(&csv_path, csv).map_err(|e| format!("{}: {e}", csv_path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config() -> RunConfig {
        RunConfig {
            mode: "closed".into(),
            replicas: 4,
            clients: 8,
            window: 1,
            target_rate: None,
            request_size: 512,
            reads: 0.0,
            duration_s: 10.0,
            warmup_s: 2.0,
            batch_size: Some(64),
            batch_delay_ms: None,
            transport: "stream".into(),
            connections: 4,
            client_auth: "macs".into(),
            replica_auth: "signatures".into(),
        }
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap(); // 1 ms .. 1000 ms
        }
        let l = Latency::of(&h);
        assert_eq!(l.samples, 1000);
        // Three significant digits: within 0.1%.
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p90_ms - 900.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_ms - 1000.0).abs() < 1.0, "{l:?}");
        assert!((l.mean_ms - 500.5).abs() < 1.0, "{l:?}");
        assert_eq!(Latency::of(&new_histogram()), Latency::default());
    }

    #[test]
    fn a_report_divides_by_committed_requests_and_by_time() {
        let raw = Raw {
            elapsed_s: 10.0,
            committed: 5000,
            failed: 1,
            unsent: 0,
            replica_cpu_s: Some(15.0),
            replica_wchar: Some(10_000_000),
            replica_storage_bytes: Some(5_000_000),
            loadgen_cpu_s: 2.5,
            loadgen_wchar: None,
            batches_committed: Some(500.0),
            requests_executed: Some(5000.0),
            peer_bytes_sent: Some(15_000_000.0),
            replicas_with_pids: 4,
        };
        let r = Report::compute(config(), &raw, Latency::default());
        assert_eq!(r.throughput_rps, 500.0);
        assert_eq!(r.replica_cpu_us_per_request, Some(3000.0));
        assert_eq!(r.replica_cores_busy, Some(1.5));
        assert_eq!(r.loadgen_cpu_us_per_request, Some(500.0));
        assert_eq!(r.replica_bytes_written_per_request, Some(2000.0));
        assert_eq!(r.replica_storage_bytes_per_request, Some(1000.0));
        assert_eq!(r.loadgen_bytes_written_per_request, None);
        assert_eq!(r.peer_bytes_per_request, Some(3000.0));
        assert_eq!(r.batches_per_s, Some(50.0));
        assert_eq!(r.mean_batch_size, Some(10.0));
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        assert!(r.summary().contains("500 requests/s"), "{}", r.summary());
    }

    #[test]
    fn nothing_committed_and_unknown_pids_give_no_per_request_figures() {
        let raw = Raw {
            elapsed_s: 2.0,
            ..Raw::default()
        };
        let mut c = config();
        c.mode = "open".into();
        c.target_rate = Some(1000.0);
        let r = Report::compute(c, &raw, Latency::default());
        assert_eq!(r.throughput_rps, 0.0);
        assert_eq!(r.replica_cpu_us_per_request, None);
        assert_eq!(r.loadgen_cpu_us_per_request, None);
        assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
        assert!(r.summary().contains("not measured"));
    }

    #[test]
    fn json_and_csv_hold_every_report() {
        let dir = tempfile::tempdir().unwrap();
        let raw = Raw {
            elapsed_s: 1.0,
            committed: 10,
            ..Raw::default()
        };
        let reports = vec![
            Report::compute(config(), &raw, Latency::default()),
            Report::compute(config(), &raw, Latency::default()),
        ];
        write(dir.path(), &reports).unwrap();
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("results.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json.as_array().unwrap().len(), 2);
        assert_eq!(json[0]["throughput_rps"], 10.0);
        assert_eq!(json[0]["config"]["request_size"], 512);
        let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        let columns = lines[0].split(',').count();
        assert!(
            lines.iter().all(|l| l.split(',').count() == columns),
            "{csv}"
        );
        assert!(lines[1].starts_with("closed,4,8,1,,512,"), "{}", lines[1]);
        assert!(
            lines[0].ends_with(",transport,connections,replica_auth"),
            "{}",
            lines[0]
        );
        assert!(lines[1].ends_with(",stream,4,signatures"), "{}", lines[1]);
    }
}
