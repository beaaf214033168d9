//! The policy simulator behind `hodei simulate`: replays a job trace against one or more
//! configurations through the same decisions the server makes (`hodei-core`'s dispatcher
//! state machine, weighted fair share and the pool pass with its autoscaler) on a virtual
//! clock, and reports waits, SLA met, tenant shares, worker-seconds by state, cost,
//! scaling decisions and peak workers per configuration.
//!
//! Its plotting dependency lives here, out of the server and the core.

pub mod config;
pub mod engine;
pub mod export;
pub mod generate;
pub mod html;
pub mod report;
pub mod trace;

pub use config::SimConfig;
pub use engine::simulate;
pub use report::RunReport;
