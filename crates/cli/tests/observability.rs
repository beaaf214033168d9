//! Observability with Prometheus's own tools: `promtool check metrics` on a live server's
//! `/metrics` in both formats, a real Prometheus scraping a server on loopback, the alert
//! rules' unit tests, and the Grafana dashboards' expressions checked against a live server.
//! `promtool` and `prometheus` come from Debian's `prometheus` package (`scripts/test`
//! installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use hodei_core::{JobSpec, JobState};
use hodei_server::Server;
use hodei_testkit::wait_for;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn script(text: &str) -> JobSpec {
    JobSpec::new(hodei_core::Command::Script(text.to_owned()))
}

/// A server with one local worker that has run `jobs` jobs to success.
async fn server_after_jobs(dir: &Path, jobs: usize) -> Server {
    let server = start_anywhere(config(dir, 1)).await;
    let workers = wait_for_registered_workers(&server, 1).await;
    wait_for_connected(&server, &workers[0]).await;
    let mut ids = Vec::new();
    for i in 0..jobs {
        let job = server
            .jobs()
            .submit(script(&format!("echo job-{i}")))
            .await
            .unwrap();
        ids.push(job.id);
    }
    for id in &ids {
        let job = wait_for("job to end", LIMIT, || async {
            server
                .jobs()
                .get(id)
                .await
                .unwrap()
                .filter(|j| j.state.is_terminal())
        })
        .await;
        assert_eq!(job.state, JobState::Succeeded, "{:?}", job.reason);
    }
    server
}

/// `/metrics` as a scraper that sends `accept` sees it: (content type, body).
async fn scrape(server: &Server, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(format!("{}/metrics", server.url()));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success());
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, response.text().await.unwrap())
}

/// Runs `promtool` with `args`, `stdin` fed in; (success, stdout + stderr).
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The families named in a `# HELP` line.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// The sample names of exposition text (histograms give `_bucket`, `_sum`, `_count`).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The metric names in the README's Metrics table (the backticked first column).
fn readme_metrics() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let section = readme
        .split("\n### Metrics\n")
        .nth(1)
        .expect("README has a Metrics section");
    let section = section.split("\n#").next().unwrap();
    let mut names = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let first_column = row.split('|').nth(1).unwrap();
        for (i, piece) in first_column.split('`').enumerate() {
            if i % 2 == 1 {
                names.insert(piece.to_owned());
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_in_both_formats_and_match_the_readme() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_after_jobs(dir.path(), 3).await;

    // No Accept header, and what `promtool`/old scrapers send: the classic text format.
    for accept in [None, Some("text/plain;version=0.0.4")] {
        let (content_type, text) = scrape(&server, accept).await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(!text.contains("# EOF"), "{text}");
        let (ok, problems) = promtool(&["check", "metrics"], &text);
        assert!(ok && problems.trim().is_empty(), "{problems}\n{text}");
    }
    // What Prometheus 2.x sends: OpenMetrics is preferred.
    let (content_type, openmetrics) = scrape(
        &server,
        Some(
            "application/openmetrics-text;version=1.0.0;q=0.5,\
             text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
        ),
    )
    .await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    // (promtool 2.42 reads the classic format only, so it cannot check this one.)
    assert!(openmetrics.ends_with("# EOF\n"));
    assert!(openmetrics.contains("# TYPE hodei_jobs_finished counter\n"));

    // Every family the README documents is there (at zero when nothing happened yet), with
    // HELP, and every family exposed is documented.
    let (_, text) = scrape(&server, None).await;
    let exposed = families(&text);
    let documented = readme_metrics();
    assert!(documented.len() > 30, "{documented:?}");
    let missing: Vec<_> = documented.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "documented but not exposed: {missing:?}"
    );
    let undocumented: Vec<_> = exposed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exposed but not in the README: {undocumented:?}"
    );
    for name in [
        "hodei_reconciler_actions_total",
        "hodei_worker_provisioning_failures_total",
        "hodei_pool_provisioning_failures_total",
    ] {
        assert!(exposed.contains(name), "{name} missing:\n{text}");
    }
    server.shutdown().await.unwrap();
}

