//! The `kubernetes` worker provider: every worker is a pod running `hodei agent`, created,
//! deleted and listed through the Kubernetes API with kube-rs.
//!
//! [`KubernetesProvider`] implements [`hodei_ports::WorkerProvider`] and mirrors the `local`
//! provider: the pod's `agent` container runs `agent --server URL --worker-id ID --label
//! k=v...` with `HODEI_TOKEN` (a plain value or a Secret reference) and optional
//! `HODEI_CA_CERT` in its environment. Pods are marked with
//! `app.kubernetes.io/managed-by=hodei` and `hodei.io/instance=<instance>`, so a restarted
//! server finds them again and the reconciler tells ours from strangers.
//!
//! Tested against a scripted fake API server (`tests/support`), not yet against a real
//! cluster.

mod config;
pub mod pod;
mod provider;

pub use config::{KubernetesAccess, KubernetesProviderConfig, PodOwner, PodTemplate, SecretKey};
pub use provider::KubernetesProvider;
