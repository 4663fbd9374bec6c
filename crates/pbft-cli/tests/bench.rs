//! `pbft bench` end to end: a short closed-loop run and a two-point open-loop sweep against 4 replica processes
//! it starts itself, checking the JSON, CSV and chart it writes. Base ports from 27000 on.

#![allow(clippy::unwrap_used)] // tests

use std::process::Command;

const PBFT: &str = env!("CARGO_BIN_EXE_pbft");

fn bench(args: &[&str], out: &std::path::Path) -> serde_json::Value {
    let output = Command::new(PBFT)
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pbft bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("requests/s"), "{stdout}");
    let json = std::fs::read_to_string(out.join("results.json")).unwrap();
    serde_json::from_str(&json).unwrap()
}

#[test]
fn a_closed_loop_run_reports_throughput_latency_cpu_and_batches() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let json = bench(
        &[
            "--duration",
            "2",
            "--warmup",
            "1",
            "--clients",
            "2",
            "--window",
            "2",
            "--base-port",
            "27000",
        ],
        &out,
    );
    let r = &json[0];
    assert_eq!(r["config"]["mode"], "closed");
    assert_eq!(r["config"]["transport"], "stream");
    assert_eq!(r["config"]["replicas"], 4);
    assert!(r["committed"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["throughput_rps"].as_f64().unwrap() > 0.0, "{r}");
    let p50 = r["latency"]["p50_ms"].as_f64().unwrap();
    let p99 = r["latency"]["p99_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{r}");
    assert!(
        r["replica_cpu_us_per_request"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert!(r["batches_per_s"].as_f64().unwrap() > 0.0, "{r}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
}

#[test]
fn an_open_loop_sweep_draws_a_chart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let json = bench(
        &[
            "--duration",
            "1.5",
            "--warmup",
            "0.5",
            "--open",
            "--sweep",
            "20,40",
            "--pool",
            "8",
            // The default is streamed; keep the unary path measured too.
            "--transport",
            "unary",
            "--base-port",
            "27300",
        ],
        &out,
    );
    let runs = json.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["config"]["target_rate"], 20.0);
    assert_eq!(runs[1]["config"]["target_rate"], 40.0);
    assert!(runs.iter().all(|r| r["committed"].as_u64().unwrap() > 0));
    assert!(runs.iter().all(|r| r["config"]["transport"] == "unary"));
    let svg = std::fs::read_to_string(out.join("throughput-latency.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("p99"));
}
