//! Tenant isolation end to end: a real server with a local agent, a tenant token minted by
//! `hodei tenant token create`, and that token against EVERY REST route and EVERY gRPC
//! method, for its own tenant's jobs and another's, with the exact status codes.
//!
//! The routes are read from the router's source (`crates/server/src/http.rs`) and the
//! methods from the proto files, and each must have a row in this test's tables (and every
//! row a route or method), so a route added without deciding what a tenant gets fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;
use hodei_core::{JobId, JobState};
use hodei_proto::BearerToken;
use hodei_proto::v1;
use hodei_server::Server;
use hodei_testkit::wait_for;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

const ADMIN: &str = "isolation-admin-token-0123456789";

fn hodei(server: &Server, token: &str, args: &[&str]) -> std::process::Output {
    tokio::task::block_in_place(|| {
        Command::new(HODEI)
            .args(args)
            .env("HODEI_SERVER", server.url())
            .env("HODEI_TOKEN", token)
            .output()
            .unwrap()
    })
}

fn ok(output: std::process::Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn refused(output: std::process::Output, expect: &str) {
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(expect), "expected {expect:?} in: {stderr}");
}

async fn wait_state(server: &Server, id: &str, state: JobState) {
    let id = JobId::new(id).unwrap();
    wait_for(&format!("job {id} to be {state}"), LIMIT, || async {
        server
            .jobs()
            .get(&id)
            .await
            .unwrap()
            .filter(|job| job.state == state)
    })
    .await;
}

/// Every `(METHOD, path)` the REST router serves under `/api/v1`, read from its source.
fn rest_routes() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/src/http.rs"),
    )
    .unwrap();
    let start = source.find("let api = Router::new()").unwrap();
    let end = start + source[start..].find(".fallback(").unwrap();
    let mut routes = BTreeSet::new();
    for part in source[start..end].split(".route(").skip(1) {
        let path = part.split('"').nth(1).unwrap();
        let handlers = part.split_once(',').unwrap().1;
        let handlers = handlers
            .split(".route(")
            .next()
            .unwrap()
            .replace("axum::routing::", "");
        let mut found = false;
        for method in ["get", "post", "put", "delete", "patch"] {
            let called = handlers
                .match_indices(&format!("{method}("))
                .any(|(at, _)| at == 0 || !handlers.as_bytes()[at - 1].is_ascii_alphanumeric());
            if called {
                routes.insert((method.to_uppercase(), format!("/api/v1{path}")));
                found = true;
            }
        }
        assert!(found, "no method found for route {path}: {handlers}");
    }
    assert!(routes.len() > 10, "{routes:?}");
    routes
}

/// Every `Service/Method` of package `hodei.v1`, read from the proto files.
fn grpc_methods() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/hodei/v1");
    let mut methods = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "proto") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut service = None;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = Some(rest.split_whitespace().next().unwrap().to_owned());
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap().trim();
                methods.insert(format!("{}/{name}", service.as_ref().unwrap()));
            }
        }
    }
    assert!(methods.len() > 10, "{methods:?}");
    methods
}

/// Which job or tenant a row is tried with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whose {
    /// A route without a job or tenant in it.
    None,
    Own,
    Foreign,
}

#[derive(Clone)]
struct Fixture {
    own_running: String,
    own_done: String,
    foreign: String,
    worker: String,
    token_id: String,
}

impl Fixture {
    /// The path with its placeholders filled for `whose`.
    fn path(&self, template: &str, whose: Whose) -> String {
        let (job, tenant) = match whose {
            Whose::Foreign => (self.foreign.as_str(), "team-b"),
            _ => (self.own_done.as_str(), "team-a"),
        };
        template.replace("{id}", job).replace("{name}", tenant)
    }
}

