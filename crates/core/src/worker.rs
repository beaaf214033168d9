//! Workers as the scheduler sees them: identity, capabilities, metadata, and their validation.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Longest accepted worker id. Short enough to be a container name or, lower-cased,
/// a Kubernetes pod name with a prefix.
pub const MAX_WORKER_ID_LEN: usize = 63;
/// Most labels (and, separately, tags and custom resources) one worker may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label, tag, namespace or resource key.
pub const MAX_KEY_LEN: usize = 63;
/// Longest label value.
pub const MAX_VALUE_LEN: usize = 255;
/// Largest cpu count a worker may declare; anything above is a typo, not a machine.
pub const MAX_CPU_CORES: u32 = 1024;
/// Largest memory a worker may declare (16 TiB).
pub const MAX_MEMORY_MB: u64 = 16 * 1024 * 1024;

/// Labels and other string maps are ordered so that equality, hashing and output are stable.
pub type Labels = BTreeMap<String, String>;

/// Invalid input, naming the field that is wrong and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// Path of the offending field, such as `worker_id` or `capabilities.cpu_cores`.
    pub field: String,
    /// What is wrong with it, lowercase.
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A worker's identity: 1 to 63 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
// Shared, not copied: the dispatcher, the pool pass and the simulator clone ids on every
// decision, and a clone is then a reference count, not an allocation.
pub struct WorkerId(Arc<str>);

impl WorkerId {
    /// Validates and wraps an id.
    pub fn new(id: impl Into<String>) -> Result<Self, ValidationError> {
        let id = id.into();
        validate_name("worker_id", &id, MAX_WORKER_ID_LEN)?;
        Ok(Self(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for WorkerId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for WorkerId {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<WorkerId> for String {
    fn from(id: WorkerId) -> Self {
        id.0.to_string()
    }
}

impl AsRef<str> for WorkerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Checks a name-like string: non-empty, bounded, `[A-Za-z0-9._-]`, starting with an alphanumeric.
/// Label keys may also contain `/` (`team.example.com/owner`), see [`validate_key`].
fn validate_name(field: &str, value: &str, max_len: usize) -> Result<(), ValidationError> {
    validate_chars(field, value, max_len, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    })
}

/// Checks a label, tag, namespace or resource key.
pub fn validate_key(field: &str, value: &str) -> Result<(), ValidationError> {
    validate_chars(field, value, MAX_KEY_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
    })
}

fn validate_chars(
    field: &str,
    value: &str,
    max_len: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > max_len {
        return Err(ValidationError::new(
            field,
            format!(
                "is {} characters long, at most {max_len} allowed",
                value.len()
            ),
        ));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(ValidationError::new(
            field,
            "must start with a letter or a digit",
        ));
    }
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(ValidationError::new(
            field,
            format!("contains {bad:?}, only letters, digits, '.', '_' and '-' are allowed"),
        ));
    }
    Ok(())
}

/// Whether a worker belongs to a fixed-size pool or was provisioned on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerType {
    /// Pre-provisioned, kept warm by a static pool.
    Static,
    /// Provisioned on demand by a dynamic pool or an API call.
    Dynamic,
}

impl WorkerType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Dynamic => "dynamic",
        }
    }
}

impl fmt::Display for WorkerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkerType {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "static" => Ok(Self::Static),
            "dynamic" => Ok(Self::Dynamic),
            other => Err(ValidationError::new(
                "worker_type",
                format!("unknown worker type {other:?}, expected static or dynamic"),
            )),
        }
    }
}

/// How a worker comes to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Agent processes on the server's machine.
    Local,
    /// Containers through the Docker Engine API.
    Docker,
    /// Pods through the Kubernetes API.
    Kubernetes,
    /// An agent started by hand that registered itself; no provider manages it.
    External,
}

