//! An in-memory [`Store`] and the contract suite that it and every real store must pass.
//!
//! The contract is the definition of a correct store: if SQLite (or later PostgreSQL) and
//! [`MemoryStore`] both pass [`store_contract`], tests written against the fake say something
//! true about the product.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hodei_core::{
    PoolSpec, ProviderKind, TransitionError, Worker, WorkerCapabilities, WorkerId, WorkerMetadata,
    WorkerSpec, WorkerState, WorkerType,
};
use hodei_ports::store::{Error, Store, WorkerFilter, WorkerRecord};

/// A real, working store that keeps everything in memory; it forgets all on drop.
///
/// It follows the same rules as the durable stores, including millisecond timestamps, so a
/// record read back from it compares equal to one read back from SQLite.
#[derive(Debug, Default)]
pub struct MemoryStore {
    contents: Mutex<Contents>,
}

#[derive(Debug, Default)]
struct Contents {
    workers: BTreeMap<WorkerId, WorkerRecord>,
    pools: BTreeMap<String, PoolSpec>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn contents(&self) -> MutexGuard<'_, Contents> {
        // Every write below is a single map operation, so a panic elsewhere cannot leave the
        // maps half-updated and the poison flag carries no information.
        self.contents.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `time` rounded down to the millisecond, the precision every store keeps.
fn truncate_to_millis(time: SystemTime) -> SystemTime {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => {
            let millis = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
            UNIX_EPOCH + Duration::from_millis(millis)
        }
        Err(_) => UNIX_EPOCH,
    }
}

fn now_millis() -> SystemTime {
    truncate_to_millis(SystemTime::now())
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert_worker(&self, worker: &Worker, state: WorkerState) -> Result<(), Error> {
        let mut contents = self.contents();
        if contents.workers.contains_key(&worker.id) {
            return Err(Error::WorkerExists(worker.id.clone()));
        }
        contents.workers.insert(
            worker.id.clone(),
            WorkerRecord {
                worker: worker.clone(),
                state,
                registered: false,
                updated_at: now_millis(),
            },
        );
        Ok(())
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>, Error> {
        Ok(self.contents().workers.get(id).cloned())
    }

    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<WorkerRecord>, Error> {
        Ok(self
            .contents()
            .workers
            .values()
            .filter(|record| {
                filter
                    .pool
                    .as_ref()
                    .is_none_or(|pool| record.worker.metadata.pool.as_ref() == Some(pool))
            })
            .filter(|record| !filter.live_only || record.state.is_live())
            .cloned()
            .collect())
    }

    async fn transition_worker(
        &self,
        id: &WorkerId,
        to: WorkerState,
    ) -> Result<WorkerRecord, Error> {
        let mut contents = self.contents();
        let record = contents
            .workers
            .get_mut(id)
            .ok_or_else(|| Error::WorkerNotFound(id.clone()))?;
        record.state = record.state.transition(to)?;
        record.updated_at = now_millis();
        Ok(record.clone())
    }

    async fn set_registered(&self, id: &WorkerId, registered: bool) -> Result<(), Error> {
        let mut contents = self.contents();
        let record = contents
            .workers
            .get_mut(id)
            .ok_or_else(|| Error::WorkerNotFound(id.clone()))?;
        record.registered = registered;
        record.updated_at = now_millis();
        Ok(())
    }

    async fn put_pool(&self, pool: &PoolSpec) -> Result<(), Error> {
        self.contents()
            .pools
            .insert(pool.name.clone(), pool.clone());
        Ok(())
    }

    async fn get_pool(&self, name: &str) -> Result<Option<PoolSpec>, Error> {
        Ok(self.contents().pools.get(name).cloned())
    }

    async fn list_pools(&self) -> Result<Vec<PoolSpec>, Error> {
        Ok(self.contents().pools.values().cloned().collect())
    }

    async fn delete_pool(&self, name: &str) -> Result<bool, Error> {
        Ok(self.contents().pools.remove(name).is_some())
    }
}

/// Prefix of every worker id and pool name the contract creates, so that it can run against a
/// store that already holds other data and tell its own rows apart.
const PREFIX: &str = "contract-";

/// Runs the contract every [`Store`] must pass. Panics, naming the broken rule, on the first
/// violation.
///
/// Call it on a fresh store; it may be called on several stores in one process. It creates
/// workers and pools whose names start with `contract-` and leaves them behind.
pub async fn store_contract(store: &dyn Store) {
    insert_then_get(store).await;
    duplicate_insert_is_refused(store).await;
    unknown_worker_is_none(store).await;
    worker_fields_round_trip_exactly(store).await;
    list_is_ordered_and_filtered(store).await;
    transitions_walk_the_lifecycle(store).await;
    transitions_follow_the_state_machine(store).await;
    illegal_transition_leaves_the_record_alone(store).await;
    transition_of_unknown_worker_is_not_found(store).await;
    concurrent_transitions_have_one_winner(store).await;
    registration_round_trips(store).await;
    pools_round_trip(store).await;
}

fn id(name: &str) -> WorkerId {
    match WorkerId::new(format!("{PREFIX}{name}")) {
        Ok(id) => id,
        Err(err) => panic!("contract bug: bad worker id {name:?}: {err}"),
    }
}

/// A millisecond-precise instant well after the epoch, with a non-zero millisecond part.
fn provisioned_at() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_123_456)
}