/// The tenant token's answer expected for each REST route: `(method, path, own, foreign)`;
/// for routes without a job or tenant, `own` is the answer and `foreign` is `None`.
fn rest_table() -> Vec<(&'static str, &'static str, u16, Option<u16>)> {
    vec![
        ("GET", "/api/v1/workers", 403, None),
        ("GET", "/api/v1/workers/{id}", 403, None),
        ("DELETE", "/api/v1/workers/{id}", 403, None),
        ("POST", "/api/v1/workers/{id}/drain", 403, None),
        ("POST", "/api/v1/workers/{id}/undrain", 403, None),
        ("GET", "/api/v1/pools", 403, None),
        ("POST", "/api/v1/pools", 403, None),
        ("GET", "/api/v1/pools/{name}", 403, None),
        ("PUT", "/api/v1/pools/{name}", 403, None),
        ("DELETE", "/api/v1/pools/{name}", 403, None),
        ("POST", "/api/v1/pools/{name}/scale", 403, None),
        ("POST", "/api/v1/jobs", 201, Some(403)),
        ("GET", "/api/v1/jobs", 200, Some(403)),
        ("GET", "/api/v1/jobs/{id}", 200, Some(404)),
        ("POST", "/api/v1/jobs/{id}/cancel", 200, Some(404)),
        ("GET", "/api/v1/jobs/{id}/logs", 200, Some(404)),
        ("GET", "/api/v1/tenants", 403, None),
        ("GET", "/api/v1/tenants/{name}", 200, Some(403)),
        ("PUT", "/api/v1/tenants/{name}", 403, Some(403)),
        ("DELETE", "/api/v1/tenants/{name}", 403, Some(403)),
        ("POST", "/api/v1/tenants/{name}/tokens", 403, Some(403)),
        ("GET", "/api/v1/tokens", 403, None),
        ("POST", "/api/v1/tokens", 403, None),
        ("DELETE", "/api/v1/tokens/{id}", 403, None),
        ("GET", "/api/v1/reports/cost", 403, None),
        ("GET", "/api/v1/cluster", 403, None),
    ]
}

