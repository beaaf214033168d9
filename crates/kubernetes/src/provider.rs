//! `KubernetesProvider`: the `WorkerProvider` port on the pods API, and the table that turns
//! API errors into provider errors.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hodei_core::{ProviderKind, Worker, WorkerId, WorkerSpec};
use hodei_ports::{AgentCredential, ProviderError, WorkerProvider};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions, PropagationPolicy};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::config::{KubernetesAccess, KubernetesProviderConfig, PodTemplate};
use crate::pod;

/// Pods listed per page.
const LIST_PAGE: u32 = 500;

/// The `kubernetes` worker provider: every worker is a pod running `hodei agent`.
///
/// * `create_worker` creates the pod `hodei-<id>` (see [`pod::pod_name`]) and returns once
///   the API server accepted it; the agent connects back when the pod runs. If the pod
///   already exists and is this installation's live pod for the same worker id (a retried
///   create whose first answer was lost), that counts as created. A pod of that name that
///   is being deleted is `Unavailable` (retry later); one that belongs to someone else,
///   another worker id, or has finished is `Failed`.
/// * `terminate_worker` deletes the pod with [`KubernetesProviderConfig::delete_grace`],
///   only if it is ours (checked by labels, then deleted with a uid precondition); a pod
///   that is gone, or was never ours, is `Ok`.
/// * `list_workers` lists pods labelled `app.kubernetes.io/managed-by=hodei` and
///   `hodei.io/instance=<instance>`, skips those being deleted or finished (`Succeeded`,
///   `Failed`: the reconciler then terminates their worker, which deletes the pod), and
///   returns the worker ids from the `hodei.io/worker-id` annotation, sorted.
///
/// Errors: no answer (connection refused, timeout, reset), HTTP 429 and 5xx are
/// `Unavailable`; 401 and 403 are `Failed`, naming credentials and RBAC; 400 and 422 are
/// `InvalidSpec` with the API server's message; anything else is `Failed`. The client does
/// not retry on its own: the caller's policy decides, on `Unavailable` only.
#[derive(Clone)]
pub struct KubernetesProvider {
    config: KubernetesProviderConfig,
    template: Option<Pod>,
    pods: Api<Pod>,
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider")
            .field("namespace", &self.config.namespace)
            .field("instance", &self.config.instance)
            .field("access", &self.config.access)
            .finish_non_exhaustive()
    }
}

