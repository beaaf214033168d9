//! Hodei's wire API, package `hodei.v1`: the code generated from `proto/hodei/v1`, the
//! conversions between wire and domain types, and [`SchedulerPortClient`], the
//! `SchedulerPort` over gRPC.
//!
//! Only this crate, the server and the agent know protobuf; `hodei-core` never does.

pub mod convert;
mod scheduler_client;
pub mod tls;

pub use scheduler_client::{ClientConfig, SchedulerPortClient};

/// Generated code for package `hodei.v1`.
#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("hodei.v1");
}

/// Attaches `Authorization: Bearer <token>` to every request.
#[derive(Debug, Clone)]
pub struct BearerToken {
    value: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl BearerToken {
    /// Fails when the token cannot be an HTTP header value.
    pub fn new(token: &str) -> Result<Self, hodei_core::ValidationError> {
        let value = format!("Bearer {token}").parse().map_err(|_| {
            hodei_core::ValidationError::new("token", "contains characters not allowed in a header")
        })?;
        Ok(Self { value })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.value.clone());
        Ok(request)
    }
}
