//! Matching jobs to workers: whether a worker fits a job, which fitting worker is best, the
//! dispatch plan for a whole queue, and the words that explain why a job is still waiting.

use std::collections::BTreeSet;

use crate::job::{JobId, Requirements};
use crate::queue::QueueEntry;
use crate::worker::{Labels, Worker, WorkerCapabilities, WorkerId};

/// A worker that can take a job now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleWorker {
    pub id: WorkerId,
    pub capabilities: WorkerCapabilities,
    pub labels: Labels,
    /// The pool that owns it; not used for matching yet, carried for reporting.
    pub pool: Option<String>,
}

/// The label every pool's worker carries implicitly: `pool=<name>`, so that a job can ask
/// for a pool (`hodei job submit --pool P`) like for any label.
pub const POOL_LABEL: &str = "pool";

/// The labels jobs are matched against: the worker's own, plus [`POOL_LABEL`] when it
/// belongs to a pool and does not set that label itself.
pub fn effective_labels(worker: &Worker) -> Labels {
    let mut labels = worker.metadata.labels.clone();
    if let Some(pool) = &worker.metadata.pool {
        labels
            .entry(POOL_LABEL.to_owned())
            .or_insert_with(|| pool.clone());
    }
    labels
}

impl From<&Worker> for IdleWorker {
    fn from(worker: &Worker) -> Self {
        Self {
            id: worker.id.clone(),
            capabilities: worker.capabilities.clone(),
            labels: effective_labels(worker),
            pool: worker.metadata.pool.clone(),
        }
    }
}

/// The first requirement a worker does not meet, in the order cpu, memory, labels, features.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("needs {needed} cpu cores, worker has {has}")]
    Cpu { needed: u32, has: u32 },
    #[error("needs {needed} MB of memory, worker has {has} MB")]
    Memory { needed: u64, has: u64 },
    #[error("needs label {key}={value}")]
    Label { key: String, value: String },
    #[error("needs feature {0}")]
    Feature(String),
}

/// Whether a worker has a feature: a custom resource of that name with a count of at least 1,
/// or, for `docker`, Docker enabled.
pub fn has_feature(capabilities: &WorkerCapabilities, feature: &str) -> bool {
    capabilities
        .custom_resources
        .get(feature)
        .is_some_and(|count| *count >= 1)
        || (feature == "docker" && capabilities.docker_enabled)
}

/// Whether a worker with these capabilities and labels can run a job with these requirements.
pub fn fits(
    requirements: &Requirements,
    capabilities: &WorkerCapabilities,
    labels: &Labels,
) -> Result<(), Mismatch> {
    if requirements.cpu_cores > capabilities.cpu_cores {
        return Err(Mismatch::Cpu {
            needed: requirements.cpu_cores,
            has: capabilities.cpu_cores,
        });
    }
    if requirements.memory_mb > capabilities.memory_mb {
        return Err(Mismatch::Memory {
            needed: requirements.memory_mb,
            has: capabilities.memory_mb,
        });
    }
    if let Some((key, value)) = requirements
        .labels
        .iter()
        .find(|(key, value)| labels.get(*key) != Some(*value))
    {
        return Err(Mismatch::Label {
            key: key.clone(),
            value: value.clone(),
        });
    }
    if let Some(feature) = requirements
        .features
        .iter()
        .find(|feature| !has_feature(capabilities, feature))
    {
        return Err(Mismatch::Feature(feature.clone()));
    }
    Ok(())
}

/// How wasteful it is to give `worker` to a job with `requirements`; lower is better.
/// Cpu surplus first, then memory surplus, then fewer labels (keep specialised workers for
/// the jobs that need them), then the id so that the choice is deterministic.
fn waste<'a>(requirements: &Requirements, worker: &'a IdleWorker) -> (u32, u64, usize, &'a str) {
    (
        worker
            .capabilities
            .cpu_cores
            .saturating_sub(requirements.cpu_cores),
        worker
            .capabilities
            .memory_mb
            .saturating_sub(requirements.memory_mb),
        worker.labels.len(),
        worker.id.as_str(),
    )
}

/// The fitting worker with the smallest surplus, if any fits.
pub fn best_fit<'a>(
    requirements: &Requirements,
    candidates: impl IntoIterator<Item = &'a IdleWorker>,
) -> Option<&'a IdleWorker> {
    candidates
        .into_iter()
        .filter(|worker| fits(requirements, &worker.capabilities, &worker.labels).is_ok())
        .min_by(|a, b| waste(requirements, a).cmp(&waste(requirements, b)))
}

