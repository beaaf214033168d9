//! The in-memory store passes the same contract as the durable ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hodei_testkit::{MemoryStore, store_contract};

#[tokio::test]
async fn memory_store_passes_the_store_contract() {
    store_contract(&MemoryStore::new()).await;
}

#[tokio::test]
async fn the_contract_can_run_on_several_fresh_stores() {
    for _ in 0..3 {
        store_contract(&MemoryStore::new()).await;
    }
}
