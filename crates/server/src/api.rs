//! JSON types of the REST API (`/api/v1`). The CLI decodes the same types. Conversions from
//! domain types live here, at the edge; `hodei-core` never sees these.

use std::collections::BTreeMap;
use std::time::SystemTime;

use hodei_core::health::Liveness;
use hodei_core::{PoolSpec, Worker, WorkerCapabilities};
use hodei_modules::RegisteredWorker;
use hodei_ports::WorkerRecord;
use serde::{Deserialize, Serialize};

/// A worker as `GET /api/v1/workers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub id: String,
    pub pool: Option<String>,
    pub provider: String,
    pub worker_type: String,
    pub state: String,
    /// Whether the scheduler holds a registration for the worker.
    pub registered: bool,
    /// Whether the worker's agent has its session with this server open.
    #[serde(default)]
    pub connected: bool,
    /// When the agent was last heard from (RFC 3339), if ever.
    #[serde(default)]
    pub last_seen: Option<String>,
    pub capabilities: WorkerCapabilities,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub tags: Vec<String>,
    /// RFC 3339.
    pub provisioned_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

impl WorkerView {
    /// A recorded worker, with what the scheduler registry says of it (if it is in this
    /// server's registry).
    pub fn new(record: &WorkerRecord, registration: Option<&RegisteredWorker>) -> Self {
        let mut view = Self::from_worker(&record.worker, record.state.as_str(), record.updated_at);
        view.registered = record.registered || registration.is_some();
        view.apply(registration);
        view
    }

    /// A worker only the scheduler knows: an agent started by hand, or one registered by
    /// another server's worker management.
    pub fn registered_only(entry: &RegisteredWorker) -> Self {
        let state = match entry.liveness {
            Liveness::Healthy => "idle",
            Liveness::Unhealthy | Liveness::Gone => "unhealthy",
        };
        let mut view = Self::from_worker(&entry.worker, state, entry.registered_at);
        view.registered = true;
        view.apply(Some(entry));
        view
    }

    fn apply(&mut self, registration: Option<&RegisteredWorker>) {
        if let Some(entry) = registration {
            self.connected = entry.connected;
            self.last_seen = entry.last_seen.map(rfc3339);
        }
    }

    fn from_worker(worker: &Worker, state: &str, updated_at: SystemTime) -> Self {
        Self {
            id: worker.id.to_string(),
            pool: worker.metadata.pool.clone(),
            provider: worker.metadata.provider.to_string(),
            worker_type: worker.metadata.worker_type.to_string(),
            state: state.to_owned(),
            registered: false,
            connected: false,
            last_seen: None,
            capabilities: worker.capabilities.clone(),
            namespace: worker.metadata.namespace.clone(),
            labels: worker.metadata.labels.clone(),
            tags: worker.metadata.tags.clone(),
            provisioned_at: rfc3339(worker.metadata.provision_timestamp),
            updated_at: rfc3339(updated_at),
        }
    }
}

/// `GET /api/v1/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerList {
    pub workers: Vec<WorkerView>,
}

/// A pool as `GET /api/v1/pools` shows it: its definition and its live workers by state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    pub provider: String,
    pub size: u32,
    /// Live workers of the pool.
    pub workers: usize,
    /// Live workers by lifecycle state.
    pub states: BTreeMap<String, usize>,
    pub spec: PoolSpec,
}

/// `GET /api/v1/pools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}

/// Every error response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The gRPC status code name, the same in both APIs: `INVALID_ARGUMENT`, `NOT_FOUND`...
    pub code: String,
    pub message: String,
    /// The offending field, for `INVALID_ARGUMENT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