/// Which idle worker gets which queued job, greedily in dispatch order.
///
/// Each job in `queued` (expected in dispatch order, as [`crate::queue::Queues::iter_in_order`]
/// yields them) gets the [`best_fit`] among the idle workers not yet given a job. Every worker
/// and every job appears at most once. A job that fits no free worker is skipped and stays
/// queued; it does not block the jobs behind it (no head-of-line blocking), so after the plan
/// no unassigned job fits any unassigned worker. Should a job id appear twice, only its
/// first entry counts. Cost is O(jobs × idle workers), and the walk stops once every idle
/// worker has a job.
pub fn plan_dispatch<'a>(
    queued: impl IntoIterator<Item = &'a QueueEntry>,
    idle: &[IdleWorker],
) -> Vec<(JobId, WorkerId)> {
    let mut taken: BTreeSet<&WorkerId> = BTreeSet::new();
    let mut seen: BTreeSet<&JobId> = BTreeSet::new();
    let mut plan = Vec::new();
    let free_ids = idle.iter().map(|w| &w.id).collect::<BTreeSet<_>>().len();
    for entry in queued {
        if taken.len() == free_ids {
            break;
        }
        if !seen.insert(&entry.job_id) {
            continue;
        }
        let free = idle.iter().filter(|worker| !taken.contains(&worker.id));
        if let Some(worker) = best_fit(&entry.requirements, free) {
            taken.insert(&worker.id);
            plan.push((entry.job_id.clone(), worker.id.clone()));
        }
    }
    plan
}

/// Why no worker in `shapes` (live workers, or pool templates that could be provisioned)
/// could ever run a job with `requirements`, or `None` if one could.
///
/// The reason names the requirement no worker meets at all when there is one ("needs 64
/// cpu cores, largest has 8"); otherwise it names what the closest worker lacks.
pub fn unschedulable_reason<'a>(
    requirements: &Requirements,
    shapes: impl IntoIterator<Item = (&'a WorkerCapabilities, &'a Labels)>,
) -> Option<String> {
    let shapes: Vec<_> = shapes.into_iter().collect();
    if shapes.is_empty() {
        return Some("no worker fits: there are no workers".to_owned());
    }
    if shapes
        .iter()
        .any(|(caps, labels)| fits(requirements, caps, labels).is_ok())
    {
        return None;
    }
    Some(format!(
        "no worker fits: {}",
        nobody_has(requirements, &shapes).unwrap_or_else(|| closest(requirements, &shapes))
    ))
}

/// The first requirement that no shape meets on its own, in words.
fn nobody_has(
    requirements: &Requirements,
    shapes: &[(&WorkerCapabilities, &Labels)],
) -> Option<String> {
    let largest_cpu = shapes.iter().map(|(c, _)| c.cpu_cores).max().unwrap_or(0);
    if requirements.cpu_cores > largest_cpu {
        return Some(format!(
            "needs {} cpu cores, largest has {largest_cpu}",
            requirements.cpu_cores
        ));
    }
    let largest_memory = shapes.iter().map(|(c, _)| c.memory_mb).max().unwrap_or(0);
    if requirements.memory_mb > largest_memory {
        return Some(format!(
            "needs {} MB of memory, largest has {largest_memory} MB",
            requirements.memory_mb
        ));
    }
    if let Some((key, value)) = requirements.labels.iter().find(|(key, value)| {
        shapes
            .iter()
            .all(|(_, labels)| labels.get(*key) != Some(*value))
    }) {
        return Some(format!("needs label {key}={value}, no worker has it"));
    }
    requirements
        .features
        .iter()
        .find(|feature| shapes.iter().all(|(caps, _)| !has_feature(caps, feature)))
        .map(|feature| format!("needs feature {feature}, no worker has it"))
}

/// Every requirement is met by some shape but none meets them all: name what the shape
/// with the fewest unmet requirements lacks first.
fn closest(requirements: &Requirements, shapes: &[(&WorkerCapabilities, &Labels)]) -> String {
    shapes
        .iter()
        .filter_map(|(caps, labels)| {
            let unmet = unmet_count(requirements, caps, labels);
            fits(requirements, caps, labels)
                .err()
                .map(|mismatch| (unmet, mismatch.to_string()))
        })
        .min()
        .map(|(_, mismatch)| {
            format!("no single worker meets every requirement, closest {mismatch}")
        })
        .unwrap_or_else(|| "no single worker meets every requirement".to_owned())
}