impl KubernetesProvider {
    /// Checks the config, reads the pod template file and builds the API client.
    ///
    /// It does not call the API server: a cluster that is down at start-up shows up as
    /// `Unavailable` on the first call, not as a failed start. A bad config (an instance
    /// that is not a label value, an empty namespace or server URL, an unreadable template
    /// or kubeconfig, no config to infer) is `Failed`.
    pub async fn new(config: KubernetesProviderConfig) -> Result<Self, ProviderError> {
        if config.instance.is_empty() || !pod::is_label_value(&config.instance) {
            return Err(config_error(format!(
                "instance {:?} is not a Kubernetes label value (1 to 63 of [A-Za-z0-9._-], \
                 starting and ending with a letter or digit)",
                config.instance
            )));
        }
        if config.namespace.is_empty() {
            return Err(config_error("namespace is empty".to_owned()));
        }
        if config.server_url.is_empty() {
            return Err(config_error(
                "server_url is empty: agents in pods need a URL of the server they can reach"
                    .to_owned(),
            ));
        }
        let template = match &config.pod_template {
            None => None,
            Some(PodTemplate::Pod(pod)) => Some((**pod).clone()),
            Some(PodTemplate::File(path)) => Some(read_template(path)?),
        };
        let mut client_config = match &config.access {
            KubernetesAccess::Infer => Config::infer()
                .await
                .map_err(|e| config_error(format!("cannot infer how to reach Kubernetes: {e}")))?,
            KubernetesAccess::InCluster => Config::incluster().map_err(|e| {
                config_error(format!("cannot use the in-cluster service account: {e}"))
            })?,
            KubernetesAccess::Kubeconfig { path, context } => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                    config_error(format!("cannot read kubeconfig {}: {e}", path.display()))
                })?;
                let options = KubeConfigOptions {
                    context: context.clone(),
                    ..KubeConfigOptions::default()
                };
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| {
                        config_error(format!("cannot use kubeconfig {}: {e}", path.display()))
                    })?
            }
            KubernetesAccess::Url(url) => Config::new(url.parse().map_err(|e| {
                config_error(format!("kubernetes API url {url:?} is not a URL: {e}"))
            })?),
        };
        // Retries are the caller's decision (it sees `Unavailable`); two retry loops stacked
        // would multiply the wait.
        client_config.default_retry = false;
        // Each call is bounded as a whole by `request_timeout` (see `call`).
        client_config.connect_timeout = Some(config.request_timeout.min(Duration::from_secs(10)));
        let client = Client::try_from(client_config)
            .map_err(|e| config_error(format!("cannot build the Kubernetes client: {e}")))?;
        let pods = Api::namespaced(client, &config.namespace);
        Ok(Self {
            config,
            template,
            pods,
        })
    }

    /// The config this provider runs with.
    pub fn config(&self) -> &KubernetesProviderConfig {
        &self.config
    }

    /// The pod `create_worker` would send for `id`, `spec` and the worker's credential.
    pub fn pod_for(
        &self,
        id: &WorkerId,
        spec: &WorkerSpec,
        credential: &AgentCredential,
    ) -> Result<Pod, ProviderError> {
        pod::build_pod(
            &self.config,
            self.template.as_ref(),
            id,
            spec,
            credential.expose(),
        )
    }

    async fn call<T>(
        &self,
        action: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ApiFailure> {
        match tokio::time::timeout(self.config.request_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(kube::Error::Api(status))) => Err(ApiFailure::Status {
                code: status.code,
                reason: status.reason.clone(),
                error: map_status(action, &self.config.namespace, &status),
            }),
            Ok(Err(error)) => Err(ApiFailure::Other(map_error(action, error))),
            Err(_) => Err(ApiFailure::Other(ProviderError::Unavailable(format!(
                "{action}: the Kubernetes API did not answer within {:?}",
                self.config.request_timeout
            )))),
        }
    }

    /// A create answered 409: decide whether the existing pod is the worker we wanted.
    async fn adopt_existing(&self, id: &WorkerId, name: &str) -> Result<(), ProviderError> {
        let existing = self
            .call("get existing pod", self.pods.get_opt(name))
            .await
            .map_err(ApiFailure::into_error)?;
        let Some(existing) = existing else {
            // Deleted between our create and our get: the name is free again, soon.
            return Err(ProviderError::Unavailable(format!(
                "pod {name} existed a moment ago and is gone now; retry"
            )));
        };
        if !pod::is_ours(&existing, &self.config.instance) {
            return Err(ProviderError::Failed(format!(
                "pod {name} already exists in namespace {} and was not created by this hodei \
                 instance ({})",
                self.config.namespace, self.config.instance
            )));
        }
        match pod::worker_id_of(&existing) {
            Some(other) if &other == id => {}
            other => {
                return Err(ProviderError::Failed(format!(
                    "pod {name} already exists for worker {}; worker ids that differ only in \
                     case or '_' against '-' share a pod name",
                    other.map_or_else(|| "<unknown>".to_owned(), |o| o.to_string())
                )));
            }
        }
        if existing.metadata.deletion_timestamp.is_some() {
            return Err(ProviderError::Unavailable(format!(
                "pod {name} of worker {id} is still being deleted; retry"
            )));
        }
        if !pod::is_live(&existing) {
            return Err(ProviderError::Failed(format!(
                "pod {name} of worker {id} exists and has finished; terminate the worker first"
            )));
        }
        tracing::info!(worker_id = %id, pod = name, "pod already exists, treating it as created");
        Ok(())
    }
}

/// What one API call returned instead of a value: the provider error, plus the status code
/// when the API server answered, so callers can treat 404 and 409 on their own.
enum ApiFailure {
    Status {
        code: u16,
        reason: String,
        error: ProviderError,
    },
    Other(ProviderError),
}

impl ApiFailure {
    fn into_error(self) -> ProviderError {
        match self {
            Self::Status { error, .. } | Self::Other(error) => error,
        }
    }
}

fn config_error(message: String) -> ProviderError {
    ProviderError::Failed(format!("kubernetes provider config: {message}"))
}

fn read_template(path: &std::path::Path) -> Result<Pod, ProviderError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(format!("cannot read pod template {}: {e}", path.display())))?;
    let is_json = path.extension().is_some_and(|ext| ext == "json");
    let parsed: Result<Pod, String> = if is_json {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        // Through a JSON value, so the Kubernetes types see the same input as from JSON.
        serde_saphyr::from_str::<serde_json::Value>(&text)
            .map_err(|e| e.to_string())
            .and_then(|value| serde_json::from_value(value).map_err(|e| e.to_string()))
    };
    parsed.map_err(|e| config_error(format!("pod template {} is not a Pod: {e}", path.display())))
}

