//! The fakes pass the contracts the real adapters pass, so tests written against them say
//! something true about the product.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hodei_core::WorkerId;
use hodei_testkit::agents::{AgentLinkProbe, FakeAgents, Sent, Told, agent_link_contract};
use hodei_testkit::{FakeProvider, FakeScheduler, provider_contract, scheduler_contract};

#[tokio::test]
async fn the_fake_scheduler_passes_the_scheduler_contract() {
    scheduler_contract(&FakeScheduler::new(), "fake").await;
}

#[tokio::test]
async fn the_fake_provider_passes_the_provider_contract() {
    provider_contract(&FakeProvider::new(), "fake").await;
}

/// `FakeAgents` plays the agents by itself: connected unless made unreachable.
struct FakeAgentsProbe {
    agents: std::sync::Arc<FakeAgents>,
    /// Messages already reported, per worker.
    seen: std::sync::Mutex<std::collections::HashMap<WorkerId, usize>>,
}

#[async_trait::async_trait]
impl AgentLinkProbe for FakeAgentsProbe {
    async fn connect(&self, worker: &WorkerId) {
        self.agents.make_reachable(worker);
    }

    async fn disconnect(&self, worker: &WorkerId) {
        self.agents.make_unreachable(worker);
    }

    async fn received(&self, worker: &WorkerId) -> Vec<Told> {
        let told: Vec<Told> = self
            .agents
            .sent()
            .into_iter()
            .filter_map(|message| match message {
                Sent::Assign { worker: to, job } if to == *worker => Some(Told::Assign {
                    job: job.id.clone(),
                    attempt: job.attempts,
                }),
                Sent::Cancel { worker: to, job_id } if to == *worker => {
                    Some(Told::Stop { job: job_id })
                }
                _ => None,
            })
            .collect();
        let mut seen = self.seen.lock().unwrap();
        let already = seen.entry(worker.clone()).or_default();
        let new = told[*already..].to_vec();
        *already = told.len();
        new
    }
}

#[tokio::test]
async fn fake_agents_pass_the_agent_link_contract() {
    let (agents, _announced) = FakeAgents::new();
    let probe = FakeAgentsProbe {
        agents: agents.clone(),
        seen: std::sync::Mutex::default(),
    };
    agent_link_contract(agents.as_ref(), &probe, "fake").await;
}
