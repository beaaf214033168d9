//! Job queues: named, bounded, and ordered for dispatch by priority, then submission order.
//!
//! Only queued jobs live here. Running, finished and dead-lettered jobs are states of the
//! job in the store, not entries of a queue.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::job::{Job, JobId, Priority, QueueName, Requirements, SlaClass, TenantName};
use crate::sla::SlaClock;
use crate::worker::ValidationError;

/// How many jobs the default queue holds before it refuses more.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// A queue as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub name: QueueName,
    /// Most jobs the queue holds; a push beyond it is refused with [`QueueError::Full`].
    pub capacity: usize,
}

impl Default for QueueConfig {
    /// The `default` queue holding [`DEFAULT_QUEUE_CAPACITY`] jobs.
    fn default() -> Self {
        Self {
            name: QueueName::default(),
            capacity: DEFAULT_QUEUE_CAPACITY,
        }
    }
}

/// What a queue keeps about a job: enough to order it and match it to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub job_id: JobId,
    pub queue: QueueName,
    pub tenant: TenantName,
    pub priority: Priority,
    pub sequence: u64,
    pub requirements: Requirements,
    pub sla_class: SlaClass,
    /// When the job was submitted and must start by: when it is boosted or at risk.
    pub sla: SlaClock,
}

impl QueueEntry {
    /// The entry for a job, taken from its spec.
    pub fn from_job(job: &Job) -> Self {
        Self {
            job_id: job.id.clone(),
            queue: job.spec.queue.clone(),
            tenant: job.spec.tenant.clone(),
            priority: job.spec.priority,
            sequence: job.sequence,
            requirements: job.spec.requirements.clone(),
            sla_class: job.spec.sla_class,
            sla: SlaClock::for_queue(job),
        }
    }

    fn order_key(&self) -> OrderKey {
        (Reverse(self.priority), self.sequence, self.job_id.clone())
    }
}

/// Dispatch order: higher priority first, then lower sequence (FIFO), then id so that the
/// key is unique even if a caller reuses a sequence number.
type OrderKey = (Reverse<Priority>, u64, JobId);

/// A refused push.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue holds `capacity` jobs already: backpressure, try again later.
    #[error("queue {queue} is full ({capacity} jobs)")]
    Full { queue: QueueName, capacity: usize },
    /// No queue of that name is configured.
    #[error("unknown queue {0}")]
    UnknownQueue(QueueName),
    /// The job is queued already.
    #[error("job {0} is already queued")]
    Duplicate(JobId),
}

impl QueueError {
    /// Whether the same push may succeed later without any change by the caller.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Full { .. })
    }
}

/// One queue's bookkeeping; its entries live in [`Queues::order`].
#[derive(Debug, Clone)]
struct QueueSlot {
    capacity: usize,
    by_priority: BTreeMap<Priority, usize>,
    len: usize,
}

/// Every configured queue, ordered for dispatch across all of them.
///
/// Push, remove and pop are O(log n). Iteration walks all queues together in dispatch
/// order, so a high-priority job in one queue goes before a low-priority job in another.
#[derive(Debug, Clone)]
pub struct Queues {
    slots: BTreeMap<QueueName, QueueSlot>,
    order: BTreeMap<OrderKey, QueueEntry>,
    index: BTreeMap<JobId, OrderKey>,
    /// The same entries grouped by tenant, each group in dispatch order, for fair share.
    by_tenant: BTreeMap<TenantName, BTreeSet<OrderKey>>,
    /// The same entries by the instant they are boosted (see [`crate::sla`]): the boosted
    /// ones at any instant are a prefix, found without walking the rest.
    by_boost: BTreeSet<(u64, OrderKey)>,
}

impl Default for Queues {
    /// Just the default queue.
    fn default() -> Self {
        Self::with_slots([(QueueName::default(), DEFAULT_QUEUE_CAPACITY)].into())
    }
}

