//! What a worker pod looks like: its name, labels and agent container, built from a spec
//! and an optional template, and read back into a worker id. No IO here.

use std::collections::BTreeMap;

use hodei_core::{WorkerId, WorkerSpec};
use hodei_ports::ProviderError;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::config::KubernetesProviderConfig;

/// Marks every pod Hodei creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "hodei";
/// Which Hodei installation created the pod ([`KubernetesProviderConfig::instance`]).
pub const INSTANCE_LABEL: &str = "hodei.io/instance";
/// The worker id, for `kubectl get pods -l`; the annotation of the same name is the source
/// of truth.
pub const WORKER_ID_LABEL: &str = "hodei.io/worker-id";
/// The exact worker id (a pod name is lowercased).
pub const WORKER_ID_ANNOTATION: &str = "hodei.io/worker-id";
/// The worker's pool, when the pool name is a valid label value.
pub const POOL_LABEL: &str = "hodei.io/pool";
/// The name of the container that runs `hodei agent`.
pub const AGENT_CONTAINER: &str = "agent";

const POD_NAME_PREFIX: &str = "hodei-";

/// The pod name of worker `id`: `hodei-` and the id lowercased, `_` turned into `-`.
///
/// Worker ids are `[A-Za-z0-9._-]`, starting with a letter or digit, at most 63 long; a pod
/// name must be a DNS-1123 subdomain: dot-separated parts of lowercase letters, digits and
/// `-`, each starting and ending with a letter or digit. Ids that still break that rule (one
/// that ends in `.`, `-` or `_`, or has `..`, `.-`, `-.`) are refused as `InvalidSpec`. Ids
/// that differ only in case or in `_` against `-` share a pod name; the annotation tells
/// them apart, see [`crate::KubernetesProvider`].
pub fn pod_name(id: &WorkerId) -> Result<String, ProviderError> {
    let name: String = id
        .as_str()
        .chars()
        .map(|c| match c {
            '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    let name = format!("{POD_NAME_PREFIX}{name}");
    if is_dns_subdomain(&name) {
        Ok(name)
    } else {
        Err(ProviderError::InvalidSpec(format!(
            "worker id {id} cannot be a Kubernetes pod name ({name} is not a DNS-1123 \
             subdomain: it must not end in '.', '-' or '_', nor have '.' next to '.' or '-')"
        )))
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|part| {
            let bytes = part.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

/// A valid label value: at most 63 of `[A-Za-z0-9._-]`, starting and ending with a letter or
/// digit (or empty).
pub fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return true;
    }
    bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// The label selector that finds this installation's pods.
pub fn selector(instance: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{INSTANCE_LABEL}={instance}")
}

/// The pod for worker `id`: the template (if any) with our name, labels, annotation,
/// owner, restart policy, service account and `agent` container put over it.
pub fn build_pod(
    config: &KubernetesProviderConfig,
    template: Option<&Pod>,
    id: &WorkerId,
    spec: &WorkerSpec,
    credential: &str,
) -> Result<Pod, ProviderError> {
    let name = pod_name(id)?;
    let mut pod = template.cloned().unwrap_or_default();
    // What a template read back from a cluster may carry, and a create must not.
    pod.status = None;

    let metadata = &mut pod.metadata;
    metadata.name = Some(name);
    metadata.generate_name = None;
    metadata.namespace = Some(config.namespace.clone());
    metadata.uid = None;
    metadata.resource_version = None;
    metadata.creation_timestamp = None;
    metadata.deletion_timestamp = None;
    metadata.managed_fields = None;

    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
    labels.insert(INSTANCE_LABEL.to_owned(), config.instance.clone());
    // `pod_name` accepted the id, so it ends with a letter or digit: a valid label value.
    labels.insert(WORKER_ID_LABEL.to_owned(), id.as_str().to_owned());
    match spec.pool.as_deref() {
        Some(pool) if is_label_value(pool) => {
            labels.insert(POOL_LABEL.to_owned(), pool.to_owned());
        }
        Some(pool) => {
            tracing::debug!(worker_id = %id, pool, "pool name is not a label value, pod has no pool label");
            labels.remove(POOL_LABEL);
        }
        None => {
            labels.remove(POOL_LABEL);
        }
    }
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(WORKER_ID_ANNOTATION.to_owned(), id.as_str().to_owned());
    if let Some(owner) = &config.owner {
        let references = metadata.owner_references.get_or_insert_with(Vec::new);
        references.retain(|reference| reference.uid != owner.uid);
        // Not `controller` and not `blockOwnerDeletion`: both need more RBAC than a worker
        // provider should ask for, and garbage collection works without them.
        references.push(OwnerReference {
            api_version: owner.api_version.clone(),
            kind: owner.kind.clone(),
            name: owner.name.clone(),
            uid: owner.uid.clone(),
            controller: None,
            block_owner_deletion: None,
        });
    }

    let pod_spec = pod.spec.get_or_insert_with(PodSpec::default);
    // A finished agent is not restarted in place: the reconciler replaces the worker.
    pod_spec.restart_policy = Some("Never".to_owned());
    if let Some(account) = &config.service_account {
        pod_spec.service_account_name = Some(account.clone());
    }
    let containers = &mut pod_spec.containers;
    let index = match containers.iter().position(|c| c.name == AGENT_CONTAINER) {
        Some(index) => index,
        None => {
            // First, so that `kubectl logs` picks the agent by default.
            containers.insert(
                0,
                Container {
                    name: AGENT_CONTAINER.to_owned(),
                    ..Container::default()
                },
            );
            0
        }
    };
    fill_agent_container(&mut containers[index], config, id, spec, credential);
    Ok(pod)
}

fn fill_agent_container(
    container: &mut Container,
    config: &KubernetesProviderConfig,
    id: &WorkerId,
    spec: &WorkerSpec,
    credential: &str,
) {
    container.image = Some(
        spec.image
            .clone()
            .unwrap_or_else(|| config.default_image.clone()),
    );
    let mut args = vec![
        "agent".to_owned(),
        "--server".to_owned(),
        config.server_url.clone(),
        "--worker-id".to_owned(),
        id.as_str().to_owned(),
    ];
    for (key, value) in &spec.labels {
        args.push("--label".to_owned());
        args.push(format!("{key}={value}"));
    }
    if let Some(user) = &spec.user {
        args.push("--job-user".to_owned());
        args.push(user.clone());
    }
    container.args = Some(args);

    let mut ours = Vec::new();
    // The worker's own credential: it opens this worker's session and nothing else.
    ours.push(plain_env("HODEI_TOKEN", credential));
    if let Some(ca_cert) = &config.ca_cert_path {
        ours.push(plain_env("HODEI_CA_CERT", ca_cert));
    }
    for (key, value) in &spec.env {
        // The token and CA come from the provider, not from a spec.
        if key != "HODEI_TOKEN" && key != "HODEI_CA_CERT" {
            ours.push(plain_env(key, value));
        }
    }
    let env = container.env.get_or_insert_with(Vec::new);
    env.retain(|var| !ours.iter().any(|o| o.name == var.name));
    env.extend(ours);

    let capabilities = &spec.capabilities;
    let mut wanted = BTreeMap::new();
    if capabilities.cpu_cores > 0 {
        wanted.insert("cpu", Quantity(capabilities.cpu_cores.to_string()));
    }
    if capabilities.memory_mb > 0 {
        wanted.insert("memory", Quantity(format!("{}Mi", capabilities.memory_mb)));
    }
    if !wanted.is_empty() {
        let resources = container
            .resources
            .get_or_insert_with(ResourceRequirements::default);
        // Requests equal limits: the scheduler reserves what the worker advertises, and
        // the worker never gets less (Guaranteed QoS when cpu and memory are both set).
        for map in [&mut resources.requests, &mut resources.limits] {
            let map = map.get_or_insert_with(BTreeMap::new);
            for (resource, quantity) in &wanted {
                map.insert((*resource).to_owned(), quantity.clone());
            }
        }
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

/// Whether `pod` carries this installation's labels.
pub fn is_ours(pod: &Pod, instance: &str) -> bool {
    let Some(labels) = &pod.metadata.labels else {
        return false;
    };
    labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
        && labels.get(INSTANCE_LABEL).map(String::as_str) == Some(instance)
}

/// The worker a pod runs: from the annotation, else from the label.
pub fn worker_id_of(pod: &Pod) -> Option<WorkerId> {
    let from_annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WORKER_ID_ANNOTATION));
    let from_label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(WORKER_ID_LABEL));
    from_annotation
        .or(from_label)
        .and_then(|id| WorkerId::new(id.as_str()).ok())
}

/// Whether the pod is still a worker: not being deleted and not finished.
///
/// A pod whose agent exited (phase `Succeeded` or `Failed`) stays in the API until someone
/// deletes it; it is not listed, so the reconciler sees its worker as gone and terminates
/// it, which deletes the pod.
pub fn is_live(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> WorkerId {
        WorkerId::new(s).unwrap()
    }

    #[test]
    fn pod_names() {
        for (worker, name) in [
            ("w-1", "hodei-w-1"),
            ("Default-AB12", "hodei-default-ab12"),
            ("pool.default_7", "hodei-pool.default-7"),
            ("7", "hodei-7"),
        ] {
            assert_eq!(pod_name(&id(worker)).unwrap(), name);
        }
        for bad in ["w-", "w.", "w_", "a..b", "a.-b", "a-.b", "a._b"] {
            let error = pod_name(&id(bad)).unwrap_err();
            assert!(
                matches!(&error, ProviderError::InvalidSpec(m) if m.contains(bad)),
                "{bad}: {error}"
            );
        }
        assert!(pod_name(&id(&"x".repeat(63))).is_ok());
    }

    #[test]
    fn label_values() {
        assert!(is_label_value("default"));
        assert!(is_label_value("A.b_c-9"));
        assert!(is_label_value(""));
        assert!(!is_label_value("a-"));
        assert!(!is_label_value("a/b"));
        assert!(!is_label_value(&"x".repeat(64)));
    }

    #[test]
    fn zero_capabilities_set_no_resources() {
        let mut spec = WorkerSpec::default();
        spec.capabilities.cpu_cores = 0;
        spec.capabilities.memory_mb = 0;
        let pod = build_pod(
            &KubernetesProviderConfig::default(),
            None,
            &id("w"),
            &spec,
            "real",
        )
        .unwrap();
        let agent = &pod.spec.unwrap().containers[0];
        assert_eq!(agent.resources, None);
    }

    #[test]
    fn spec_cannot_override_the_token() {
        let mut spec = WorkerSpec::default();
        spec.env.insert("HODEI_TOKEN".into(), "stolen".into());
        spec.env.insert("A".into(), "1".into());
        let config = KubernetesProviderConfig::default();
        let pod = build_pod(&config, None, &id("w"), &spec, "real").unwrap();
        let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
        let tokens: Vec<_> = env.iter().filter(|e| e.name == "HODEI_TOKEN").collect();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].value.as_deref(), Some("real"));
        assert!(env.iter().any(|e| e.name == "A"));
    }

    #[test]
    fn finished_and_terminating_pods_are_not_live() {
        use k8s_openapi::api::core::v1::PodStatus;
        let mut pod = Pod::default();
        assert!(is_live(&pod));
        for phase in ["Pending", "Running", "Unknown"] {
            pod.status = Some(PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            });
            assert!(is_live(&pod), "{phase}");
        }
        for phase in ["Succeeded", "Failed"] {
            pod.status = Some(PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            });
            assert!(!is_live(&pod), "{phase}");
        }
    }
}
