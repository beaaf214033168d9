//! The leader lease of server replicas on one PostgreSQL database.
//!
//! One row in the store names the leader (`holder`, the URL clients reach it at), its
//! `epoch` and when the lease expires, on the store's clock. Every replica reads the row on
//! an interval and [`decide`]s: a free or expired lease is taken with the next epoch, the
//! holder renews its own, the others follow. The write is a compare-and-set on the row read,
//! so of two replicas that both saw an expired lease exactly one takes it.
//!
//! The leader also watches its own clock ([`LeaderClock`]): it counts its lease from the
//! moment it *sent* its last successful renewal, which is no later than the moment the store
//! stamped it, so the leader believes its lease over before any other replica can. It steps
//! down (stops dispatching) a margin before that. A leader paused past it (a stopped process,
//! a long GC-like stall) is fenced by the store: every job write carries its epoch and is
//! refused once a newer epoch holds the lease.

/// The lease row as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it: a replica's member id.
    pub holder: String,
    /// The URL clients and agents reach the holder at.
    pub holder_url: String,
    /// Increases by one each time the lease changes hands; never reused.
    pub epoch: u64,
    /// When it runs out, in milliseconds since the Unix epoch on the store's clock.
    pub expires_ms: u64,
}

impl Lease {
    /// Whether the lease still holds at `now_ms` (store clock).
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }
}

/// What a replica should do with the lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (none yet, expired, or released): take it with this epoch.
    Acquire { epoch: u64 },
    /// It is ours: renew it, same epoch.
    Renew { epoch: u64 },
    /// Someone else leads: follow them.
    Follow { leader: Lease },
    /// We believed we led with `epoch`, but the row says otherwise: stop leading now.
    StepDown { leader: Option<Lease> },
}

/// The decision for replica `me` that reads `row` at `now_ms` (store clock); `leading` is the
/// epoch it leads with, if it believes it leads.
pub fn decide(row: Option<&Lease>, now_ms: u64, me: &str, leading: Option<u64>) -> Decision {
    let Some(lease) = row else {
        return match leading {
            Some(_) => Decision::StepDown { leader: None },
            None => Decision::Acquire { epoch: 1 },
        };
    };
    let live = lease.is_live(now_ms);
    match leading {
        Some(epoch) if lease.holder == me && lease.epoch == epoch && live => {
            Decision::Renew { epoch }
        }
        // Another holder or epoch, or our own lease run out: too late to renew it, since a
        // write fenced with an expired epoch must never pass for current.
        Some(_) => Decision::StepDown {
            leader: live.then(|| lease.clone()),
        },
        None if live => Decision::Follow {
            leader: lease.clone(),
        },
        None => Decision::Acquire {
            epoch: lease.epoch.saturating_add(1),
        },
    }
}

/// The lease as the leader counts it on its own (monotonic) clock, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderClock {
    /// The lease's length.
    pub ttl_ms: u64,
    /// How long before the lease runs out the leader stops dispatching.
    pub margin_ms: u64,
    /// When the last successful acquire or renewal was sent.
    pub renewed_at_ms: u64,
}

impl LeaderClock {
    /// Whether the leader must step down at `now_ms`: its lease, counted from when it sent
    /// its last successful renewal, ends within the margin.
    pub fn must_step_down(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.renewed_at_ms) >= self.ttl_ms.saturating_sub(self.margin_ms)
    }
}

/// A replica as the membership table holds it: every replica heartbeats its row each
/// `renew_interval`, stamped with the store's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    /// The URL clients and agents reach it at.
    pub url: String,
    /// When it was last seen, in milliseconds since the Unix epoch on the store's clock.
    pub seen_ms: u64,
}

/// How many lease periods a member may go unseen before it drops out of the listing: a
/// replica that missed one or two heartbeats on a busy machine stays listed.
pub const MEMBER_LEASES: u64 = 3;

/// How many lease periods after its last heartbeat a member's row is deleted.
pub const FORGET_LEASES: u64 = 100;

/// The members to list at `now_ms` (store clock): those seen within `window_ms`, by id.
pub fn live_members(members: &[Member], now_ms: u64, window_ms: u64) -> Vec<Member> {
    let mut live: Vec<Member> = members
        .iter()
        .filter(|member| now_ms.saturating_sub(member.seen_ms) <= window_ms)
        .cloned()
        .collect();
    live.sort_by(|a, b| a.id.cmp(&b.id));
    live
}

