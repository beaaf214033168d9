//! `KubernetesProvider` against the scripted fake API server in `support`: the provider
//! contract, the pod it sends, how it lists, and how API errors map to provider errors.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::Method;
use hodei_core::{ProviderKind, WorkerId, WorkerSpec};
use hodei_kubernetes::{
    KubernetesAccess, KubernetesProvider, KubernetesProviderConfig, PodOwner, PodTemplate,
};
use hodei_ports::{ProviderError, WorkerProvider};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use support::FakeKubeApi;

const NS: &str = "ci";

fn config(fake: &FakeKubeApi) -> KubernetesProviderConfig {
    KubernetesProviderConfig {
        namespace: NS.to_owned(),
        server_url: "https://hodei.hodei-system.svc:50051".to_owned(),
        instance: "test".to_owned(),
        delete_grace: Duration::from_secs(7),
        access: KubernetesAccess::Url(fake.url()),
        request_timeout: Duration::from_secs(5),
        ..KubernetesProviderConfig::default()
    }
}

async fn provider(config: KubernetesProviderConfig) -> KubernetesProvider {
    KubernetesProvider::new(config).await.expect("provider")
}

fn id(s: &str) -> WorkerId {
    WorkerId::new(s).expect("valid id")
}

fn posted_pods(fake: &FakeKubeApi) -> Vec<Value> {
    fake.requests_with(Method::POST)
        .into_iter()
        .map(|r| r.body.expect("post has a body"))
        .collect()
}

fn agent(pod: &Value) -> &Value {
    pod["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("agent container")
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().expect("name").to_owned(), e.clone()))
        .collect()
}

/// A pod of ours, as the fake stores it, for list and terminate tests.
fn our_pod(name: &str, worker: &str, instance: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "hodei",
                "hodei.io/instance": instance,
                "hodei.io/worker-id": worker,
            },
            "annotations": { "hodei.io/worker-id": worker },
        },
        "spec": { "containers": [{ "name": "agent", "image": "x" }] },
        "status": { "phase": "Running" },
    })
}

#[tokio::test]
async fn passes_the_provider_contract() {
    let fake = FakeKubeApi::start().await;
    let provider = provider(config(&fake)).await;
    assert_eq!(provider.kind(), ProviderKind::Kubernetes);
    hodei_testkit::provider_contract(&provider, "kube").await;
    assert!(fake.pod_names(NS).is_empty());
}

#[tokio::test]
async fn contract_holds_when_deletes_are_graceful() {
    let fake = FakeKubeApi::start().await;
    fake.graceful_deletes(true);
    let provider = provider(config(&fake)).await;
    hodei_testkit::provider_contract(&provider, "Graceful_W").await;
    // Terminating pods stay in the API until their grace ends, but are not listed.
    assert_eq!(
        fake.pod_names(NS),
        vec!["hodei-graceful-w-1", "hodei-graceful-w-2"]
    );
}

