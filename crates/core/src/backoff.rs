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
