//! Pools: named groups of workers provisioned from one template, static or autoscaled.
//!
//! A pool is data: the configuration file's `[[pool]]` tables, the REST API's pool bodies
//! and the store's pool records all decode into [`PoolSpec`], and [`PoolSpec::validate`]
//! is the one check they all go through.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::worker::{ProviderKind, ValidationError, WorkerSpec, WorkerType};

/// Most workers one pool may hold; protects the machine from a typo in a config file.
pub const MAX_POOL_SIZE: u32 = 10_000;

/// Defaults from the specification (08.3, 08.4, 08.6).
pub const DEFAULT_MAX_CONCURRENT_PROVISIONING: u32 = 5;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;
pub const DEFAULT_SCALE_UP_COOLDOWN_SECS: u64 = 60;
pub const DEFAULT_SCALE_DOWN_COOLDOWN_SECS: u64 = 120;
pub const DEFAULT_MAX_DECISIONS_PER_MINUTE: u32 = 6;

/// Static pools keep a fixed number of warm workers; dynamic pools follow demand between
/// `min` and `max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    #[default]
    Static,
    Dynamic,
}

impl PoolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Dynamic => "dynamic",
        }
    }
}

impl fmt::Display for PoolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pool as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub name: String,
    pub provider: ProviderKind,
    #[serde(default)]
    pub kind: PoolKind,
    /// Static pools: the workers kept warm (min = max = size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// Dynamic pools: workers kept even without demand.
    #[serde(default)]
    pub min: u32,
    /// Dynamic pools: most workers at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Dynamic pools: idle workers kept above the busy ones, for the next jobs.
    #[serde(default)]
    pub idle_buffer: u32,
    /// Workers of this pool being created at once.
    #[serde(default = "default_max_concurrent_provisioning")]
    pub max_concurrent_provisioning: u32,
    /// Seconds an idle worker above what the pool needs waits before it is drained.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: u64,
    /// Jobs a worker of this pool runs before it is retired and replaced: 1 makes every
    /// worker ephemeral (a fresh one per job); absent means workers are reused without limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
    /// What one worker costs per hour, in any currency; the cheapest pool that fits a job
    /// scales first and the others take the overflow.
    #[serde(default)]
    pub cost_per_hour: f64,
    /// How a dynamic pool scales.
    #[serde(default)]
    pub scaling: ScalingPolicy,
    /// What every worker of the pool looks like; its `pool` and `worker_type` are set from
    /// the pool.
    #[serde(default)]
    pub template: WorkerSpec,
}

fn default_max_concurrent_provisioning() -> u32 {
    DEFAULT_MAX_CONCURRENT_PROVISIONING
}

fn default_idle_timeout() -> u64 {
    DEFAULT_IDLE_TIMEOUT_SECS
}

impl PoolSpec {
    /// A static pool of `size` workers from the default template.
    pub fn fixed(name: impl Into<String>, provider: ProviderKind, size: u32) -> Self {
        Self {
            name: name.into(),
            provider,
            kind: PoolKind::Static,
            size: Some(size),
            min: 0,
            max: None,
            idle_buffer: 0,
            max_concurrent_provisioning: DEFAULT_MAX_CONCURRENT_PROVISIONING,
            idle_timeout: DEFAULT_IDLE_TIMEOUT_SECS,
            max_uses: None,
            cost_per_hour: 0.0,
            scaling: ScalingPolicy::default(),
            template: WorkerSpec::default(),
        }
    }

    /// A dynamic pool between `min` and `max` workers from the default template.
    pub fn autoscaled(name: impl Into<String>, provider: ProviderKind, min: u32, max: u32) -> Self {
        Self {
            kind: PoolKind::Dynamic,
            size: None,
            min,
            max: Some(max),
            ..Self::fixed(name, provider, 0)
        }
    }

    /// Workers the pool keeps at least (before schedules).
    pub fn min_workers(&self) -> u32 {
        match self.kind {
            PoolKind::Static => self.size.unwrap_or(self.min),
            PoolKind::Dynamic => self.min,
        }
    }

