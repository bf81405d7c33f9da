#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Checklist section A: SPIFFE IDs (`sigil_core::SpiffeId`, `sigil_core::TrustDomain`).
//!
//! A5 decision (documented in core/src/id.rs): the scheme and trust domain must be lowercase; uppercase is
//! rejected, never folded, so every ID Sigil stores or issues is accepted byte-for-byte by go-spiffe.
//! Paths are case-sensitive and kept as given.

use sigil_core::{IdError, SpiffeId, TrustDomain};

fn assert_rejected(inputs: &[&str]) {
    for input in inputs {
        let r = SpiffeId::new(input);
        assert!(matches!(r, Err(IdError::SpiffeId { .. })), "{input:?} should be rejected, got {r:?}");
    }
}

fn assert_accepted(inputs: &[&str]) {
    for input in inputs {
        let id = SpiffeId::new(input).unwrap_or_else(|e| panic!("{input:?} should be accepted: {e}"));
        assert_eq!(id.as_str(), *input, "accepted IDs are kept byte-for-byte");
    }
}

#[test]
fn a1_accepts_valid_ids() {
    assert_accepted(&[
        "spiffe://example.org",
        "spiffe://example.org/workload",
        "spiffe://example.org/ns/default/sa/web",
        "spiffe://a/b",
    ]);
}

#[test]
fn a1_requires_spiffe_scheme() {
    assert_rejected(&[
        "https://example.org/workload",
        "spiffe:/example.org/workload",
        "spiffe:example.org/workload",
        "example.org/workload",
        "//example.org/workload",
        "",
    ]);
}

#[test]
fn a1_rejects_empty_trust_domain() {
    assert_rejected(&["spiffe://", "spiffe:///workload", "spiffe:///"]);
}

#[test]
fn a1_rejects_query() {
    assert_rejected(&["spiffe://example.org/workload?x=1", "spiffe://example.org?x", "spiffe://example.org/?"]);
}

#[test]
fn a1_rejects_fragment() {
    assert_rejected(&["spiffe://example.org/workload#frag", "spiffe://example.org#x", "spiffe://example.org/#"]);
}

#[test]
fn a2_rejects_userinfo() {
    assert_rejected(&["spiffe://user@example.org/workload", "spiffe://user:pass@example.org/workload"]);
}

#[test]
fn a2_rejects_port() {
    assert_rejected(&["spiffe://example.org:8080/workload", "spiffe://example.org:/workload"]);
}

#[test]
fn a2_rejects_percent_encoding_in_trust_domain() {
    assert_rejected(&["spiffe://exa%6dple.org/workload", "spiffe://%41/workload"]);
}

#[test]
fn a2_rejects_characters_outside_allowed_set() {
    assert_rejected(&[
        "spiffe://exa mple.org/w",
        "spiffe://exa!mple.org/w",
        "spiffe://exa+mple.org/w",
        "spiffe://exämple.org/w",
        "spiffe://[::1]/w",
        "spiffe://example.org\t/w",
    ]);
    for td in ["exa mple", "exa!mple", "exämple", "[::1]", "a*b"] {
        assert!(TrustDomain::new(td).is_err(), "{td:?}");
    }
}

#[test]
fn a2_accepts_allowed_trust_domain_characters() {
    assert_accepted(&["spiffe://a-b.c_d.0-9/w", "spiffe://example_org/w", "spiffe://x/w"]);
    assert_eq!(TrustDomain::new("a-b.c_d.0-9").unwrap().name(), "a-b.c_d.0-9");
}

#[test]
fn a2_trust_domain_is_at_most_255_bytes() {
    let ok = "a".repeat(255);
    let too_long = "a".repeat(256);
    assert_eq!(TrustDomain::new(&ok).unwrap().name(), ok);
    assert!(TrustDomain::new(&too_long).is_err());
    assert!(SpiffeId::new(&format!("spiffe://{ok}/w")).is_ok());
    assert!(SpiffeId::new(&format!("spiffe://{too_long}/w")).is_err());
}

#[test]
fn a2_ip_looking_names_are_plain_trust_domains() {
    let td = TrustDomain::new("127.0.0.1").unwrap();
    assert_eq!(td.id_string(), "spiffe://127.0.0.1");
    assert_accepted(&["spiffe://10.0.0.1/w"]);
}

