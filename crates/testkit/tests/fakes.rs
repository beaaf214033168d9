//! The fakes pass the contracts the real adapters pass, so tests written against them say
//! something true about the product.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hodei_testkit::{FakeProvider, FakeScheduler, provider_contract, scheduler_contract};

#[tokio::test]
async fn the_fake_scheduler_passes_the_scheduler_contract() {
    scheduler_contract(&FakeScheduler::new(), "fake").await;
}

#[tokio::test]
async fn the_fake_provider_passes_the_provider_contract() {
    provider_contract(&FakeProvider::new(), "fake").await;
}
