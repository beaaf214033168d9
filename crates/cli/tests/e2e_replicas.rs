//! `hodei server` replicas on one PostgreSQL database, end to end with real processes on
//! loopback, and the failures they survive: `kill -9` of the leader during a 500-job run (the
//! follower takes the lease and recovers, and every job succeeds exactly once on agents that
//! reconnect on their own); the leader cut off from PostgreSQL (a proxy inside the test stops
//! passing its packets: it steps down before the other replica leads); a rolling restart of
//! every replica (no job lost or failed, the CLI waiting out the hand-over). Takeover times
//! are printed, not asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Job scripts append their job id to a file of their own when they start, so a job started
/// twice leaves two lines.
fn job_script(runs: &Path, i: usize, sleep: &str) -> String {
    format!(
        "echo \"$HODEI_JOB_ID\" >> {}; sleep {sleep}",
        runs.join(i.to_string()).display()
    )
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
[jobs]
allow_pending = true
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

/// Agents that know every replica.
fn agents(dir: &Path, servers: &str, token: &str, count: usize) -> Vec<KillOnDrop> {
    (0..count)
        .map(|n| {
            let log = std::fs::File::create(dir.join(format!("agent-{n}.log"))).unwrap();
            KillOnDrop(
                // A work directory of its own: an agent that starts kills the jobs it
                // finds recorded in its work directory, left by an earlier agent.
                Command::new(HODEI)
                    .args(["agent", "--server", servers, "--worker-id"])
                    .arg(format!("replica-agent-{n}"))
                    .arg("--work-dir")
                    .arg(dir.join(format!("agent-{n}")))
                    .env("HODEI_TOKEN", token)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )
        })
        .collect()
}

async fn agent_token(leader: &str) -> String {
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{leader}/api/v1/tokens"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"role": "agent", "description": "replica test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["token"].as_str().unwrap().to_owned()
}

async fn connected_workers(url: &str) -> Option<usize> {
    let (_, workers) = get_json(&format!("{url}/api/v1/workers")).await?;
    Some(
        workers["workers"]
            .as_array()?
            .iter()
            .filter(|w| w["connected"] == true)
            .count(),
    )
}

/// Submits through the REST API of `leader`, eight at a time; the job ids in the order of
/// `scripts`.
async fn submit_all(leader: &str, scripts: &[String]) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut ids = vec![String::new(); scripts.len()];
    for (chunk_index, chunk) in scripts.chunks(8).enumerate() {
        let mut submissions = tokio::task::JoinSet::new();
        for (offset, script) in chunk.iter().enumerate() {
            let (client, url, script) = (
                client.clone(),
                format!("{leader}/api/v1/jobs"),
                script.clone(),
            );
            submissions.spawn(async move {
                let job: serde_json::Value = client
                    .post(url)
                    .bearer_auth(TOKEN)
                    .json(&serde_json::json!({ "script": script }))
                    .send()
                    .await
                    .unwrap()
                    .error_for_status()
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (offset, job["id"].as_str().unwrap().to_owned())
            });
        }
        while let Some(submitted) = submissions.join_next().await {
            let (offset, id) = submitted.unwrap();
            ids[chunk_index * 8 + offset] = id;
        }
    }
    ids
}

async fn count_in_state(url: &str, state: &str) -> Option<usize> {
    let (status, list) = get_json(&format!("{url}/api/v1/jobs?state={state}&limit=10000")).await?;
    (status == 200).then_some(())?;
    Some(list["jobs"].as_array()?.len())
}