#[test]
fn a2_trust_domain_parsing_forms() {
    assert_eq!(TrustDomain::new("spiffe://example.org").unwrap().name(), "example.org");
    assert_eq!(TrustDomain::new("example.org").unwrap().to_spiffe_id().as_str(), "spiffe://example.org");
    for bad in ["", "spiffe://", "spiffe://example.org/path", "https://example.org", "example.org:80"] {
        assert!(TrustDomain::new(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a3_rejects_percent_encoding_in_path() {
    assert_rejected(&["spiffe://example.org/wor%6bload", "spiffe://example.org/%2F"]);
}

#[test]
fn a3_rejects_empty_segment() {
    assert_rejected(&["spiffe://example.org//workload", "spiffe://example.org/a//b"]);
}

#[test]
fn a3_rejects_dot_segment() {
    assert_rejected(&["spiffe://example.org/./workload", "spiffe://example.org/a/.", "spiffe://example.org/."]);
}

#[test]
fn a3_rejects_dot_dot_segment() {
    assert_rejected(&["spiffe://example.org/../workload", "spiffe://example.org/a/..", "spiffe://example.org/a/../b"]);
}

#[test]
fn a3_rejects_trailing_slash() {
    assert_rejected(&["spiffe://example.org/", "spiffe://example.org/workload/"]);
}

#[test]
fn a3_rejects_characters_outside_allowed_set() {
    assert_rejected(&[
        "spiffe://example.org/work load",
        "spiffe://example.org/work+load",
        "spiffe://example.org/wörk",
        "spiffe://example.org/a:b",
        "spiffe://example.org/a@b",
        "spiffe://example.org/a~b",
        "spiffe://example.org/a\\b",
    ]);
}

#[test]
fn a3_accepts_allowed_path_characters() {
    assert_accepted(&[
        "spiffe://example.org/AZaz09.-_",
        "spiffe://example.org/.hidden",
        "spiffe://example.org/...",
        "spiffe://example.org/a..b",
    ]);
}

#[test]
fn a3_empty_path_is_the_trust_domain_id() {
    let id = SpiffeId::new("spiffe://example.org").unwrap();
    assert!(id.is_trust_domain_id());
    assert_eq!(id.path(), "");
    assert_eq!(id.trust_domain(), TrustDomain::new("example.org").unwrap());
    let w = SpiffeId::new("spiffe://example.org/w").unwrap();
    assert!(!w.is_trust_domain_id());
    assert_eq!(w.path(), "/w");
}

#[test]
fn a4_accepts_ids_up_to_2048_bytes() {
    let prefix = "spiffe://example.org/";
    let exactly = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
    assert_eq!(exactly.len(), 2048);
    let id = SpiffeId::new(&exactly).unwrap();
    assert!(id.check_issuable().is_ok());
    let longer = format!("{exactly}b");
    assert!(SpiffeId::new(&longer).is_err());
}

#[test]
fn a4_never_issues_ids_without_path() {
    let id = SpiffeId::new("spiffe://example.org").unwrap();
    assert!(id.check_issuable().is_err());
    assert!(SpiffeId::new("spiffe://example.org/w").unwrap().check_issuable().is_ok());
}

#[test]
fn a5_rejects_uppercase_trust_domain() {
    assert_rejected(&["spiffe://Example.org/w", "spiffe://EXAMPLE.ORG/w", "spiffe://example.orG"]);
    for td in ["Example.org", "spiffe://EXAMPLE.org"] {
        assert!(TrustDomain::new(td).is_err(), "{td:?}");
    }
}

#[test]
fn a5_rejects_uppercase_scheme() {
    assert_rejected(&["SPIFFE://example.org/w", "Spiffe://example.org/w"]);
}

#[test]
fn a5_path_is_case_sensitive_and_kept() {
    let upper = SpiffeId::new("spiffe://example.org/Web").unwrap();
    let lower = SpiffeId::new("spiffe://example.org/web").unwrap();
    assert_ne!(upper, lower);
    assert_eq!(upper.path(), "/Web");
}

#[test]
fn ids_round_trip_through_serde_as_plain_strings() {
    let id = SpiffeId::new("spiffe://example.org/ns/a").unwrap();
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, "\"spiffe://example.org/ns/a\"");
    assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
    assert!(serde_json::from_str::<SpiffeId>("\"spiffe://example.org/a?b\"").is_err());
    let td: TrustDomain = serde_json::from_str("\"example.org\"").unwrap();
    assert_eq!(td.name(), "example.org");
}

#[test]
fn membership_and_join() {
    let td = TrustDomain::new("example.org").unwrap();
    let id = td.join("/a/b").unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/a/b");
    assert!(id.is_member_of(&td));
    assert!(!id.is_member_of(&TrustDomain::new("example.com").unwrap()));
    assert!(td.join("/a/").is_err());
    assert!(td.join("/a/../b").is_err());
}

/// `TrustDomain::join("a")` must not build `spiffe://example.orga`, an ID in *another* trust domain: a path
/// without a leading `/` is refused.
#[test]
fn a3_join_requires_leading_slash() {
    let td = TrustDomain::new("example.org").unwrap();
    for path in ["a", "evil.com/x", ".x/y"] {
        let r = td.join(path);
        assert!(r.is_err(), "join({path:?}) must fail, got {r:?}");
    }
}

#[test]
fn hostile_inputs_do_not_panic() {
    let long = "spiffe://example.org/".to_string() + &"a/".repeat(100_000);
    assert!(SpiffeId::new(&long).is_err());
    let err = SpiffeId::new(&long).unwrap_err().to_string();
    assert!(err.len() < 400, "error messages do not echo huge input: {} bytes", err.len());
    for s in ["spiffe://\u{0}/a", "spiffe://a/\u{0}", "spiffe://a/\u{feff}", "spiffe://\u{202e}/x"] {
        assert!(SpiffeId::new(s).is_err(), "{s:?}");
    }
}