    /// Workers the pool holds at most.
    pub fn max_workers(&self) -> u32 {
        match self.kind {
            PoolKind::Static => self.min_workers(),
            PoolKind::Dynamic => self.max.unwrap_or(self.min),
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        crate::worker::validate_key("pool.name", &self.name)?;
        if self.name.contains('/') {
            return Err(ValidationError::new("pool.name", "must not contain '/'"));
        }
        if self.provider == ProviderKind::External {
            return Err(ValidationError::new(
                "pool.provider",
                "must be local, docker or kubernetes (external workers start themselves)",
            ));
        }
        match self.kind {
            PoolKind::Static => {
                if self.size.is_none() {
                    return Err(ValidationError::new(
                        "pool.size",
                        "a static pool needs a size (or kind = \"dynamic\" with min and max)",
                    ));
                }
                if self.max.is_some() || self.min != 0 {
                    return Err(ValidationError::new(
                        "pool.kind",
                        "min and max are for dynamic pools; a static pool has a size",
                    ));
                }
            }
            PoolKind::Dynamic => {
                if self.size.is_some() {
                    return Err(ValidationError::new(
                        "pool.size",
                        "a dynamic pool is sized by min and max, not size",
                    ));
                }
                let Some(max) = self.max else {
                    return Err(ValidationError::new(
                        "pool.max",
                        "a dynamic pool needs a max",
                    ));
                };
                if max == 0 {
                    return Err(ValidationError::new("pool.max", "must be at least 1"));
                }
                if self.min > max {
                    return Err(ValidationError::new(
                        "pool.min",
                        format!("is {}, more than max ({max})", self.min),
                    ));
                }
            }
        }
        if self.max_workers() > MAX_POOL_SIZE {
            let field = match self.kind {
                PoolKind::Static => "pool.size",
                PoolKind::Dynamic => "pool.max",
            };
            return Err(ValidationError::new(
                field,
                format!("is {}, at most {MAX_POOL_SIZE} allowed", self.max_workers()),
            ));
        }
        if self.idle_buffer > MAX_POOL_SIZE {
            return Err(ValidationError::new(
                "pool.idle_buffer",
                format!("is {}, at most {MAX_POOL_SIZE} allowed", self.idle_buffer),
            ));
        }
        if self.max_concurrent_provisioning == 0 {
            return Err(ValidationError::new(
                "pool.max_concurrent_provisioning",
                "must be at least 1",
            ));
        }
        if self.max_uses == Some(0) {
            return Err(ValidationError::new(
                "pool.max_uses",
                "must be at least 1 (1 = a fresh worker per job), or absent for no limit",
            ));
        }
        if !self.cost_per_hour.is_finite() || self.cost_per_hour < 0.0 {
            return Err(ValidationError::new(
                "pool.cost_per_hour",
                "must be a number of at least 0",
            ));
        }
        self.scaling.validate(self.max_workers())?;
        self.template.capabilities.validate()?;
        crate::worker::validate_labels("pool.template.labels", &self.template.labels)?;
        validate_env(&self.template.env)?;
        if let Some(user) = &self.template.user {
            crate::worker::validate_user("pool.template.user", user)?;
        }
        if let Some(image) = &self.template.image
            && (image.is_empty() || image.len() > 512 || image.chars().any(char::is_whitespace))
        {
            return Err(ValidationError::new(
                "pool.template.image",
                "must be an image reference without spaces, at most 512 characters",
            ));
        }
        Ok(())
    }

    /// The spec of one worker of this pool.
    pub fn worker_spec(&self) -> WorkerSpec {
        WorkerSpec {
            worker_type: match self.kind {
                PoolKind::Static => WorkerType::Static,
                PoolKind::Dynamic => WorkerType::Dynamic,
            },
            pool: Some(self.name.clone()),
            ..self.template.clone()
        }
    }
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    for (key, value) in env {
        let valid = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ValidationError::new(
                format!("pool.template.env[{key}]"),
                "is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
            ));
        }
        if value.contains('\0') {
            return Err(ValidationError::new(
                format!("pool.template.env[{key}]"),
                "value contains a NUL byte",
            ));
        }
    }
    Ok(())
}

/// What a dynamic pool's size follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// A worker per `jobs_per_worker` queued jobs, on top of the busy ones.
    #[default]
    QueueDepth,
    /// Busy plus queued workers make up `target_utilisation` of the pool.
    Utilisation,
    /// Little's law: arrivals per second times the mean run time, or the queue, whichever
    /// asks more.
    ArrivalRate,
    /// Thresholds to step sizes: with at least `queued` jobs waiting, `add` workers on top
    /// of the busy and starting ones (the largest step reached applies).
    Step,
    /// Queue depth, or what the hour-of-week arrival profile learned from history expects
    /// `lead_secs` from now (the provider's start latency by default), whichever asks
    /// more: workers start ahead of a recurring burst instead of after it.
    Predictive,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueDepth => "queue_depth",
            Self::Utilisation => "utilisation",
            Self::ArrivalRate => "arrival_rate",
            Self::Step => "step",
            Self::Predictive => "predictive",
        }
    }
}

