//! How the server's fetching of a foreign bundle goes, as a ClusterFederatedTrustDomain's status shows it:
//! `status.bundle` and the `BundleFetched` condition, made from the server's `ListFederationStatus` report.
//!
//! Pure (no I/O): the controller polls the server and writes the result only when it differs from what it
//! wrote last. spire-controller-manager has no such status (its #171), so users had to read server logs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::{Value, json};
use sigil_proto::admin as apb;

use crate::crd::FederationBundleStatus;

pub const CONDITION: &str = "BundleFetched";

/// Unix seconds as metav1.Time's text (second precision); 0 (= never) or out of range -> `None`.
pub fn time_text(secs: i64) -> Option<String> {
    if secs <= 0 {
        return None;
    }
    let t = k8s_openapi::jiff::Timestamp::from_second(secs).ok()?;
    Some(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// `status.bundle` from the server's report for the CR's trust domain. Only what changes when something
/// happens is shown (not the last attempt time, which moves on every refresh without news).
pub fn bundle_status(r: &apb::FederationStatus) -> FederationBundleStatus {
    let error = Some(r.last_error.clone()).filter(|e| !e.is_empty());
    FederationBundleStatus {
        source: Some(r.source.clone()).filter(|s| !s.is_empty()),
        last_success_time: time_text(r.last_success_at),
        last_change_time: time_text(r.last_change_at),
        sequence: r.has_bundle.then_some(r.sequence),
        next_refresh_time: time_text(r.next_refresh_at),
        last_error_time: error.as_ref().and_then(|_| time_text(r.last_error_at)),
        last_error: error,
        consecutive_failures: r.consecutive_failures,
    }
}

/// `status.bundle` as a JSON merge patch: a field the report no longer has is sent as null, because a merge
/// patch leaves the keys it does not name as they were (a stale sequence or error would stay forever).
pub fn bundle_patch(r: &apb::FederationStatus) -> Value {
    const OPTIONAL: [&str; 7] =
        ["source", "lastSuccessTime", "lastChangeTime", "sequence", "nextRefreshTime", "lastError", "lastErrorTime"];
    let mut v = serde_json::to_value(bundle_status(r)).unwrap_or_else(|_| json!({}));
    if let Some(map) = v.as_object_mut() {
        for key in OPTIONAL {
            map.entry(key).or_insert(Value::Null);
        }
    }
    v
}

/// Condition status, reason and message.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

fn verdict(status: &'static str, reason: &'static str, message: String) -> Verdict {
    Verdict { status, reason, message }
}

/// The `BundleFetched` verdict. `federated`: the relationship is this CR's on the server (Ready True);
/// `report`: the server's report for its trust domain, `Err` when it could not be had.
pub fn fetched(trust_domain: &str, federated: bool, report: Result<Option<&apb::FederationStatus>, &str>) -> Verdict {
    if !federated {
        return verdict(
            "Unknown",
            "Pending",
            "the server does not fetch this trust domain's bundle for this object (see the Ready condition)".into(),
        );
    }
    let r = match report {
        Err(e) => return verdict("Unknown", "Pending", format!("the server's fetch status is not available: {e}")),
        Ok(None) => {
            return verdict("Unknown", "Pending", format!("the server reports no fetching for {trust_domain} yet"));
        }
        // A report for another trust domain would be a server bug; saying nothing beats saying wrong.
        Ok(Some(r)) if r.trust_domain != trust_domain => {
            return verdict("Unknown", "Pending", format!("the server reports no fetching for {trust_domain} yet"));
        }
        Ok(Some(r)) => r,
    };
    let config_note = if r.source == "config" {
        " (the server's config file declares this trust domain; its relationship is used instead of this object's)"
    } else {
        ""
    };
    if r.consecutive_failures > 0 {
        let kept = if r.has_bundle {
            format!("; the last bundle (sequence {}) stays in use", r.sequence)
        } else {
            "; no bundle of this trust domain is stored".to_string()
        };
        let error = if r.last_error.is_empty() { "unknown error" } else { r.last_error.as_str() };
        return verdict(
            "False",
            "FetchFailed",
            format!("{} failed fetch(es) in a row: {error}{kept}{config_note}", r.consecutive_failures),
        );
    }
    if r.last_success_at > 0 {
        let seq = if r.has_bundle { format!(", sequence {}", r.sequence) } else { String::new() };
        return verdict("True", "Fetched", format!("bundle of {trust_domain} fetched{seq}{config_note}"));
    }
    verdict("Unknown", "Pending", format!("the bundle of {trust_domain} has not been fetched yet{config_note}"))
}

/// A condition of `type_`, keeping lastTransitionTime while its status stays the same.
pub fn condition(
    type_: &str,
    previous: &[Condition],
    generation: Option<i64>,
    v: Verdict,
    now: k8s_openapi::jiff::Timestamp,
) -> Value {
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == v.status)
        .map(|c| c.last_transition_time.0)
        .unwrap_or(now);
    // metav1.Time has second precision; a finer value would make every comparison with the cache differ.
    let last = last.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    json!({
        "type": type_,
        "status": v.status,
        "reason": v.reason,
        "message": v.message.chars().take(32_000).collect::<String>(),
        "observedGeneration": generation.unwrap_or(0),
        "lastTransitionTime": last,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    const T0: i64 = 1_764_750_000; // 2025-12-03T08:20:00Z

    fn report(f: impl FnOnce(&mut apb::FederationStatus)) -> apb::FederationStatus {
        let mut r = apb::FederationStatus {
            trust_domain: "partner.test".into(),
            source: "api".into(),
            last_attempt_at: T0,
            last_success_at: T0,
            last_change_at: T0 - 60,
            next_refresh_at: T0 + 30,
            has_bundle: true,
            sequence: 3,
            ..Default::default()
        };
        f(&mut r);
        r
    }

    #[test]
    fn times_are_second_precision_text_and_zero_is_never() {
        assert_eq!(time_text(T0).as_deref(), Some("2025-12-03T08:20:00Z"));
        assert_eq!(time_text(0), None);
        assert_eq!(time_text(-5), None);
        assert_eq!(time_text(i64::MAX), None, "out of range is absent, not a panic");
    }

    #[test]
    fn bundle_status_from_report() {
        let ok = bundle_status(&report(|_| {}));
        assert_eq!(ok.source.as_deref(), Some("api"));
        assert_eq!(ok.sequence, Some(3));
        assert_eq!(ok.last_success_time.as_deref(), Some("2025-12-03T08:20:00Z"));
        assert_eq!(ok.last_change_time.as_deref(), Some("2025-12-03T08:19:00Z"));
        assert_eq!(ok.next_refresh_time.as_deref(), Some("2025-12-03T08:20:30Z"));
        assert_eq!((ok.last_error, ok.last_error_time, ok.consecutive_failures), (None, None, 0));
        let failing = bundle_status(&report(|r| {
            r.last_error = "connection refused".into();
            r.last_error_at = T0 + 5;
            r.consecutive_failures = 2;
        }));
        assert_eq!(failing.last_error.as_deref(), Some("connection refused"));
        assert_eq!(failing.last_error_time.as_deref(), Some("2025-12-03T08:20:05Z"));
        assert_eq!(failing.consecutive_failures, 2);
        let fresh = bundle_status(&report(|r| {
            *r = apb::FederationStatus { trust_domain: "partner.test".into(), ..Default::default() };
        }));
        assert_eq!(fresh, FederationBundleStatus::default(), "nothing known: nothing shown");
        let error_without_time = bundle_status(&report(|r| r.last_error = "x".into()));
        assert_eq!(error_without_time.last_error_time, None);
    }

    #[test]
    fn bundle_patch_names_every_field_so_stale_ones_are_removed() {
        let v = bundle_patch(&report(|r| r.has_bundle = false));
        assert_eq!(v["sequence"], Value::Null);
        assert!(v.as_object().unwrap().contains_key("sequence"));
        assert_eq!(v["lastError"], Value::Null);
        assert_eq!(v["lastSuccessTime"], "2025-12-03T08:20:00Z");
        assert_eq!(v["consecutiveFailures"], 0);
        // Every field of the type is named, so a new one can't be forgotten here.
        let full = serde_json::to_value(FederationBundleStatus {
            source: Some(String::new()),
            last_success_time: Some(String::new()),
            last_change_time: Some(String::new()),
            sequence: Some(0),
            next_refresh_time: Some(String::new()),
            last_error: Some(String::new()),
            last_error_time: Some(String::new()),
            consecutive_failures: 0,
        })
        .unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&v), keys(&full));
    }

    #[test]
    fn verdicts() {
        let td = "partner.test";
        let cases: Vec<(&str, Verdict, (&str, &str, &str))> = vec![
            ("fetched", fetched(td, true, Ok(Some(&report(|_| {})))), ("True", "Fetched", "sequence 3")),
            (
                "failing with a kept bundle",
                fetched(
                    td,
                    true,
                    Ok(Some(&report(|r| {
                        r.consecutive_failures = 2;
                        r.last_error = "connection refused".into();
                    }))),
                ),
                (
                    "False",
                    "FetchFailed",
                    "2 failed fetch(es) in a row: connection refused; the last bundle (sequence 3)",
                ),
            ),
            (
                "failing from the start",
                fetched(
                    td,
                    true,
                    Ok(Some(&report(|r| {
                        r.consecutive_failures = 1;
                        r.last_success_at = 0;
                        r.has_bundle = false;
                    }))),
                ),
                ("False", "FetchFailed", "unknown error; no bundle"),
            ),
            (
                "not yet",
                fetched(td, true, Ok(Some(&report(|r| r.last_success_at = 0)))),
                ("Unknown", "Pending", "not been fetched"),
            ),
            ("no report", fetched(td, true, Ok(None)), ("Unknown", "Pending", "no fetching for partner.test")),
            (
                "report of another trust domain",
                fetched(td, true, Ok(Some(&report(|r| r.trust_domain = "other.test".into())))),
                ("Unknown", "Pending", "no fetching"),
            ),
            ("server can't say", fetched(td, true, Err("Unimplemented")), ("Unknown", "Pending", "Unimplemented")),
            ("not ours", fetched(td, false, Ok(Some(&report(|_| {})))), ("Unknown", "Pending", "Ready condition")),
            (
                "config file wins",
                fetched(td, true, Ok(Some(&report(|r| r.source = "config".into())))),
                ("True", "Fetched", "config file"),
            ),
        ];
        for (what, v, (status, reason, part)) in cases {
            assert_eq!((v.status, v.reason), (status, reason), "{what}: {v:?}");
            assert!(v.message.contains(part), "{what}: {v:?}");
        }
    }

    #[test]
    fn condition_keeps_transition_time_while_status_stays() {
        let now = k8s_openapi::jiff::Timestamp::from_second(T0).unwrap();
        let before = k8s_openapi::jiff::Timestamp::from_second(T0 - 100).unwrap();
        let prev = vec![Condition {
            type_: CONDITION.into(),
            status: "True".into(),
            reason: "Fetched".into(),
            message: "m".into(),
            observed_generation: Some(1),
            last_transition_time: Time(before),
        }];
        let same = condition(CONDITION, &prev, Some(2), fetched("partner.test", true, Ok(Some(&report(|_| {})))), now);
        assert_eq!(same["lastTransitionTime"], "2025-12-03T08:18:20Z");
        assert_eq!(same["observedGeneration"], 2);
        let flipped = condition(
            CONDITION,
            &prev,
            Some(2),
            fetched("partner.test", true, Ok(Some(&report(|r| r.consecutive_failures = 1)))),
            now,
        );
        assert_eq!(
            (flipped["status"].as_str(), flipped["lastTransitionTime"].as_str()),
            (Some("False"), Some("2025-12-03T08:20:00Z"))
        );
        let other_type = condition("Ready", &prev, None, verdict("True", "Reconciled", String::new()), now);
        assert_eq!(other_type["lastTransitionTime"], "2025-12-03T08:20:00Z", "only the same type's time is kept");
    }
}