/// One REST request with `token`; the status and the JSON body.
async fn rest(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    fixture: &Fixture,
    whose: Whose,
) -> (u16, Value) {
    let http = reqwest::Client::new();
    let mut url = format!("{}{}", server.url(), fixture.path(path, whose));
    // Fleet routes get a real worker, pool and token id so a 403 is not a 404 in disguise.
    url = url
        .replace(
            &format!("/workers/{}", fixture.own_done),
            &format!("/workers/{}", fixture.worker),
        )
        .replace("/pools/team-a", "/pools/default")
        .replace(
            &format!("/tokens/{}", fixture.own_done),
            &format!("/tokens/{}", fixture.token_id),
        );
    let tenant = if whose == Whose::Foreign {
        "team-b"
    } else {
        "team-a"
    };
    let (request, body) = match (method, path) {
        ("POST", "/api/v1/jobs") => {
            let mut body = json!({"command": ["true"]});
            if whose == Whose::Foreign {
                body["tenant"] = json!("team-b");
            }
            (http.post(&url), Some(body))
        }
        ("GET", "/api/v1/jobs") if whose == Whose::Foreign => {
            (http.get(format!("{url}?tenant=team-b")), None)
        }
        ("POST", "/api/v1/jobs/{id}/cancel") => {
            // The own job cancelled is the running one.
            let url = url.replace(&fixture.own_done, &fixture.own_running);
            (http.post(url), Some(json!({})))
        }
        ("POST", "/api/v1/pools") => (
            http.post(&url),
            Some(
                json!({"name": "stolen", "provider": "local", "min_workers": 0, "max_workers": 1}),
            ),
        ),
        ("PUT", "/api/v1/pools/{name}") => (
            http.put(&url),
            Some(
                json!({"name": "default", "provider": "local", "min_workers": 0, "max_workers": 1}),
            ),
        ),
        ("POST", "/api/v1/pools/{name}/scale") => (http.post(&url), Some(json!({"workers": 3}))),
        ("PUT", "/api/v1/tenants/{name}") => (
            http.put(&url),
            Some(json!({"name": tenant, "weight": 1000})),
        ),
        ("POST", "/api/v1/tenants/{name}/tokens") => (http.post(&url), Some(json!({}))),
        ("POST", "/api/v1/workers/{id}/drain") => (http.post(&url), Some(json!({"then": "keep"}))),
        ("POST", "/api/v1/workers/{id}/undrain") => (http.post(&url), None),
        ("POST", "/api/v1/tokens") => (
            http.post(&url),
            Some(json!({"role": "admin", "description": "escalation"})),
        ),
        ("GET", _) => (http.get(&url), None),
        ("DELETE", _) => (http.delete(&url), None),
        (method, path) => panic!("no request for {method} {path}"),
    };
    let request = request.bearer_auth(token);
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// One gRPC call with `token`; its code.
async fn grpc(
    channel: &Channel,
    token: &str,
    method: &str,
    fixture: &Fixture,
    whose: Whose,
) -> Code {
    let auth = BearerToken::new(token).unwrap();
    let job = match whose {
        Whose::Foreign => fixture.foreign.clone(),
        _ => fixture.own_done.clone(),
    };
    let tenant = if whose == Whose::Foreign {
        "team-b"
    } else {
        "team-a"
    }
    .to_owned();
    let code = |result: Result<(), tonic::Status>| match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    };
    let scheduler = || {
        v1::scheduler_service_client::SchedulerServiceClient::with_interceptor(
            channel.clone(),
            auth.clone(),
        )
    };
    let jobs = || {
        v1::job_service_client::JobServiceClient::with_interceptor(channel.clone(), auth.clone())
    };
    let tenants = || {
        v1::tenant_service_client::TenantServiceClient::with_interceptor(
            channel.clone(),
            auth.clone(),
        )
    };
    let tokens = || {
        v1::token_service_client::TokenServiceClient::with_interceptor(
            channel.clone(),
            auth.clone(),
        )
    };
    match method {
        "SchedulerService/RegisterWorker" => code(
            scheduler()
                .register_worker(v1::RegisterWorkerRequest {
                    worker_id: "stolen-worker".into(),
                    capabilities: Some(v1::WorkerCapabilities {
                        cpu_cores: 1,
                        memory_mb: 512,
                        ..Default::default()
                    }),
                    metadata: None,
                })
                .await
                .map(drop),
        ),
        "SchedulerService/UnregisterWorker" => code(
            scheduler()
                .unregister_worker(v1::UnregisterWorkerRequest {
                    worker_id: fixture.worker.clone(),
                })
                .await
                .map(drop),
        ),
        "SchedulerService/ListWorkers" => code(
            scheduler()
                .list_workers(v1::ListWorkersRequest {})
                .await
                .map(drop),
        ),
        "SchedulerService/GetWorker" => code(
            scheduler()
                .get_worker(v1::GetWorkerRequest {
                    worker_id: fixture.worker.clone(),
                })
                .await
                .map(drop),
        ),
        "SchedulerService/DrainWorker" => code(
            scheduler()
                .drain_worker(v1::DrainWorkerRequest {
                    worker_id: fixture.worker.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "SchedulerService/UndrainWorker" => code(
            scheduler()
                .undrain_worker(v1::UndrainWorkerRequest {
                    worker_id: fixture.worker.clone(),
                })
                .await
                .map(drop),
        ),
        "SchedulerService/WorkerSession" => {
            let hello = v1::AgentMessage {
                body: Some(v1::agent_message::Body::Hello(v1::Hello {
                    worker_id: fixture.worker.clone(),
                    ..Default::default()
                })),
            };
            let result = scheduler()
                .worker_session(tokio_stream::iter(vec![hello]))
                .await;
            match result {
                Err(status) => status.code(),
                Ok(response) => match response.into_inner().message().await {
                    Err(status) => status.code(),
                    Ok(_) => Code::Ok,
                },
            }
        }
        "JobService/SubmitJob" => code(
            jobs()
                .submit_job(v1::SubmitJobRequest {
                    spec: Some(v1::JobSpec {
                        argv: vec!["true".into()],
                        tenant: if whose == Whose::Foreign {
                            tenant
                        } else {
                            String::new()
                        },
                        ..Default::default()
                    }),
                    allow_pending: false,
                })
                .await
                .map(drop),
        ),
        "JobService/GetJob" => code(
            jobs()
                .get_job(v1::GetJobRequest { job_id: job })
                .await
                .map(drop),
        ),
        "JobService/ListJobs" => {
            let asked = if whose == Whose::Foreign {
                tenant
            } else {
                String::new()
            };
            match jobs()
                .list_jobs(v1::ListJobsRequest {
                    tenant: asked,
                    ..Default::default()
                })
                .await
            {
                Ok(response) => {
                    let listed = response.into_inner().jobs;
                    assert!(!listed.is_empty());
                    for job in listed {
                        assert_eq!(job.spec.unwrap().tenant, "team-a", "only its own jobs");
                    }
                    Code::Ok
                }
                Err(status) => status.code(),
            }
        }
        "JobService/CancelJob" => {
            let job_id = if whose == Whose::Foreign {
                job
            } else {
                fixture.own_running.clone()
            };
            code(
                jobs()
                    .cancel_job(v1::CancelJobRequest { job_id })
                    .await
                    .map(drop),
            )
        }
        "JobService/StreamLogs" => match jobs()
            .stream_logs(v1::StreamLogsRequest {
                job_id: job,
                after: 0,
                follow: true,
            })
            .await
        {
            Err(status) => status.code(),
            Ok(response) => {
                let mut stream = response.into_inner();
                let mut text = Vec::new();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            for chunk in message.chunks {
                                text.extend(chunk.data);
                            }
                        }
                        Ok(None) => break,
                        Err(status) => return status.code(),
                    }
                }
                assert_eq!(String::from_utf8_lossy(&text).trim(), "own output");
                Code::Ok
            }
        },
        "TenantService/ListTenants" => code(
            tenants()
                .list_tenants(v1::ListTenantsRequest {})
                .await
                .map(drop),
        ),
        "TenantService/GetTenant" => code(
            tenants()
                .get_tenant(v1::GetTenantRequest { name: tenant })
                .await
                .map(drop),
        ),
        "TenantService/SetTenant" => code(
            tenants()
                .set_tenant(v1::SetTenantRequest {
                    settings: Some(v1::TenantSettings {
                        name: tenant,
                        weight: 1000,
                        ..Default::default()
                    }),
                })
                .await
                .map(drop),
        ),
        "TenantService/DeleteTenant" => code(
            tenants()
                .delete_tenant(v1::DeleteTenantRequest { name: tenant })
                .await
                .map(drop),
        ),
        "TokenService/CreateToken" => code(
            tokens()
                .create_token(v1::CreateTokenRequest {
                    role: "admin".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        "TokenService/ListTokens" => code(
            tokens()
                .list_tokens(v1::ListTokensRequest {})
                .await
                .map(drop),
        ),
        "TokenService/RevokeToken" => code(
            tokens()
                .revoke_token(v1::RevokeTokenRequest {
                    id: fixture.token_id.clone(),
                })
                .await
                .map(drop),
        ),
        other => {
            panic!("gRPC method {other} has no case in this test: decide what a tenant token gets")
        }
    }
}

/// The tenant token's code for each gRPC method: `(method, own, foreign)`.
fn grpc_table() -> Vec<(&'static str, Code, Option<Code>)> {
    use Code::*;
    vec![
        ("SchedulerService/RegisterWorker", PermissionDenied, None),
        ("SchedulerService/UnregisterWorker", PermissionDenied, None),
        ("SchedulerService/ListWorkers", PermissionDenied, None),
        ("SchedulerService/GetWorker", PermissionDenied, None),
        ("SchedulerService/DrainWorker", PermissionDenied, None),
        ("SchedulerService/UndrainWorker", PermissionDenied, None),
        ("SchedulerService/WorkerSession", PermissionDenied, None),
        ("JobService/SubmitJob", Ok, Some(PermissionDenied)),
        ("JobService/GetJob", Ok, Some(NotFound)),
        ("JobService/ListJobs", Ok, Some(PermissionDenied)),
        ("JobService/CancelJob", Ok, Some(NotFound)),
        ("JobService/StreamLogs", Ok, Some(NotFound)),
        ("TenantService/ListTenants", PermissionDenied, None),
        ("TenantService/GetTenant", Ok, Some(PermissionDenied)),
        (
            "TenantService/SetTenant",
            PermissionDenied,
            Some(PermissionDenied),
        ),
        (
            "TenantService/DeleteTenant",
            PermissionDenied,
            Some(PermissionDenied),
        ),
        ("TokenService/CreateToken", PermissionDenied, None),
        ("TokenService/ListTokens", PermissionDenied, None),
        ("TokenService/RevokeToken", PermissionDenied, None),
    ]
}

#[test]
fn every_route_and_method_has_a_row() {
    let table: BTreeSet<(String, String)> = rest_table()
        .into_iter()
        .map(|(m, p, _, _)| (m.to_owned(), p.to_owned()))
        .collect();
    let routes = rest_routes();
    assert_eq!(
        routes.difference(&table).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "REST routes without a row in rest_table(): decide what a tenant token gets"
    );
    assert_eq!(
        table.difference(&routes).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "rows for routes the router does not serve"
    );
    let table: BTreeSet<String> = grpc_table()
        .into_iter()
        .map(|(m, _, _)| m.to_owned())
        .collect();
    assert_eq!(
        grpc_methods(),
        table,
        "gRPC methods and grpc_table() differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_reaches_only_its_tenants_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 3);
    config.token = Some(ADMIN.into());
    let server = start_anywhere(config).await;
    // Three: team-b's long job, and team-a's long job for each API's cancel.
    let workers = wait_for_registered_workers(&server, 3).await;
    for id in &workers {
        wait_for_connected(&server, id).await;
    }
    let worker = workers[0].clone();

    // The admin mints a tenant token with the CLI; it is printed once and listed hashed.
    let token = ok(hodei(
        &server,
        ADMIN,
        &[
            "tenant",
            "token",
            "create",
            "team-a",
            "--description",
            "ci of team a",
        ],
    ));
    assert!(token.starts_with("hodei_"), "{token}");
    let listed: Value =
        serde_json::from_str(&ok(hodei(&server, ADMIN, &["token", "ls", "-o", "json"]))).unwrap();
    let row = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "tenant")
        .unwrap()
        .clone();
    assert_eq!(row["tenant"], "team-a");
    assert_eq!(row["description"], "ci of team a");
    assert!(
        !listed.to_string().contains(&token),
        "the secret is not listed"
    );
    let token_id = row["id"].as_str().unwrap().to_owned();
    let table = ok(hodei(&server, ADMIN, &["token", "ls"]));
    assert!(
        table.contains("team-a") && table.contains(&token_id),
        "{table}"
    );

    // Jobs: one of team-a that ran, one of team-a that runs, one of team-b that runs.
    let own_done = ok(hodei(
        &server,
        &token,
        &["job", "submit", "--script", "echo own output"],
    ));
    wait_state(&server, &own_done, JobState::Succeeded).await;
    let foreign = ok(hodei(
        &server,
        ADMIN,
        &["job", "submit", "--tenant", "team-b", "--", "sleep", "300"],
    ));
    wait_state(&server, &foreign, JobState::Running).await;
    let own_running = ok(hodei(
        &server,
        &token,
        &["job", "submit", "--", "sleep", "300"],
    ));
    let fixture = Fixture {
        own_running,
        own_done,
        foreign,
        worker: worker.to_string(),
        token_id,
    };

    // The CLI with the tenant token.
    let mine = ok(hodei(&server, &token, &["job", "ls"]));
    assert!(
        mine.contains(&fixture.own_done) && mine.contains(&fixture.own_running),
        "{mine}"
    );
    assert!(!mine.contains(&fixture.foreign), "{mine}");
    assert_eq!(
        ok(hodei(
            &server,
            &token,
            &["job", "logs", "-f", &fixture.own_done]
        )),
        "own output"
    );
    refused(
        hodei(&server, &token, &["job", "get", &fixture.foreign]),
        &format!("job {} not found", fixture.foreign),
    );
    refused(
        hodei(&server, &token, &["job", "cancel", &fixture.foreign]),
        "not found",
    );
    refused(
        hodei(
            &server,
            &token,
            &["job", "submit", "--tenant", "team-b", "--", "true"],
        ),
        "tenant",
    );
    refused(hodei(&server, &token, &["pool", "ls"]), "PERMISSION_DENIED");
    refused(
        hodei(&server, &token, &["worker", "ls"]),
        "PERMISSION_DENIED",
    );
    refused(
        hodei(&server, &token, &["token", "ls"]),
        "PERMISSION_DENIED",
    );
    refused(
        hodei(&server, &token, &["tenant", "ls"]),
        "PERMISSION_DENIED",
    );
    refused(
        hodei(&server, &token, &["tenant", "get", "team-b"]),
        "PERMISSION_DENIED",
    );
    assert!(ok(hodei(&server, &token, &["tenant", "get", "team-a"])).contains("team-a"));

    // Every REST route.
    let nowhere = Fixture {
        foreign: "no-such-job".into(),
        ..fixture.clone()
    };
    let missing = rest(
        &server,
        ADMIN,
        "GET",
        "/api/v1/jobs/{id}",
        &nowhere,
        Whose::Foreign,
    )
    .await;
    assert_eq!(missing.0, 404);
    for (method, path, own, foreign) in rest_table() {
        let cases = match foreign {
            None => vec![(Whose::None, own)],
            Some(foreign) => vec![(Whose::Own, own), (Whose::Foreign, foreign)],
        };
        for (whose, expected) in cases {
            if whose == Whose::Own && path == "/api/v1/jobs/{id}/cancel" {
                wait_state(&server, &fixture.own_running, JobState::Running).await;
            }
            let (status, body) = rest(&server, &token, method, path, &fixture, whose).await;
            assert_eq!(status, expected, "{method} {path} ({whose:?}): {body}");
            match status {
                403 => assert_eq!(
                    body["error"]["code"], "PERMISSION_DENIED",
                    "{method} {path}: {body}"
                ),
                404 => assert_eq!(
                    body["error"]["message"],
                    format!("job {} not found", fixture.foreign),
                    "the same answer as a missing job: {method} {path}"
                ),
                _ => {}
            }
            if (method, path, whose) == ("GET", "/api/v1/jobs", Whose::Own) {
                let tenants: BTreeSet<&str> = body["jobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|j| j["tenant"].as_str().unwrap())
                    .collect();
                assert_eq!(tenants, BTreeSet::from(["team-a"]), "{body}");
            }
            if (method, path, whose) == ("POST", "/api/v1/jobs", Whose::Own) {
                assert_eq!(body["tenant"], "team-a", "forced to its tenant");
            }
            if (method, whose) == ("POST", Whose::Foreign) && path == "/api/v1/jobs" {
                assert_eq!(body["error"]["field"], "tenant", "{body}");
            }
        }
    }
    // The missing job's answer is the foreign job's, word for word but the id.
    assert_eq!(missing.1["error"]["message"], "job no-such-job not found");
    wait_state(&server, &fixture.own_running, JobState::Cancelled).await;

    // Every gRPC method.
    let channel = Channel::from_shared(server.url().to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let grpc_running = ok(hodei(
        &server,
        &token,
        &["job", "submit", "--", "sleep", "300"],
    ));
    wait_state(&server, &grpc_running, JobState::Running).await;
    let fixture = Fixture {
        own_running: grpc_running,
        ..fixture
    };
    for (method, own, foreign) in grpc_table() {
        let cases = match foreign {
            None => vec![(Whose::None, own)],
            Some(foreign) => vec![(Whose::Own, own), (Whose::Foreign, foreign)],
        };
        for (whose, expected) in cases {
            let code = grpc(&channel, &token, method, &fixture, whose).await;
            assert_eq!(code, expected, "{method} ({whose:?})");
        }
    }

    // Nothing of team-b's moved, nothing of the fleet changed.
    wait_state(&server, &fixture.foreign, JobState::Running).await;
    assert!(server.scheduler().get(&worker).is_some());
    assert!(server.pools().get("stolen").is_none());
    assert_eq!(
        server
            .credentials()
            .list()
            .iter()
            .filter(|c| c.role == hodei_core::credential::Role::Admin)
            .count(),
        0,
        "no admin credential was minted"
    );

    // A tenant token minted over gRPC (TokenService, role tenant) is scoped the same way.
    let created = v1::token_service_client::TokenServiceClient::with_interceptor(
        channel.clone(),
        BearerToken::new(ADMIN).unwrap(),
    )
    .create_token(v1::CreateTokenRequest {
        role: "tenant".into(),
        tenant: "team-b".into(),
        description: "over grpc".into(),
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(created.info.as_ref().unwrap().tenant, "team-b");
    let team_b = created.token;
    assert_eq!(
        grpc(&channel, &team_b, "JobService/GetJob", &fixture, Whose::Own).await,
        Code::NotFound,
        "team-a's job, seen by team-b"
    );
    let (status, body) = rest(
        &server,
        &team_b,
        "GET",
        "/api/v1/jobs/{id}",
        &fixture,
        Whose::Foreign,
    )
    .await;
    assert_eq!((status, body["tenant"].as_str()), (200, Some("team-b")));

    // The admin keeps everything: team-b's job, and revoking the tenant token.
    let (status, _) = rest(
        &server,
        ADMIN,
        "GET",
        "/api/v1/jobs/{id}",
        &fixture,
        Whose::Foreign,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        grpc(
            &channel,
            ADMIN,
            "JobService/CancelJob",
            &fixture,
            Whose::Foreign
        )
        .await,
        Code::Ok
    );
    ok(hodei(
        &server,
        ADMIN,
        &["token", "revoke", &fixture.token_id],
    ));
    refused(hodei(&server, &token, &["job", "ls"]), "UNAUTHENTICATED");
    server.shutdown().await.unwrap();
}
