//! How often an open Workload API stream may send (pure; the stream in `workload` applies it).
//!
//! A change after a quiet period goes out at once (a single entry change, a rotation: no added latency).
//! After each message the stream waits a gap that grows with the message's size before it sends again, and
//! then sends only the state as it is at that moment: a burst of changes (1,000 entry creates for one
//! workload) is merged into a few messages, and a client that has not read the last message never gets a
//! queue of stale ones, since nothing is computed until the transport asks for the next message.
//!
//! The gap is the message's size at [`BYTES_PER_SECOND`], at least [`MIN_GAP`] and at most [`MAX_GAP`]:
//! a 1.1 MB response (1,000 SVIDs) waits 550 ms, so one stream never sends more than ~2 MB/s however long a
//! burst lasts, while a response of a few SVIDs is held back only 10 ms. Why 2 MB/s: a go-spiffe client
//! parses a 1,000-SVID message in 35-67 ms, so it spends at most ~12% of a core keeping up; and over a burst
//! of 1,000 single creates a stream sends about as many bytes as SPIRE's agent (measured side by side with
//! `scripts/bench-vs-spire.sh`), where SPIRE's 5 s sync interval is what paces it.

use std::time::{Duration, Instant};

/// The byte rate one stream is paced to during a burst.
pub const BYTES_PER_SECOND: u64 = 2_000_000;
/// The least gap after a message (merges changes that come in quick succession).
pub const MIN_GAP: Duration = Duration::from_millis(10);
/// The longest gap, whatever the size.
pub const MAX_GAP: Duration = Duration::from_secs(1);

/// The gap after a message of `bytes`.
pub fn gap(bytes: usize) -> Duration {
    let by_size =
        Duration::from_micros(u64::try_from(bytes).unwrap_or(u64::MAX).saturating_mul(1_000_000) / BYTES_PER_SECOND);
    by_size.clamp(MIN_GAP, MAX_GAP)
}

/// When one stream may send next.
#[derive(Debug, Default, Clone)]
pub struct Pacer {
    next: Option<Instant>,
}

impl Pacer {
    /// How long to hold a change seen at `now` before computing and sending it (`None`: send now).
    pub fn hold(&self, now: Instant) -> Option<Duration> {
        self.next.and_then(|n| n.checked_duration_since(now)).filter(|d| !d.is_zero())
    }

    /// Records a message of `bytes` sent at `now`.
    pub fn sent(&mut self, now: Instant, bytes: usize) {
        self.next = Some(now + gap(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_grows_with_size_within_bounds() {
        for (bytes, want_ms) in [
            (0, 10),
            (2_000, 10),
            (20_000, 10),
            (40_000, 20),
            (1_100_000, 550),
            (2_000_000, 1000),
            (5_000_000, 1000),
            (50_000_000, 1000),
            (usize::MAX, 1000),
        ] {
            assert_eq!(gap(bytes), Duration::from_millis(want_ms), "{bytes} bytes");
        }
    }

    #[test]
    fn a_first_change_goes_at_once_then_the_gap_holds() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        assert_eq!(p.hold(t0), None, "nothing sent yet: no hold");
        p.sent(t0, 1_100_000);
        assert_eq!(p.hold(t0), Some(Duration::from_millis(550)));
        assert_eq!(p.hold(t0 + Duration::from_millis(500)), Some(Duration::from_millis(50)));
        assert_eq!(p.hold(t0 + Duration::from_millis(550)), None, "gap over: at once");
        assert_eq!(p.hold(t0 + Duration::from_secs(10)), None, "after a quiet period: at once");
        p.sent(t0 + Duration::from_secs(10), 3_000);
        assert_eq!(p.hold(t0 + Duration::from_secs(10)), Some(MIN_GAP), "small messages: the least gap");
    }

    /// 1,000 SVIDs arriving one every 10 ms (a 10 s burst of creates), each message 2.2 KB per SVID held:
    /// the messages and bytes a client gets stay bounded by the pacing rate.
    #[test]
    fn a_burst_is_bounded_in_messages_and_bytes() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        let (mut messages, mut bytes) = (0u64, 0u64);
        let mut pending = false;
        let mut held = 0usize;
        for ms in 0..12_000u64 {
            let now = t0 + Duration::from_millis(ms);
            if ms < 10_000 && ms % 10 == 0 {
                held += 1;
                pending = true;
            }
            if pending && p.hold(now).is_none() {
                let size = held * 2_200;
                p.sent(now, size);
                messages += 1;
                bytes += size as u64;
                pending = false;
            }
        }
        assert!(!pending, "the last state was sent");
        assert!(messages < 200, "{messages} messages");
        assert!(bytes < 60_000_000, "{bytes} bytes");
    }
}