impl Queues {
    /// Empty queues as configured. Names must be unique and capacities at least 1.
    pub fn new(configs: impl IntoIterator<Item = QueueConfig>) -> Result<Self, ValidationError> {
        let mut capacities = BTreeMap::new();
        for config in configs {
            if config.capacity == 0 {
                return Err(ValidationError::new(
                    format!("queues.{}.capacity", config.name),
                    "must be at least 1",
                ));
            }
            if capacities
                .insert(config.name.clone(), config.capacity)
                .is_some()
            {
                return Err(ValidationError::new(
                    "queues",
                    format!("queue {} is configured twice", config.name),
                ));
            }
        }
        Ok(Self::with_slots(capacities))
    }

    fn with_slots(capacities: BTreeMap<QueueName, usize>) -> Self {
        let slots = capacities
            .into_iter()
            .map(|(name, capacity)| {
                let slot = QueueSlot {
                    capacity,
                    by_priority: BTreeMap::new(),
                    len: 0,
                };
                (name, slot)
            })
            .collect();
        Self {
            slots,
            order: BTreeMap::new(),
            index: BTreeMap::new(),
            by_tenant: BTreeMap::new(),
            by_boost: BTreeSet::new(),
        }
    }

    /// Queues a job. On error nothing changes.
    pub fn push(&mut self, entry: QueueEntry) -> Result<(), QueueError> {
        if self.index.contains_key(&entry.job_id) {
            return Err(QueueError::Duplicate(entry.job_id));
        }
        let Some(slot) = self.slots.get_mut(&entry.queue) else {
            return Err(QueueError::UnknownQueue(entry.queue));
        };
        if slot.len >= slot.capacity {
            return Err(QueueError::Full {
                queue: entry.queue,
                capacity: slot.capacity,
            });
        }
        self.requeue(entry)
    }

    /// Queues again a job that was already accepted (a retry, a recovery after a restart):
    /// like [`Queues::push`] but above capacity if need be, because capacity is enforced at
    /// admission and an accepted job is never dropped. Capacity still holds for new jobs,
    /// which see the queue as full until it drains below capacity.
    pub fn requeue(&mut self, entry: QueueEntry) -> Result<(), QueueError> {
        if self.index.contains_key(&entry.job_id) {
            return Err(QueueError::Duplicate(entry.job_id));
        }
        let Some(slot) = self.slots.get_mut(&entry.queue) else {
            return Err(QueueError::UnknownQueue(entry.queue));
        };
        slot.len += 1;
        *slot.by_priority.entry(entry.priority).or_default() += 1;
        let key = entry.order_key();
        self.index.insert(entry.job_id.clone(), key.clone());
        self.by_tenant
            .entry(entry.tenant.clone())
            .or_default()
            .insert(key.clone());
        self.by_boost.insert((entry.sla.boost_at_ms(), key.clone()));
        self.order.insert(key, entry);
        Ok(())
    }

    /// Takes a job out of its queue (cancelled, or handed to a worker), if it is queued.
    pub fn remove(&mut self, job_id: &JobId) -> Option<QueueEntry> {
        let key = self.index.remove(job_id)?;
        let entry = self.order.remove(&key)?;
        self.forget(&entry);
        Some(entry)
    }

    /// Takes the first job in dispatch order.
    pub fn pop(&mut self) -> Option<QueueEntry> {
        let (_, entry) = self.order.pop_first()?;
        self.index.remove(&entry.job_id);
        self.forget(&entry);
        Some(entry)
    }

