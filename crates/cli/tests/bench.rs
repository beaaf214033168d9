//! `hodei bench registration` end to end: the real binary starts a real server process,
//! registers workers over gRPC and prints one JSON object. Timings are not asserted;
//! performance is measured by running the bench, not by tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HODEI: &str = env!("CARGO_BIN_EXE_hodei");

/// Bounds a broken run; it measures nothing.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `hodei` with `args` to completion (killed after [`LIMIT`]); returns its exit
/// status, stdout and stderr.
fn run_hodei(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(HODEI)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hodei {args:?} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

#[test]
fn bench_registration_prints_one_json_object_with_every_field() {
    let report = bench_registration(&[]);
    assert_eq!(report["tls"], false);
}

#[test]
fn bench_registration_runs_over_tls() {
    let report = bench_registration(&["--tls"]);
    assert_eq!(report["tls"], true);
}

/// Registers 50 workers from 10 clients and checks the report's fields.
fn bench_registration(extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "registration",
        "--workers",
        "50",
        "--concurrency",
        "10",
    ];
    args.extend_from_slice(extra);
    let (status, stdout, stderr) = run_hodei(&args);
    assert!(status.success(), "{status}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object on stdout, got {stdout:?}");
    let report: serde_json::Value = serde_json::from_str(lines[0]).unwrap();

    assert_eq!(report["bench"], "registration");
    assert_eq!(report["workers"], 50);
    assert_eq!(report["concurrency"], 10);
    assert_eq!(report["connections"], 1);
    assert_eq!(report["errors"], 0, "{stderr}");
    assert_eq!(report["registered"], 50);
    assert_eq!(report["server_registered"], 50);
    for field in ["seconds", "throughput_per_sec"] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field}: {report}");
    }
    for field in ["p50", "p95", "p99", "max", "mean"] {
        assert!(
            report["latency_ms"][field].as_f64().is_some(),
            "latency_ms.{field}: {report}"
        );
    }
    for field in ["before", "after", "peak"] {
        assert!(
            report["server_rss_mib"][field].as_f64().unwrap() > 0.0,
            "server_rss_mib.{field}: {report}"
        );
    }
    report
}

#[test]
fn bench_registration_refuses_bad_flags() {
    let (status, stdout, stderr) = run_hodei(&[
        "bench",
        "registration",
        "--workers",
        "10",
        "--concurrency",
        "2",
        "--connections",
        "3",
    ]);
    assert!(!status.success());
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("--connections"), "{stderr}");
}

#[test]
fn bench_dispatch_runs_every_job_and_prints_one_json_object() {
    let (status, stdout, stderr) = run_hodei(&[
        "bench",
        "dispatch",
        "--jobs",
        "30",
        "--workers",
        "2",
        "--concurrency",
        "4",
        "--latency-jobs",
        "4",
    ]);
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object: {stdout}");
    let report: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(report["bench"], "dispatch");
    assert_eq!(report["succeeded"], 30);
    assert_eq!(report["errors"], 0);
    for field in ["throughput_per_sec", "seconds", "server_cpu_us_per_job"] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field}: {stdout}");
    }
    for field in ["submit_ms", "submit_to_start_ms"] {
        for percentile in ["p50", "p95", "p99", "max"] {
            assert!(
                report[field][percentile].is_number(),
                "{field}.{percentile}"
            );
        }
    }
    assert!(report["server_rss_mib"]["after"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_coldstart_measures_an_empty_pool_and_a_warm_one() {
    let (status, stdout, stderr) = run_hodei(&[
        "bench",
        "coldstart",
        "--provider",
        "local",
        "--runs",
        "2",
        "--warm-runs",
        "3",
    ]);
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object: {stdout}");
    let report: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(report["bench"], "coldstart");
    assert_eq!(report["provider"], "local");
    assert_eq!(report["runs"], 2);
    assert_eq!(report["warm_runs"], 3);
    // Times have millisecond resolution: a warm start may round to 0, a cold one may not.
    for percentile in ["p50", "p95", "p99", "max", "mean"] {
        let cold = report["cold_ms"][percentile].as_f64().unwrap();
        let warm = report["warm_ms"][percentile].as_f64().unwrap();
        assert!(cold > 0.0, "cold_ms.{percentile}: {stdout}");
        assert!(warm >= 0.0, "warm_ms.{percentile}: {stdout}");
    }
    // Not a timing threshold: a cold start includes spawning and registering an agent, a
    // warm one does not.
    let cold = report["cold_ms"]["p50"].as_f64().unwrap();
    let warm = report["warm_ms"]["p50"].as_f64().unwrap();
    assert!(
        warm < cold,
        "warm p50 {warm} ms, cold p50 {cold} ms\n{stderr}"
    );
}

#[test]
fn bench_coldstart_refuses_bad_flags() {
    for (flag, args) in [
        ("--runs", ["--runs", "0", "--warm-runs", "1"]),
        ("--warm-runs", ["--runs", "1", "--warm-runs", "0"]),
    ] {
        let mut all = vec!["bench", "coldstart"];
        all.extend(args);
        let (status, stdout, stderr) = run_hodei(&all);
        assert!(!status.success());
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.contains(flag), "{stderr}");
    }
}

#[test]
fn bench_schedule_prints_one_json_object_with_every_field() {
    let (status, stdout, stderr) = run_hodei(&[
        "bench",
        "schedule",
        "--queued",
        "400",
        "--workers",
        "20",
        "--tenants",
        "8",
    ]);
    assert!(status.success(), "{status}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object on stdout, got {stdout:?}");
    let report: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(report["bench"], "schedule");
    assert_eq!(report["admissions"], 400);
    assert_eq!(report["starts"], 400);
    assert_eq!(report["ends"], 400);
    // Each job: admitted, assigned, started, ended.
    assert_eq!(report["decisions"], 1600);
    assert!(
        report["decisions_per_sec"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    // Shares follow weights while every tenant waits (a property of the core's fair
    // queuing, not a timing).
    assert!(
        report["max_share_error_pp"].as_f64().unwrap() < 2.0,
        "{report}"
    );

    let (status, _, stderr) = run_hodei(&["bench", "schedule", "--tenants", "0"]);
    assert!(!status.success());
    assert!(stderr.contains("--tenants"), "{stderr}");
}