impl ProviderKind {
    /// How long a worker of this provider takes from the decision to create it to its
    /// agent connecting, by default (our measurements: local about 20 ms, Docker about
    /// 150 ms; Kubernetes depends on the cluster, 5 s assumed).
    pub fn default_start_latency_ms(self) -> u64 {
        match self {
            Self::Local | Self::External => 20,
            Self::Docker => 150,
            Self::Kubernetes => 5_000,
        }
    }

    /// What an operator adds to the server's configuration to switch this provider on.
    pub fn how_to_enable(self) -> &'static str {
        match self {
            Self::Local => "the local provider is always on",
            Self::External => "external workers are started by hand (hodei agent), not by a pool",
            Self::Docker => {
                "add a [docker] section to the server's configuration (an empty one takes \
                 the defaults), or run `hodei dev --provider docker`"
            }
            Self::Kubernetes => {
                "add a [kubernetes] section with server_url to the server's configuration"
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Docker => "docker",
            Self::Kubernetes => "kubernetes",
            Self::External => "external",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Self::Local),
            "docker" => Ok(Self::Docker),
            "kubernetes" => Ok(Self::Kubernetes),
            "external" => Ok(Self::External),
            other => Err(ValidationError::new(
                "provider",
                format!(
                    "unknown provider {other:?}, expected local, docker, kubernetes or external"
                ),
            )),
        }
    }
}

/// What a worker can run. The scheduler matches jobs against these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerCapabilities {
    pub cpu_cores: u32,
    pub memory_mb: u64,
    pub docker_enabled: bool,
    /// Countable extras such as `gpu = 1`.
    #[serde(default)]
    pub custom_resources: BTreeMap<String, u64>,
}

impl Default for WorkerCapabilities {
    /// A small build worker: 2 cores, 4 GiB, no Docker.
    fn default() -> Self {
        Self {
            cpu_cores: 2,
            memory_mb: 4096,
            docker_enabled: false,
            custom_resources: BTreeMap::new(),
        }
    }
}

impl WorkerCapabilities {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.cpu_cores == 0 || self.cpu_cores > MAX_CPU_CORES {
            return Err(ValidationError::new(
                "capabilities.cpu_cores",
                format!(
                    "is {}, must be between 1 and {MAX_CPU_CORES}",
                    self.cpu_cores
                ),
            ));
        }
        if self.memory_mb == 0 || self.memory_mb > MAX_MEMORY_MB {
            return Err(ValidationError::new(
                "capabilities.memory_mb",
                format!(
                    "is {}, must be between 1 and {MAX_MEMORY_MB}",
                    self.memory_mb
                ),
            ));
        }
        if self.custom_resources.len() > MAX_LABELS {
            return Err(ValidationError::new(
                "capabilities.custom_resources",
                format!(
                    "has {} entries, at most {MAX_LABELS} allowed",
                    self.custom_resources.len()
                ),
            ));
        }
        for key in self.custom_resources.keys() {
            validate_key("capabilities.custom_resources", key)?;
        }
        Ok(())
    }
}

/// Where a worker came from and how it is labelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerMetadata {
    pub worker_type: WorkerType,
    pub provider: ProviderKind,
    /// The pool that owns the worker, if any.
    #[serde(default)]
    pub pool: Option<String>,
    pub namespace: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub tags: Vec<String>,
    pub provision_timestamp: SystemTime,
}

impl WorkerMetadata {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(pool) = &self.pool {
            validate_name("metadata.pool", pool, MAX_KEY_LEN)?;
        }
        validate_key("metadata.namespace", &self.namespace)?;
        validate_labels("metadata.labels", &self.labels)?;
        if self.tags.len() > MAX_LABELS {
            return Err(ValidationError::new(
                "metadata.tags",
                format!("has {} tags, at most {MAX_LABELS} allowed", self.tags.len()),
            ));
        }
        for tag in &self.tags {
            validate_key("metadata.tags", tag)?;
        }
        Ok(())
    }
}