/// A worker with every field set to something that would show if a store lost or reordered it.
fn rich_worker(id: WorkerId, pool: Option<&str>) -> Worker {
    Worker {
        id,
        capabilities: WorkerCapabilities {
            cpu_cores: 16,
            memory_mb: 65_536,
            docker_enabled: true,
            custom_resources: [("gpu".to_owned(), 2), ("fpga.example.com/xl".to_owned(), 1)].into(),
        },
        metadata: WorkerMetadata {
            worker_type: WorkerType::Dynamic,
            provider: ProviderKind::Docker,
            pool: pool.map(|pool| format!("{PREFIX}{pool}")),
            namespace: "builds".to_owned(),
            labels: [
                ("os".to_owned(), "linux".to_owned()),
                (
                    "team.example.com/owner".to_owned(),
                    "équipe ☃ \"ci\"".to_owned(),
                ),
            ]
            .into(),
            // Not sorted: tags are a list and their order must survive.
            tags: vec!["zeta".to_owned(), "alpha".to_owned(), "mid".to_owned()],
            provision_timestamp: provisioned_at(),
        },
    }
}

fn plain_worker(id: WorkerId, pool: Option<&str>) -> Worker {
    let spec = WorkerSpec {
        pool: pool.map(|pool| format!("{PREFIX}{pool}")),
        ..WorkerSpec::default()
    };
    Worker::from_spec(id, &spec, ProviderKind::Local, provisioned_at())
}

async fn insert(store: &dyn Store, worker: &Worker, state: WorkerState) {
    if let Err(err) = store.insert_worker(worker, state).await {
        panic!("insert_worker({}, {state}) failed: {err}", worker.id);
    }
}

async fn get(store: &dyn Store, id: &WorkerId) -> Option<WorkerRecord> {
    match store.get_worker(id).await {
        Ok(record) => record,
        Err(err) => panic!("get_worker({id}) failed: {err}"),
    }
}

async fn get_existing(store: &dyn Store, id: &WorkerId) -> WorkerRecord {
    match get(store, id).await {
        Some(record) => record,
        None => panic!("get_worker({id}) returned none for a worker that was inserted"),
    }
}

async fn list(store: &dyn Store, filter: &WorkerFilter) -> Vec<WorkerRecord> {
    match store.list_workers(filter).await {
        Ok(records) => records,
        Err(err) => panic!("list_workers({filter:?}) failed: {err}"),
    }
}

async fn transition(store: &dyn Store, id: &WorkerId, to: WorkerState) -> WorkerRecord {
    match store.transition_worker(id, to).await {
        Ok(record) => record,
        Err(err) => panic!("transition_worker({id}, {to}) failed: {err}"),
    }
}