#[tokio::test]
async fn the_pod_sent_carries_everything_the_agent_needs() {
    let fake = FakeKubeApi::start().await;
    let provider = provider(KubernetesProviderConfig {
        ca_cert_path: Some("/etc/hodei/ca.pem".to_owned()),
        service_account: Some("hodei-worker".to_owned()),
        owner: Some(PodOwner {
            api_version: "apps/v1".to_owned(),
            kind: "Deployment".to_owned(),
            name: "hodei-server".to_owned(),
            uid: "1234-abcd".to_owned(),
        }),
        ..config(&fake)
    })
    .await;
    let mut spec = WorkerSpec {
        pool: Some("linux-large".to_owned()),
        image: Some("registry.example/hodei-agent:1.2".to_owned()),
        ..WorkerSpec::default()
    };
    spec.capabilities.cpu_cores = 4;
    spec.capabilities.memory_mb = 8192;
    spec.labels.insert("arch".into(), "amd64".into());
    spec.labels.insert("os".into(), "linux".into());
    spec.env.insert("RUST_LOG".into(), "debug".into());

    let worker = provider
        .create_worker(
            &id("Linux-Large_1a2b"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create");
    assert_eq!(worker.id, id("Linux-Large_1a2b"));
    assert_eq!(worker.metadata.provider, ProviderKind::Kubernetes);
    assert_eq!(worker.metadata.pool.as_deref(), Some("linux-large"));
    assert_eq!(worker.capabilities, spec.capabilities);

    let requests = fake.requests_with(Method::POST);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/api/v1/namespaces/ci/pods");
    let pod = requests[0].body.clone().expect("body");
    assert_eq!(pod["apiVersion"], "v1");
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["name"], "hodei-linux-large-1a2b");
    assert_eq!(pod["metadata"]["namespace"], "ci");
    assert_eq!(
        pod["metadata"]["labels"],
        json!({
            "app.kubernetes.io/managed-by": "hodei",
            "hodei.io/instance": "test",
            "hodei.io/worker-id": "Linux-Large_1a2b",
            "hodei.io/pool": "linux-large",
        })
    );
    assert_eq!(
        pod["metadata"]["annotations"],
        json!({ "hodei.io/worker-id": "Linux-Large_1a2b" })
    );
    assert_eq!(
        pod["metadata"]["ownerReferences"],
        json!([{
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "hodei-server",
            "uid": "1234-abcd",
        }])
    );
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["serviceAccountName"], "hodei-worker");
    assert_eq!(pod["spec"]["containers"].as_array().map(Vec::len), Some(1));

    let agent = agent(&pod);
    assert_eq!(agent["image"], "registry.example/hodei-agent:1.2");
    assert_eq!(
        agent["args"],
        json!([
            "agent",
            "--server",
            "https://hodei.hodei-system.svc:50051",
            "--worker-id",
            "Linux-Large_1a2b",
            "--label",
            "arch=amd64",
            "--label",
            "os=linux",
        ])
    );
    assert_eq!(agent.get("command"), None, "the image's entrypoint runs");
    let env = env_of(agent);
    assert_eq!(
        env["HODEI_TOKEN"],
        json!({
            "name": "HODEI_TOKEN",
            "value": "test-credential",
        })
    );
    assert!(
        !pod.to_string().contains("secret-token"),
        "only the worker's own credential reaches its pod"
    );
    assert_eq!(env["HODEI_CA_CERT"]["value"], "/etc/hodei/ca.pem");
    assert_eq!(env["RUST_LOG"]["value"], "debug");
    assert_eq!(env.len(), 3);
    assert_eq!(
        agent["resources"],
        json!({
            "requests": { "cpu": "4", "memory": "8192Mi" },
            "limits": { "cpu": "4", "memory": "8192Mi" },
        })
    );
}

#[tokio::test]
async fn without_a_secret_the_token_is_a_plain_value_and_the_default_image_is_used() {
    let fake = FakeKubeApi::start().await;
    let provider = provider(config(&fake)).await;
    provider
        .create_worker(
            &id("w-1"),
            &WorkerSpec::default(),
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create");
    let pod = &posted_pods(&fake)[0];
    let agent = agent(pod);
    assert_eq!(agent["image"], "hodei-agent:latest");
    assert_eq!(
        env_of(agent)["HODEI_TOKEN"],
        json!({ "name": "HODEI_TOKEN", "value": "test-credential" })
    );
    assert!(!env_of(agent).contains_key("HODEI_CA_CERT"));
    assert_eq!(pod["spec"].get("serviceAccountName"), None);
    assert_eq!(pod["metadata"].get("ownerReferences"), None);
    assert_eq!(pod["metadata"]["labels"].get("hodei.io/pool"), None);
}

fn template_json() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "ignored",
            "labels": { "team": "infra", "hodei.io/instance": "overridden" },
            "annotations": { "cluster-autoscaler.kubernetes.io/safe-to-evict": "false" },
        },
        "spec": {
            "serviceAccountName": "from-template",
            "restartPolicy": "Always",
            "nodeSelector": { "pool": "ci" },
            "tolerations": [{ "key": "ci", "operator": "Exists", "effect": "NoSchedule" }],
            "volumes": [{ "name": "ca", "configMap": { "name": "hodei-ca" } }],
            "containers": [
                { "name": "dind", "image": "docker:dind" },
                {
                    "name": "agent",
                    "image": "old",
                    "command": ["/usr/local/bin/hodei"],
                    "volumeMounts": [{ "name": "ca", "mountPath": "/etc/hodei" }],
                    "env": [
                        { "name": "DOCKER_HOST", "value": "tcp://localhost:2375" },
                        { "name": "HODEI_TOKEN", "value": "from-template" },
                    ],
                    "resources": { "limits": { "ephemeral-storage": "10Gi", "cpu": "1" } },
                },
            ],
        },
    })
}