/// How a dynamic pool scales: the policy, its parameters, cooldowns, and time-of-day minimums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingPolicy {
    pub policy: PolicyKind,
    /// `queue_depth`: queued jobs one new worker is provisioned for.
    pub jobs_per_worker: u32,
    /// `utilisation`: the share of workers that should be busy, in (0, 1].
    pub target_utilisation: f64,
    /// Seconds after a scale-up before the next one.
    pub scale_up_cooldown: u64,
    /// Seconds after any scaling before a scale-down.
    pub scale_down_cooldown: u64,
    /// Most scaling decisions in any 60 s.
    pub max_decisions_per_minute: u32,
    /// Time-of-day minimums (UTC).
    pub schedule: Vec<ScheduleWindow>,
    /// `step`: thresholds on the queued jobs and the workers each adds.
    pub steps: Vec<ScalingStep>,
    /// `predictive`: how far ahead the profile is read, seconds; the provider's start
    /// latency ([`ProviderKind::default_start_latency_ms`]) when absent.
    pub lead_secs: Option<f64>,
}

/// One step of `step` scaling: at least `queued` jobs waiting adds `add` workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingStep {
    pub queued: u32,
    pub add: u32,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        Self {
            policy: PolicyKind::QueueDepth,
            jobs_per_worker: 1,
            target_utilisation: 0.8,
            scale_up_cooldown: DEFAULT_SCALE_UP_COOLDOWN_SECS,
            scale_down_cooldown: DEFAULT_SCALE_DOWN_COOLDOWN_SECS,
            max_decisions_per_minute: DEFAULT_MAX_DECISIONS_PER_MINUTE,
            schedule: Vec::new(),
            steps: Vec::new(),
            lead_secs: None,
        }
    }
}

impl ScalingPolicy {
    fn validate(&self, max: u32) -> Result<(), ValidationError> {
        if self.jobs_per_worker == 0 {
            return Err(ValidationError::new(
                "pool.scaling.jobs_per_worker",
                "must be at least 1",
            ));
        }
        if !(self.target_utilisation > 0.0 && self.target_utilisation <= 1.0) {
            return Err(ValidationError::new(
                "pool.scaling.target_utilisation",
                "must be more than 0 and at most 1",
            ));
        }
        if self.max_decisions_per_minute == 0 {
            return Err(ValidationError::new(
                "pool.scaling.max_decisions_per_minute",
                "must be at least 1",
            ));
        }
        if self.policy == PolicyKind::Step && self.steps.is_empty() {
            return Err(ValidationError::new(
                "pool.scaling.steps",
                "policy \"step\" needs at least one step ({ queued = N, add = M })",
            ));
        }
        for (i, step) in self.steps.iter().enumerate() {
            if step.queued == 0 || step.add == 0 {
                return Err(ValidationError::new(
                    format!("pool.scaling.steps[{i}]"),
                    "queued and add must be at least 1",
                ));
            }
            if step.add > MAX_POOL_SIZE {
                return Err(ValidationError::new(
                    format!("pool.scaling.steps[{i}].add"),
                    format!("is {}, at most {MAX_POOL_SIZE} allowed", step.add),
                ));
            }
        }
        if let Some(lead) = self.lead_secs
            && !(lead.is_finite() && (0.0..=86_400.0).contains(&lead))
        {
            return Err(ValidationError::new(
                "pool.scaling.lead_secs",
                "must be a number of seconds from 0 to 86400",
            ));
        }
        for (i, window) in self.schedule.iter().enumerate() {
            if window.min > max {
                return Err(ValidationError::new(
                    format!("pool.scaling.schedule[{i}].min"),
                    format!("is {}, more than the pool's max ({max})", window.min),
                ));
            }
            if window.from == window.to {
                return Err(ValidationError::new(
                    format!("pool.scaling.schedule[{i}].to"),
                    "equals from; the window would be empty",
                ));
            }
        }
        Ok(())
    }
}