/// Waits for every job to end on `leader`, then checks each succeeded and started exactly
/// once (one line in its run file). Prints how many attempts the jobs took.
async fn check_each_succeeded_once(dir: &Path, runs: &Path, leader: &str, ids: &[String]) {
    wait_for("every job to end", LIMIT * 3, || async {
        let ended = count_in_state(leader, "succeeded,failed,cancelled").await?;
        (ended >= ids.len()).then_some(())
    })
    .await;
    let mut attempts = std::collections::BTreeMap::<u64, usize>::new();
    for (i, id) in ids.iter().enumerate() {
        let (status, job) = get_json(&format!("{leader}/api/v1/jobs/{id}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "job {i}: {job}");
        assert_eq!(
            job["state"],
            "succeeded",
            "job {i}: {job}\n{}",
            mentions(dir, id)
        );
        *attempts
            .entry(job["attempts"].as_u64().unwrap_or(0))
            .or_default() += 1;
        let lines = std::fs::read_to_string(runs.join(i.to_string())).unwrap_or_default();
        assert_eq!(
            lines,
            format!("{id}\n"),
            "job {i} started exactly once: {job}\n{}",
            mentions(dir, id)
        );
    }
    eprintln!(
        "{} jobs succeeded, each started once; jobs by attempts: {attempts:?}",
        ids.len()
    );
}

/// The members a replica lists, as (URL, role), leader first.
async fn members_seen_by(url: &str) -> Option<Vec<(String, &'static str)>> {
    let (status, body) = get_json(&format!("{url}/api/v1/cluster")).await?;
    (status == 200).then_some(())?;
    let mut members: Vec<(String, &'static str)> = body["members"]
        .as_array()?
        .iter()
        .map(|m| {
            let role = if m["role"] == "leader" {
                "leader"
            } else {
                "follower"
            };
            (m["url"].as_str().unwrap_or_default().to_owned(), role)
        })
        .collect();
    members.sort_by_key(|(url, role)| (*role != "leader", url.clone()));
    Some(members)
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
    // Every member is listed, by the leader and the follower alike, from the members table.
    for asked in [&a, &b] {
        wait_for("both members listed", LIMIT, || async {
            (members_seen_by(asked).await? == [(a.clone(), "leader"), (b.clone(), "follower")])
                .then_some(())
        })
        .await;
    }

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

    // 500 short jobs, submitted before any agent connects so that the kill comes mid-run: a
    // few through the CLI with the follower named first, the rest through the API.
    let total = 500;
    let scripts: Vec<String> = (0..total).map(|i| job_script(&runs, i, "0.01")).collect();
    let mut ids = Vec::new();
    for script in &scripts[..3] {
        let output = hodei(&[
            "job",
            "submit",
            "--server",
            &format!("{b},{a}"),
            "-o",
            "json",
            "--script",
            script,
        ]);
        assert!(output.status.success(), "{output:?}");
        let job: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    ids.extend(submit_all(&a, &scripts[3..]).await);
    let token = agent_token(&a).await;
    let _agents = agents(dir.path(), &both, &token, 4);
    wait_for("a hundred jobs done on A", LIMIT * 2, || async {
        (count_in_state(&a, "succeeded").await? >= 100).then_some(())
    })
    .await;

    // kill -9 the leader mid-run.
    let done_at_kill = count_in_state(&a, "succeeded").await.unwrap_or(0);
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
    let ready = killed.elapsed();
    wait_for("the four agents on B", LIMIT, || async {
        (connected_workers(&b).await? == 4).then_some(())
    })
    .await;
    let reconnected = killed.elapsed();
    let done_then = count_in_state(&b, "succeeded").await.unwrap_or(0);
    let (_, cluster) = get_json(&format!("{b}/api/v1/cluster")).await.unwrap();
    assert_eq!(cluster["leader"], b.as_str());
    assert_eq!(cluster["epoch"], 2, "{}", lease_log(dir.path()));
    eprintln!(
        "takeover: after kill -9 of the leader, B took the lease in {:.2} s, was ready in {:.2} s, \
         and had its four agents back in {:.2} s ({done_at_kill} of {total} jobs done at the kill, \
         {done_then} then; \
         default [cluster] lease)",
        leads.as_secs_f64(),
        ready.as_secs_f64(),
        reconnected.as_secs_f64(),
    );

    // Every job ends, once, on B; the CLI given the dead leader first finds B.
    check_each_succeeded_once(dir.path(), &runs, &b, &ids).await;
    let shown = hodei(&["job", "get", &ids[0], "--server", &both, "-o", "json"]);
    assert!(shown.status.success(), "{shown:?}");
    // The dead leader drops out of the members a few leases after its last heartbeat.
    wait_for("A to drop out of the members", LIMIT, || async {
        (members_seen_by(&b).await? == [(b.clone(), "leader")]).then_some(())
    })
    .await;
    // B kept the lease all along: it never stepped down and took it again.
    let status = hodei(&["cluster", "status", "--server", &both]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains(&format!("leader {b} (epoch 2)")),
        "{shown}\n{}",
        lease_log(dir.path())
    );
}

/// A TCP proxy to PostgreSQL that the test can cut: from then on it passes no byte either
/// way and holds every connection open, old and new, as a network that drops packets does
/// (the hardest case: nothing tells the leader the database is gone).
struct Proxy {
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let cutting = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cut = cutting.clone();
                tokio::spawn(async move {
                    if cut.load(Ordering::SeqCst) {
                        return hold(client).await;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pass(client_read, server_write, cut.clone()),
                        pass(server_read, client_write, cut),
                    );
                });
            }
        });
        Self { addr, cut }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

/// Copies until the connection closes; once cut, drops what it reads and holds both ends.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if cut.load(Ordering::SeqCst) {
            return hold((from, to)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Keeps `connection` open and silent for good.
async fn hold<T>(connection: T) {
    std::future::pending::<()>().await;
    drop(connection);
}

/// The store URL with its host and port replaced by `addr`.
fn through(store_url: &str, addr: std::net::SocketAddr) -> String {
    let mut url = reqwest::Url::parse(store_url).unwrap();
    url.set_ip_host(addr.ip()).unwrap();
    url.set_port(Some(addr.port())).unwrap();
    url.to_string()
}

fn upstream(store_url: &str) -> std::net::SocketAddr {
    let url = reqwest::Url::parse(store_url).unwrap();
    let host = url.host_str().unwrap();
    let port = url.port().unwrap_or(5432);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .unwrap()
        .next()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_postgresql_steps_down_before_the_other_replica_leads() {
    let Some(store_url) = scratch_database("replicas_partition").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let proxy = Proxy::start(upstream(&store_url)).await;
    let (a_listen, b_listen) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (a, b) = (format!("http://{a_listen}"), format!("http://{b_listen}"));
    let both = format!("{a},{b}");

    // A reaches the database through the proxy, B directly.
    let _a = replica(
        &write_config(dir.path(), "a", &through(&store_url, proxy.addr)),
        &a_listen,
    );
    wait_for("A to lead", LIMIT, || async {
        is_ready(&a).await.then_some(())
    })
    .await;
    let _b = replica(&write_config(dir.path(), "b", &store_url), &b_listen);
    wait_for("B to follow A", LIMIT, || async {
        (leader_seen_by(&b).await? == a).then_some(())
    })
    .await;
    let token = agent_token(&a).await;
    let _agents = agents(dir.path(), &both, &token, 2);
    wait_for("two connected agents on A", LIMIT, || async {
        (connected_workers(&a).await? == 2).then_some(())
    })
    .await;
    let total = 30;
    let scripts: Vec<String> = (0..total).map(|i| job_script(&runs, i, "0.3")).collect();
    let ids = submit_all(&a, &scripts).await;
    wait_for("a few jobs done on A", LIMIT, || async {
        (count_in_state(&a, "succeeded").await? >= 4).then_some(())
    })
    .await;

    // Cut A off. By the time B leads, A must have stepped down: its lease as it counts it
    // ends before the database's.
    proxy.cut();
    let cut = Instant::now();
    let a_log = dir.path().join("a.log");
    let stepped_down = || {
        std::fs::read_to_string(&a_log)
            .unwrap_or_default()
            .contains("lost the leader lease, stepping down")
    };
    let mut a_stopped = None;
    let b_leads = loop {
        if a_stopped.is_none() && stepped_down() {
            a_stopped = Some(cut.elapsed());
        }
        if leader_seen_by(&b).await.as_deref() == Some(b.as_str()) {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < LIMIT,
            "timed out waiting for B to lead\n{}",
            lease_log(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        stepped_down(),
        "B leads while A never said it stepped down\n{}",
        lease_log(dir.path())
    );
    let a_stopped = a_stopped.unwrap_or(b_leads);
    wait_for("the two agents on B", LIMIT, || async {
        (connected_workers(&b).await? == 2).then_some(())
    })
    .await;
    eprintln!(
        "partition: A stepped down {:.2} s after it was cut off from PostgreSQL, B led {:.2} s \
         after, and had the agents back {:.2} s after",
        a_stopped.as_secs_f64(),
        b_leads.as_secs_f64(),
        cut.elapsed().as_secs_f64(),
    );

    // Every job ends on B, each started once; the CLI given A first is sent on to B.
    check_each_succeeded_once(dir.path(), &runs, &b, &ids).await;
    let more = job_script(&runs, total, "0");
    let output = hodei(&[
        "job", "submit", "--server", &both, "-o", "json", "--script", &more,
    ]);
    assert!(output.status.success(), "{output:?}");
    let (_, cluster) = get_json(&format!("{a}/api/v1/cluster")).await.unwrap();
    assert_ne!(
        cluster["leader"],
        a.as_str(),
        "A does not call itself the leader: {cluster}"
    );

    // Given A alone, which knows no leader now, the CLI waits as long as it is told to,
    // saying so, then fails naming the server.
    let output = hodei(&[
        "job",
        "submit",
        "--server",
        &a,
        "--leader-wait",
        "1s",
        "--script",
        "true",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(stderr.contains("hodei: no leader yet"), "{stderr}");
    assert!(
        stderr.contains(&format!("no leader among {a} after waiting")),
        "{stderr}"
    );
}

/// Stops a replica as an operator does (SIGTERM); `wait` for it to exit.
fn stop(replica: &mut KillOnDrop, wait: bool) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(replica.0.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    if wait {
        let _ = replica.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_replica_loses_and_fails_no_job() {
    let Some(store_url) = scratch_database("replicas_rolling").await else {
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
    let (a_config, b_config) = (
        write_config(dir.path(), "a", &store_url),
        write_config(dir.path(), "b", &store_url),
    );
    let mut replica_a = replica(&a_config, &a_listen);
    wait_for("A to lead", LIMIT, || async {
        is_ready(&a).await.then_some(())
    })
    .await;
    let mut replica_b = replica(&b_config, &b_listen);
    wait_for("B to follow A", LIMIT, || async {
        (leader_seen_by(&b).await? == a).then_some(())
    })
    .await;
    let token = agent_token(&a).await;
    let _agents = agents(dir.path(), &both, &token, 3);
    wait_for("three connected agents on A", LIMIT, || async {
        (connected_workers(&a).await? == 3).then_some(())
    })
    .await;

    // Jobs go in through the CLI all along, one at a time, while the replicas restart: each
    // submission must succeed, waiting out a hand-over if need be.
    let total = 60;
    let scripts: Vec<String> = (0..total).map(|i| job_script(&runs, i, "0.2")).collect();
    let submitter = {
        let (servers, scripts) = (both.clone(), scripts.clone());
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            let mut waited = 0;
            for script in &scripts {
                let output = hodei(&[
                    "job", "submit", "--server", &servers, "-o", "json", "--script", script,
                ]);
                assert!(output.status.success(), "{output:?}");
                if String::from_utf8_lossy(&output.stderr).contains("no leader yet") {
                    waited += 1;
                }
                let job: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
                ids.push(job["id"].as_str().unwrap().to_owned());
                std::thread::sleep(Duration::from_millis(50));
            }
            (ids, waited)
        })
    };
    wait_for("a few jobs done", LIMIT, || async {
        (count_in_state(&a, "succeeded").await? >= 5).then_some(())
    })
    .await;

    // The follower first, then the leader, which hands over to B on SIGTERM.
    stop(&mut replica_b, true);
    replica_b = replica(&b_config, &b_listen);
    wait_for("B back, following A", LIMIT, || async {
        (leader_seen_by(&b).await? == a).then_some(())
    })
    .await;
    let stopped = Instant::now();
    stop(&mut replica_a, false);
    wait_for("B to lead", LIMIT, || async {
        is_ready(&b).await.then_some(())
    })
    .await;
    let handed_over = stopped.elapsed();
    let _ = replica_a.0.wait();
    replica_a = replica(&a_config, &a_listen);
    wait_for("A back, following B", LIMIT, || async {
        (leader_seen_by(&a).await? == b).then_some(())
    })
    .await;
    eprintln!(
        "rolling restart: B led {:.2} s after the leader was sent SIGTERM",
        handed_over.as_secs_f64()
    );

    let (ids, waited) = submitter.join().unwrap();
    eprintln!("rolling restart: {waited} of {total} submissions waited for a leader");
    check_each_succeeded_once(dir.path(), &runs, &b, &ids).await;
    wait_for("the three agents on B", LIMIT, || async {
        (connected_workers(&b).await? == 3).then_some(())
    })
    .await;
    let (_, cluster) = get_json(&format!("{b}/api/v1/cluster")).await.unwrap();
    eprintln!("rolling restart: the cluster at the end: {cluster}");
    drop((replica_a, replica_b));
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
