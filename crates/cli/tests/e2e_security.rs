//! The attack surface, end to end with a real server and real agents: a job that hunts for
//! credentials, impostor worker sessions, revocation of an open session, concurrent pool
//! creates, the small protocol items, and a bounded connection flood (loopback only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use hodei_core::{JobSpec, JobState, PoolSpec, ProviderKind, WorkerId};
use hodei_proto::BearerToken;
use hodei_proto::v1::scheduler_service_client::SchedulerServiceClient;
use hodei_proto::v1::{self, agent_message, server_message};
use hodei_server::Server;
use hodei_testkit::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

// Built from two parts so that no text file holds it whole: the hunting job greps readable
// files (a checkout of this repository under /tmp included) for it.
const ADMIN: &str = concat!("SEK", "RIT-admin-token-0123456789");

fn secure_config(dir: &std::path::Path, workers: u32) -> hodei_server::ServerConfig {
    let mut config = config(dir, workers);
    config.token = Some(ADMIN.into());
    config
}

async fn wait_job(server: &Server, id: &hodei_core::JobId) -> hodei_core::Job {
    wait_for(&format!("job {id} to end"), LIMIT, || async {
        server
            .jobs()
            .get(id)
            .await
            .unwrap()
            .filter(|job| job.state.is_terminal())
    })
    .await
}

async fn output_of(server: &Server, id: &hodei_core::JobId) -> String {
    let chunks = server.jobs().logs(id, 0, 100_000).await.unwrap();
    chunks
        .iter()
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect()
}

/// The job prints everything it can find that could hold a credential: its environment,
/// every readable `/proc/*/environ` and `/proc/*/cmdline`, and whatever looks like a token
/// in the files it can read where Hodei or the system keeps things. The patterns are built
/// at run time so the script's own command line does not match them.
fn hunting_script(data_dir: &std::path::Path) -> String {
    format!(
        r#"id
echo "== env"; env
echo "== environ"
for f in /proc/[0-9]*/environ; do tr '\0' '\n' < "$f" 2>/dev/null; done
echo "== cmdline"
for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f" 2>/dev/null; echo; done
echo "== files"
a=SEK; b=RIT; h=hodei
grep -rIoh -e "$a$b[-a-z0-9]*" -e "${{h}}_[0-9a-f]\{{12\}}_[0-9a-f]*" /tmp /var/tmp /root /home /etc /run "{}" 2>/dev/null
echo "== done"
"#,
        data_dir.display()
    )
}

