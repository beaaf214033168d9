//! Adapters: the real implementations behind `hodei-ports` that need no heavy dependency.
//! The SQLite store lives in `hodei-store`, the gRPC client in its own crate.

pub mod local_provider;
pub mod worker_registration;

pub use local_provider::{LocalProvider, LocalProviderConfig};
pub use worker_registration::{
    RegistrationConfig, RegistrationMetrics, WorkerRegistrationAdapter, WorkerRegistrationPort,
};