/// A free port on 127.0.0.1 for a child process to bind.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One instant query against Prometheus's HTTP API: the first result's value, if any.
async fn query(prometheus: &str, expr: &str) -> Option<f64> {
    let response: serde_json::Value = reqwest::Client::new()
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let value = response["data"]["result"][0]["value"][1].as_str()?;
    value.parse().ok().filter(|v: &f64| v.is_finite())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_after_jobs(dir.path(), 5).await;
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: hodei\n    static_configs:\n      - targets: ['{}']\n",
            server.addr()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed (scripts/test installs Debian's prometheus package)"),
    );
    let prometheus = format!("http://127.0.0.1:{port}");
    let limit = Duration::from_secs(60);

    let up = wait_for("prometheus to scrape hodei", limit, || async {
        query(&prometheus, "up{job=\"hodei\"}")
            .await
            .filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(up, 1.0);
    let succeeded = wait_for("the finished-jobs counter", limit, || async {
        query(
            &prometheus,
            "sum(hodei_jobs_finished_total{state=\"succeeded\"})",
        )
        .await
    })
    .await;
    assert_eq!(succeeded, 5.0);
    // Rates need two scrapes in the window; the quantile is of the 5 jobs' queue waits.
    let p95 = wait_for("a queue-wait quantile", limit, || async {
        query(
            &prometheus,
            "histogram_quantile(0.95, sum by (le) (hodei_queue_wait_seconds_bucket))",
        )
        .await
    })
    .await;
    assert!(p95 > 0.0 && p95 < 60.0, "p95 queue wait {p95}");
    server.shutdown().await.unwrap();
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = deploy_dir().join("prometheus/alerts.yml");
    let tests = deploy_dir().join("prometheus/alerts.test.yml");
    let (ok, output) = promtool(&["check", "rules", rules.to_str().unwrap()], "");
    assert!(ok, "{output}");
    let (ok, output) = promtool(&["test", "rules", tests.to_str().unwrap()], "");
    assert!(ok, "{output}");
    // Every alert has a runbook line.
    let text = std::fs::read_to_string(&rules).unwrap();
    let alerts = text.matches("- alert: ").count();
    assert!(alerts >= 10, "{alerts} alerts");
    assert_eq!(text.matches("runbook: ").count(), alerts, "{text}");
}

/// Every `expr` of every panel of every dashboard, with Grafana's variables given values.
fn dashboard_expressions() -> Vec<(String, String)> {
    let mut found = Vec::new();
    let dir = deploy_dir().join("grafana");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 4, "{paths:?}");
    for path in paths {
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let templating = dashboard["templating"]["list"].as_array().unwrap();
        assert!(
            templating
                .iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "{name} has no templated Prometheus datasource"
        );
        // A query variable's `label_values(metric, label)`: its metric alone is PromQL too.
        for variable in templating.iter().filter(|v| v["type"] == "query") {
            let definition = variable["definition"].as_str().unwrap();
            let metric = definition
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or_else(|| panic!("{name}: unexpected variable query {definition}"));
            found.push((
                format!("{name}: variable {}", variable["name"]),
                metric.to_owned(),
            ));
        }
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{name}");
        for panel in panels {
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}: {}",
                panel["title"]
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: {}", panel["title"]);
            for target in targets {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "5m")
                    .replace("$__range", "1d")
                    .replace("$__interval", "1m")
                    .replace("$pool", ".*")
                    .replace("$tenant", ".*")
                    .replace("$queue", ".*");
                found.push((format!("{name}: {}", panel["title"]), expr));
            }
        }
    }
    found
}

/// The metric names an expression uses: `hodei_*` and `worker_*` identifiers outside label
/// matchers, strings and `by`/`without` clauses (where label names such as `worker_type` are).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut stripped = String::new();
    let mut depth = 0;
    let mut quoted = false;
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            _ if quoted || depth > 0 => {}
            _ => stripped.push(c),
        }
    }
    let mut names = BTreeSet::new();
    let mut in_grouping = false;
    let mut previous = "";
    for token in
        stripped.split_inclusive(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
    {
        let word =
            token.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        if matches!(
            previous,
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        ) && token.ends_with('(')
        {
            in_grouping = true;
        }
        if !in_grouping && (word.starts_with("hodei_") || word.starts_with("worker_")) {
            names.insert(word.to_owned());
        }
        if in_grouping && token.ends_with(')') {
            in_grouping = false;
        }
        if !word.is_empty() {
            previous = word;
        }
    }
    names
}

#[test]
fn metric_names_skip_labels_and_groupings() {
    let names = metric_names(
        "sum by (worker_type, pool) (rate(worker_registration_operations_total{worker_type=\"static\"}[5m])) \
         / on (pool) group_left (worker_type) hodei_pool_max_workers",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "hodei_pool_max_workers",
            "worker_registration_operations_total"
        ]
    );
}

