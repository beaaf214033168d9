//! Two `hodei server` replicas on one PostgreSQL database, end to end with real processes:
//! one leads, the other follows and points clients at it; `kill -9` of the leader during a
//! run, the follower takes the lease and recovers, and every job succeeds exactly once on
//! agents that reconnect on their own. The takeover time is printed, not asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{HODEI, KillOnDrop};
use hodei_testkit::postgres::scratch_database;
use hodei_testkit::wait_for;

const TOKEN: &str = "replica-test-admin-token-0123456789";
const LIMIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, name: &str, store_url: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
data_dir = "{data}"
token = "{TOKEN}"
[store]
url = "{store_url}"
[reconcile]
interval = "500ms"
[agents]
heartbeat_interval = "500ms"
"#,
            data = dir.join(name).display(),
        ),
    )
    .unwrap();
    path
}

fn replica(config: &Path, listen: &str) -> KillOnDrop {
    let log = std::fs::File::create(config.with_extension("log")).unwrap();
    KillOnDrop(
        Command::new(HODEI)
            .args(["server", "--config"])
            .arg(config)
            .args(["--listen", listen])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

async fn get_json(url: &str) -> Option<(u16, serde_json::Value)> {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

async fn is_ready(url: &str) -> bool {
    reqwest::get(format!("{url}/readyz"))
        .await
        .is_ok_and(|response| response.status().is_success())
}

async fn leader_seen_by(url: &str) -> Option<String> {
    let (status, body) = get_json(&format!("{url}/api/v1/cluster")).await?;
    (status == 200).then_some(())?;
    body["leader"].as_str().map(str::to_owned)
}

fn hodei(args: &[&str]) -> std::process::Output {
    Command::new(HODEI)
        .args(args)
        .env("HODEI_TOKEN", TOKEN)
        .env_remove("HODEI_SERVER")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_takes_over_after_kill_9_and_every_job_succeeds_exactly_once() {
    let Some(store_url) = scratch_database("replicas_failover").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let (a_listen, b_listen) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (a, b) = (format!("http://{a_listen}"), format!("http://{b_listen}"));
    let both = format!("{a},{b}");

    // A starts first and leads; B follows it.
    let mut leader = replica(&write_config(dir.path(), "a", &store_url), &a_listen);
    wait_for("A to lead", LIMIT, || async {
        is_ready(&a).await.then_some(())
    })
    .await;
    let _follower = replica(&write_config(dir.path(), "b", &store_url), &b_listen);
    wait_for("B to follow A", LIMIT, || async {
        (leader_seen_by(&b).await? == a).then_some(())
    })
    .await;
    assert!(!is_ready(&b).await, "a follower is not ready");

    // The cluster as the CLI shows it, asked of the follower first.
    let status = hodei(&["cluster", "status", "--server", &format!("{b},{a}")]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status:?}");
    assert!(shown.contains(&format!("leader {a} (epoch 1)")), "{shown}");
    assert!(shown.contains("follower"), "{shown}");
    let (_, cluster) = get_json(&format!("{a}/api/v1/cluster")).await.unwrap();
    assert_eq!(cluster["leader"], a.as_str());
    assert_eq!(cluster["epoch"], 1);
    assert_eq!(cluster["mode"], "replicas");

    // A write sent to the follower is refused, naming the leader; the CLI given the
    // follower first ends up at the leader.
    let refused = reqwest::Client::new()
        .post(format!("{b}/api/v1/jobs"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"script": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.headers()[hodei_server::LEADER_HEADER]
            .to_str()
            .unwrap(),
        a
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&a) && message.contains("follower"),
        "{message}"
    );

    // Agents that know both servers.
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{a}/api/v1/tokens"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"role": "agent", "description": "replica test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent_token = created["token"].as_str().unwrap().to_owned();
    let _agents: Vec<KillOnDrop> = (0..3)
        .map(|n| {
            let log = std::fs::File::create(dir.path().join(format!("agent-{n}.log"))).unwrap();
            KillOnDrop(
                Command::new(HODEI)
                    .args(["agent", "--server", &both, "--worker-id"])
                    .arg(format!("replica-agent-{n}"))
                    .env("HODEI_TOKEN", &agent_token)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    wait_for("three connected agents on A", LIMIT, || async {
        let (_, workers) = get_json(&format!("{a}/api/v1/workers")).await?;
        let connected = workers["workers"]
            .as_array()?
            .iter()
            .filter(|w| w["connected"] == true)
            .count();
        (connected == 3).then_some(())
    })
    .await;

    // Jobs of about half a second each, every run leaving a line in its own file; submitted
    // through the CLI with the follower named first.
    let total = 30;
    let mut ids = Vec::new();
    for i in 0..total {
        let run = runs.join(format!("{i}"));
        let script = format!("sleep 0.5; echo \"$HODEI_JOB_ID\" >> {}", run.display());
        let output = hodei(&[
            "job",
            "submit",
            "--server",
            &format!("{b},{a}"),
            "-o",
            "json",
            "--script",
            &script,
        ]);
        assert!(output.status.success(), "{output:?}");
        let job: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    wait_for("some jobs done on A", LIMIT, || async {
        let (_, list) = get_json(&format!("{a}/api/v1/jobs?state=succeeded")).await?;
        (list["jobs"].as_array()?.len() >= 3).then_some(())
    })
    .await;

    // kill -9 the leader mid-run.
    let killed = Instant::now();
    leader.0.kill().unwrap();
    let _ = leader.0.wait();
    wait_for("B to take the lease", LIMIT, || async {
        (leader_seen_by(&b).await? == b).then_some(())
    })
    .await;
    let leads = killed.elapsed();
    wait_for("B to be ready", LIMIT, || async {
        is_ready(&b).await.then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    let (_, cluster) = get_json(&format!("{b}/api/v1/cluster")).await.unwrap();
    assert_eq!(cluster["leader"], b.as_str());
    assert_eq!(cluster["epoch"], 2, "{}", lease_log(dir.path()));
    eprintln!(
        "takeover: B took the lease {:.2} s and was ready {:.2} s after kill -9 of the leader \
         (lease_ttl 5 s, renew_interval 1 s)",
        leads.as_secs_f64(),
        takeover.as_secs_f64()
    );

    // Every job ends, once, on B; the CLI given the dead leader first finds B.
    for (i, id) in ids.iter().enumerate() {
        let job = wait_for(&format!("job {i} to end"), LIMIT * 2, || async {
            let (status, job) = get_json(&format!("{b}/api/v1/jobs/{id}")).await?;
            (status == 200
                && job["state"] != "queued"
                && job["state"] != "assigned"
                && job["state"] != "running")
                .then_some(job)
        })
        .await;
        assert_eq!(
            job["state"],
            "succeeded",
            "job {i}: {job}\n{}",
            mentions(dir.path(), id)
        );
        let lines = std::fs::read_to_string(runs.join(format!("{i}"))).unwrap();
        assert_eq!(
            lines,
            format!("{id}\n"),
            "job {i} ran exactly once: {job}\n{}",
            mentions(dir.path(), id)
        );
    }
    let shown = hodei(&["job", "get", &ids[0], "--server", &both, "-o", "json"]);
    assert!(shown.status.success(), "{shown:?}");
    // B kept the lease all along: it never stepped down and took it again.
    let status = hodei(&["cluster", "status", "--server", &both]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains(&format!("leader {b} (epoch 2)")),
        "{shown}\n{}",
        lease_log(dir.path())
    );
}

/// Every log line naming `what`, for a failure message.
fn mentions(dir: &Path, what: &str) -> String {
    let mut found = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "log") {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            for line in log.lines().filter(|line| line.contains(what)) {
                found.push_str(&format!("{}: {line}\n", path.display()));
            }
        }
    }
    found
}

/// What the replicas logged about the lease, for a failure message.
fn lease_log(dir: &Path) -> String {
    ["a", "b"]
        .iter()
        .map(|name| {
            let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|line| {
                    line.contains("lease") || line.contains("lead") || line.contains("follow")
                })
                .collect();
            format!("--- {name}:\n{}", lines.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}