    /// Updates the per-queue counts for an entry that has left `order` and `index`.
    fn forget(&mut self, entry: &QueueEntry) {
        self.by_boost
            .remove(&(entry.sla.boost_at_ms(), entry.order_key()));
        if let Some(keys) = self.by_tenant.get_mut(&entry.tenant) {
            keys.remove(&entry.order_key());
            if keys.is_empty() {
                self.by_tenant.remove(&entry.tenant);
            }
        }
        if let Some(slot) = self.slots.get_mut(&entry.queue) {
            slot.len = slot.len.saturating_sub(1);
            if let Some(count) = slot.by_priority.get_mut(&entry.priority) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    slot.by_priority.remove(&entry.priority);
                }
            }
        }
    }

    /// The queued entry of a job, if it is queued.
    pub fn get(&self, job_id: &JobId) -> Option<&QueueEntry> {
        self.index.get(job_id).and_then(|key| self.order.get(key))
    }

    pub fn contains(&self, job_id: &JobId) -> bool {
        self.index.contains_key(job_id)
    }

    /// Every queued job across all queues: priority descending, then sequence ascending.
    pub fn iter_in_order(&self) -> impl Iterator<Item = &QueueEntry> {
        self.order.values()
    }

    /// Queued jobs boosted or at risk at `now_ms` (past 70% of their deadline), by the
    /// instant they were boosted. Costs only the boosted jobs, not the whole queue.
    pub fn boosted(&self, now_ms: u64) -> impl Iterator<Item = &QueueEntry> {
        self.by_boost
            .iter()
            .take_while(move |(boost_at, _)| *boost_at <= now_ms)
            .filter_map(|(_, key)| self.order.get(key))
    }

    /// The earliest instant after `now_ms` at which a queued job is boosted, if any.
    pub fn first_boost_after(&self, now_ms: u64) -> Option<u64> {
        self.by_boost
            .iter()
            .map(|(boost_at, _)| *boost_at)
            .find(|boost_at| *boost_at > now_ms)
    }

    /// The tenants with queued jobs, sorted by name.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantName> {
        self.by_tenant.keys()
    }

    /// One tenant's queued jobs across all queues, in dispatch order: priority, then FIFO.
    pub fn iter_tenant<'a>(
        &'a self,
        tenant: &TenantName,
    ) -> impl Iterator<Item = &'a QueueEntry> + 'a {
        self.by_tenant
            .get(tenant)
            .into_iter()
            .flatten()
            .filter_map(|key| self.order.get(key))
    }

    /// How many jobs a tenant has queued, across all queues.
    pub fn tenant_depth(&self, tenant: &TenantName) -> usize {
        self.by_tenant.get(tenant).map_or(0, BTreeSet::len)
    }

    /// Jobs queued in one queue, or `None` if there is no such queue.
    pub fn depth(&self, queue: &QueueName) -> Option<usize> {
        self.slots.get(queue).map(|slot| slot.len)
    }

    /// The capacity of one queue, or `None` if there is no such queue.
    pub fn capacity(&self, queue: &QueueName) -> Option<usize> {
        self.slots.get(queue).map(|slot| slot.capacity)
    }

    /// Queued jobs per queue and priority, for metrics. Empty combinations are left out.
    pub fn depth_by_priority(&self) -> BTreeMap<(QueueName, Priority), usize> {
        self.slots
            .iter()
            .flat_map(|(name, slot)| {
                slot.by_priority
                    .iter()
                    .map(move |(priority, count)| ((name.clone(), *priority), *count))
            })
            .collect()
    }

    /// The configured queue names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &QueueName> {
        self.slots.keys()
    }

    /// Jobs queued across all queues.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(s: &str) -> QueueName {
        QueueName::new(s).unwrap()
    }

    fn entry(id: &str, queue: &str, priority: i32, sequence: u64) -> QueueEntry {
        QueueEntry {
            job_id: JobId::new(id).unwrap(),
            queue: name(queue),
            // Spread over three tenants so the per-tenant index is exercised too.
            tenant: TenantName::new(format!("t{}", id.bytes().map(u32::from).sum::<u32>() % 3))
                .unwrap(),
            priority: Priority::new(priority).unwrap(),
            sequence,
            requirements: Requirements::default(),
            sla_class: SlaClass::default(),
            sla: SlaClock::NEVER,
        }
    }

    fn queues(configs: &[(&str, usize)]) -> Queues {
        Queues::new(configs.iter().map(|(n, capacity)| QueueConfig {
            name: name(n),
            capacity: *capacity,
        }))
        .unwrap()
    }

    fn ids(queues: &Queues) -> Vec<&str> {
        queues.iter_in_order().map(|e| e.job_id.as_str()).collect()
    }

    #[test]
    fn dispatch_order_is_priority_then_fifo_across_queues() {
        let mut q = queues(&[("default", 10), ("release", 10)]);
        for e in [
            entry("low-1", "default", -5, 1),
            entry("mid-1", "default", 0, 2),
            entry("high-1", "release", 10, 3),
            entry("mid-2", "release", 0, 4),
            entry("high-2", "default", 10, 5),
            entry("mid-0", "default", 0, 0),
        ] {
            q.push(e).unwrap();
        }
        assert_eq!(
            ids(&q),
            ["high-1", "high-2", "mid-0", "mid-1", "mid-2", "low-1"]
        );
        assert_eq!(q.pop().unwrap().job_id.as_str(), "high-1");
        assert_eq!(q.remove(&JobId::new("mid-1").unwrap()).unwrap().sequence, 2);
        assert_eq!(q.remove(&JobId::new("mid-1").unwrap()), None);
        assert_eq!(ids(&q), ["high-2", "mid-0", "mid-2", "low-1"]);
        assert_eq!(q.len(), 4);
        assert_eq!(q.depth(&name("default")), Some(3));
        assert_eq!(q.depth(&name("release")), Some(1));
        assert_eq!(q.depth(&name("nope")), None);
        let p = |v| Priority::new(v).unwrap();
        assert_eq!(
            q.depth_by_priority(),
            [
                ((name("default"), p(-5)), 1),
                ((name("default"), p(0)), 1),
                ((name("default"), p(10)), 1),
                ((name("release"), p(0)), 1),
            ]
            .into()
        );
    }

    #[test]
    fn full_unknown_and_duplicate_pushes_are_refused() {
        let mut q = queues(&[("small", 2)]);
        q.push(entry("a", "small", 0, 1)).unwrap();
        q.push(entry("b", "small", 0, 2)).unwrap();
        let cases = [
            (
                entry("c", "small", 0, 3),
                QueueError::Full {
                    queue: name("small"),
                    capacity: 2,
                },
            ),
            (
                entry("c", "other", 0, 3),
                QueueError::UnknownQueue(name("other")),
            ),
            (
                entry("a", "small", 5, 9),
                QueueError::Duplicate(JobId::new("a").unwrap()),
            ),
        ];
        for (e, expected) in cases {
            assert_eq!(q.push(e), Err(expected.clone()));
            assert_eq!(
                expected.is_retryable(),
                matches!(expected, QueueError::Full { .. })
            );
        }
        assert_eq!(ids(&q), ["a", "b"]);
        q.pop();
        assert!(q.push(entry("c", "small", 0, 3)).is_ok());
    }

    #[test]
    fn configs_are_validated() {
        let config = |n: &str, capacity| QueueConfig {
            name: name(n),
            capacity,
        };
        let err = Queues::new([config("a", 1), config("a", 2)]).unwrap_err();
        assert_eq!(err.field, "queues");
        let err = Queues::new([config("a", 0)]).unwrap_err();
        assert_eq!(err.field, "queues.a.capacity");
        let default = Queues::default();
        assert_eq!(
            default.capacity(&QueueName::default()),
            Some(DEFAULT_QUEUE_CAPACITY)
        );
        assert_eq!(QueueConfig::default().capacity, DEFAULT_QUEUE_CAPACITY);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push { job: u8, queue: u8, priority: i32 },
        Remove { job: u8 },
        Pop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..24u8, 0..3u8, -2..=2i32)
                .prop_map(|(job, queue, priority)| Op::Push { job, queue, priority }),
            1 => (0..24u8).prop_map(|job| Op::Remove { job }),
            1 => Just(Op::Pop),
        ]
    }

    const QUEUE_NAMES: [&str; 3] = ["a", "b", "c"];
    const CAPACITIES: [usize; 3] = [3, 5, 8];

    /// The naive model: a list, sorted on demand.
    fn model_order(model: &[QueueEntry]) -> Vec<QueueEntry> {
        let mut sorted = model.to_vec();
        sorted.sort_by_key(QueueEntry::order_key);
        sorted
    }

    fn snapshot(q: &Queues) -> (Vec<QueueEntry>, BTreeMap<(QueueName, Priority), usize>) {
        (q.iter_in_order().cloned().collect(), q.depth_by_priority())
    }

    proptest! {
        #[test]
        fn queues_match_a_naive_model(ops in proptest::collection::vec(op(), 0..200)) {
            let mut q = queues(&[("a", 3), ("b", 5), ("c", 8)]);
            let mut model: Vec<QueueEntry> = Vec::new();
            for (sequence, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Push { job, queue, priority } => {
                        let e = entry(&format!("j{job}"), QUEUE_NAMES[queue as usize], priority, sequence as u64);
                        let in_queue = model.iter().filter(|m| m.queue == e.queue).count();
                        let before = snapshot(&q);
                        let result = q.push(e.clone());
                        if result.is_err() {
                            prop_assert_eq!(snapshot(&q), before.clone(), "a refused push changed the queues");
                        }
                        if model.iter().any(|m| m.job_id == e.job_id) {
                            prop_assert_eq!(result, Err(QueueError::Duplicate(e.job_id.clone())));
                        } else if in_queue >= CAPACITIES[queue as usize] {
                            let full = matches!(result, Err(QueueError::Full { .. }));
                            prop_assert!(full, "expected full, got {:?}", result);
                        } else {
                            prop_assert_eq!(result, Ok(()));
                            model.push(e);
                        }
                    }
                    Op::Remove { job } => {
                        let id = JobId::new(format!("j{job}")).unwrap();
                        let expected = model.iter().position(|m| m.job_id == id).map(|i| model.remove(i));
                        prop_assert_eq!(q.remove(&id), expected);
                    }
                    Op::Pop => {
                        let expected = model_order(&model).into_iter().next();
                        if let Some(first) = &expected {
                            model.retain(|m| m.job_id != first.job_id);
                        }
                        prop_assert_eq!(q.pop(), expected);
                    }
                }

                // No job lost or duplicated, and the order is the model's order.
                let order: Vec<QueueEntry> = q.iter_in_order().cloned().collect();
                prop_assert_eq!(&order, &model_order(&model));
                prop_assert_eq!(q.len(), model.len());
                // FIFO inside a priority.
                for pair in order.windows(2) {
                    prop_assert!(pair[0].priority >= pair[1].priority);
                    if pair[0].priority == pair[1].priority {
                        prop_assert!(pair[0].sequence < pair[1].sequence);
                    }
                }
                // Capacity never exceeded, counts consistent.
                for (i, queue) in QUEUE_NAMES.iter().enumerate() {
                    let depth = q.depth(&name(queue)).unwrap();
                    prop_assert!(depth <= CAPACITIES[i]);
                    prop_assert_eq!(depth, order.iter().filter(|e| e.queue.as_str() == *queue).count());
                }
                prop_assert_eq!(q.depth_by_priority().values().sum::<usize>(), q.len());
                let per_tenant: usize = q.tenants().map(|t| q.tenant_depth(t)).sum();
                prop_assert_eq!(per_tenant, q.len());
                for tenant in q.tenants() {
                    let mine: Vec<&QueueEntry> = q.iter_tenant(tenant).collect();
                    let expected: Vec<&QueueEntry> = order.iter().filter(|e| &e.tenant == tenant).collect();
                    prop_assert_eq!(mine, expected);
                }
                for e in &order {
                    prop_assert_eq!(q.get(&e.job_id), Some(e));
                }
            }
        }
    }
}