fn check_template_kept(pod: &Value) {
    assert_eq!(pod["metadata"]["name"], "hodei-w-1");
    assert_eq!(pod["metadata"]["labels"]["team"], "infra");
    assert_eq!(pod["metadata"]["labels"]["hodei.io/instance"], "test");
    assert_eq!(
        pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"],
        "false"
    );
    assert_eq!(pod["metadata"]["annotations"]["hodei.io/worker-id"], "w-1");
    assert_eq!(pod["spec"]["serviceAccountName"], "from-template");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["nodeSelector"], json!({ "pool": "ci" }));
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "ci");
    assert_eq!(pod["spec"]["volumes"][0]["configMap"]["name"], "hodei-ca");
    let containers = pod["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["name"], "dind");
    assert_eq!(containers[0]["image"], "docker:dind");
    let agent = agent(pod);
    assert_eq!(agent["image"], "hodei-agent:latest");
    assert_eq!(agent["command"], json!(["/usr/local/bin/hodei"]));
    assert_eq!(agent["args"][0], "agent");
    assert_eq!(agent["volumeMounts"][0]["mountPath"], "/etc/hodei");
    let env = env_of(agent);
    assert_eq!(env["DOCKER_HOST"]["value"], "tcp://localhost:2375");
    assert_eq!(env["HODEI_TOKEN"]["value"], "test-credential");
    assert_eq!(
        agent["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter(|e| e["name"] == "HODEI_TOKEN")
            .count(),
        1
    );
    assert_eq!(
        agent["resources"]["limits"],
        json!({ "cpu": "2", "memory": "4096Mi", "ephemeral-storage": "10Gi" })
    );
}

#[tokio::test]
async fn a_pod_template_keeps_its_fields_and_gets_the_agent_put_over_it() {
    let fake = FakeKubeApi::start().await;
    let template: Pod = serde_json::from_value(template_json()).expect("pod");
    let provider = provider(KubernetesProviderConfig {
        pod_template: Some(PodTemplate::Pod(Box::new(template))),
        ..config(&fake)
    })
    .await;
    provider
        .create_worker(
            &id("w-1"),
            &WorkerSpec::default(),
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create");
    check_template_kept(&posted_pods(&fake)[0]);
}

#[tokio::test]
async fn a_pod_template_file_in_yaml_or_json_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("pod.json");
    std::fs::write(&json_path, template_json().to_string()).expect("write");
    let yaml_path = dir.path().join("pod.yaml");
    std::fs::write(
        &yaml_path,
        r#"
apiVersion: v1
kind: Pod
metadata:
  labels:
    team: infra
  annotations:
    cluster-autoscaler.kubernetes.io/safe-to-evict: "false"
spec:
  serviceAccountName: from-template
  nodeSelector:
    pool: ci
  tolerations:
    - key: ci
      operator: Exists
      effect: NoSchedule
  volumes:
    - name: ca
      configMap:
        name: hodei-ca
  containers:
    - name: dind
      image: docker:dind
    - name: agent
      command: ["/usr/local/bin/hodei"]
      volumeMounts:
        - name: ca
          mountPath: /etc/hodei
      env:
        - name: DOCKER_HOST
          value: tcp://localhost:2375
      resources:
        limits:
          ephemeral-storage: 10Gi
"#,
    )
    .expect("write");
    for path in [json_path, yaml_path] {
        let fake = FakeKubeApi::start().await;
        let provider = provider(KubernetesProviderConfig {
            pod_template: Some(PodTemplate::File(path.clone())),
            ..config(&fake)
        })
        .await;
        provider
            .create_worker(
                &id("w-1"),
                &WorkerSpec::default(),
                &hodei_ports::AgentCredential::new("test-credential"),
            )
            .await
            .expect("create");
        check_template_kept(&posted_pods(&fake)[0]);
    }

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "spec: [not, a, pod]").expect("write");
    let fake = FakeKubeApi::start().await;
    let error = KubernetesProvider::new(KubernetesProviderConfig {
        pod_template: Some(PodTemplate::File(bad)),
        ..config(&fake)
    })
    .await
    .expect_err("bad template");
    assert!(
        matches!(&error, ProviderError::Failed(m) if m.contains("bad.yaml")),
        "{error}"
    );
}