/// Asserts that `updated_at` was stamped by the call that started at `started`.
fn assert_stamped_during_call(what: &str, updated_at: SystemTime, started: SystemTime) {
    assert_eq!(
        updated_at,
        truncate_to_millis(updated_at),
        "{what}: updated_at must have millisecond precision"
    );
    assert!(
        updated_at >= truncate_to_millis(started) && updated_at <= SystemTime::now(),
        "{what}: updated_at {updated_at:?} is not the time of the call (started {started:?})"
    );
}

/// Returns once the wall clock reads a later millisecond than `time`, so that a write made now
/// gets a visibly newer `updated_at` than one made at `time`.
async fn wait_for_clock_past(time: SystemTime) {
    let deadline = SystemTime::now() + Duration::from_secs(5);
    while truncate_to_millis(SystemTime::now()) <= time {
        assert!(
            SystemTime::now() < deadline,
            "the wall clock did not pass {time:?}"
        );
        tokio::task::yield_now().await;
    }
}

async fn insert_then_get(store: &dyn Store) {
    let worker = plain_worker(id("insert-1"), Some("insert-pool"));
    let started = SystemTime::now();
    insert(store, &worker, WorkerState::Provisioning).await;
    let record = get_existing(store, &worker.id).await;
    assert_eq!(
        record.worker, worker,
        "inserted worker must read back unchanged"
    );
    assert_eq!(record.state, WorkerState::Provisioning);
    assert!(!record.registered, "a new worker is not registered");
    assert_stamped_during_call("insert_worker", record.updated_at, started);
}

async fn duplicate_insert_is_refused(store: &dyn Store) {
    for (name, state) in [
        ("duplicate-live", WorkerState::Idle),
        ("duplicate-terminated", WorkerState::Terminated),
    ] {
        let worker = plain_worker(id(name), None);
        insert(store, &worker, state).await;
        let before = get_existing(store, &worker.id).await;

        let other = rich_worker(worker.id.clone(), Some("elsewhere"));
        match store.insert_worker(&other, WorkerState::Provisioning).await {
            Err(Error::WorkerExists(existing)) => assert_eq!(existing, worker.id),
            other => panic!(
                "second insert of {} over {state}: want WorkerExists, got {other:?}",
                worker.id
            ),
        }
        assert_eq!(
            get_existing(store, &worker.id).await,
            before,
            "a refused insert must not touch the existing record"
        );
    }
}

async fn unknown_worker_is_none(store: &dyn Store) {
    assert_eq!(get(store, &id("never-inserted")).await, None);
}

async fn worker_fields_round_trip_exactly(store: &dyn Store) {
    let worker = rich_worker(id("round-trip"), Some("round-trip-pool"));
    insert(store, &worker, WorkerState::Registering).await;
    let record = get_existing(store, &worker.id).await;
    assert_eq!(record.worker, worker, "every worker field must round-trip");
    assert_eq!(record.worker.metadata.tags, ["zeta", "alpha", "mid"]);
    assert_eq!(record.worker.metadata.provision_timestamp, provisioned_at());
    assert_eq!(
        record.worker.capabilities.custom_resources.get("gpu"),
        Some(&2)
    );

    let no_pool = rich_worker(id("round-trip-no-pool"), None);
    insert(store, &no_pool, WorkerState::Provisioning).await;
    assert_eq!(get_existing(store, &no_pool.id).await.worker, no_pool);
}

