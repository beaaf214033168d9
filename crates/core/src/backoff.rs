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

    proptest! {
        #[test]
        fn never_exceeds_the_cap_and_never_shrinks(base in 0u64..10_000, attempt in 0u32..100, cap in 0u64..1_000_000) {
            let this = exponential(MS(base), attempt, MS(cap));
            let next = exponential(MS(base), attempt + 1, MS(cap));
            prop_assert!(this <= MS(cap));
            prop_assert!(next >= this);
        }
    }
}
