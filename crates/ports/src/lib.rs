//! Ports: the traits through which Hodei's logic reaches real IO. Each has a real adapter
//! and an in-memory fake in `hodei-testkit` that passes the same contract tests.

pub mod agent_link;
pub mod scheduler_port;
pub mod store;
pub mod worker_provider;
pub mod worker_registration;

pub use agent_link::{AgentLink, LinkError};
pub use scheduler_port::{SchedulerError, SchedulerPort};
pub use store::{
    CredentialRecord, JobFilter, LogChunk, LogStream, Store, WorkerFilter, WorkerRecord,
};
pub use worker_provider::{AgentCredential, ProviderError, WorkerProvider};
pub use worker_registration::{RegistrationError, WorkerRegistrationPort};