async fn list_is_ordered_and_filtered(store: &dyn Store) {
    // Inserted out of order; byte order puts "list-10" before "list-9" and "list-B" before
    // "list-a", as `WorkerId`'s `Ord` does.
    let inserted = [
        ("list-9", Some("list-a"), WorkerState::Idle),
        ("list-a", Some("list-a"), WorkerState::Terminated),
        ("list-10", Some("list-b"), WorkerState::Busy),
        ("list-B", Some("list-a"), WorkerState::Provisioning),
        ("list-0", None, WorkerState::Draining),
        ("list-5", Some("list-b"), WorkerState::Registering),
    ];
    for (name, pool, state) in inserted {
        insert(store, &plain_worker(id(name), pool), state).await;
    }
    // One worker terminates through the lifecycle rather than being inserted terminated.
    transition(store, &id("list-5"), WorkerState::Terminated).await;

    let ids = |records: &[WorkerRecord]| -> Vec<String> {
        records
            .iter()
            .map(|record| record.worker.id.as_str().to_owned())
            .filter(|id| id.starts_with(&format!("{PREFIX}list-")))
            .map(|id| id[PREFIX.len()..].to_owned())
            .collect()
    };
    let assert_sorted = |what: &str, records: &[WorkerRecord]| {
        assert!(
            records
                .windows(2)
                .all(|pair| pair[0].worker.id < pair[1].worker.id),
            "{what}: workers must be ordered by id, got {:?}",
            records
                .iter()
                .map(|r| r.worker.id.as_str())
                .collect::<Vec<_>>()
        );
    };

    let all = list(store, &WorkerFilter::default()).await;
    assert_sorted("list all", &all);
    assert_eq!(
        ids(&all),
        ["list-0", "list-10", "list-5", "list-9", "list-B", "list-a"],
        "list all"
    );
    for record in &all {
        assert_eq!(
            Some(record),
            get(store, &record.worker.id).await.as_ref(),
            "listed record must equal the one get_worker returns"
        );
    }

    let live = list(store, &WorkerFilter::live()).await;
    assert_sorted("list live", &live);
    assert!(
        live.iter()
            .all(|record| record.state != WorkerState::Terminated),
        "live_only must leave out terminated workers"
    );
    assert_eq!(
        ids(&live),
        ["list-0", "list-10", "list-9", "list-B"],
        "list live"
    );

    let pool_a = WorkerFilter {
        pool: Some(format!("{PREFIX}list-a")),
        live_only: false,
    };
    let in_pool_a = list(store, &pool_a).await;
    assert_sorted("list pool", &in_pool_a);
    assert_eq!(in_pool_a.len(), 3, "pool filter must leave out other pools");
    assert_eq!(ids(&in_pool_a), ["list-9", "list-B", "list-a"], "list pool");

    let live_in_pool_b = WorkerFilter {
        pool: Some(format!("{PREFIX}list-b")),
        live_only: true,
    };
    assert_eq!(
        ids(&list(store, &live_in_pool_b).await),
        ["list-10"],
        "list live pool"
    );

    let unknown_pool = WorkerFilter {
        pool: Some(format!("{PREFIX}list-none")),
        live_only: false,
    };
    assert_eq!(list(store, &unknown_pool).await, [], "list unknown pool");
}

async fn transitions_walk_the_lifecycle(store: &dyn Store) {
    use WorkerState::*;
    let worker = rich_worker(id("lifecycle"), Some("lifecycle-pool"));
    insert(store, &worker, Provisioning).await;
    let mut registered = false;
    for to in [
        Registering,
        Idle,
        Busy,
        Cleaning,
        Idle,
        Unhealthy,
        Draining,
        Idle,
        Terminated,
    ] {
        if to == Idle && !registered {
            // The registered flag must survive transitions.
            registered = true;
            if let Err(err) = store.set_registered(&worker.id, true).await {
                panic!("set_registered({}) failed: {err}", worker.id);
            }
        }
        let previous = get_existing(store, &worker.id).await;
        wait_for_clock_past(previous.updated_at).await;
        let started = SystemTime::now();
        let record = transition(store, &worker.id, to).await;
        assert!(
            record.updated_at > previous.updated_at,
            "transition to {to} must move updated_at forward"
        );
        assert_eq!(
            record.state, to,
            "transition_worker must return the new state"
        );
        assert_eq!(
            record.worker, worker,
            "a transition must not change the worker"
        );
        assert_eq!(
            record.registered, registered,
            "a transition must keep the registered flag"
        );
        assert_stamped_during_call(&format!("transition to {to}"), record.updated_at, started);
        assert_eq!(
            get_existing(store, &worker.id).await,
            record,
            "transition_worker must return what it stored"
        );
    }
}

