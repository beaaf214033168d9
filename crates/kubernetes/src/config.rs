//! How the provider is configured: where pods go, what they run, how the API is reached.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

/// How the provider reaches the Kubernetes API server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KubernetesAccess {
    /// What `kubectl` would use: `$KUBECONFIG` or `~/.kube/config` (its current context),
    /// else the in-cluster service account. The default.
    #[default]
    Infer,
    /// The pod's own service account only (token and CA under
    /// `/var/run/secrets/kubernetes.io/serviceaccount`, `KUBERNETES_SERVICE_HOST`), for a
    /// server that runs inside the cluster.
    InCluster,
    /// A kubeconfig file, with its current context unless `context` names another.
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
    },
    /// A plain URL and no credentials: `kubectl proxy` (`http://127.0.0.1:8001`), or a test
    /// API server.
    Url(String),
}

/// A key of a Kubernetes Secret in the provider's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKey {
    pub name: String,
    pub key: String,
}

impl SecretKey {
    /// The key `token` of the Secret `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key: "token".to_owned(),
        }
    }
}

/// The object that owns every worker pod, such as the server's own Deployment: deleting it
/// makes Kubernetes garbage-collect the pods. It must live in the provider's namespace
/// (owner references do not cross namespaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOwner {
    /// `apps/v1`, `v1`, ...
    pub api_version: String,
    /// `Deployment`, `StatefulSet`, `Pod`, ...
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// A pod to start from: the agent container (named `agent`) is added to it, or overrides
/// the one it has.
#[derive(Debug, Clone, PartialEq)]
pub enum PodTemplate {
    Pod(Box<Pod>),
    /// A file holding one Pod as YAML or JSON (`.json`), read once by
    /// [`crate::KubernetesProvider::new`].
    File(PathBuf),
}

/// See the crate docs; [`Default`] gives every documented default.
#[derive(Debug, Clone)]
pub struct KubernetesProviderConfig {
    /// The namespace every worker pod is created in and listed from, whatever the
    /// kubeconfig context says. Default `default`. (A `WorkerSpec`'s `namespace` is Hodei's,
    /// not Kubernetes'.)
    pub namespace: String,
    /// The image when a spec names none; its entrypoint must be the `hodei` binary, since
    /// the pod's arguments are `agent --server ...`. Default `hodei-agent:latest`.
    pub default_image: String,
    /// Where agents connect: a URL the pods can reach, such as the server's Service
    /// (`http://hodei.hodei-system.svc:50051`). Required; empty by default.
    pub server_url: String,
    /// The CA file agents trust for an `https://` server URL, as a path inside the pod (the
    /// pod template mounts it), passed as `HODEI_CA_CERT`.
    pub ca_cert_path: Option<String>,
    pub pod_template: Option<PodTemplate>,
    /// The pods' service account; the template's (or the namespace default) when `None`.
    pub service_account: Option<String>,
    /// The value of the `hodei.io/instance` label that tells this Hodei installation's pods
    /// from another's in the same namespace. A valid label value. Default `hodei`.
    pub instance: String,
    pub owner: Option<PodOwner>,
    /// The grace period a deleted pod gets to stop (`SIGTERM` to `SIGKILL`). Default 30 s.
    /// Zero asks Kubernetes to delete at once without waiting for the kubelet (a forced
    /// deletion); whole seconds only.
    pub delete_grace: Duration,
    pub access: KubernetesAccess,
    /// The longest one call to the API server may take before it counts as unavailable.
    /// Default 30 s.
    pub request_timeout: Duration,
}

impl Default for KubernetesProviderConfig {
    fn default() -> Self {
        Self {
            namespace: "default".to_owned(),
            default_image: "hodei-agent:latest".to_owned(),
            server_url: String::new(),
            ca_cert_path: None,
            pod_template: None,
            service_account: None,
            instance: "hodei".to_owned(),
            owner: None,
            delete_grace: Duration::from_secs(30),
            access: KubernetesAccess::Infer,
            request_timeout: Duration::from_secs(30),
        }
    }
}
