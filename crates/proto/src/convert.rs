//! Conversions between wire messages and domain types, with validation: anything that
//! crosses into the domain is checked, and a failure names the field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hodei_core::{
    ProviderKind, ValidationError, Worker, WorkerCapabilities, WorkerId, WorkerMetadata, WorkerType,
};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::v1;

/// Milliseconds since the Unix epoch; 0 for times before it.
pub fn to_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The instant `millis` after the Unix epoch (negative values clamp to the epoch).
pub fn from_millis(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

impl From<&WorkerCapabilities> for v1::WorkerCapabilities {
    fn from(c: &WorkerCapabilities) -> Self {
        Self {
            cpu_cores: c.cpu_cores,
            memory_mb: c.memory_mb,
            docker_enabled: c.docker_enabled,
            custom_resources: c.custom_resources.clone(),
        }
    }
}

impl From<v1::WorkerCapabilities> for WorkerCapabilities {
    fn from(c: v1::WorkerCapabilities) -> Self {
        Self {
            cpu_cores: c.cpu_cores,
            memory_mb: c.memory_mb,
            docker_enabled: c.docker_enabled,
            custom_resources: c.custom_resources,
        }
    }
}

impl From<&WorkerMetadata> for v1::WorkerMetadata {
    fn from(m: &WorkerMetadata) -> Self {
        Self {
            worker_type: m.worker_type.to_string(),
            provider: m.provider.to_string(),
            pool: m.pool.clone().unwrap_or_default(),
            namespace: m.namespace.clone(),
            labels: m.labels.clone(),
            tags: m.tags.clone(),
            provision_timestamp_ms: to_millis(m.provision_timestamp),
        }
    }
}

/// Metadata from the wire, where every field may be left empty: an outside client
/// registering a worker it started itself need say nothing but what the worker offers.
/// Empty `provider` is `external` (started by hand, not by a provider of this server),
/// empty `worker_type` is `dynamic` (no pool keeps it warm), a missing
/// `provision_timestamp_ms` is the time of registration.
fn metadata_from_wire(m: v1::WorkerMetadata) -> Result<WorkerMetadata, ValidationError> {
    let worker_type = if m.worker_type.is_empty() {
        WorkerType::Dynamic
    } else {
        m.worker_type
            .parse()
            .map_err(|e: ValidationError| ValidationError::new("metadata.worker_type", e.reason))?
    };
    let provider = if m.provider.is_empty() {
        ProviderKind::External
    } else {
        m.provider
            .parse()
            .map_err(|e: ValidationError| ValidationError::new("metadata.provider", e.reason))?
    };
    let provision_timestamp = if m.provision_timestamp_ms > 0 {
        from_millis(m.provision_timestamp_ms)
    } else {
        SystemTime::now()
    };
    Ok(WorkerMetadata {
        worker_type,
        provider,
        pool: (!m.pool.is_empty()).then_some(m.pool),
        namespace: if m.namespace.is_empty() {
            "default".to_owned()
        } else {
            m.namespace
        },
        labels: m.labels,
        tags: m.tags,
        provision_timestamp,
    })
}

/// The request that registers `worker`.
pub fn register_request(worker: &Worker) -> v1::RegisterWorkerRequest {
    v1::RegisterWorkerRequest {
        worker_id: worker.id.to_string(),
        capabilities: Some((&worker.capabilities).into()),
        metadata: Some((&worker.metadata).into()),
    }
}

/// The worker a request registers, validated field by field.
pub fn worker_from_request(request: v1::RegisterWorkerRequest) -> Result<Worker, ValidationError> {
    let id = WorkerId::new(request.worker_id)?;
    let capabilities = request
        .capabilities
        .ok_or_else(|| ValidationError::new("capabilities", "is required"))?;
    // Absent metadata is all defaults (see `metadata_from_wire`).
    let metadata = request.metadata.unwrap_or_default();
    let worker = Worker {
        id,
        capabilities: capabilities.into(),
        metadata: metadata_from_wire(metadata)?,
    };
    worker.validate()?;
    Ok(worker)
}

/// `INVALID_ARGUMENT` naming the field, in the message and as a `google.rpc.BadRequest`
/// field violation that clients can read back with [`validation_error`].
pub fn invalid_argument(error: &ValidationError) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        error.to_string(),
        ErrorDetails::with_bad_request_violation(error.field.clone(), error.reason.clone()),
    )
}

/// The field violation carried by an `INVALID_ARGUMENT` status, if any.
pub fn validation_error(status: &Status) -> Option<ValidationError> {
    let details = status.get_error_details();
    let violation = details.bad_request()?.field_violations.first()?;
    Some(ValidationError::new(
        violation.field.clone(),
        violation.description.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::{ProviderKind, WorkerSpec};

    fn worker() -> Worker {
        let mut spec = WorkerSpec::default();
        spec.labels.insert("os".into(), "linux".into());
        spec.capabilities.custom_resources.insert("gpu".into(), 1);
        spec.pool = Some("p".into());
        Worker::from_spec(
            WorkerId::new("w-1").unwrap(),
            &spec,
            ProviderKind::Docker,
            from_millis(1_700_000_000_123),
        )
    }

    #[test]
    fn workers_round_trip_through_the_wire() {
        let original = worker();
        assert_eq!(
            worker_from_request(register_request(&original)).unwrap(),
            original
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let mut request = register_request(&worker());
        request.worker_id = String::new();
        assert_eq!(worker_from_request(request).unwrap_err().field, "worker_id");

        let mut request = register_request(&worker());
        request.capabilities = None;
        assert_eq!(
            worker_from_request(request).unwrap_err().field,
            "capabilities"
        );

        let mut request = register_request(&worker());
        request.capabilities.as_mut().unwrap().cpu_cores = 0;
        assert_eq!(
            worker_from_request(request).unwrap_err().field,
            "capabilities.cpu_cores"
        );

        let mut request = register_request(&worker());
        request.metadata.as_mut().unwrap().worker_type = "weird".into();
        assert_eq!(
            worker_from_request(request).unwrap_err().field,
            "metadata.worker_type"
        );

        let mut request = register_request(&worker());
        request
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .insert("k".into(), "v".repeat(1000));
        assert_eq!(
            worker_from_request(request).unwrap_err().field,
            "metadata.labels[k]"
        );
    }

    #[test]
    fn the_field_survives_a_status() {
        let status = invalid_argument(&ValidationError::new("capabilities.memory_mb", "is 0"));
        assert_eq!(status.code(), Code::InvalidArgument);
        let back = validation_error(&status).unwrap();
        assert_eq!(back.field, "capabilities.memory_mb");
        assert_eq!(back.reason, "is 0");
    }
}