async fn transitions_follow_the_state_machine(store: &dyn Store) {
    for from in WorkerState::ALL {
        for to in WorkerState::ALL {
            let worker = plain_worker(id(&format!("machine-{from}-{to}")), None);
            insert(store, &worker, from).await;
            let result = store.transition_worker(&worker.id, to).await;
            let stored = get_existing(store, &worker.id).await;
            match (from.transition(to), result) {
                (Ok(_), Ok(record)) => {
                    assert_eq!(record.state, to, "{from} -> {to}");
                    assert_eq!(stored, record, "{from} -> {to}: stored record");
                }
                (Err(want), Err(Error::IllegalTransition(got))) => {
                    assert_eq!(got, want, "{from} -> {to}");
                    assert_eq!(
                        stored.state, from,
                        "{from} -> {to}: refused, state unchanged"
                    );
                }
                (want, got) => panic!("{from} -> {to}: core says {want:?}, store says {got:?}"),
            }
        }
    }
}

async fn illegal_transition_leaves_the_record_alone(store: &dyn Store) {
    let worker = rich_worker(id("illegal"), None);
    insert(store, &worker, WorkerState::Provisioning).await;
    if let Err(err) = store.set_registered(&worker.id, true).await {
        panic!("set_registered({}) failed: {err}", worker.id);
    }
    let before = get_existing(store, &worker.id).await;
    for to in [
        WorkerState::Idle,
        WorkerState::Busy,
        WorkerState::Provisioning,
    ] {
        match store.transition_worker(&worker.id, to).await {
            Err(Error::IllegalTransition(err)) => assert_eq!(
                err,
                TransitionError {
                    from: WorkerState::Provisioning,
                    to
                }
            ),
            other => panic!("provisioning -> {to}: want IllegalTransition, got {other:?}"),
        }
        assert_eq!(
            get_existing(store, &worker.id).await,
            before,
            "a refused transition must leave the record exactly as it was"
        );
    }
}

async fn transition_of_unknown_worker_is_not_found(store: &dyn Store) {
    let unknown = id("transition-unknown");
    match store
        .transition_worker(&unknown, WorkerState::Terminated)
        .await
    {
        Err(Error::WorkerNotFound(got)) => assert_eq!(got, unknown),
        other => panic!("transition of unknown worker: want WorkerNotFound, got {other:?}"),
    }
    assert_eq!(
        get(store, &unknown).await,
        None,
        "a failed transition must not create"
    );
}

async fn concurrent_transitions_have_one_winner(store: &dyn Store) {
    let worker = plain_worker(id("race"), None);
    insert(store, &worker, WorkerState::Idle).await;
    let attempts = (0..16).map(|_| store.transition_worker(&worker.id, WorkerState::Busy));
    let results = futures::future::join_all(attempts).await;
    let mut wins = 0;
    for result in results {
        match result {
            Ok(record) => {
                wins += 1;
                assert_eq!(record.state, WorkerState::Busy);
            }
            Err(Error::IllegalTransition(err)) => assert_eq!(
                err,
                TransitionError {
                    from: WorkerState::Busy,
                    to: WorkerState::Busy
                }
            ),
            Err(err) => panic!("concurrent idle -> busy: unexpected error {err}"),
        }
    }
    assert_eq!(
        wins, 1,
        "exactly one of many concurrent idle -> busy may win"
    );
    assert_eq!(
        get_existing(store, &worker.id).await.state,
        WorkerState::Busy
    );
}

async fn registration_round_trips(store: &dyn Store) {
    let worker = plain_worker(id("registered"), None);
    insert(store, &worker, WorkerState::Registering).await;
    for registered in [true, true, false, true] {
        let previous = get_existing(store, &worker.id).await;
        wait_for_clock_past(previous.updated_at).await;
        let started = SystemTime::now();
        if let Err(err) = store.set_registered(&worker.id, registered).await {
            panic!("set_registered({}, {registered}) failed: {err}", worker.id);
        }
        let record = get_existing(store, &worker.id).await;
        assert_eq!(record.registered, registered, "set_registered must stick");
        assert_eq!(
            record.state,
            WorkerState::Registering,
            "set_registered keeps the state"
        );
        assert_eq!(record.worker, worker, "set_registered keeps the worker");
        assert_stamped_during_call("set_registered", record.updated_at, started);
        assert!(
            record.updated_at > previous.updated_at,
            "set_registered must move updated_at forward"
        );
    }

    let unknown = id("registered-unknown");
    match store.set_registered(&unknown, true).await {
        Err(Error::WorkerNotFound(got)) => assert_eq!(got, unknown),
        other => panic!("set_registered of unknown worker: want WorkerNotFound, got {other:?}"),
    }
    assert_eq!(
        get(store, &unknown).await,
        None,
        "set_registered must not create"
    );
}

