//! A scripted fake Kubernetes API server for tests: just enough of
//! `/api/v1/namespaces/{ns}/pods` (create, list with `labelSelector`, get, delete) over plain
//! HTTP on 127.0.0.1, with pods in memory. It records every request and can be told to fail
//! or stall the next one. Test-only; nothing in the product uses it.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub body: Option<Value>,
    pub authorization: Option<String>,
}

#[derive(Debug, Clone)]
enum Script {
    /// Answer with this status code and a Kubernetes `Status` body.
    Fail {
        code: u16,
        reason: String,
        message: String,
    },
    /// Never answer.
    Stall,
}

#[derive(Debug, Default)]
struct Fake {
    /// (namespace, name) -> pod as JSON.
    pods: BTreeMap<(String, String), Value>,
    requests: Vec<Recorded>,
    /// Each applies to the next request whose method matches (any method when `None`).
    scripts: VecDeque<(Option<Method>, Script)>,
    next_uid: u64,
    /// Deletes with a grace period mark the pod terminating instead of removing it.
    graceful_deletes: bool,
}

type Shared = Arc<Mutex<Fake>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Fake> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// See the module docs. The server stops when this is dropped.
#[derive(Debug)]
pub struct FakeKubeApi {
    addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKubeApi {
    pub async fn start() -> Self {
        let state: Shared = Arc::default();
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake api");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake api serves");
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next request fails with `code` and a `Status` body with `reason` and `message`.
    pub fn fail_next(&self, code: u16, reason: &str, message: &str) {
        self.script(None, code, reason, message);
    }

    /// The next request with `method` fails; others pass.
    pub fn fail_next_on(&self, method: Method, code: u16, reason: &str, message: &str) {
        self.script(Some(method), code, reason, message);
    }

    fn script(&self, method: Option<Method>, code: u16, reason: &str, message: &str) {
        lock(&self.state).scripts.push_back((
            method,
            Script::Fail {
                code,
                reason: reason.to_owned(),
                message: message.to_owned(),
            },
        ));
    }

    /// The next request gets no answer at all.
    pub fn stall_next(&self) {
        lock(&self.state).scripts.push_back((None, Script::Stall));
    }

    pub fn graceful_deletes(&self, on: bool) {
        lock(&self.state).graceful_deletes = on;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    pub fn requests_with(&self, method: Method) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method)
            .collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.state).requests.clear();
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.state)
            .pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn pod_names(&self, namespace: &str) -> Vec<String> {
        lock(&self.state)
            .pods
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// Stores `pod` as if someone else created it.
    pub fn insert_pod(&self, namespace: &str, mut pod: Value) {
        let mut fake = lock(&self.state);
        fake.next_uid += 1;
        let uid = format!("uid-{}", fake.next_uid);
        let name = pod["metadata"]["name"]
            .as_str()
            .expect("pod has a name")
            .to_owned();
        pod["metadata"]["uid"] = json!(uid);
        pod["metadata"]["namespace"] = json!(namespace);
        pod["apiVersion"] = json!("v1");
        pod["kind"] = json!("Pod");
        fake.pods.insert((namespace.to_owned(), name), pod);
    }

    /// Changes a stored pod in place.
    pub fn edit_pod(&self, namespace: &str, name: &str, edit: impl FnOnce(&mut Value)) {
        let mut fake = lock(&self.state);
        let pod = fake
            .pods
            .get_mut(&(namespace.to_owned(), name.to_owned()))
            .expect("pod exists");
        edit(pod);
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn ok(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

fn matches_selector(pod: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector
        .split(',')
        .filter(|term| !term.is_empty())
        .all(|term| {
            let (key, value) = term.split_once('=').unwrap_or((term, ""));
            pod["metadata"]["labels"][key].as_str() == Some(value)
        })
}

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body_json: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    let script = {
        let mut fake = lock(&state);
        fake.requests.push(Recorded {
            method: method.clone(),
            path: uri.path().to_owned(),
            query: query.clone(),
            body: body_json.clone(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        });
        let position = fake
            .scripts
            .iter()
            .position(|(m, _)| m.as_ref().is_none_or(|m| *m == method));
        position
            .and_then(|i| fake.scripts.remove(i))
            .map(|(_, s)| s)
    };
    match script {
        Some(Script::Fail {
            code,
            reason,
            message,
        }) => return status(code, &reason, &message),
        Some(Script::Stall) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return status(504, "Timeout", "stalled");
        }
        None => {}
    }

    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (namespace, name) = match segments.as_slice() {
        ["api", "v1", "namespaces", ns, "pods"] => ((*ns).to_owned(), None),
        ["api", "v1", "namespaces", ns, "pods", name] => ((*ns).to_owned(), Some(*name)),
        _ => {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
    };
    let mut fake = lock(&state);
    match (method, name) {
        (Method::POST, None) => {
            let Some(mut pod) = body_json else {
                return status(400, "BadRequest", "no body");
            };
            let Some(name) = pod["metadata"]["name"].as_str().map(str::to_owned) else {
                return status(
                    422,
                    "Invalid",
                    "Pod \"\" is invalid: metadata.name: Required value",
                );
            };
            let key = (namespace.clone(), name.clone());
            if fake.pods.contains_key(&key) {
                return status(
                    409,
                    "AlreadyExists",
                    &format!("pods \"{name}\" already exists"),
                );
            }
            fake.next_uid += 1;
            pod["metadata"]["uid"] = json!(format!("uid-{}", fake.next_uid));
            pod["metadata"]["namespace"] = json!(namespace);
            pod["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            pod["status"] = json!({ "phase": "Pending" });
            fake.pods.insert(key, pod.clone());
            ok(StatusCode::CREATED, pod)
        }
        (Method::GET, None) => {
            let items: Vec<Value> = fake
                .pods
                .iter()
                .filter(|((ns, _), pod)| {
                    *ns == namespace && matches_selector(pod, query.get("labelSelector"))
                })
                .map(|(_, pod)| pod.clone())
                .collect();
            ok(
                StatusCode::OK,
                json!({
                    "apiVersion": "v1",
                    "kind": "PodList",
                    "metadata": { "resourceVersion": "1" },
                    "items": items,
                }),
            )
        }
        (Method::GET, Some(name)) => match fake.pods.get(&(namespace, name.to_owned())) {
            Some(pod) => ok(StatusCode::OK, pod.clone()),
            None => status(404, "NotFound", &format!("pods \"{name}\" not found")),
        },
        (Method::DELETE, Some(name)) => {
            let key = (namespace, name.to_owned());
            let Some(pod) = fake.pods.get(&key).cloned() else {
                return status(404, "NotFound", &format!("pods \"{name}\" not found"));
            };
            let options = body_json.unwrap_or(Value::Null);
            if let Some(uid) = options["preconditions"]["uid"].as_str()
                && pod["metadata"]["uid"].as_str() != Some(uid)
            {
                return status(
                    409,
                    "Conflict",
                    &format!("Precondition failed: UID in precondition: {uid}"),
                );
            }
            let grace = options["gracePeriodSeconds"].as_u64().unwrap_or(30);
            if fake.graceful_deletes && grace > 0 {
                let pod = fake.pods.get_mut(&key).expect("checked above");
                pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:01:00Z");
                pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                ok(StatusCode::OK, pod.clone())
            } else {
                fake.pods.remove(&key);
                ok(StatusCode::OK, pod)
            }
        }
        _ => status(405, "MethodNotAllowed", "not supported by the fake"),
    }
}
