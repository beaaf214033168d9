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
    run_hodei_with_env(args, &[])
}

/// As [`run_hodei`], with `env` added to the environment.
fn run_hodei_with_env(
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(HODEI)
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
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
    // The README has users export a token for the CLI: the bench's own server must not take
    // it (it did, and the bench then waited for workers forever on 401s).
    let env = [("HODEI_TOKEN", "a-token-of-some-other-server")];
    let (status, stdout, stderr) = run_hodei_with_env(
        &[
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
        ],
        &env,
    );
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

/// Parent pid of `pid`, from `/proc/PID/stat` (the field after the parenthesised name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(1)?.parse().ok()
}

fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry: only the running ones count.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

/// Interrupting a bench (Ctrl-C, SIGTERM) or killing it outright leaves neither its server
/// nor the agents that server started running.
#[test]
fn an_interrupted_or_killed_bench_leaves_no_server_or_agent_behind() {
    for signal in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGKILL,
    ] {
        let mut bench = Command::new(HODEI)
            .args(["bench", "dispatch", "--jobs", "1000000", "--workers", "2"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The bench's server is its child; the agents are the server's children.
        let deadline = Instant::now() + LIMIT;
        let (server, agents) = loop {
            let found = children_of(bench.id())
                .into_iter()
                .map(|server| (server, children_of(server)))
                .find(|(_, agents)| agents.len() == 2);
            if let Some(found) = found {
                break found;
            }
            assert!(
                Instant::now() < deadline,
                "the bench never started 2 agents"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(bench.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
        let status = bench.wait().unwrap();
        assert!(!status.success(), "{signal}: {status}");
        let deadline = Instant::now() + LIMIT;
        let mut left: Vec<u32> = Vec::new();
        while Instant::now() < deadline {
            left = std::iter::once(server)
                .chain(agents.iter().copied())
                .filter(|pid| alive(*pid))
                .collect();
            if left.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let described: Vec<String> = left
            .iter()
            .map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
                    .unwrap_or_default();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                format!("{pid} [{}] {cmdline}", stat.trim())
            })
            .collect();
        for pid in &left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(*pid).unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(
            left.is_empty(),
            "after {signal}: still running {described:#?}"
        );
    }
}