fn unmet_count(requirements: &Requirements, caps: &WorkerCapabilities, labels: &Labels) -> usize {
    usize::from(requirements.cpu_cores > caps.cpu_cores)
        + usize::from(requirements.memory_mb > caps.memory_mb)
        + requirements
            .labels
            .iter()
            .filter(|(key, value)| labels.get(*key) != Some(*value))
            .count()
        + requirements
            .features
            .iter()
            .filter(|feature| !has_feature(caps, feature))
            .count()
}

/// Why a queued job is still waiting, for `hodei job get`.
///
/// `idle` are the workers free now; `live` are all workers alive, busy or not.
pub fn why_waiting<'a>(
    requirements: &Requirements,
    idle: &[IdleWorker],
    live: impl IntoIterator<Item = (&'a WorkerCapabilities, &'a Labels)>,
) -> String {
    let idle_fitting = idle
        .iter()
        .filter(|w| fits(requirements, &w.capabilities, &w.labels).is_ok())
        .count();
    if idle_fitting > 0 {
        return format!(
            "waiting for dispatch ({idle_fitting} idle {})",
            workers_fit(idle_fitting)
        );
    }
    let live: Vec<_> = live.into_iter().collect();
    let busy_fitting = live
        .iter()
        .filter(|(caps, labels)| fits(requirements, caps, labels).is_ok())
        .count();
    if busy_fitting > 0 {
        return format!(
            "no idle worker ({busy_fitting} busy {})",
            workers_fit(busy_fitting)
        );
    }
    unschedulable_reason(requirements, live).unwrap_or_else(|| "no worker fits".to_owned())
}

fn workers_fit(count: usize) -> &'static str {
    if count == 1 {
        "worker fits"
    } else {
        "workers fit"
    }
}

/// Why a submission is refused because nothing could ever run it, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeverRunnable {
    /// `pool`, `requirements.cpu_cores`, `requirements.memory_mb`, `requirements.labels`,
    /// `requirements.features`, or `requirements` when only their combination fits nowhere.
    pub field: &'static str,
    pub reason: String,
}

/// A pool's template, as a shape of worker the pool could provision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOffer<'a> {
    pub name: &'a str,
    pub capabilities: &'a WorkerCapabilities,
    pub labels: &'a Labels,
}