/// The API server answered with an error status.
fn map_status(action: &str, namespace: &str, status: &kube::core::Status) -> ProviderError {
    let code = status.code;
    let message = if status.message.is_empty() {
        status.reason.clone()
    } else {
        status.message.clone()
    };
    match code {
        400 | 422 => ProviderError::InvalidSpec(format!(
            "{action}: the Kubernetes API rejected the pod ({code}): {message}"
        )),
        401 => ProviderError::Failed(format!(
            "{action}: the Kubernetes API did not accept our credentials (401 Unauthorized): \
             {message}; check the kubeconfig or service account token"
        )),
        403 => ProviderError::Failed(format!(
            "{action}: forbidden by Kubernetes RBAC (403): {message}; the provider's account \
             needs get, list, create and delete on pods in namespace {namespace}"
        )),
        429 => ProviderError::Unavailable(format!(
            "{action}: the Kubernetes API is throttling us (429): {message}"
        )),
        500..=599 => ProviderError::Unavailable(format!(
            "{action}: the Kubernetes API failed ({code}): {message}"
        )),
        404 => ProviderError::Failed(format!(
            "{action}: not found (404): {message}; does namespace {namespace} exist?"
        )),
        _ => ProviderError::Failed(format!(
            "{action}: the Kubernetes API answered {code}: {message}"
        )),
    }
}

/// The request got no usable answer.
fn map_error(action: &str, error: kube::Error) -> ProviderError {
    match error {
        // Connection refused or reset, DNS, TLS handshake, timeouts in the client's stack.
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            ProviderError::Unavailable(format!(
                "{action}: cannot reach the Kubernetes API: {}",
                error_chain(&error)
            ))
        }
        kube::Error::Auth(_) => ProviderError::Failed(format!(
            "{action}: cannot get credentials for the Kubernetes API: {}",
            error_chain(&error)
        )),
        other => ProviderError::Failed(format!("{action}: {}", error_chain(&other))),
    }
}

/// An error and its sources, since "service error" alone does not say connection refused.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[async_trait]
impl WorkerProvider for KubernetesProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Kubernetes
    }

    async fn create_worker(
        &self,
        id: &WorkerId,
        spec: &WorkerSpec,
        credential: &AgentCredential,
    ) -> Result<Worker, ProviderError> {
        let pod = self.pod_for(id, spec, credential)?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        match self
            .call("create pod", self.pods.create(&PostParams::default(), &pod))
            .await
        {
            Ok(_) => {
                tracing::info!(worker_id = %id, pod = %name, namespace = %self.config.namespace, "worker pod created");
            }
            Err(ApiFailure::Status { code: 409, .. }) => self.adopt_existing(id, &name).await?,
            Err(failure) => return Err(failure.into_error()),
        }
        Ok(Worker::from_spec(
            id.clone(),
            spec,
            ProviderKind::Kubernetes,
            SystemTime::now(),
        ))
    }

    async fn terminate_worker(&self, id: &WorkerId) -> Result<(), ProviderError> {
        // An id that cannot be a pod name never had a pod.
        let Ok(name) = pod::pod_name(id) else {
            return Ok(());
        };
        let existing = self
            .call("get pod", self.pods.get_opt(&name))
            .await
            .map_err(ApiFailure::into_error)?;
        let Some(existing) = existing else {
            return Ok(());
        };
        if !pod::is_ours(&existing, &self.config.instance)
            || pod::worker_id_of(&existing).as_ref() != Some(id)
        {
            tracing::warn!(worker_id = %id, pod = %name, "pod of that name is not this worker's, leaving it alone");
            return Ok(());
        }
        let params = DeleteParams {
            grace_period_seconds: Some(
                u32::try_from(self.config.delete_grace.as_secs()).unwrap_or(u32::MAX),
            ),
            propagation_policy: Some(PropagationPolicy::Background),
            // Delete the pod we just checked, not one created since under the same name.
            preconditions: Some(Preconditions {
                uid: existing.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self
            .call("delete pod", self.pods.delete(&name, &params))
            .await
        {
            Ok(_) | Err(ApiFailure::Status { code: 404, .. }) => {
                tracing::info!(worker_id = %id, pod = %name, "worker pod deleted");
                Ok(())
            }
            Err(ApiFailure::Status {
                code: 409, reason, ..
            }) => Err(ProviderError::Unavailable(format!(
                "delete pod: pod {name} changed while deleting it ({reason}); retry"
            ))),
            Err(failure) => Err(failure.into_error()),
        }
    }

    async fn list_workers(&self) -> Result<Vec<WorkerId>, ProviderError> {
        let selector = pod::selector(&self.config.instance);
        let mut params = ListParams::default().labels(&selector).limit(LIST_PAGE);
        let mut workers = Vec::new();
        loop {
            let page = self
                .call("list pods", self.pods.list(&params))
                .await
                .map_err(ApiFailure::into_error)?;
            for pod in page.items.iter().filter(|pod| pod::is_live(pod)) {
                match pod::worker_id_of(pod) {
                    Some(id) => workers.push(id),
                    None => tracing::warn!(
                        pod = pod.metadata.name.as_deref().unwrap_or_default(),
                        "pod has hodei labels but no worker id, ignoring it"
                    ),
                }
            }
            match page.metadata.continue_.filter(|token| !token.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        workers.sort();
        workers.dedup();
        Ok(workers)
    }
}
