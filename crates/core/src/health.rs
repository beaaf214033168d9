//! Agent liveness from heartbeats: healthy, unhealthy after a short silence, gone after a
//! long one. The server's monitor applies these verdicts; the arithmetic lives here.

use std::time::Duration;

/// How often agents heartbeat and how much silence is tolerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatPolicy {
    /// The interval the server asks agents to heartbeat at.
    pub interval: Duration,
    /// Missed intervals before a worker is unhealthy (gets no work).
    pub unhealthy_after: u32,
    /// Missed intervals before a worker is removed. Larger than `unhealthy_after`.
    pub remove_after: u32,
}

impl Default for HeartbeatPolicy {
    /// 5 s heartbeats; unhealthy after 15 s of silence, removed after 60 s.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            unhealthy_after: 3,
            remove_after: 12,
        }
    }
}

/// What the silence means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Liveness {
    Healthy,
    Unhealthy,
    Gone,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Gone => "gone",
        }
    }
}

impl HeartbeatPolicy {
    pub fn validate(&self) -> Result<(), crate::ValidationError> {
        if self.interval < Duration::from_millis(10) {
            return Err(crate::ValidationError::new(
                "agents.heartbeat_interval",
                "must be at least 10ms",
            ));
        }
        if self.unhealthy_after == 0 {
            return Err(crate::ValidationError::new(
                "agents.unhealthy_after",
                "must be at least 1",
            ));
        }
        if self.remove_after <= self.unhealthy_after {
            return Err(crate::ValidationError::new(
                "agents.remove_after",
                "must be larger than agents.unhealthy_after",
            ));
        }
        Ok(())
    }

    /// The verdict after `silence` without a heartbeat.
    pub fn assess(&self, silence: Duration) -> Liveness {
        if silence >= self.interval.saturating_mul(self.remove_after) {
            Liveness::Gone
        } else if silence >= self.interval.saturating_mul(self.unhealthy_after) {
            Liveness::Unhealthy
        } else {
            Liveness::Healthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn deadlines_follow_the_interval() {
        let policy = HeartbeatPolicy::default();
        let s = Duration::from_secs;
        assert_eq!(policy.assess(s(0)), Liveness::Healthy);
        assert_eq!(policy.assess(s(14)), Liveness::Healthy);
        assert_eq!(policy.assess(s(15)), Liveness::Unhealthy);
        assert_eq!(policy.assess(s(59)), Liveness::Unhealthy);
        assert_eq!(policy.assess(s(60)), Liveness::Gone);
    }

    #[test]
    fn bad_policies_name_the_field() {
        let bad = HeartbeatPolicy {
            remove_after: 3,
            ..HeartbeatPolicy::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "agents.remove_after");
        let bad = HeartbeatPolicy {
            unhealthy_after: 0,
            ..HeartbeatPolicy::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "agents.unhealthy_after");
    }

    proptest! {
        #[test]
        fn longer_silence_is_never_healthier(a in 0u64..200_000, b in 0u64..200_000) {
            let policy = HeartbeatPolicy::default();
            let rank = |l: Liveness| match l { Liveness::Healthy => 0, Liveness::Unhealthy => 1, Liveness::Gone => 2 };
            let (short, long) = (a.min(b), a.max(b));
            prop_assert!(rank(policy.assess(Duration::from_millis(short))) <= rank(policy.assess(Duration::from_millis(long))));
        }
    }
}