fn pool(name: &str, size: u32) -> PoolSpec {
    let name = format!("{PREFIX}{name}");
    PoolSpec {
        template: WorkerSpec {
            worker_type: WorkerType::Static,
            pool: Some(name.clone()),
            namespace: "pools".to_owned(),
            capabilities: WorkerCapabilities {
                cpu_cores: 8,
                memory_mb: 16_384,
                docker_enabled: true,
                custom_resources: [("gpu".to_owned(), 1)].into(),
            },
            labels: [("arch".to_owned(), "arm64".to_owned())].into(),
            tags: vec!["b".to_owned(), "a".to_owned()],
        },
        name,
        provider: ProviderKind::Kubernetes,
        size,
    }
}

async fn contract_pools(store: &dyn Store) -> Vec<PoolSpec> {
    match store.list_pools().await {
        Ok(pools) => {
            let names: Vec<&str> = pools.iter().map(|pool| pool.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(names, sorted, "list_pools must order pools by name");
            let unique: BTreeSet<&str> = names.iter().copied().collect();
            assert_eq!(
                unique.len(),
                names.len(),
                "list_pools must not repeat a pool"
            );
            pools
                .into_iter()
                .filter(|pool| pool.name.starts_with(&format!("{PREFIX}pool-")))
                .collect()
        }
        Err(err) => panic!("list_pools failed: {err}"),
    }
}

async fn put_pool(store: &dyn Store, spec: &PoolSpec) {
    if let Err(err) = store.put_pool(spec).await {
        panic!("put_pool({}) failed: {err}", spec.name);
    }
}

async fn get_pool(store: &dyn Store, name: &str) -> Option<PoolSpec> {
    match store.get_pool(name).await {
        Ok(pool) => pool,
        Err(err) => panic!("get_pool({name}) failed: {err}"),
    }
}

async fn delete_pool(store: &dyn Store, name: &str) -> bool {
    match store.delete_pool(name).await {
        Ok(existed) => existed,
        Err(err) => panic!("delete_pool({name}) failed: {err}"),
    }
}

async fn pools_round_trip(store: &dyn Store) {
    let (b, a, c) = (pool("pool-b", 3), pool("pool-a", 1), pool("pool-C", 0));
    for spec in [&b, &a, &c] {
        put_pool(store, spec).await;
    }
    assert_eq!(
        get_pool(store, &a.name).await.as_ref(),
        Some(&a),
        "pool round trip"
    );
    assert_eq!(get_pool(store, &format!("{PREFIX}pool-none")).await, None);
    assert_eq!(
        contract_pools(store).await,
        [c.clone(), a.clone(), b.clone()],
        "pools ordered by name"
    );

    let mut replaced = a.clone();
    replaced.size = 7;
    replaced.provider = ProviderKind::Docker;
    replaced
        .template
        .labels
        .insert("replaced".to_owned(), "yes".to_owned());
    replaced.template.capabilities.custom_resources.clear();
    put_pool(store, &replaced).await;
    assert_eq!(
        get_pool(store, &a.name).await.as_ref(),
        Some(&replaced),
        "put_pool must replace"
    );
    assert_eq!(
        contract_pools(store).await,
        [c.clone(), replaced.clone(), b.clone()],
        "a replaced pool is listed once"
    );

    assert!(
        delete_pool(store, &a.name).await,
        "deleting an existing pool returns true"
    );
    assert_eq!(
        get_pool(store, &a.name).await,
        None,
        "a deleted pool is gone"
    );
    assert!(
        !delete_pool(store, &a.name).await,
        "deleting it again returns false"
    );
    assert!(
        !delete_pool(store, &format!("{PREFIX}pool-none")).await,
        "deleting an unknown pool returns false"
    );
    assert_eq!(contract_pools(store).await, [c, b], "the others remain");
}
