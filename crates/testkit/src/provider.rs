//! An in-memory worker provider: workers "run" from `create_worker` until
//! `terminate_worker`, with knobs for failures, strangers and sudden deaths.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use hodei_core::{ProviderKind, Worker, WorkerId, WorkerSpec};
use hodei_ports::{AgentCredential, ProviderError, WorkerProvider};

#[derive(Debug, Default)]
struct State {
    running: BTreeSet<WorkerId>,
    create_failures: VecDeque<ProviderError>,
    /// `terminate_worker` calls still to fail.
    terminate_failures: u32,
    terminate_attempts: usize,
    created: usize,
    terminated: Vec<WorkerId>,
    credentials: BTreeMap<WorkerId, AgentCredential>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct FakeProvider {
    state: Mutex<State>,
}

impl FakeProvider {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next `create_worker` call fails with `error`.
    pub fn fail_next_create(&self, error: ProviderError) {
        self.state().create_failures.push_back(error);
    }

    /// The next `count` `terminate_worker` calls fail (the worker keeps running).
    pub fn fail_next_terminations(&self, count: u32) {
        self.state().terminate_failures = count;
    }

    /// `terminate_worker` calls so far, failed ones included.
    pub fn terminate_attempts(&self) -> usize {
        self.state().terminate_attempts
    }

    /// A worker nobody asked for appears, as after a crash between create and record.
    pub fn run_stranger(&self, id: &WorkerId) {
        self.state().running.insert(id.clone());
    }

    /// A worker dies without being terminated.
    pub fn kill(&self, id: &WorkerId) {
        self.state().running.remove(id);
    }

    pub fn running(&self) -> Vec<WorkerId> {
        self.state().running.iter().cloned().collect()
    }

    pub fn created(&self) -> usize {
        self.state().created
    }

    /// The credential the worker was created with.
    pub fn credential(&self, id: &WorkerId) -> Option<AgentCredential> {
        self.state().credentials.get(id).cloned()
    }

    /// Ids passed to `terminate_worker`, in call order.
    pub fn terminated(&self) -> Vec<WorkerId> {
        self.state().terminated.clone()
    }
}

#[async_trait]
impl WorkerProvider for FakeProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }

    async fn create_worker(
        &self,
        id: &WorkerId,
        spec: &WorkerSpec,
        credential: &AgentCredential,
    ) -> Result<Worker, ProviderError> {
        let mut state = self.state();
        if let Some(error) = state.create_failures.pop_front() {
            return Err(error);
        }
        state.credentials.insert(id.clone(), credential.clone());
        state.running.insert(id.clone());
        state.created += 1;
        Ok(Worker::from_spec(
            id.clone(),
            spec,
            ProviderKind::Local,
            SystemTime::now(),
        ))
    }

    async fn terminate_worker(&self, id: &WorkerId) -> Result<(), ProviderError> {
        let mut state = self.state();
        state.terminate_attempts += 1;
        if state.terminate_failures > 0 {
            state.terminate_failures -= 1;
            return Err(ProviderError::Unavailable(
                "terminations fail (test)".into(),
            ));
        }
        state.running.remove(id);
        state.terminated.push(id.clone());
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerId>, ProviderError> {
        Ok(self.running())
    }
}

/// The contract every [`WorkerProvider`] passes: create, list, terminate (twice), with
/// ids `{prefix}-1` and `{prefix}-2`.
pub async fn provider_contract(provider: &dyn WorkerProvider, prefix: &str) {
    let a = WorkerId::new(format!("{prefix}-1")).expect("valid id");
    let b = WorkerId::new(format!("{prefix}-2")).expect("valid id");
    let spec = WorkerSpec::default();

    let before = provider.list_workers().await.expect("list");
    assert!(
        !before.contains(&a) && !before.contains(&b),
        "ids already in use"
    );

    let worker = provider
        .create_worker(
            &a,
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create a");
    assert_eq!(worker.id, a);
    assert_eq!(worker.metadata.provider, provider.kind());
    assert_eq!(worker.capabilities, spec.capabilities);
    provider
        .create_worker(
            &b,
            &spec,
            &hodei_ports::AgentCredential::new("test-credential"),
        )
        .await
        .expect("create b");

    let listed = provider.list_workers().await.expect("list");
    assert!(
        listed.contains(&a) && listed.contains(&b),
        "created workers are listed: {listed:?}"
    );
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "list is ordered and unique: {listed:?}"
    );

    provider.terminate_worker(&a).await.expect("terminate a");
    let listed = provider.list_workers().await.expect("list");
    assert!(!listed.contains(&a), "terminated worker is not listed");
    assert!(listed.contains(&b), "other worker is untouched");

    provider
        .terminate_worker(&a)
        .await
        .expect("terminating twice is fine");
    provider.terminate_worker(&b).await.expect("terminate b");
    let listed = provider.list_workers().await.expect("list");
    assert!(!listed.contains(&b));
}