/// Checks a label map: bounded count, valid keys, bounded printable values.
pub fn validate_labels(field: &str, labels: &Labels) -> Result<(), ValidationError> {
    if labels.len() > MAX_LABELS {
        return Err(ValidationError::new(
            field,
            format!("has {} labels, at most {MAX_LABELS} allowed", labels.len()),
        ));
    }
    for (key, value) in labels {
        validate_key(field, key)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(ValidationError::new(
                format!("{field}[{key}]"),
                format!(
                    "value is {} characters long, at most {MAX_VALUE_LEN} allowed",
                    value.len()
                ),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(ValidationError::new(
                format!("{field}[{key}]"),
                "value contains control characters",
            ));
        }
    }
    Ok(())
}

/// What to provision: everything about a worker except its id, which the caller assigns.
/// This is the seed's `DynamicWorkerConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    #[serde(default = "default_worker_type")]
    pub worker_type: WorkerType,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub capabilities: WorkerCapabilities,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The image a container or pod runs (`docker`, `kubernetes`); the provider's default
    /// agent image when absent. Ignored by the `local` provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment variables set for the worker's agent (not for its jobs: a job's
    /// environment is its own spec's `env` plus the documented `HODEI_JOB_*` variables).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The user jobs run as, `uid[:gid]` or a user name, when the agent runs as root (in
    /// containers); jobs run as the agent's own user when absent. See [`validate_user`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Checks a job user: `uid`, `uid:gid` (decimal), or a user name
/// (`[a-z_][a-z0-9_-]*`, at most 32 characters). Root (`0`, `root`) is refused: the point
/// of the setting is a user that cannot read the agent's credential.
pub fn validate_user(field: &str, user: &str) -> Result<(), ValidationError> {
    let numeric = |text: &str| {
        !text.is_empty()
            && text.len() <= 10
            && text.bytes().all(|b| b.is_ascii_digit())
            && text.parse::<u32>().is_ok()
    };
    let ok = match user.split_once(':') {
        Some((uid, gid)) => numeric(uid) && numeric(gid),
        None => {
            numeric(user)
                || (user.len() <= 32
                    && user
                        .bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                    && user.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    }))
        }
    };
    if !ok {
        return Err(ValidationError::new(
            field,
            format!("{user:?} is not uid, uid:gid or a user name"),
        ));
    }
    let uid = user.split(':').next().unwrap_or(user);
    if uid == "root" || uid.parse::<u32>().is_ok_and(|uid| uid == 0) {
        return Err(ValidationError::new(field, "jobs must not run as root"));
    }
    Ok(())
}

fn default_worker_type() -> WorkerType {
    WorkerType::Dynamic
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl Default for WorkerSpec {
    fn default() -> Self {
        Self {
            worker_type: WorkerType::Dynamic,
            pool: None,
            namespace: default_namespace(),
            capabilities: WorkerCapabilities::default(),
            labels: Labels::new(),
            tags: Vec::new(),
            image: None,
            env: BTreeMap::new(),
            user: None,
        }
    }
}

/// A worker that exists (or existed) at a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub id: WorkerId,
    pub capabilities: WorkerCapabilities,
    pub metadata: WorkerMetadata,
}

impl Worker {
    /// The worker a provider creates from `spec`, stamped with `now`.
    pub fn from_spec(
        id: WorkerId,
        spec: &WorkerSpec,
        provider: ProviderKind,
        now: SystemTime,
    ) -> Self {
        Self {
            id,
            capabilities: spec.capabilities.clone(),
            metadata: WorkerMetadata {
                worker_type: spec.worker_type,
                provider,
                pool: spec.pool.clone(),
                namespace: spec.namespace.clone(),
                labels: spec.labels.clone(),
                tags: spec.tags.clone(),
                provision_timestamp: now,
            },
        }
    }