/// A time-of-day window (UTC) during which a pool keeps at least `min` workers; `to` before
/// `from` runs past midnight. No `days` means every day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleWindow {
    #[serde(default)]
    pub days: Vec<Weekday>,
    pub from: TimeOfDay,
    pub to: TimeOfDay,
    pub min: u32,
}

impl ScheduleWindow {
    /// Whether the window holds at `unix_ms`.
    pub fn contains(&self, unix_ms: u64) -> bool {
        let secs = unix_ms / 1000;
        let day = secs / 86_400;
        let minute = u16::try_from((secs % 86_400) / 60).unwrap_or(0);
        let today = Weekday::from_days_since_epoch(day);
        let yesterday = Weekday::from_days_since_epoch(day + 6);
        let on = |weekday: Weekday| self.days.is_empty() || self.days.contains(&weekday);
        let (from, to) = (self.from.0, self.to.0);
        if from < to {
            on(today) && minute >= from && minute < to
        } else {
            (on(today) && minute >= from) || (on(yesterday) && minute < to)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    const FROM_MONDAY: [Weekday; 7] = [
        Self::Mon,
        Self::Tue,
        Self::Wed,
        Self::Thu,
        Self::Fri,
        Self::Sat,
        Self::Sun,
    ];

    /// 1970-01-01 was a Thursday.
    fn from_days_since_epoch(days: u64) -> Self {
        Self::FROM_MONDAY[usize::try_from((days + 3) % 7).unwrap_or(0)]
    }
}

/// Minutes after midnight, written `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    pub fn new(hour: u16, minute: u16) -> Option<Self> {
        (hour < 24 && minute < 60).then_some(Self(hour * 60 + minute))
    }
}

impl FromStr for TimeOfDay {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("`{text}` is not a time of day HH:MM");
        let (hour, minute) = text.split_once(':').ok_or_else(invalid)?;
        let hour = hour.parse().map_err(|_| invalid())?;
        let minute = minute.parse().map_err(|_| invalid())?;
        Self::new(hour, minute).ok_or_else(invalid)
    }
}

