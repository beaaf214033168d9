//! `hodei simulate` and `hodei simulate generate` through the real binary: a generated
//! trace replayed against two of the shipped configurations, JSON in the order given, and
//! bad input refused with a message naming it and a non-zero exit.

use std::path::Path;
use std::process::{Command, Output};

fn hodei(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hodei"))
        .args(args)
        .output()
        .expect("the hodei binary runs")
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/simulate")
}

#[test]
fn a_generated_trace_replays_against_two_configurations_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("day.jsonl");
    let trace = trace.to_str().unwrap();
    let out = hodei(&[
        "simulate",
        "generate",
        "--profile",
        "ci-day",
        "--tenants",
        "4",
        "--jobs",
        "400",
        "--seed",
        "9",
        "-o",
        trace,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = std::fs::read_to_string(trace).unwrap();
    assert_eq!(lines.lines().count(), 400);
    assert!(lines.lines().next().unwrap().starts_with('{'), "JSON Lines");

    let idle = examples().join("idle-count.toml");
    let hodei_config = examples().join("hodei.toml");
    let out = hodei(&[
        "simulate",
        "--trace",
        trace,
        "--config",
        idle.to_str().unwrap(),
        "--config",
        hodei_config.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["config"], "idle-count");
    assert_eq!(reports[1]["config"], "hodei");
    for report in reports {
        assert_eq!(report["jobs"], 400);
        assert!(report["wait_seconds"]["p95"].as_f64().is_some());
        assert!(report["idle_worker_seconds"].as_f64().unwrap() > 0.0);
        let met = report["sla_met_ratio"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&met));
        assert_eq!(report["tenant_shares"].as_object().unwrap().len(), 4);
    }
    // The buffer of 40 kept for half an hour idles more than 15 kept for a minute.
    assert!(
        reports[0]["idle_worker_seconds"].as_f64().unwrap()
            > reports[1]["idle_worker_seconds"].as_f64().unwrap()
    );

    let out = hodei(&[
        "simulate",
        "--trace",
        trace,
        "--config",
        idle.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("idle-count") && table.contains("wait p95 (s)"),
        "{table}"
    );

    // -o html: one page, two inline plots per configuration, no script.
    let out = hodei(&[
        "simulate",
        "--trace",
        trace,
        "--config",
        idle.to_str().unwrap(),
        "--config",
        hodei_config.to_str().unwrap(),
        "-o",
        "html",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert_eq!(page.matches("<svg").count(), 4);
    assert!(page.contains("<h2>idle-count</h2>") && page.contains("<h2>hodei</h2>"));
    assert!(page.contains("wait p95 (s)"), "the side-by-side table");
    assert!(!page.contains("<script"));
}

#[test]
fn bad_input_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("bad.csv");
    std::fs::write(&trace, "submit_offset_s,tenant,run_s\n1,a,5\n2,a,soon\n").unwrap();
    let config = examples().join("hodei.toml");
    let out = hodei(&[
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("run_s"), "{err}");

    let bad_config = dir.path().join("bad.toml");
    std::fs::write(
        &bad_config,
        "[[pool]]\nname = \"p\"\nprovider = \"local\"\nkind = \"dynamic\"\nmin = 5\nmax = 2\n",
    )
    .unwrap();
    let out = hodei(&[
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--config",
        bad_config.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool[p].min"), "{err}");

    let out = hodei(&["simulate", "generate", "--profile", "weekend"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("profile"));
}