#[tokio::test]
async fn list_selects_our_instance_and_skips_finished_and_terminating_pods() {
    let fake = FakeKubeApi::start().await;
    let provider = provider(config(&fake)).await;
    fake.insert_pod(NS, our_pod("hodei-b", "b", "test"));
    fake.insert_pod(NS, our_pod("hodei-a", "A", "test"));
    fake.insert_pod(NS, our_pod("hodei-other", "other", "another-install"));
    fake.insert_pod(NS, json!({ "metadata": { "name": "nginx" } }));
    fake.insert_pod("elsewhere", our_pod("hodei-far", "far", "test"));
    let mut done = our_pod("hodei-done", "done", "test");
    done["status"]["phase"] = json!("Succeeded");
    fake.insert_pod(NS, done);
    let mut failed = our_pod("hodei-failed", "failed", "test");
    failed["status"]["phase"] = json!("Failed");
    fake.insert_pod(NS, failed);
    let mut leaving = our_pod("hodei-leaving", "leaving", "test");
    leaving["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    fake.insert_pod(NS, leaving);
    let mut pending = our_pod("hodei-pending", "pending", "test");
    pending["status"]["phase"] = json!("Pending");
    fake.insert_pod(NS, pending);

    let listed = provider.list_workers().await.expect("list");
    assert_eq!(listed, vec![id("A"), id("b"), id("pending")]);

    let lists = fake.requests_with(Method::GET);
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].path, "/api/v1/namespaces/ci/pods");
    assert_eq!(
        lists[0].query.get("labelSelector").map(String::as_str),
        Some("app.kubernetes.io/managed-by=hodei,hodei.io/instance=test")
    );
}

