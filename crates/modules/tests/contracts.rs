//! The in-process scheduler registry passes the `SchedulerPort` contract the gRPC client
//! and the fake scheduler pass too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hodei_modules::SchedulerRegistry;
use hodei_testkit::scheduler_contract;

#[tokio::test]
async fn the_scheduler_registry_passes_the_scheduler_contract() {
    scheduler_contract(&SchedulerRegistry::new(), "registry").await;
}
