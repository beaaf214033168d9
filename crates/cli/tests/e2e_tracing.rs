//! OpenTelemetry end to end: a real `hodei server` process with `[telemetry] otlp_endpoint`
//! set and its real local agent export the spans of one job to an OTLP collector served here
//! (the collector's `TraceService` from the OpenTelemetry protos, over tonic). The test
//! checks the span tree: names, parent links, one trace that continues the submitter's
//! `traceparent`, spans from both processes, and the job's own `TRACEPARENT`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;
use hodei_testkit::wait_for;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

const TOKEN: &str = "tracing-test-token-0123456789";
/// The submitter's trace: sampled.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SUBMITTER_SPAN: &str = "00f067aa0ba902b7";

/// One span as received: its process's service name and the fields the tree needs.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// An OTLP/gRPC collector that keeps every span it is sent.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(a.value.as_ref()))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(a.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const NAMES: [&str; 8] = [
    "job.submitted",
    "job.admitted",
    "job.queued",
    "job.dispatched",
    "job.accepted",
    "job.started",
    "job.finished",
    "job.recorded",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_jobs_spans_from_server_and_agent_form_one_tree_in_the_submitters_trace() {
    let collector = Collector::default();
    let otlp_port = free_port();
    let receiver = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve(([127, 0, 0, 1], otlp_port).into()),
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hodei.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\ntoken = \"{TOKEN}\"\n\
             [telemetry]\notlp_endpoint = \"http://127.0.0.1:{otlp_port}\"\n\
             [local]\nagent_program = \"{hodei}\"\n\
             [[pool]]\nname = \"default\"\nprovider = \"local\"\nsize = 1\n",
            data = dir.path().join("data").display(),
            hodei = HODEI,
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = KillOnDrop(
        Command::new(HODEI)
            .args(["server", "--config"])
            .arg(&config)
            .args(["--listen", &listen])
            // Export every 100 ms rather than 5 s; the agents inherit it.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("HODEI_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://{listen}");
    let http = reqwest::Client::new();
    wait_for("a registered worker", LIMIT, || async {
        let workers: serde_json::Value = http
            .get(format!("{url}/api/v1/workers"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (workers["workers"].as_array()?.len() == 1).then_some(())
    })
    .await;

    let response = http
        .post(format!("{url}/api/v1/jobs"))
        .bearer_auth(TOKEN)
        .header("traceparent", format!("00-{TRACE_ID}-{SUBMITTER_SPAN}-01"))
        .json(&serde_json::json!({"script": "echo \"tp=$TRACEPARENT\""}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // The submitter gets our span back, in its own trace.
    let returned = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let fields: Vec<&str> = returned.split('-').collect();
    assert_eq!(fields.len(), 4, "{returned}");
    assert_eq!(fields[1], TRACE_ID, "{returned}");
    assert_ne!(fields[2], SUBMITTER_SPAN, "{returned}");
    let job: serde_json::Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();

    let logs = wait_for("the job to succeed", LIMIT, || async {
        let logs: serde_json::Value = http
            .get(format!("{url}/api/v1/jobs/{id}/logs"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (logs["state"] == "succeeded").then_some(logs)
    })
    .await;
    let output: String = logs["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();

    let spans = wait_for("all the job's spans at the collector", LIMIT, || async {
        let spans = collector.spans.lock().unwrap().clone();
        let ours: Vec<Received> = spans
            .into_iter()
            .filter(|s| s.attributes.get("hodei.job_id") == Some(&id))
            .collect();
        NAMES
            .iter()
            .all(|name| ours.iter().any(|s| s.name == *name))
            .then_some(ours)
    })
    .await;

    let one = |name: &str| -> Received {
        let found: Vec<&Received> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "{name}: {spans:#?}");
        found[0].clone()
    };
    for span in &spans {
        assert_eq!(span.trace_id, TRACE_ID, "one trace: {span:?}");
    }
    let submitted = one("job.submitted");
    assert_eq!(submitted.parent, SUBMITTER_SPAN);
    assert_eq!(fields[2], submitted.span_id, "the returned traceparent");
    assert_eq!(submitted.service, "hodei-server");
    for name in ["job.admitted", "job.queued", "job.dispatched"] {
        let span = one(name);
        assert_eq!(span.parent, submitted.span_id, "{span:?}");
        assert_eq!(span.service, "hodei-server");
    }
    let dispatched = one("job.dispatched");
    let recorded = one("job.recorded");
    assert_eq!(recorded.parent, dispatched.span_id);
    assert_eq!(recorded.attributes["hodei.state"], "succeeded");
    let accepted = one("job.accepted");
    assert_eq!(
        accepted.parent, dispatched.span_id,
        "linked across processes"
    );
    assert_eq!(accepted.service, "hodei-agent");
    let started = one("job.started");
    let finished = one("job.finished");
    for span in [&started, &finished] {
        assert_eq!(span.parent, accepted.span_id, "{span:?}");
        assert_eq!(span.service, "hodei-agent");
    }
    assert_eq!(finished.attributes["process.exit_code"], "0");
    // The job's own spans would join the trace under the process's span.
    assert_eq!(output, format!("tp=00-{TRACE_ID}-{}-01\n", started.span_id));

    let _ = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status();
    let status = server.0.wait().unwrap();
    assert!(status.success(), "{status}");
    receiver.abort();
}