/// Every alert's `expr` in deploy/prometheus/alerts.yml (promtool parses them; this is for
/// their metric names).
fn alert_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy_dir().join("prometheus/alerts.yml")).unwrap();
    let rules: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let mut found = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            found.push((
                format!("alert {}", rule["alert"]),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_expressions_name_only_exposed_metrics() {
    let expressions = dashboard_expressions();
    // promtool parses PromQL when it checks recording rules: one rule per panel target.
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, (_, expr)) in expressions.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboards.rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let (ok, output) = promtool(&["check", "rules", file.to_str().unwrap()], "");
    assert!(ok, "{output}\n{rules}");

    let server = server_after_jobs(dir.path(), 1).await;
    let (_, text) = scrape(&server, None).await;
    let exposed = sample_names(&text);
    for (panel, expr) in expressions.iter().chain(&alert_expressions()) {
        let names = metric_names(expr);
        assert!(
            !names.is_empty() || expr.starts_with("up{"),
            "{panel}: no metric in {expr}"
        );
        for name in names {
            assert!(
                exposed.contains(&name),
                "{panel}: {name} is not exposed ({expr})"
            );
        }
    }
    server.shutdown().await.unwrap();
}

/// Runs a `hodei server` process with `log_section` in its file and one local worker until
/// the worker is up, then stops it with SIGTERM: (its stderr, its agents' log files).
async fn run_server_process(dir: &Path, log_section: &str) -> (String, Vec<String>) {
    let config = dir.join("hodei.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\ntoken = \"observability-test-token-0123\"\n\
             {log_section}\n[local]\nagent_program = \"{hodei}\"\n\
             [[pool]]\nname = \"default\"\nprovider = \"local\"\nsize = 1\n",
            data = dir.join("data").display(),
            hodei = HODEI,
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let log_path = dir.join("server.log");
    let mut child = KillOnDrop(
        Command::new(HODEI)
            .args(["server", "--config"])
            .arg(&config)
            .args(["--listen", &listen])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://{listen}");
    wait_for("a connected worker", LIMIT, || async {
        let workers: serde_json::Value = reqwest::Client::new()
            .get(format!("{url}/api/v1/workers"))
            .bearer_auth("observability-test-token-0123")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (workers["workers"].as_array()?.len() == 1).then_some(())
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    // The server stops its local agent before it exits: a blocking wait is bounded by that.
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let agent_logs = std::fs::read_dir(dir.join("data/local"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    (std::fs::read_to_string(&log_path).unwrap(), agent_logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_files_have_no_colour_and_json_is_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (server_log, agent_logs) = run_server_process(dir.path(), "").await;
    assert!(server_log.contains("INFO"), "{server_log}");
    assert!(
        !server_log.contains('\u{1b}'),
        "colour codes in a file: {server_log}"
    );
    assert!(!agent_logs.is_empty());
    for log in &agent_logs {
        assert!(
            !log.contains('\u{1b}'),
            "colour codes in an agent's log: {log}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let (server_log, _) = run_server_process(dir.path(), "[log]\nformat = \"json\"").await;
    let lines: Vec<&str> = server_log.lines().collect();
    assert!(lines.len() > 3, "{server_log}");
    for line in lines {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(object["level"].is_string(), "{line}");
        assert!(object["timestamp"].is_string(), "{line}");
        assert!(object["fields"].is_object(), "{line}");
    }
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The output of job `id` once it ended.
async fn output_when_done(server: &Server, id: &hodei_core::JobId) -> String {
    wait_for("job to end", LIMIT, || async {
        server
            .jobs()
            .get(id)
            .await
            .unwrap()
            .filter(|j| j.state.is_terminal())
    })
    .await;
    let chunks = server.jobs().logs(id, 0, 1000).await.unwrap();
    chunks
        .iter()
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitters_traceparent_reaches_the_job_and_comes_back() {
    use hodei_proto::v1::job_service_client::JobServiceClient;
    use hodei_proto::v1::{self, JobSpec as WireSpec};

    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(config(dir.path(), 1)).await;
    wait_for_registered_workers(&server, 1).await;
    let http = reqwest::Client::new();
    let submit = |traceparent: &str| {
        http.post(format!("{}/api/v1/jobs", server.url()))
            .bearer_auth(server.token())
            .header("traceparent", traceparent)
            .json(&serde_json::json!({"script": "echo \"tp=${TRACEPARENT:-none}\""}))
            .send()
    };

    // REST: honoured and returned.
    let response = submit(TRACEPARENT).await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["traceparent"], TRACEPARENT);
    let job: serde_json::Value = response.json().await.unwrap();
    let id = hodei_core::JobId::new(job["id"].as_str().unwrap()).unwrap();
    assert_eq!(
        output_when_done(&server, &id).await,
        format!("tp={TRACEPARENT}\n")
    );
    // An invalid one is ignored, as W3C Trace Context asks: the job runs without it.
    let response = submit("00-not-a-trace-01").await.unwrap();
    assert_eq!(response.status(), 201);
    assert!(response.headers().get("traceparent").is_none());
    let job: serde_json::Value = response.json().await.unwrap();
    let id = hodei_core::JobId::new(job["id"].as_str().unwrap()).unwrap();
    assert_eq!(output_when_done(&server, &id).await, "tp=none\n");

    // gRPC metadata: the same.
    let channel = tonic::transport::Endpoint::from_shared(server.url().to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = hodei_proto::BearerToken::new(server.token()).unwrap();
    let mut client = JobServiceClient::with_interceptor(channel, token);
    let mut request = tonic::Request::new(v1::SubmitJobRequest {
        allow_pending: false,
        spec: Some(WireSpec {
            script: "echo \"tp=${TRACEPARENT:-none}\"".into(),
            ..WireSpec::default()
        }),
    });
    request
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    let response = client.submit_job(request).await.unwrap();
    assert_eq!(response.metadata().get("traceparent").unwrap(), TRACEPARENT);
    let id = hodei_core::JobId::new(response.into_inner().job.unwrap().id).unwrap();
    assert_eq!(
        output_when_done(&server, &id).await,
        format!("tp={TRACEPARENT}\n")
    );
    server.shutdown().await.unwrap();
}