    /// Checks every field; the id was checked when it was built.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.capabilities.validate()?;
        self.metadata.validate()
    }

    pub fn worker_type(&self) -> WorkerType {
        self.metadata.worker_type
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn worker() -> Worker {
        Worker::from_spec(
            WorkerId::new("w-1").unwrap(),
            &WorkerSpec::default(),
            ProviderKind::Local,
            SystemTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn worker_ids_are_validated_and_name_the_field() {
        for ok in ["a", "w-1", "pool.default_7", &"x".repeat(MAX_WORKER_ID_LEN)] {
            assert!(WorkerId::new(ok).is_ok(), "{ok} should be accepted");
        }
        for (bad, why) in [
            ("", "empty"),
            ("-w", "start"),
            ("w 1", "' '"),
            ("w/1", "'/'"),
            ("wörker", "'ö'"),
            (&"x".repeat(MAX_WORKER_ID_LEN + 1), "at most"),
        ] {
            let err = WorkerId::new(bad).unwrap_err();
            assert_eq!(err.field, "worker_id");
            assert!(err.reason.contains(why), "{bad:?}: {}", err.reason);
        }
    }

    #[test]
    fn worker_id_deserialisation_validates() {
        assert!(serde_json::from_str::<WorkerId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<WorkerId>("\"not ok\"").is_err());
    }

    #[test]
    fn capabilities_reject_zero_and_absurd_values() {
        let mut w = worker();
        assert!(w.validate().is_ok());
        w.capabilities.cpu_cores = 0;
        assert_eq!(w.validate().unwrap_err().field, "capabilities.cpu_cores");
        w.capabilities.cpu_cores = MAX_CPU_CORES + 1;
        assert_eq!(w.validate().unwrap_err().field, "capabilities.cpu_cores");
        w.capabilities.cpu_cores = 4;
        w.capabilities.memory_mb = 0;
        assert_eq!(w.validate().unwrap_err().field, "capabilities.memory_mb");
        w.capabilities.memory_mb = 1024;
        w.capabilities.custom_resources.insert("bad key".into(), 1);
        assert_eq!(
            w.validate().unwrap_err().field,
            "capabilities.custom_resources"
        );
    }

    #[test]
    fn metadata_rejects_too_many_or_too_long_labels() {
        let mut w = worker();
        w.metadata.labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert_eq!(w.validate().unwrap_err().field, "metadata.labels");
        w.metadata.labels = [("os".to_owned(), "x".repeat(MAX_VALUE_LEN + 1))].into();
        assert_eq!(w.validate().unwrap_err().field, "metadata.labels[os]");
        w.metadata.labels = [("os".to_owned(), "linux\n".to_owned())].into();
        assert_eq!(w.validate().unwrap_err().field, "metadata.labels[os]");
        w.metadata.labels = [("team.example.com/owner".to_owned(), "ci".to_owned())].into();
        assert!(w.validate().is_ok());
        w.metadata.namespace = String::new();
        assert_eq!(w.validate().unwrap_err().field, "metadata.namespace");
    }

    #[test]
    fn enums_round_trip_through_strings() {
        for t in [WorkerType::Static, WorkerType::Dynamic] {
            assert_eq!(t.as_str().parse::<WorkerType>().unwrap(), t);
        }
        for p in [
            ProviderKind::Local,
            ProviderKind::Docker,
            ProviderKind::Kubernetes,
        ] {
            assert_eq!(p.as_str().parse::<ProviderKind>().unwrap(), p);
        }
        assert_eq!("vm".parse::<ProviderKind>().unwrap_err().field, "provider");
    }

    proptest! {
        #[test]
        fn accepted_ids_only_hold_safe_characters(s in "\\PC{0,80}") {
            if let Ok(id) = WorkerId::new(s.clone()) {
                prop_assert!(!id.as_str().is_empty() && id.as_str().len() <= MAX_WORKER_ID_LEN);
                prop_assert!(id.as_str().chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)));
            }
        }

        #[test]
        fn safe_ids_are_accepted(s in "[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}") {
            prop_assert!(WorkerId::new(s).is_ok());
        }
    }
}
