//! Retry delays. One function so that the registration adapter, the agent's reconnect loop
//! and their tests agree on the numbers.

use std::time::Duration;

/// Exponential backoff without jitter: `base * 2^attempt`, capped at `max`.
///
/// With the registration defaults (`base` 100 ms) attempts 0, 1, 2, 3 wait 100, 200, 400 and
/// 800 ms. Overflow saturates at `max` instead of panicking.
pub fn exponential(base: Duration, attempt: u32, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

/// How long a client of several servers (an agent) waits before trying the next one.
///
/// `unreachable` counts the attempts in a row that reached no server: the delay doubles only
/// once every one of the `servers` was tried. But while a replica answered within the last
/// round of attempts (`answered_lately`: it is up, it does not lead, a takeover is under
/// way), the next server is tried after `takeover_poll` whatever came before, so that the
/// new leader is found within that of taking over instead of a grown backoff later.
pub fn next_server(
    base: Duration,
    max: Duration,
    unreachable: u32,
    servers: usize,
    answered_lately: bool,
    takeover_poll: Duration,
) -> Duration {
    if answered_lately {
        return takeover_poll.min(max);
    }
    let rounds = unreachable / u32::try_from(servers.max(1)).unwrap_or(u32::MAX);
    exponential(base, rounds, max)
}

/// `nominal` jittered to between half and all of it, `unit` being a random number in
/// `[0, 1]` (clamped; NaN counts as 0): many retries that failed together then spread out
/// instead of retrying together, and none waits longer than `nominal`.
pub fn jittered(nominal: Duration, unit: f64) -> Duration {
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    nominal.mul_f64(0.5 + unit / 2.0).min(nominal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn servers_are_tried_in_turn_and_a_takeover_is_polled() {
        let delay = |unreachable, answered| {
            next_server(MS(100), MS(5_000), unreachable, 2, answered, MS(250))
        };
        // Two servers: the delay grows once per round of both.
        assert_eq!(
            [0, 1, 2, 3, 4, 20].map(|n| delay(n, false)),
            [MS(100), MS(100), MS(200), MS(200), MS(400), MS(5_000)]
        );
        // A follower answered lately: poll for the new leader, however long it has been.
        assert_eq!(delay(20, true), MS(250));
        assert_eq!(
            next_server(MS(100), MS(100), 0, 0, true, MS(250)),
            MS(100),
            "never above the cap, and no server is not a division by zero"
        );
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn doubles_from_the_base() {
        let delays: Vec<_> = (0..4)
            .map(|a| exponential(MS(100), a, Duration::MAX))
            .collect();
        assert_eq!(delays, [MS(100), MS(200), MS(400), MS(800)]);
    }

    #[test]
    fn is_capped() {
        assert_eq!(exponential(MS(100), 10, MS(5_000)), MS(5_000));
        assert_eq!(exponential(MS(100), 200, MS(5_000)), MS(5_000));
    }

    #[test]
    fn jitter_spans_half_to_all_of_the_delay() {
        assert_eq!(jittered(MS(800), 0.0), MS(400));
        assert_eq!(jittered(MS(800), 1.0), MS(800));
        assert_eq!(jittered(MS(800), 0.5), MS(600));
        assert_eq!(jittered(MS(800), f64::NAN), MS(400));
        assert_eq!(jittered(MS(800), 7.0), MS(800));
    }

    proptest! {
        #[test]
        fn jitter_stays_within_half_and_all(nominal in 0u64..10_000_000, unit in proptest::num::f64::ANY) {
            let delay = jittered(MS(nominal), unit);
            prop_assert!(delay <= MS(nominal));
            prop_assert!(delay >= MS(nominal) / 2);
        }

        #[test]
        fn never_exceeds_the_cap_and_never_shrinks(base in 0u64..10_000, attempt in 0u32..100, cap in 0u64..1_000_000) {
            let this = exponential(MS(base), attempt, MS(cap));
            let next = exponential(MS(base), attempt + 1, MS(cap));
            prop_assert!(this <= MS(cap));
            prop_assert!(next >= this);
        }
    }
}