#[tokio::test]
async fn creating_the_same_worker_twice_adopts_the_existing_pod() {
    let fake = FakeKubeApi::start().await;
    let provider = provider(config(&fake)).await;
    let spec = WorkerSpec::default();
    provider
        .create_worker(
            &id("w-1"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("first");
    let again = provider
        .create_worker(
            &id("w-1"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("a retried create of our own pod counts as created");
    assert_eq!(again.id, id("w-1"));
    assert_eq!(fake.pod_names(NS), vec!["hodei-w-1"]);
}

#[tokio::test]
async fn conflicts_with_other_pods_are_reported() {
    let fake = FakeKubeApi::start().await;
    let provider = provider(config(&fake)).await;
    let spec = WorkerSpec::default();

    // Someone else's pod.
    fake.insert_pod(NS, json!({ "metadata": { "name": "hodei-stranger" } }));
    let error = provider
        .create_worker(
            &id("stranger"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect_err("not ours");
    assert!(
        matches!(&error, ProviderError::Failed(m) if m.contains("not created by this hodei")),
        "{error}"
    );

    // Another worker whose id differs only in case.
    provider
        .create_worker(
            &id("case"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create");
    let error = provider
        .create_worker(
            &id("CASE"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect_err("collision");
    assert!(
        matches!(&error, ProviderError::Failed(m) if m.contains("worker case")),
        "{error}"
    );

    // Our pod for this worker, still being deleted: retry later.
    let mut leaving = our_pod("hodei-leaving", "leaving", "test");
    leaving["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    fake.insert_pod(NS, leaving);
    let error = provider
        .create_worker(
            &id("leaving"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect_err("terminating");
    assert!(
        matches!(&error, ProviderError::Unavailable(m) if m.contains("being deleted")),
        "{error}"
    );
    assert!(error.is_retryable());

    // A bare 409 from the API server on create, then the GET shows our live pod: created.
    fake.insert_pod(NS, our_pod("hodei-raced", "raced", "test"));
    provider
        .create_worker(
            &id("raced"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("adopted");
}

#[tokio::test]
async fn terminate_deletes_with_the_grace_period_and_a_missing_pod_is_ok() {
    let fake = FakeKubeApi::start().await;
    let provider = provider(config(&fake)).await;
    provider
        .create_worker(
            &id("w-1"),
            &WorkerSpec::default(),
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create");
    let uid = fake.pod(NS, "hodei-w-1").expect("pod")["metadata"]["uid"].clone();
    provider.terminate_worker(&id("w-1")).await.expect("delete");
    let deletes = fake.requests_with(Method::DELETE);
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].path, "/api/v1/namespaces/ci/pods/hodei-w-1");
    let options = deletes[0].body.clone().expect("delete options");
    assert_eq!(options["gracePeriodSeconds"], 7);
    assert_eq!(options["propagationPolicy"], "Background");
    assert_eq!(options["preconditions"]["uid"], uid);
    assert!(fake.pod(NS, "hodei-w-1").is_none());

    // Gone already: Ok, with no delete sent.
    provider
        .terminate_worker(&id("w-1"))
        .await
        .expect("missing pod is fine");
    assert_eq!(fake.requests_with(Method::DELETE).len(), 1);

    // Gone between our get and our delete: the API's 404 is Ok too.
    provider
        .create_worker(
            &id("w-2"),
            &WorkerSpec::default(),
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create");
    fake.fail_next_on(
        Method::DELETE,
        404,
        "NotFound",
        "pods \"hodei-w-2\" not found",
    );
    provider
        .terminate_worker(&id("w-2"))
        .await
        .expect("404 on delete is fine");

    // An id that cannot be a pod name never had a pod.
    fake.clear_requests();
    provider
        .terminate_worker(&id("w-"))
        .await
        .expect("nothing to do");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn terminate_leaves_pods_that_are_not_ours_alone() {
    let fake = FakeKubeApi::start().await;
    let provider = provider(config(&fake)).await;
    fake.insert_pod(NS, json!({ "metadata": { "name": "hodei-x" } }));
    fake.insert_pod(NS, our_pod("hodei-y", "y", "another-install"));
    provider.terminate_worker(&id("x")).await.expect("ok");
    provider.terminate_worker(&id("y")).await.expect("ok");
    assert!(fake.requests_with(Method::DELETE).is_empty());
    assert_eq!(fake.pod_names(NS), vec!["hodei-x", "hodei-y"]);
}

#[tokio::test]
async fn ids_that_cannot_be_pod_names_are_invalid_specs() {
    let fake = FakeKubeApi::start().await;
    let provider = provider(config(&fake)).await;
    for bad in ["ends-", "ends.", "ends_", "a..b"] {
        let error = provider
            .create_worker(
                &id(bad),
                &WorkerSpec::default(),
                &hodei_ports::AgentCredential::new("test-credential"),
            )
            .await
            .expect_err(bad);
        assert!(
            matches!(error, ProviderError::InvalidSpec(_)),
            "{bad}: {error}"
        );
    }
    assert!(fake.requests().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn api_errors_map_to_provider_errors() {
    let fake = FakeKubeApi::start().await;
    let provider = provider(config(&fake)).await;
    let spec = WorkerSpec::default();

    fake.fail_next(
        403,
        "Forbidden",
        "pods is forbidden: User \"system:serviceaccount:ci:hodei\" cannot create resource \"pods\"",
    );
    let error = provider
        .create_worker(
            &id("w-1"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect_err("403");
    assert!(
        matches!(&error, ProviderError::Failed(m) if m.contains("RBAC") && m.contains("cannot create resource")),
        "{error}"
    );

    fake.fail_next(401, "Unauthorized", "Unauthorized");
    let error = provider.list_workers().await.expect_err("401");
    assert!(
        matches!(&error, ProviderError::Failed(m) if m.contains("credentials")),
        "{error}"
    );

    let invalid = "Pod \"hodei-w-1\" is invalid: spec.containers[0].image: Required value";
    fake.fail_next(422, "Invalid", invalid);
    let error = provider
        .create_worker(
            &id("w-1"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect_err("422");
    assert!(
        matches!(&error, ProviderError::InvalidSpec(m) if m.contains(invalid)),
        "{error}"
    );

    fake.fail_next(
        400,
        "BadRequest",
        "quantities must match the regular expression",
    );
    let error = provider
        .create_worker(
            &id("w-1"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect_err("400");
    assert!(
        matches!(&error, ProviderError::InvalidSpec(m) if m.contains("quantities must match")),
        "{error}"
    );

    fake.fail_next(500, "InternalError", "etcdserver: request timed out");
    let error = provider
        .create_worker(
            &id("w-1"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect_err("500");
    assert!(
        matches!(&error, ProviderError::Unavailable(m) if m.contains("etcdserver")),
        "{error}"
    );
    assert!(error.is_retryable());

    fake.fail_next(
        429,
        "TooManyRequests",
        "too many requests, please try again later",
    );
    let error = provider.list_workers().await.expect_err("429");
    assert!(
        matches!(&error, ProviderError::Unavailable(m) if m.contains("429")),
        "{error}"
    );

    fake.fail_next(503, "ServiceUnavailable", "apiserver is shutting down");
    let error = provider
        .terminate_worker(&id("w-1"))
        .await
        .expect_err("503");
    assert!(error.is_retryable(), "{error}");

    // No retries behind the caller's back: one request per failed call.
    let failed_calls = 7;
    assert_eq!(fake.requests().len(), failed_calls);

    // And after all that, the API works again.
    provider
        .create_worker(
            &id("w-1"),
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create");
}

#[tokio::test]
async fn an_unreachable_api_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let provider = provider(KubernetesProviderConfig {
        server_url: "http://hodei:50051".to_owned(),
        access: KubernetesAccess::Url(url),
        ..KubernetesProviderConfig::default()
    })
    .await;
    let error = provider.list_workers().await.expect_err("refused");
    assert!(
        matches!(&error, ProviderError::Unavailable(m) if m.contains("cannot reach")),
        "{error}"
    );
    let error = provider
        .create_worker(
            &id("w-1"),
            &WorkerSpec::default(),
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect_err("refused");
    assert!(matches!(error, ProviderError::Unavailable(_)), "{error}");
}

#[tokio::test]
async fn an_api_that_does_not_answer_is_unavailable_after_the_timeout() {
    let fake = FakeKubeApi::start().await;
    let provider = provider(KubernetesProviderConfig {
        request_timeout: Duration::from_millis(300),
        ..config(&fake)
    })
    .await;
    fake.stall_next();
    let error = provider.list_workers().await.expect_err("stalled");
    assert!(
        matches!(&error, ProviderError::Unavailable(m) if m.contains("did not answer")),
        "{error}"
    );
}

#[tokio::test]
async fn a_kubeconfig_file_pointing_at_the_api_works() {
    let fake = FakeKubeApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: v1
kind: Config
current-context: elsewhere
clusters:
  - name: fake
    cluster:
      server: {url}
  - name: nowhere
    cluster:
      server: http://127.0.0.1:9
contexts:
  - name: fake
    context:
      cluster: fake
      user: hodei
      namespace: kube-ns
  - name: elsewhere
    context:
      cluster: nowhere
      user: hodei
users:
  - name: hodei
    user:
      token: kubeconfig-token
"#,
            url = fake.url()
        ),
    )
    .expect("write kubeconfig");
    let provider = provider(KubernetesProviderConfig {
        access: KubernetesAccess::Kubeconfig {
            path: path.clone(),
            context: Some("fake".to_owned()),
        },
        ..config(&fake)
    })
    .await;
    hodei_testkit::provider_contract(&provider, "kc").await;
    let requests = fake.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert_eq!(
            request.authorization.as_deref(),
            Some("Bearer kubeconfig-token"),
            "{} {}",
            request.method,
            request.path
        );
        // The provider's namespace wins over the context's.
        assert!(
            request.path.starts_with("/api/v1/namespaces/ci/pods"),
            "{}",
            request.path
        );
    }

    let error = KubernetesProvider::new(KubernetesProviderConfig {
        access: KubernetesAccess::Kubeconfig {
            path: dir.path().join("missing"),
            context: None,
        },
        ..config(&fake)
    })
    .await
    .expect_err("missing kubeconfig");
    assert!(matches!(error, ProviderError::Failed(_)), "{error}");
}

#[tokio::test]
async fn a_bad_config_is_refused() {
    let fake = FakeKubeApi::start().await;
    let error = KubernetesProvider::new(KubernetesProviderConfig {
        server_url: String::new(),
        ..config(&fake)
    })
    .await
    .expect_err("no server url");
    assert!(
        matches!(&error, ProviderError::Failed(m) if m.contains("server_url")),
        "{error}"
    );
    for instance in ["", "has space", "ends-", &"x".repeat(64)] {
        let error = KubernetesProvider::new(KubernetesProviderConfig {
            instance: instance.to_owned(),
            ..config(&fake)
        })
        .await
        .expect_err(instance);
        assert!(
            matches!(&error, ProviderError::Failed(m) if m.contains("instance")),
            "{error}"
        );
    }
}