/// Whether nothing could ever run a job of these `requirements`: no pool's template (what
/// its workers will look like) and no connected worker fits it. A job asking for a pool
/// (`pool=<name>`) no pool and no worker carries is refused as an unknown pool. `None`
/// when something fits, or when nothing at all is known yet (no pool, no worker: the
/// first agent may still come).
pub fn never_runnable(
    requirements: &Requirements,
    pools: &[PoolOffer<'_>],
    connected: &[(&WorkerCapabilities, &Labels)],
) -> Option<NeverRunnable> {
    if pools.is_empty() && connected.is_empty() {
        return None;
    }
    let pool_labels: Vec<Labels> = pools
        .iter()
        .map(|pool| {
            let mut labels = pool.labels.clone();
            labels
                .entry(POOL_LABEL.to_owned())
                .or_insert_with(|| pool.name.to_owned());
            labels
        })
        .collect();
    let shapes: Vec<(&WorkerCapabilities, &Labels)> = pools
        .iter()
        .zip(&pool_labels)
        .map(|(pool, labels)| (pool.capabilities, labels))
        .chain(connected.iter().copied())
        .collect();
    if let Some(pool) = requirements.labels.get(POOL_LABEL)
        && shapes
            .iter()
            .all(|(_, labels)| labels.get(POOL_LABEL) != Some(pool))
    {
        let mut names: Vec<&str> = pools.iter().map(|p| p.name).collect();
        names.sort_unstable();
        let known = if names.is_empty() {
            "there are no pools".to_owned()
        } else {
            format!("the pools are {}", names.join(", "))
        };
        return Some(NeverRunnable {
            field: "pool",
            reason: format!("unknown pool {pool}: {known}"),
        });
    }
    if shapes
        .iter()
        .any(|(caps, labels)| fits(requirements, caps, labels).is_ok())
    {
        return None;
    }
    let field = if shapes
        .iter()
        .all(|(caps, _)| caps.cpu_cores < requirements.cpu_cores)
    {
        "requirements.cpu_cores"
    } else if shapes
        .iter()
        .all(|(caps, _)| caps.memory_mb < requirements.memory_mb)
    {
        "requirements.memory_mb"
    } else if requirements.labels.iter().any(|(key, value)| {
        shapes
            .iter()
            .all(|(_, labels)| labels.get(key) != Some(value))
    }) {
        "requirements.labels"
    } else if requirements
        .features
        .iter()
        .any(|feature| shapes.iter().all(|(caps, _)| !has_feature(caps, feature)))
    {
        "requirements.features"
    } else {
        "requirements"
    };
    let why = nobody_has(requirements, &shapes).unwrap_or_else(|| closest(requirements, &shapes));
    Some(NeverRunnable {
        field,
        reason: format!(
            "no pool template and no connected worker can run this job: {why} ({} {}, {} connected {})",
            pools.len(),
            if pools.len() == 1 { "pool" } else { "pools" },
            connected.len(),
            if connected.len() == 1 {
                "worker"
            } else {
                "workers"
            },
        ),
    })
}

#[cfg(test)]
mod never_runnable_tests {
    use super::*;
    use std::collections::BTreeMap;

    fn caps(cpu_cores: u32, memory_mb: u64) -> WorkerCapabilities {
        WorkerCapabilities {
            cpu_cores,
            memory_mb,
            docker_enabled: false,
            custom_resources: BTreeMap::new(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn needs(cpu_cores: u32, pairs: &[(&str, &str)]) -> Requirements {
        Requirements {
            cpu_cores,
            memory_mb: 0,
            labels: labels(pairs),
            features: Default::default(),
        }
    }

    #[test]
    fn refusals_name_the_field_and_why() {
        let (small, big) = (caps(2, 2048), caps(16, 65536));
        let (none, linux, gpu) = (
            labels(&[]),
            labels(&[("os", "linux")]),
            labels(&[("gpu", "a100")]),
        );
        let pools = [
            PoolOffer {
                name: "default",
                capabilities: &small,
                labels: &linux,
            },
            PoolOffer {
                name: "big",
                capabilities: &big,
                labels: &none,
            },
        ];
        let connected = [(&small, &gpu)];
        let refused =
            |requirements: &Requirements| never_runnable(requirements, &pools, &connected);

        // Something fits: a pool's template, a pool by name, a connected worker.
        assert_eq!(refused(&needs(1, &[("os", "linux")])), None);
        assert_eq!(refused(&needs(8, &[("pool", "big")])), None);
        assert_eq!(refused(&needs(1, &[("gpu", "a100")])), None);

        let unknown = refused(&needs(1, &[("pool", "nosuch")])).unwrap();
        assert_eq!(unknown.field, "pool");
        assert_eq!(
            unknown.reason,
            "unknown pool nosuch: the pools are big, default"
        );

        let label = refused(&needs(1, &[("os", "windows")])).unwrap();
        assert_eq!(label.field, "requirements.labels");
        assert!(
            label.reason.contains("needs label os=windows"),
            "{}",
            label.reason
        );
        assert!(
            label.reason.contains("2 pools, 1 connected worker"),
            "{}",
            label.reason
        );

        let cpu = refused(&needs(64, &[])).unwrap();
        assert_eq!(cpu.field, "requirements.cpu_cores");

        // Each requirement is met somewhere, never together.
        let combined = refused(&needs(8, &[("os", "linux")])).unwrap();
        assert_eq!(combined.field, "requirements");
        assert!(
            combined.reason.contains("no single worker"),
            "{}",
            combined.reason
        );
    }

    #[test]
    fn with_nothing_known_a_job_waits_for_the_first_agent() {
        assert_eq!(
            never_runnable(&needs(64, &[("os", "plan9")]), &[], &[]),
            None
        );
        let any = caps(1, 1);
        let none = labels(&[]);
        let refused = never_runnable(&needs(1, &[("pool", "p")]), &[], &[(&any, &none)]).unwrap();
        assert_eq!(refused.reason, "unknown pool p: there are no pools");
    }

    proptest::proptest! {
        /// A job a shape fits is never refused, and a refusal always comes with a reason.
        #[test]
        fn what_a_shape_fits_is_never_refused(
            cpu in 0u32..8,
            shape_cpu in proptest::collection::vec(1u32..8, 0..4),
            os in proptest::option::of(proptest::sample::select(vec!["linux", "mac"])),
        ) {
            let capabilities: Vec<WorkerCapabilities> = shape_cpu.iter().map(|c| caps(*c, 1024)).collect();
            let linux = labels(&[("os", "linux")]);
            let connected: Vec<(&WorkerCapabilities, &Labels)> =
                capabilities.iter().map(|c| (c, &linux)).collect();
            let requirements = needs(cpu, &os.map(|o| vec![("os", o)]).unwrap_or_default());
            let fits_one = connected
                .iter()
                .any(|(c, l)| fits(&requirements, c, l).is_ok());
            let verdict = never_runnable(&requirements, &[], &connected);
            if fits_one || connected.is_empty() {
                proptest::prop_assert_eq!(verdict, None);
            } else {
                proptest::prop_assert!(verdict.is_some_and(|v| !v.reason.is_empty()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Priority, QueueName, TenantName};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn caps(cpu_cores: u32, memory_mb: u64) -> WorkerCapabilities {
        WorkerCapabilities {
            cpu_cores,
            memory_mb,
            docker_enabled: false,
            custom_resources: BTreeMap::new(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn worker(id: &str, cpu_cores: u32, memory_mb: u64, pairs: &[(&str, &str)]) -> IdleWorker {
        IdleWorker {
            id: WorkerId::new(id).unwrap(),
            capabilities: caps(cpu_cores, memory_mb),
            labels: labels(pairs),
            pool: None,
        }
    }

    fn needs(cpu_cores: u32, memory_mb: u64) -> Requirements {
        Requirements {
            cpu_cores,
            memory_mb,
            ..Requirements::default()
        }
    }

    fn entry(id: &str, requirements: Requirements) -> QueueEntry {
        QueueEntry {
            job_id: JobId::new(id).unwrap(),
            queue: QueueName::default(),
            tenant: TenantName::default(),
            priority: Priority::DEFAULT,
            sequence: 0,
            requirements,
            sla_class: crate::job::SlaClass::default(),
            sla: crate::sla::SlaClock::NEVER,
        }
    }

    fn shapes(workers: &[IdleWorker]) -> Vec<(&WorkerCapabilities, &Labels)> {
        workers
            .iter()
            .map(|w| (&w.capabilities, &w.labels))
            .collect()
    }

    #[test]
    fn fits_names_the_first_unmet_requirement() {
        let mut gpu = caps(8, 16_384);
        gpu.custom_resources.insert("gpu".into(), 1);
        gpu.custom_resources.insert("fpga".into(), 0);
        let mut docker = caps(2, 4096);
        docker.docker_enabled = true;
        let linux = labels(&[("os", "linux"), ("arch", "amd64")]);
        let none = Labels::new();
        let with = |r: Requirements, f: &dyn Fn(&mut Requirements)| {
            let mut r = r;
            f(&mut r);
            r
        };
        let cases: Vec<(Requirements, &WorkerCapabilities, &Labels, Result<(), &str>)> = vec![
            (Requirements::default(), &docker, &none, Ok(())),
            (needs(2, 4096), &docker, &linux, Ok(())),
            (
                needs(4, 0),
                &docker,
                &linux,
                Err("needs 4 cpu cores, worker has 2"),
            ),
            (
                needs(1, 8192),
                &docker,
                &linux,
                Err("needs 8192 MB of memory, worker has 4096 MB"),
            ),
            (
                with(needs(1, 1), &|r| {
                    r.labels = labels(&[("os", "linux")]);
                }),
                &docker,
                &linux,
                Ok(()),
            ),
            (
                with(needs(1, 1), &|r| {
                    r.labels = labels(&[("os", "windows")]);
                }),
                &docker,
                &linux,
                Err("needs label os=windows"),
            ),
            (
                with(needs(1, 1), &|r| {
                    r.labels = labels(&[("zone", "a")]);
                }),
                &docker,
                &linux,
                Err("needs label zone=a"),
            ),
            (
                with(needs(1, 1), &|r| {
                    r.features = ["docker".to_owned()].into();
                }),
                &docker,
                &linux,
                Ok(()),
            ),
            (
                with(needs(1, 1), &|r| {
                    r.features = ["gpu".to_owned()].into();
                }),
                &docker,
                &linux,
                Err("needs feature gpu"),
            ),
            (
                with(needs(1, 1), &|r| {
                    r.features = ["gpu".to_owned()].into();
                }),
                &gpu,
                &linux,
                Ok(()),
            ),
            (
                with(needs(1, 1), &|r| {
                    r.features = ["fpga".to_owned()].into();
                }),
                &gpu,
                &linux,
                Err("needs feature fpga"),
            ),
            (
                with(needs(1, 1), &|r| {
                    r.features = ["docker".to_owned()].into();
                }),
                &gpu,
                &linux,
                Err("needs feature docker"),
            ),
            (
                with(needs(64, 1 << 20), &|r| {
                    r.features = ["gpu".to_owned()].into();
                }),
                &docker,
                &linux,
                Err("needs 64 cpu cores, worker has 2"),
            ),
        ];
        for (requirements, caps, labels, expected) in cases {
            let got = fits(&requirements, caps, labels).map_err(|m| m.to_string());
            assert_eq!(got, expected.map_err(str::to_owned), "{requirements:?}");
        }
    }

    #[test]
    fn best_fit_picks_the_smallest_surplus() {
        let big = worker("big", 16, 32_768, &[]);
        let small = worker("small", 2, 4096, &[]);
        let small_more_memory = worker("small-mem", 2, 8192, &[]);
        let small_labelled = worker("small-lab", 2, 4096, &[("os", "linux")]);
        let small_twin = worker("a-small", 2, 4096, &[]);
        let cases: Vec<(Requirements, Vec<&IdleWorker>, Option<&str>)> = vec![
            (needs(1, 1), vec![&big, &small], Some("small")),
            (needs(4, 1), vec![&big, &small], Some("big")),
            (needs(32, 1), vec![&big, &small], None),
            (
                needs(2, 4096),
                vec![&small_more_memory, &small],
                Some("small"),
            ),
            (
                needs(2, 6000),
                vec![&small_more_memory, &small, &big],
                Some("small-mem"),
            ),
            (needs(1, 1), vec![&small_labelled, &small], Some("small")),
            (needs(1, 1), vec![&small, &small_twin], Some("a-small")),
            (needs(1, 1), vec![], None),
        ];
        for (requirements, candidates, expected) in cases {
            let got = best_fit(&requirements, candidates).map(|w| w.id.as_str());
            assert_eq!(got, expected, "{requirements:?}");
        }
    }

    #[test]
    fn dispatch_is_greedy_without_head_of_line_blocking() {
        let idle = [
            worker("w-big", 8, 16_384, &[]),
            worker("w-small", 2, 4096, &[]),
        ];
        let queued = [
            entry("huge", needs(64, 1)),
            entry("small-1", needs(1, 1)),
            entry("medium", needs(4, 1)),
            entry("small-2", needs(1, 1)),
        ];
        let plan = plan_dispatch(&queued, &idle);
        let plan: Vec<(&str, &str)> = plan.iter().map(|(j, w)| (j.as_str(), w.as_str())).collect();
        assert_eq!(plan, [("small-1", "w-small"), ("medium", "w-big")]);
        assert!(plan_dispatch(&queued, &[]).is_empty());
        let twice = [entry("same", needs(1, 1)), entry("same", needs(1, 1))];
        assert_eq!(plan_dispatch(&twice, &idle).len(), 1);
    }

    #[test]
    fn unschedulable_reasons_name_what_nobody_has() {
        let mut gpu_box = worker("gpu", 8, 16_384, &[]);
        gpu_box
            .capabilities
            .custom_resources
            .insert("gpu".into(), 2);
        let fleet = [
            gpu_box,
            worker("linux", 4, 8192, &[("os", "linux")]),
            worker("arm", 2, 4096, &[("os", "linux"), ("arch", "arm64")]),
        ];
        let with_labels = |pairs: &[(&str, &str)]| Requirements {
            labels: labels(pairs),
            ..Requirements::default()
        };
        let with_features = |names: &[&str]| Requirements {
            features: names.iter().map(|s| s.to_string()).collect(),
            ..Requirements::default()
        };
        let cases = [
            (needs(2, 1024), None),
            (
                needs(64, 1),
                Some("no worker fits: needs 64 cpu cores, largest has 8"),
            ),
            (
                needs(1, 1 << 20),
                Some("no worker fits: needs 1048576 MB of memory, largest has 16384 MB"),
            ),
            (
                with_labels(&[("os", "windows")]),
                Some("no worker fits: needs label os=windows, no worker has it"),
            ),
            (
                with_features(&["fpga"]),
                Some("no worker fits: needs feature fpga, no worker has it"),
            ),
            (
                Requirements {
                    features: ["gpu".to_owned()].into(),
                    ..with_labels(&[("os", "linux")])
                },
                Some(
                    "no worker fits: no single worker meets every requirement, \
                     closest needs feature gpu",
                ),
            ),
        ];
        for (requirements, expected) in cases {
            assert_eq!(
                unschedulable_reason(&requirements, shapes(&fleet)).as_deref(),
                expected,
                "{requirements:?}"
            );
        }
        assert_eq!(
            unschedulable_reason(&needs(1, 1), []).as_deref(),
            Some("no worker fits: there are no workers")
        );
    }

    #[test]
    fn why_waiting_distinguishes_busy_from_impossible() {
        let live = [
            worker("a", 8, 16_384, &[]),
            worker("b", 8, 16_384, &[]),
            worker("c", 2, 4096, &[]),
        ];
        let idle = [live[2].clone()];
        assert_eq!(
            why_waiting(&needs(4, 1), &idle, shapes(&live)),
            "no idle worker (2 busy workers fit)"
        );
        assert_eq!(
            why_waiting(&needs(1, 1), &idle, shapes(&live)),
            "waiting for dispatch (1 idle worker fits)"
        );
        assert_eq!(
            why_waiting(&needs(64, 1), &idle, shapes(&live)),
            "no worker fits: needs 64 cpu cores, largest has 8"
        );
        assert_eq!(
            why_waiting(&needs(4, 1), &idle, shapes(&live[1..])),
            "no idle worker (1 busy worker fits)"
        );
    }

    fn requirements() -> impl Strategy<Value = Requirements> {
        (
            0..6u32,
            0..5u64,
            proptest::option::of(prop_oneof![Just("linux"), Just("windows")]),
            proptest::collection::btree_set(prop_oneof![Just("gpu"), Just("docker")], 0..2),
        )
            .prop_map(|(cpu_cores, memory, os, features)| Requirements {
                cpu_cores,
                memory_mb: memory * 1024,
                labels: os.map(|os| labels(&[("os", os)])).unwrap_or_default(),
                features: features.into_iter().map(str::to_owned).collect(),
            })
    }

    fn idle_workers() -> impl Strategy<Value = Vec<IdleWorker>> {
        proptest::collection::vec(
            (
                1..6u32,
                1..5u64,
                prop_oneof![Just("linux"), Just("windows")],
                0..2u64,
                any::<bool>(),
            ),
            0..8,
        )
        .prop_map(|shapes| {
            shapes
                .into_iter()
                .enumerate()
                .map(|(i, (cpu, memory, os, gpus, docker))| {
                    let mut w = worker(&format!("w{i}"), cpu, memory * 1024, &[("os", os)]);
                    w.capabilities.custom_resources.insert("gpu".into(), gpus);
                    w.capabilities.docker_enabled = docker;
                    w
                })
                .collect()
        })
    }

    fn queued_jobs() -> impl Strategy<Value = Vec<QueueEntry>> {
        // Ids from a small range so that some repeat.
        proptest::collection::vec((0..16u8, requirements()), 0..16).prop_map(|jobs| {
            jobs.into_iter()
                .map(|(id, r)| entry(&format!("j{id}"), r))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn dispatch_plans_are_sound_and_maximal(queued in queued_jobs(), idle in idle_workers()) {
            let plan = plan_dispatch(&queued, &idle);
            let jobs: BTreeSet<&JobId> = plan.iter().map(|(j, _)| j).collect();
            let used: BTreeSet<&WorkerId> = plan.iter().map(|(_, w)| w).collect();
            prop_assert_eq!(jobs.len(), plan.len(), "a job was assigned twice");
            prop_assert_eq!(used.len(), plan.len(), "a worker was assigned twice");
            for (job_id, worker_id) in &plan {
                let entry = queued.iter().find(|e| &e.job_id == job_id).unwrap();
                let worker = idle.iter().find(|w| &w.id == worker_id).unwrap();
                prop_assert!(fits(&entry.requirements, &worker.capabilities, &worker.labels).is_ok());
            }
            let mut seen = BTreeSet::new();
            let first_entries: Vec<&QueueEntry> = queued.iter().filter(|e| seen.insert(&e.job_id)).collect();
            for entry in first_entries.iter().filter(|e| !jobs.contains(&e.job_id)) {
                for worker in idle.iter().filter(|w| !used.contains(&w.id)) {
                    prop_assert!(
                        fits(&entry.requirements, &worker.capabilities, &worker.labels).is_err(),
                        "{} was left waiting although {} is free and fits", entry.job_id, worker.id
                    );
                }
            }
        }

        #[test]
        fn dispatch_plans_do_not_depend_on_worker_order(
            queued in queued_jobs(),
            idle in idle_workers(),
            rotation in 0..8usize,
        ) {
            let mut rotated = idle.clone();
            if !rotated.is_empty() {
                let by = rotation % rotated.len();
                rotated.rotate_left(by);
            }
            prop_assert_eq!(plan_dispatch(&queued, &idle), plan_dispatch(&queued, &rotated));
        }

        #[test]
        fn unschedulable_means_nobody_fits(r in requirements(), idle in idle_workers()) {
            let anyone = idle.iter().any(|w| fits(&r, &w.capabilities, &w.labels).is_ok());
            prop_assert_eq!(unschedulable_reason(&r, shapes(&idle)).is_none(), anyone);
        }
    }
}

/// Why no worker of any known shape (pool templates, registered workers) could ever hold a
/// job of these requirements, counting only cpu and memory: those are bounded by the
/// configured pools, while a label or feature nobody offers yet may arrive with the next
/// agent (`hodei agent --label`), so a job needing one waits instead. `None` when some
/// shape is big enough, or when no shape is known at all.
pub fn exceeds_every_shape<'a>(
    requirements: &Requirements,
    shapes: impl IntoIterator<Item = &'a WorkerCapabilities>,
) -> Option<String> {
    let (mut cpu, mut memory, mut any) = (0u32, 0u64, false);
    for capabilities in shapes {
        any = true;
        if capabilities.cpu_cores >= requirements.cpu_cores
            && capabilities.memory_mb >= requirements.memory_mb
        {
            return None;
        }
        cpu = cpu.max(capabilities.cpu_cores);
        memory = memory.max(capabilities.memory_mb);
    }
    any.then(|| {
        format!(
            "needs {} cpu cores and {} MiB, the largest pool or worker has {cpu} cores and {memory} MiB",
            requirements.cpu_cores, requirements.memory_mb
        )
    })
}

#[cfg(test)]
mod exceeds_tests {
    use super::*;

    #[test]
    fn pool_workers_carry_their_pool_as_a_label_unless_they_set_it() {
        let mut worker = Worker {
            id: WorkerId::new("w-1").unwrap(),
            capabilities: WorkerCapabilities::default(),
            metadata: crate::WorkerMetadata {
                worker_type: crate::WorkerType::Static,
                provider: crate::ProviderKind::Local,
                pool: None,
                namespace: "default".into(),
                labels: Labels::new(),
                tags: Vec::new(),
                provision_timestamp: std::time::SystemTime::UNIX_EPOCH,
            },
        };
        assert!(!effective_labels(&worker).contains_key(POOL_LABEL));
        worker.metadata.pool = Some("linux".into());
        assert_eq!(effective_labels(&worker)[POOL_LABEL], "linux");
        worker
            .metadata
            .labels
            .insert(POOL_LABEL.into(), "own".into());
        assert_eq!(effective_labels(&worker)[POOL_LABEL], "own");
        assert_eq!(IdleWorker::from(&worker).labels[POOL_LABEL], "own");
    }

    fn caps(cpu_cores: u32, memory_mb: u64) -> WorkerCapabilities {
        WorkerCapabilities {
            cpu_cores,
            memory_mb,
            ..WorkerCapabilities::default()
        }
    }

    #[test]
    fn only_cpu_and_memory_beyond_every_shape_are_unsatisfiable() {
        let req = |cpu_cores, memory_mb| Requirements {
            cpu_cores,
            memory_mb,
            ..Requirements::default()
        };
        let shapes = [caps(2, 4096), caps(8, 1024)];
        assert_eq!(exceeds_every_shape(&req(8, 1024), &shapes), None);
        assert_eq!(exceeds_every_shape(&req(2, 4096), &shapes), None);
        let why = exceeds_every_shape(&req(8, 4096), &shapes).unwrap();
        assert!(
            why.contains("largest pool or worker has 8 cores and 4096 MiB"),
            "{why}"
        );
        assert_eq!(
            exceeds_every_shape(&req(64, 1), &[]),
            None,
            "nothing known yet"
        );
        let mut labelled = req(1, 1);
        labelled.labels.insert("gpu".into(), "yes".into());
        assert_eq!(exceeds_every_shape(&labelled, &shapes), None, "labels wait");
    }
}