impl TryFrom<String> for TimeOfDay {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<TimeOfDay> for String {
    fn from(time: TimeOfDay) -> Self {
        format!("{:02}:{:02}", time.0 / 60, time.0 % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PoolSpec {
        PoolSpec::fixed("default", ProviderKind::Local, 2)
    }

    fn field(spec: PoolSpec) -> String {
        spec.validate().unwrap_err().field
    }

    #[test]
    fn pools_are_validated() {
        assert!(pool().validate().is_ok());
        assert!(
            PoolSpec::autoscaled("burst", ProviderKind::Docker, 0, 8)
                .validate()
                .is_ok()
        );
        let cases: Vec<(PoolSpec, &str)> = vec![
            (
                PoolSpec {
                    name: "no spaces".into(),
                    ..pool()
                },
                "pool.name",
            ),
            (
                PoolSpec {
                    size: Some(MAX_POOL_SIZE + 1),
                    ..pool()
                },
                "pool.size",
            ),
            (
                PoolSpec {
                    max_uses: Some(0),
                    ..pool()
                },
                "pool.max_uses",
            ),
            (
                PoolSpec {
                    size: None,
                    ..pool()
                },
                "pool.size",
            ),
            (
                PoolSpec {
                    max: Some(3),
                    ..pool()
                },
                "pool.kind",
            ),
            (
                PoolSpec::autoscaled("p", ProviderKind::Local, 5, 3),
                "pool.min",
            ),
            (
                PoolSpec {
                    max: None,
                    ..PoolSpec::autoscaled("p", ProviderKind::Local, 0, 3)
                },
                "pool.max",
            ),
            (
                PoolSpec {
                    size: Some(2),
                    ..PoolSpec::autoscaled("p", ProviderKind::Local, 0, 3)
                },
                "pool.size",
            ),
            (
                PoolSpec {
                    max_concurrent_provisioning: 0,
                    ..pool()
                },
                "pool.max_concurrent_provisioning",
            ),
            (
                PoolSpec {
                    provider: ProviderKind::External,
                    ..pool()
                },
                "pool.provider",
            ),
            (
                PoolSpec {
                    cost_per_hour: -1.0,
                    ..pool()
                },
                "pool.cost_per_hour",
            ),
            (
                PoolSpec {
                    scaling: ScalingPolicy {
                        target_utilisation: 1.5,
                        ..ScalingPolicy::default()
                    },
                    ..pool()
                },
                "pool.scaling.target_utilisation",
            ),
            (
                PoolSpec {
                    scaling: ScalingPolicy {
                        jobs_per_worker: 0,
                        ..ScalingPolicy::default()
                    },
                    ..pool()
                },
                "pool.scaling.jobs_per_worker",
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(field(spec), expected);
        }
        for (user, ok) in [
            ("65534", true),
            ("1000:1000", true),
            ("build-user", true),
            ("0", false),
            ("0:0", false),
            ("root", false),
            ("a b", false),
            ("1:", false),
            ("", false),
        ] {
            let mut with_user = pool();
            with_user.template.user = Some(user.into());
            assert_eq!(with_user.validate().is_ok(), ok, "{user:?}");
            if !ok {
                assert_eq!(field(with_user), "pool.template.user");
            }
        }
        let mut bad_env = pool();
        bad_env.template.env.insert("1X".into(), "v".into());
        assert_eq!(field(bad_env), "pool.template.env[1X]");
        assert!(
            PoolSpec {
                max_uses: Some(1),
                ..pool()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn bounds_follow_the_kind() {
        let fixed = pool();
        assert_eq!((fixed.min_workers(), fixed.max_workers()), (2, 2));
        let dynamic = PoolSpec::autoscaled("p", ProviderKind::Local, 1, 8);
        assert_eq!((dynamic.min_workers(), dynamic.max_workers()), (1, 8));
    }

    #[test]
    fn stored_static_pools_from_before_kinds_still_decode() {
        let old = r#"{"name":"default","provider":"local","size":3,"template":{}}"#;
        let spec: PoolSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.kind, PoolKind::Static);
        assert_eq!(spec.min_workers(), 3);
        assert_eq!(spec.idle_timeout, DEFAULT_IDLE_TIMEOUT_SECS);
        assert_eq!(spec.scaling.scale_up_cooldown, 60);
        assert_eq!(spec.scaling.scale_down_cooldown, 120);
    }

    #[test]
    fn worker_spec_belongs_to_the_pool() {
        let spec = pool().worker_spec();
        assert_eq!(spec.pool.as_deref(), Some("default"));
        assert_eq!(spec.worker_type, WorkerType::Static);
        let spec = PoolSpec::autoscaled("burst", ProviderKind::Local, 0, 2).worker_spec();
        assert_eq!(spec.worker_type, WorkerType::Dynamic);
    }

    #[test]
    fn times_of_day_parse_and_print() {
        let time: TimeOfDay = "08:30".parse().unwrap();
        assert_eq!(String::from(time), "08:30");
        for bad in ["24:00", "8", "08:60", "a:b", ""] {
            assert!(bad.parse::<TimeOfDay>().is_err(), "{bad}");
        }
    }

    #[test]
    fn schedule_windows_hold_on_their_days_and_hours() {
        // 2026-11-23 is a Monday.
        let monday_midnight_ms: u64 = 1_795_392_000_000;
        let at = |day: u64, hour: u64, minute: u64| {
            monday_midnight_ms + ((day * 24 + hour) * 60 + minute) * 60_000
        };
        let office = ScheduleWindow {
            days: vec![Weekday::Mon, Weekday::Fri],
            from: "08:00".parse().unwrap(),
            to: "18:00".parse().unwrap(),
            min: 4,
        };
        assert!(office.contains(at(0, 8, 0)));
        assert!(office.contains(at(0, 17, 59)));
        assert!(!office.contains(at(0, 18, 0)));
        assert!(!office.contains(at(0, 7, 59)));
        assert!(!office.contains(at(1, 12, 0)), "tuesday");
        assert!(office.contains(at(4, 12, 0)), "friday");
        let night = ScheduleWindow {
            days: vec![Weekday::Sun],
            from: "22:00".parse().unwrap(),
            to: "02:00".parse().unwrap(),
            min: 1,
        };
        assert!(night.contains(at(6, 23, 0)), "sunday night");
        assert!(night.contains(at(7, 1, 0)), "after midnight into monday");
        assert!(
            !night.contains(at(6, 1, 0)),
            "sunday 01:00 follows a saturday"
        );
        assert!(!night.contains(at(6, 21, 0)));
    }
}
