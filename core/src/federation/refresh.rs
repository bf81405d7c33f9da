//! When to fetch a foreign bundle again (SPIFFE Federation s4 "refresh hint", checklist F3/G7). Pure: the
//! fetcher passes in what it knows (the served hint, how many attempts failed in a row, a random number for
//! jitter) and sleeps for what comes out.
//!
//! Numbers, and why they differ from SPIRE's (pkg/server/bundle/client/updater.go polls every hint / 4 with
//! the hint floored at 1 min, i.e. never more often than every 15 s, 5 min without a hint, and after a
//! failure simply waits for the next regular poll):
//! - **After a success**: `hint / 4`, clamped to [`MIN_INTERVAL`] (1 s) ..= [`MAX_INTERVAL`] (5 min). A
//!   quarter of the hint leaves room for three missed polls before the publisher's "3-5 hints ahead" lead (G8)
//!   runs out, as SPIRE intends. The 1 s floor lets a peer that asks for 1-4 s hints (tests, benchmarks,
//!   short-lived CAs) be followed closely; SPIRE's 15 s floor is what makes short CA lifetimes break
//!   federation. The 5 min ceiling catches unplanned key changes (a revoked or replaced CA) whatever the
//!   publisher's hint says: SPIRE issue #4297 and helm-charts-hardened #335/#343, where day-long hints left
//!   peers stale after a rotation, led SPIRE users to set 5 min by hand.
//! - **No hint** (absent or 0): [`DEFAULT_HINT`] (5 min, F3) is assumed, so the poll is every 75 s.
//! - **After a failure**: exponential backoff from [`FIRST_RETRY`] (1 s) doubling per consecutive failure,
//!   never longer than the regular interval of the last good bundle's hint (so a failing peer is never
//!   polled less often than a healthy one), with "equal jitter": a uniform pick in `[d/2, d]`, so a fleet of
//!   servers that lost the same peer does not retry in lockstep. The last good bundle stays in use meanwhile;
//!   bundles never expire here (their certificates do, on their own).

use std::time::Duration;

/// The shortest time between two regular fetches of one bundle endpoint.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest time between two regular fetches, whatever the hint.
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);
/// The hint assumed when the bundle has none (F3: "about 5 minutes").
pub const DEFAULT_HINT: Duration = Duration::from_secs(300);
/// Fetches per refresh hint.
pub const HINT_DIVISOR: u32 = 4;
/// The first retry after a failure (before jitter).
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The hint a bundle asks for, `None` and 0 meaning "none given".
fn hint_or_default(hint_secs: Option<u64>) -> Duration {
    match hint_secs {
        None | Some(0) => DEFAULT_HINT,
        Some(s) => Duration::from_secs(s),
    }
}

/// The regular interval between fetches for a bundle that carries `hint_secs`.
pub fn refresh_interval(hint_secs: Option<u64>) -> Duration {
    (hint_or_default(hint_secs) / HINT_DIVISOR).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// How long to wait after a successful fetch of a bundle carrying `hint_secs`.
pub fn after_success(hint_secs: Option<u64>) -> Duration {
    refresh_interval(hint_secs)
}

/// How long to wait after the `consecutive_failures`-th failure in a row (1 for the first), given the hint
/// of the last good bundle (`None` when there is none or it has no hint) and `jitter` in `[0, 1]` (values
/// outside are clamped; NaN counts as 0).
pub fn after_failure(consecutive_failures: u32, last_good_hint_secs: Option<u64>, jitter: f64) -> Duration {
    let cap = refresh_interval(last_good_hint_secs);
    let doublings = consecutive_failures.saturating_sub(1).min(31);
    let backoff = FIRST_RETRY.saturating_mul(1u32 << doublings).min(cap);
    let jitter = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
    let half = backoff / 2;
    half + half.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn after_success_table() {
        let cases: &[(Option<u64>, Duration)] = &[
            (None, s(75)),
            (Some(0), s(75)),
            (Some(1), s(1)),
            (Some(2), s(1)),
            (Some(4), s(1)),
            (Some(5), Duration::from_millis(1250)),
            (Some(60), s(15)),
            (Some(300), s(75)),
            (Some(1200), s(300)),
            (Some(1201), s(300)),
            (Some(86_400), s(300)),
            (Some(u64::MAX), s(300)),
        ];
        for (hint, want) in cases {
            assert_eq!(after_success(*hint), *want, "hint {hint:?}");
        }
    }

    #[test]
    fn after_failure_table() {
        // (failures, hint, jitter) -> wait
        let cases: &[(u32, Option<u64>, f64, Duration)] = &[
            // Doubling from 1 s, capped at the regular interval of the hint (75 s for 5 min).
            (1, Some(300), 1.0, s(1)),
            (2, Some(300), 1.0, s(2)),
            (3, Some(300), 1.0, s(4)),
            (7, Some(300), 1.0, s(64)),
            (8, Some(300), 1.0, s(75)),
            (1000, Some(300), 1.0, s(75)),
            (u32::MAX, Some(300), 1.0, s(75)),
            // Equal jitter: between half and all of it.
            (7, Some(300), 0.0, s(32)),
            (7, Some(300), 0.5, s(48)),
            (8, Some(300), 0.0, Duration::from_millis(37_500)),
            (1, Some(300), 0.0, Duration::from_millis(500)),
            // Out-of-range jitter is clamped.
            (7, Some(300), -3.0, s(32)),
            (7, Some(300), 7.0, s(64)),
            (7, Some(300), f64::NAN, s(32)),
            // A 1 s hint: retries every 0.5-1 s, never slower than the peer asks for.
            (1, Some(1), 1.0, s(1)),
            (9, Some(1), 1.0, s(1)),
            (9, Some(1), 0.0, Duration::from_millis(500)),
            // No good bundle yet (or no hint): bounded by the default hint's interval.
            (10, None, 1.0, s(75)),
            // A day-long hint: bounded by the 5 min ceiling.
            (20, Some(86_400), 1.0, s(300)),
            // 0 counts as the first failure.
            (0, Some(300), 1.0, s(1)),
        ];
        for (n, hint, jitter, want) in cases {
            assert_eq!(after_failure(*n, *hint, *jitter), *want, "failures {n}, hint {hint:?}, jitter {jitter}");
        }
    }

    #[test]
    fn failure_never_waits_longer_than_success() {
        for hint in [None, Some(1), Some(7), Some(60), Some(300), Some(3600), Some(86_400)] {
            for n in 0..64 {
                for jitter in [0.0, 0.3, 1.0] {
                    assert!(after_failure(n, hint, jitter) <= after_success(hint), "{n} {hint:?} {jitter}");
                    assert!(after_failure(n, hint, jitter) >= Duration::from_millis(500), "{n} {hint:?} {jitter}");
                }
            }
        }
    }
}