/// Checks lease timing: a renewal interval shorter than the lease minus the margin, so that a
/// healthy leader renews before it would step down, and a margin shorter than the lease.
pub fn validate_timing(
    ttl_ms: u64,
    renew_ms: u64,
    margin_ms: u64,
) -> Result<(), crate::ValidationError> {
    if ttl_ms == 0 || renew_ms == 0 {
        return Err(crate::ValidationError::new(
            "cluster",
            "lease_ttl and renew_interval must be above zero",
        ));
    }
    if margin_ms >= ttl_ms || renew_ms >= ttl_ms - margin_ms {
        return Err(crate::ValidationError::new(
            "cluster",
            format!(
                "renew_interval ({renew_ms} ms) must be shorter than lease_ttl ({ttl_ms} ms) minus the step-down margin ({margin_ms} ms)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, epoch: u64, expires_ms: u64) -> Lease {
        Lease {
            holder: holder.into(),
            holder_url: format!("http://{holder}"),
            epoch,
            expires_ms,
        }
    }

    #[test]
    fn a_free_lease_is_taken_with_the_first_epoch() {
        assert_eq!(decide(None, 10, "a", None), Decision::Acquire { epoch: 1 });
    }

    #[test]
    fn an_expired_lease_is_taken_with_the_next_epoch() {
        let row = lease("b", 7, 100);
        assert_eq!(
            decide(Some(&row), 100, "a", None),
            Decision::Acquire { epoch: 8 }
        );
        // Our own old lease too, when we do not lead: a fresh epoch, never the old one.
        let ours = lease("a", 7, 100);
        assert_eq!(
            decide(Some(&ours), 150, "a", None),
            Decision::Acquire { epoch: 8 }
        );
    }

    #[test]
    fn a_live_lease_of_another_is_followed() {
        let row = lease("b", 3, 1_000);
        assert_eq!(
            decide(Some(&row), 999, "a", None),
            Decision::Follow {
                leader: row.clone()
            }
        );
        // A live lease in our name from an earlier life (restarted quickly) is followed
        // until it runs out: the process that held it may still be dispatching.
        let old_self = lease("a", 3, 1_000);
        assert_eq!(
            decide(Some(&old_self), 10, "a", None),
            Decision::Follow { leader: old_self }
        );
    }

    #[test]
    fn the_holder_renews_its_live_lease() {
        let row = lease("a", 4, 1_000);
        assert_eq!(
            decide(Some(&row), 500, "a", Some(4)),
            Decision::Renew { epoch: 4 }
        );
    }

    #[test]
    fn a_leader_that_finds_another_epoch_steps_down() {
        let taken = lease("b", 5, 1_000);
        assert_eq!(
            decide(Some(&taken), 500, "a", Some(4)),
            Decision::StepDown {
                leader: Some(taken)
            }
        );
        // Same holder name, newer epoch: still not ours.
        let newer = lease("a", 5, 1_000);
        assert!(matches!(
            decide(Some(&newer), 500, "a", Some(4)),
            Decision::StepDown { .. }
        ));
        // Our epoch but expired: too late to renew.
        let expired = lease("a", 4, 400);
        assert_eq!(
            decide(Some(&expired), 500, "a", Some(4)),
            Decision::StepDown { leader: None }
        );
        assert_eq!(
            decide(None, 500, "a", Some(4)),
            Decision::StepDown { leader: None }
        );
    }

    #[test]
    fn the_leader_steps_down_a_margin_before_its_lease_ends() {
        let clock = LeaderClock {
            ttl_ms: 5_000,
            margin_ms: 2_000,
            renewed_at_ms: 10_000,
        };
        assert!(!clock.must_step_down(10_000));
        assert!(!clock.must_step_down(12_999));
        assert!(clock.must_step_down(13_000));
        assert!(clock.must_step_down(20_000));
        // A clock that reads earlier than the renewal (it cannot, monotonic) never panics.
        assert!(!clock.must_step_down(0));
    }

    #[test]
    fn members_unseen_for_the_window_drop_out() {
        let member = |id: &str, seen_ms| Member {
            id: id.into(),
            url: format!("http://{id}"),
            seen_ms,
        };
        let members = [member("c", 1_000), member("a", 9_000), member("b", 3_000)];
        assert_eq!(
            live_members(&members, 10_000, 7_000),
            [member("a", 9_000), member("b", 3_000)]
        );
        assert_eq!(live_members(&members, 10_000, 9_000).len(), 3);
        // A member seen "after" now (the store's clock read earlier) stays listed.
        assert_eq!(live_members(&members, 500, 0).len(), 3);
    }

    #[test]
    fn timing_must_let_a_healthy_leader_renew_in_time() {
        assert!(validate_timing(5_000, 1_000, 2_000).is_ok());
        assert!(validate_timing(5_000, 3_000, 2_000).is_err());
        assert!(validate_timing(5_000, 1_000, 5_000).is_err());
        assert!(validate_timing(0, 1_000, 0).is_err());
        assert!(validate_timing(5_000, 0, 0).is_err());
    }
}
