//! The A/B slot schedule shared by X.509 CAs and JWT keys (SPIRE's schedule), as a pure function.
//!
//! Each kind of key lives in two slots. A slot is `Prepared` (published in the bundle, signs nothing),
//! `Active` (signs) or `Old` (signs nothing, stays in the bundle until it expires).
//!
//! With `lifetime = not_after - not_before` of the active slot:
//! - prepare the next one when `now > not_after - min(lifetime / 2, 30 days)`;
//! - activate the prepared one when `now > not_after - min(lifetime / 6, 7 days)`.
//!
//! [`rotation_step`] decides one step; the caller applies it and calls again on its next tick, so a
//! prepared key is always visible in the bundle for at least one tick before it signs anything.

use serde::{Deserialize, Serialize};

const THIRTY_DAYS: i64 = 30 * 24 * 3600;
const SEVEN_DAYS: i64 = 7 * 24 * 3600;

/// Where a slot's key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    Prepared,
    Active,
    Old,
}

/// What the schedule needs to know about one slot (times in unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotTimes {
    pub state: SlotState,
    pub not_before: i64,
    pub not_after: i64,
}

impl SlotTimes {
    fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }
}

/// One step of the schedule. Slot indexes are 0 (A) and 1 (B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationAction {
    /// Nothing to do now.
    Nothing,
    /// No usable active key and nothing prepared: mint a key into `slot` and make it active at once
    /// (first start, or a server that was down past every key's expiry).
    Bootstrap { slot: usize },
    /// Mint the next key into `slot` as prepared (it joins the bundle now, signs later).
    Prepare { slot: usize },
    /// Make the prepared key in `slot` active; the previously active one becomes old.
    Activate { slot: usize },
}

/// When the next key should be prepared for an active key with these times.
pub fn prepare_threshold(active: &SlotTimes) -> i64 {
    let lifetime = (active.not_after - active.not_before).max(0);
    active.not_after - (lifetime / 2).min(THIRTY_DAYS)
}

/// When the prepared key should replace an active key with these times.
pub fn activate_threshold(active: &SlotTimes) -> i64 {
    let lifetime = (active.not_after - active.not_before).max(0);
    active.not_after - (lifetime / 6).min(SEVEN_DAYS)
}

/// Decides the next step for a pair of slots at `now`.
pub fn rotation_step(slots: &[Option<SlotTimes>; 2], now: i64) -> RotationAction {
    let usable =
        |i: usize, state: SlotState| slots[i].filter(|s| s.state == state && !s.expired(now) && s.not_before <= now);
    // The active slot: a valid Active one; with two (only a hand-edited journal), the newer one.
    let active = match (usable(0, SlotState::Active), usable(1, SlotState::Active)) {
        (Some(a), Some(b)) => Some(if b.not_before > a.not_before { 1 } else { 0 }),
        (Some(_), None) => Some(0),
        (None, Some(_)) => Some(1),
        (None, None) => None,
    };
    let Some(a) = active else {
        // Nothing signs: promote a valid prepared key if there is one, else mint a new one.
        if let Some(p) = (0..2).find(|&i| usable(i, SlotState::Prepared).is_some()) {
            return RotationAction::Activate { slot: p };
        }
        let slot = match (&slots[0], &slots[1]) {
            (None, _) => 0,
            (Some(_), None) => 1,
            (Some(x), Some(y)) => usize::from(y.not_after < x.not_after),
        };
        return RotationAction::Bootstrap { slot };
    };
    let Some(active_times) = slots[a] else {
        return RotationAction::Nothing;
    };
    let other = 1 - a;
    if usable(other, SlotState::Prepared).is_some() {
        if now > activate_threshold(&active_times) {
            return RotationAction::Activate { slot: other };
        }
        return RotationAction::Nothing;
    }
    if now > prepare_threshold(&active_times) {
        return RotationAction::Prepare { slot: other };
    }
    RotationAction::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;
    use SlotState::*;

    fn s(state: SlotState, not_before: i64, not_after: i64) -> Option<SlotTimes> {
        Some(SlotTimes { state, not_before, not_after })
    }

    #[test]
    fn thresholds_follow_spire_schedule() {
        // 24h CA: prepare at 12h before expiry, activate at 4h before expiry.
        let day = SlotTimes { state: Active, not_before: 0, not_after: 86_400 };
        assert_eq!(prepare_threshold(&day), 43_200);
        assert_eq!(activate_threshold(&day), 86_400 - 14_400);
        // One-year CA: capped at 30 days and 7 days.
        let year = SlotTimes { state: Active, not_before: 0, not_after: 365 * 86_400 };
        assert_eq!(prepare_threshold(&year), 365 * 86_400 - THIRTY_DAYS);
        assert_eq!(activate_threshold(&year), 365 * 86_400 - SEVEN_DAYS);
    }

    #[test]
    fn rotation_step_table() {
        // Lifetime 120 s: prepare after 60, activate after 100.
        let cases: Vec<(&str, [Option<SlotTimes>; 2], i64, RotationAction)> = vec![
            ("empty slots bootstrap into A", [None, None], 0, RotationAction::Bootstrap { slot: 0 }),
            ("fresh active: nothing", [s(Active, 0, 120), None], 10, RotationAction::Nothing),
            ("at prepare threshold: not yet (strict)", [s(Active, 0, 120), None], 60, RotationAction::Nothing),
            ("past prepare threshold: prepare B", [s(Active, 0, 120), None], 61, RotationAction::Prepare { slot: 1 }),
            ("active in B prepares into A", [None, s(Active, 0, 120)], 61, RotationAction::Prepare { slot: 0 }),
            (
                "old slot is reused for preparing",
                [s(Old, -100, 20), s(Active, 0, 120)],
                61,
                RotationAction::Prepare { slot: 0 },
            ),
            (
                "prepared, before activate threshold: nothing",
                [s(Active, 0, 120), s(Prepared, 61, 181)],
                100,
                RotationAction::Nothing,
            ),
            (
                "prepared, past activate threshold: activate B",
                [s(Active, 0, 120), s(Prepared, 61, 181)],
                101,
                RotationAction::Activate { slot: 1 },
            ),
            (
                "active expired, prepared valid: activate it",
                [s(Active, 0, 120), s(Prepared, 61, 181)],
                150,
                RotationAction::Activate { slot: 1 },
            ),
            (
                "everything expired: bootstrap over the earlier-expiring slot",
                [s(Old, 0, 120), s(Active, 61, 181)],
                1_000,
                RotationAction::Bootstrap { slot: 0 },
            ),
            (
                "everything expired, B expires first",
                [s(Active, 61, 181), s(Old, 0, 120)],
                1_000,
                RotationAction::Bootstrap { slot: 1 },
            ),
            (
                "expired prepared slot is replaced",
                [s(Active, 100, 220), s(Prepared, 0, 120)],
                170,
                RotationAction::Prepare { slot: 1 },
            ),
            (
                "only an old slot: bootstrap into the empty one",
                [s(Old, 0, 120), None],
                50,
                RotationAction::Bootstrap { slot: 1 },
            ),
            (
                "two actives: newer one counts, older one is replaced at prepare",
                [s(Active, 0, 120), s(Active, 50, 170)],
                111,
                RotationAction::Prepare { slot: 0 },
            ),
            (
                "not-yet-valid prepared is not activated",
                [None, s(Prepared, 500, 620)],
                10,
                RotationAction::Bootstrap { slot: 0 },
            ),
        ];
        for (name, slots, now, want) in cases {
            assert_eq!(rotation_step(&slots, now), want, "case: {name}");
        }
    }
}