/// What must never appear in what a job can see.
fn secrets(server: &Server, extra: &[&str]) -> Vec<String> {
    let mut secrets: Vec<String> = vec![ADMIN.to_owned()];
    secrets.extend(extra.iter().map(|s| (*s).to_owned()));
    // Every minted token starts `hodei_<id>_`; the ids are public, the rest is secret.
    secrets.extend(
        server
            .credentials()
            .list()
            .iter()
            .map(|c| format!("hodei_{}_", c.id)),
    );
    secrets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_a_local_worker_finds_no_credential() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = secure_config(dir.path(), 1);
    config.pools[0].template.user = Some("65534:65534".into());
    let server = start_anywhere(config).await;
    let agent_token = agent_token(&server).await;
    let workers = wait_for_registered_workers(&server, 1).await;
    wait_for_connected(&server, &workers[0]).await;
    assert_eq!(
        server.credentials().list().len(),
        2,
        "a worker and an agent credential"
    );

    let job = server
        .jobs()
        .submit(JobSpec::new(hodei_core::Command::Script(hunting_script(
            dir.path(),
        ))))
        .await
        .unwrap();
    let job = wait_job(&server, &job.id).await;
    let output = output_of(&server, &job.id).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}\n{output}", job.reason);
    assert!(
        output.contains("uid=65534"),
        "ran as the pool's user: {output}"
    );
    assert!(output.contains("== done"), "{output}");
    assert!(
        output.contains("HODEI_JOB_ID=") && output.contains("hodei agent"),
        "the job did read its environment and other processes' command lines: {output}"
    );
    for secret in secrets(&server, &[&agent_token]) {
        assert!(
            !output.contains(&secret),
            "the job found {secret:?}:\n{output}"
        );
    }
    // And the files that did hold one are gone or private.
    let local = dir.path().join("local");
    assert!(
        !std::fs::read_dir(&local)
            .unwrap()
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "credential")),
        "the agent removed its credential file"
    );
    server.shutdown().await.unwrap();
}

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.url().to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Opens a worker session for `worker_id` with `token`; the answer to the hello.
async fn hello(
    channel: &Channel,
    token: &str,
    worker_id: &str,
) -> Result<(v1::HelloAck, tonic::Streaming<v1::ServerMessage>), tonic::Status> {
    let mut client =
        SchedulerServiceClient::with_interceptor(channel.clone(), BearerToken::new(token).unwrap());
    let (outbound, stream) = tokio::sync::mpsc::channel(16);
    outbound
        .send(v1::AgentMessage {
            body: Some(agent_message::Body::Hello(v1::Hello {
                worker_id: worker_id.to_owned(),
                capabilities: Some(v1::WorkerCapabilities {
                    cpu_cores: 1,
                    memory_mb: 512,
                    ..Default::default()
                }),
                version: "impostor".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
    // Keep the sender alive with the stream: the session ends when the client stops.
    let stream = tokio_stream::wrappers::ReceiverStream::new(stream);
    let response = client.worker_session(stream).await?;
    let mut inbound = response.into_inner();
    std::mem::forget(outbound);
    match inbound.message().await? {
        Some(v1::ServerMessage {
            body: Some(server_message::Body::HelloAck(ack)),
        }) => Ok((ack, inbound)),
        other => panic!("expected a hello answer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostors_cannot_take_a_worker_session_and_revocation_closes_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(secure_config(dir.path(), 1)).await;
    let real = wait_for_registered_workers(&server, 1).await.remove(0);
    wait_for_connected(&server, &real).await;
    let channel = channel(&server).await;
    let agent_token = agent_token(&server).await;

    // The admin token alone cannot open a worker session.
    let refused = hello(&channel, ADMIN, real.as_str()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // Nor can an agent token take a provisioned worker's id.
    let refused = hello(&channel, &agent_token, real.as_str())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // Nor a made-up token.
    let refused = hello(&channel, "hodei_000000000000_nope", real.as_str())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // The real agent kept its session and still runs jobs.
    assert!(server.scheduler().get(&real).unwrap().connected);
    let job = server
        .jobs()
        .submit(JobSpec::new(hodei_core::Command::Script(
            "echo real".into(),
        )))
        .await
        .unwrap();
    let job = wait_job(&server, &job.id).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(output_of(&server, &job.id).await, "real\n");

    // An agent token enrols a new worker and gets that worker's own credential back.
    let (ack, mut enrolled) = hello(&channel, &agent_token, "hand-9").await.unwrap();
    assert!(ack.worker_credential.starts_with("hodei_"), "{ack:?}");
    let hand = WorkerId::new("hand-9").unwrap();
    wait_for_connected(&server, &hand).await;
    // Its credential speaks for hand-9 only.
    let refused = hello(&channel, &ack.worker_credential, real.as_str())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // While hand-9 is connected, the agent token cannot take its session over.
    let refused = hello(&channel, &agent_token, "hand-9").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // Revoking the agent token revokes what it issued and ends the open session.
    let agent_id = hodei_core::credential::parse_token(&agent_token)
        .unwrap()
        .0
        .to_owned();
    let revoked_at = Instant::now();
    let revoked = server.credentials().revoke(&agent_id).await.unwrap();
    assert_eq!(revoked.len(), 2, "{revoked:?}");
    let ended = tokio::time::timeout(LIMIT, async {
        loop {
            match enrolled.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the revoked session ended");
    println!(
        "revocation to session end: {} ms",
        revoked_at.elapsed().as_millis()
    );
    wait_for("hand-9 to be disconnected", LIMIT, || async {
        (!server.scheduler().get(&hand)?.connected).then_some(())
    })
    .await;
    let refused = hello(&channel, &ack.worker_credential, "hand-9")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_creates_of_one_pool_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(secure_config(dir.path(), 0)).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/pools", server.url());
    let attempts = (0..20).map(|i| {
        let mut spec = PoolSpec::fixed("raced", ProviderKind::Local, 0);
        spec.cost_per_hour = f64::from(i);
        let request = http.post(&url).bearer_auth(ADMIN).json(&spec).send();
        async move { (i, request.await.unwrap().status().as_u16()) }
    });
    let answers = futures_join_all(attempts).await;
    let winners: Vec<i32> = answers
        .iter()
        .filter(|(_, status)| *status == 201)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    assert!(
        answers.iter().all(|(_, s)| *s == 201 || *s == 409),
        "{answers:?}"
    );
    let stored = server.store().get_pool("raced").await.unwrap().unwrap();
    assert_eq!(
        stored.cost_per_hour,
        f64::from(winners[0]),
        "the stored spec is the winner's"
    );
    server.shutdown().await.unwrap();
}

async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = futures.collect();
    let mut out = Vec::new();
    // Start them all before waiting for any.
    let joined = futures_util_join(handles).await;
    out.extend(joined);
    out
}

async fn futures_util_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}

/// One HTTP/1.1 request on a fresh connection; the status code.
async fn raw_status(addr: std::net::SocketAddr, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_small_protocol_items_hold() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(secure_config(dir.path(), 1)).await;
    let workers = wait_for_registered_workers(&server, 1).await;
    let addr = server.addr();
    let get = |path: &str, auth: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n")
    };
    // The scheme is case-insensitive.
    let lower = format!("authorization: bearer {ADMIN}\r\n");
    assert_eq!(raw_status(addr, &get("/api/v1/pools", &lower)).await, 200);
    // Two Authorization headers are refused, whichever comes first.
    let two = format!("Authorization: Bearer {ADMIN}\r\nAuthorization: Bearer nope\r\n");
    assert_eq!(raw_status(addr, &get("/api/v1/pools", &two)).await, 400);
    // Unknown API paths authenticate before they answer 404.
    assert_eq!(raw_status(addr, &get("/api/v1/no-such", "")).await, 401);
    let admin = format!("Authorization: Bearer {ADMIN}\r\n");
    assert_eq!(raw_status(addr, &get("/api/v1/no-such", &admin)).await, 404);
    // An agent token is not an admin token.
    let agent = format!("Authorization: Bearer {}\r\n", agent_token(&server).await);
    assert_eq!(raw_status(addr, &get("/api/v1/pools", &agent)).await, 403);
    // An oversized body is 413.
    let big = "x".repeat(3 * 1024 * 1024);
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/pools", server.url()))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);

    // Undecodable protobuf is INVALID_ARGUMENT: a Heartbeat (field 1 a varint) sent
    // where GetJobRequest (field 1 a string) is expected.
    let mut grpc = tonic::client::Grpc::new(channel(&server).await);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(v1::Heartbeat {
        sequence: 5,
        usage: None,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    let status = grpc
        .unary::<_, v1::GetJobResponse, _>(
            request,
            "/hodei.v1.JobService/GetJob".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Private files.
    let mode =
        |path: std::path::PathBuf| std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path().to_path_buf()), 0o700);
    assert_eq!(mode(dir.path().join("hodei.db")), 0o600);
    assert_eq!(mode(dir.path().join("local")), 0o700);
    let id = &workers[0];
    assert_eq!(
        mode(dir.path().join("local").join(format!("{id}.log"))),
        0o600
    );
    assert_eq!(
        mode(dir.path().join("local").join(format!("{id}.pid"))),
        0o600
    );
    server.shutdown().await.unwrap();
}

/// Whether the server closed `stream` (EOF or reset) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_bounded_and_healthz_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = secure_config(dir.path(), 0);
    config.connections.max = 32;
    // Longer than the flood takes to check, so the existing client is not idle yet.
    config.connections.header_read_timeout = Duration::from_secs(8);
    config.connections.idle_timeout = Duration::from_secs(8);
    let server = start_anywhere(config).await;
    let addr = server.addr();

    // An existing client with a keep-alive connection.
    let mut client = TcpStream::connect(addr).await.unwrap();
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let read_answer = async |client: &mut TcpStream| {
        client.write_all(healthz).await.unwrap();
        let mut buffer = [0u8; 512];
        let read = client.read(&mut buffer).await.unwrap();
        String::from_utf8_lossy(&buffer[..read]).into_owned()
    };
    assert!(read_answer(&mut client).await.starts_with("HTTP/1.1 200"));

    // A bounded flood: 200 connections that send nothing.
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    let mut refused = 0;
    for stream in &mut flood {
        if closed_within(stream, Duration::from_millis(100)).await {
            refused += 1;
        }
    }
    println!(
        "flood: {refused} of 200 refused at once, checked in {} ms",
        started.elapsed().as_millis()
    );
    assert!(
        refused >= 200 - 32,
        "at most 32 connections held: {refused} refused"
    );
    // The existing client is still served.
    assert!(read_answer(&mut client).await.starts_with("HTTP/1.1 200"));

    // The ones accepted but silent are closed by the header-read or idle timeout.
    let mut open: Vec<TcpStream> = Vec::new();
    for mut stream in flood {
        if !closed_within(&mut stream, Duration::from_millis(1)).await {
            open.push(stream);
        }
    }
    for stream in &mut open {
        assert!(
            closed_within(stream, LIMIT).await,
            "a silent connection was closed"
        );
    }
    // With the flood gone, a new client is served.
    assert_eq!(
        raw_status(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .await,
        200
    );
    server.shutdown().await.unwrap();
}

/// The agent image the Docker test runs: `HODEI_TEST_AGENT_IMAGE`, else the default
/// `hodei-agent:latest` that `scripts/test` builds from this tree's binary.
fn agent_image() -> String {
    std::env::var("HODEI_TEST_AGENT_IMAGE").unwrap_or_else(|_| "hodei-agent:latest".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_a_docker_worker_finds_no_credential() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = secure_config(dir.path(), 0);
    config.docker = Some(hodei_server::DockerSection {
        instance: format!("sec-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        image: agent_image(),
        stop_grace: Duration::from_secs(2),
        ..hodei_server::DockerSection::default()
    });
    let mut pool = PoolSpec::fixed("containers", ProviderKind::Docker, 1);
    pool.template.user = Some("65534:65534".into());
    config.pools = vec![pool];
    let server = start_anywhere(config).await;
    let workers = wait_for_registered_workers(&server, 1).await;
    wait_for_connected(&server, &workers[0]).await;

    let mut spec = JobSpec::new(hodei_core::Command::Script(format!(
        "test -f /.dockerenv && echo in-a-container\n{}ls -la / | grep -c hodei-credential || true\n",
        hunting_script(std::path::Path::new("/work"))
    )));
    spec.timeout = Some(Duration::from_secs(60));
    let job = server.jobs().submit(spec).await.unwrap();
    let job = wait_job(&server, &job.id).await;
    let output = output_of(&server, &job.id).await;
    assert_eq!(job.state, JobState::Succeeded, "{:?}\n{output}", job.reason);
    assert!(output.contains("in-a-container"), "{output}");
    assert!(
        output.contains("uid=65534"),
        "ran as the pool's user: {output}"
    );
    assert!(output.contains("== done"), "{output}");
    assert!(
        output.trim_end().ends_with('0'),
        "the credential file is gone from the container: {output}"
    );
    for secret in secrets(&server, &[]) {
        assert!(
            !output.contains(&secret),
            "the job found {secret:?}:\n{output}"
        );
    }
    server.shutdown().await.unwrap();
}

fn hodei_cli(server: &Server, token: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(HODEI)
        .args(args)
        .env("HODEI_SERVER", server.url())
        .env("HODEI_TOKEN", token)
        .output()
        .unwrap()
}

/// The user-visible flow: `hodei token create --role agent`, a hand-started agent that
/// enrols with it through `--token-file`, `hodei token ls`, then `hodei token revoke`,
/// which ends the agent's session; the agent is refused when it reconnects and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_commands_enrol_and_revoke_a_hand_started_agent() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_anywhere(secure_config(dir.path(), 0)).await;
    let created = tokio::task::block_in_place(|| {
        hodei_cli(
            &server,
            ADMIN,
            &[
                "token",
                "create",
                "--role",
                "agent",
                "--description",
                "rack 4",
            ],
        )
    });
    assert!(created.status.success(), "{created:?}");
    let agent_token = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    assert!(agent_token.starts_with("hodei_"), "{agent_token}");
    let token_file = dir.path().join("agent.token");
    std::fs::write(&token_file, &agent_token).unwrap();

    let mut agent = KillOnDrop(
        std::process::Command::new(HODEI)
            .args(["agent", "--server", server.url(), "--worker-id", "rack4-1"])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .env_remove("HODEI_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let id = WorkerId::new("rack4-1").unwrap();
    wait_for_connected(&server, &id).await;
    assert!(!token_file.exists(), "the agent removed its token file");

    let listed = tokio::task::block_in_place(|| hodei_cli(&server, ADMIN, &["token", "ls"]));
    let table = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        table.contains("rack 4") && table.contains("rack4-1"),
        "{table}"
    );
    assert!(
        !table.contains(&agent_token),
        "ls never shows secrets: {table}"
    );
    // An agent token is no admin token.
    let denied = tokio::task::block_in_place(|| hodei_cli(&server, &agent_token, &["token", "ls"]));
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("PERMISSION_DENIED"),
        "{denied:?}"
    );

    let agent_id = hodei_core::credential::parse_token(&agent_token)
        .unwrap()
        .0
        .to_owned();
    let revoked =
        tokio::task::block_in_place(|| hodei_cli(&server, ADMIN, &["token", "revoke", &agent_id]));
    assert!(revoked.status.success(), "{revoked:?}");
    wait_for("the agent to be disconnected", LIMIT, || async {
        (!server.scheduler().get(&id)?.connected).then_some(())
    })
    .await;
    let status = {
        let child = std::sync::Mutex::new(&mut agent.0);
        wait_for("the refused agent to exit", LIMIT, || {
            let exited = child.lock().unwrap().try_wait().unwrap();
            async move { exited }
        })
        .await
    };
    assert!(!status.success(), "a refused agent exits with an error");
    let mut stderr = String::new();
    std::io::Read::read_to_string(agent.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(!stderr.contains(&agent_token), "the token is never logged");

    // The gRPC TokenService agrees.
    let mut tokens = v1::token_service_client::TokenServiceClient::with_interceptor(
        channel(&server).await,
        BearerToken::new(ADMIN).unwrap(),
    );
    let listed = tokens
        .list_tokens(v1::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.tokens.len(),
        2,
        "the agent token and the worker it enrolled"
    );
    assert!(listed.tokens.iter().all(|t| t.revoked_at_ms > 0));
    let bad = tokens
        .create_token(v1::CreateTokenRequest {
            role: "worker".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("role"), "{bad:?}");
    server.shutdown().await.unwrap();
}
