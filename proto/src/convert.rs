//! The one place where wire types (`sigil.types.v1`) become core types and back.
//!
//! Outbound conversions (`*_to_pb`) cannot fail. Inbound ones (`*_from_pb`) check every field and refuse
//! input with a [`ConvertError`] naming the field, so a bad value never gets past the boundary: the server
//! answers `InvalidArgument` with its text, the agent logs and skips the item, the operator reports it.
//!
//! What an inbound conversion decides: selectors are sorted and deduplicated (an entry's selectors are a
//! set); a negative TTL is refused (0 means the server default); a JWT authority needs a key ID (checklist
//! C10); a refresh hint of 0 or less reads as absent. Checks that need more than the wire value (the
//! server's CA certificate rules, client-chosen entry IDs) stay with the caller.
// Hand-written code: the crate allows clippy's default lints only for the generated modules.
#![warn(clippy::all)]

use sigil_core::bundle::{Bundle, JwtAuthority};
use sigil_core::{RegistrationEntry, Selector, SpiffeId, TrustDomain};

use crate::types as pb;

/// A wire value that does not make a valid core value. Displays as `{field}: {reason}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConvertError {
    /// The wire field, as a client names it (`spiffe_id`, `bundle.trust_domain`, ...).
    pub field: &'static str,
    pub reason: String,
}

impl ConvertError {
    fn new(field: &'static str, reason: impl std::fmt::Display) -> Self {
        Self { field, reason: reason.to_string() }
    }
}

fn spiffe_id(field: &'static str, v: &str) -> Result<SpiffeId, ConvertError> {
    SpiffeId::new(v).map_err(|e| ConvertError::new(field, e))
}

fn trust_domain(field: &'static str, v: &str) -> Result<TrustDomain, ConvertError> {
    TrustDomain::new(v).map_err(|e| ConvertError::new(field, e))
}

fn ttl(field: &'static str, v: i32) -> Result<u32, ConvertError> {
    u32::try_from(v).map_err(|_| ConvertError::new(field, "must not be negative"))
}

pub fn selector_to_pb(s: &Selector) -> pb::Selector {
    pb::Selector { r#type: s.kind().to_owned(), value: s.value().to_owned() }
}

/// Refused with field `selectors` (the field every caller reads selectors from).
pub fn selector_from_pb(s: &pb::Selector) -> Result<Selector, ConvertError> {
    Selector::new(&s.r#type, &s.value).map_err(|e| ConvertError::new("selectors", e))
}

/// TTLs above `i32::MAX` seconds (never valid: at most 10 years) are sent as `i32::MAX`.
pub fn entry_to_pb(e: &RegistrationEntry) -> pb::Entry {
    pb::Entry {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e.selectors.iter().map(selector_to_pb).collect(),
        x509_svid_ttl: i32::try_from(e.x509_svid_ttl).unwrap_or(i32::MAX),
        jwt_svid_ttl: i32::try_from(e.jwt_svid_ttl).unwrap_or(i32::MAX),
        dns_names: e.dns_names.clone(),
        federates_with: e.federates_with.iter().map(|td| td.name().to_owned()).collect(),
        admin: e.admin,
        downstream: e.downstream,
        hint: e.hint.clone(),
        expires_at: e.entry_expiry,
        revision: e.revision,
        created_at: e.created_at,
        store_svid: e.store_svid,
    }
}

/// `id`, `revision` and `created_at` are kept as given. Fields are checked in this order, so the first
/// bad one is the one reported: `selectors`, `federates_with`, `spiffe_id`, `parent_id`, `x509_svid_ttl`,
/// `jwt_svid_ttl`.
pub fn entry_from_pb(e: &pb::Entry) -> Result<RegistrationEntry, ConvertError> {
    let mut selectors = e.selectors.iter().map(selector_from_pb).collect::<Result<Vec<_>, _>>()?;
    selectors.sort();
    selectors.dedup();
    let federates_with =
        e.federates_with.iter().map(|td| trust_domain("federates_with", td)).collect::<Result<Vec<_>, _>>()?;
    Ok(RegistrationEntry {
        id: e.id.clone(),
        spiffe_id: spiffe_id("spiffe_id", &e.spiffe_id)?,
        parent_id: spiffe_id("parent_id", &e.parent_id)?,
        selectors,
        x509_svid_ttl: ttl("x509_svid_ttl", e.x509_svid_ttl)?,
        jwt_svid_ttl: ttl("jwt_svid_ttl", e.jwt_svid_ttl)?,
        dns_names: e.dns_names.clone(),
        federates_with,
        admin: e.admin,
        downstream: e.downstream,
        hint: e.hint.clone(),
        entry_expiry: e.expires_at,
        store_svid: e.store_svid,
        revision: e.revision,
        created_at: e.created_at,
    })
}

/// An absent refresh hint is sent as 0; one above `i64::MAX` seconds as `i64::MAX`.
pub fn bundle_to_pb(b: &Bundle) -> pb::Bundle {
    pb::Bundle {
        trust_domain: b.trust_domain.name().to_owned(),
        x509_authorities: b.x509_authorities.clone(),
        jwt_authorities: b
            .jwt_authorities
            .iter()
            .map(|k| pb::JwtKey {
                key_id: k.key_id.clone(),
                public_key: k.public_key_spki_der.clone(),
                expires_at: k.expires_at,
            })
            .collect(),
        sequence_number: b.sequence,
        refresh_hint: b.refresh_hint_secs.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX)),
    }
}

/// Refused: a bad `bundle.trust_domain`, a JWT authority without a key ID (`bundle.jwt_authorities`).
/// The X.509 authorities are carried as given; whether they are acceptable CA certificates is the
/// receiver's decision.
pub fn bundle_from_pb(b: &pb::Bundle) -> Result<Bundle, ConvertError> {
    let trust_domain = trust_domain("bundle.trust_domain", &b.trust_domain)?;
    let jwt_authorities = b
        .jwt_authorities
        .iter()
        .map(|k| {
            if k.key_id.is_empty() {
                return Err(ConvertError::new("bundle.jwt_authorities", "key_id is required"));
            }
            Ok(JwtAuthority {
                key_id: k.key_id.clone(),
                public_key_spki_der: k.public_key.clone(),
                expires_at: k.expires_at,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Bundle {
        trust_domain,
        x509_authorities: b.x509_authorities.clone(),
        jwt_authorities,
        sequence: b.sequence_number,
        refresh_hint_secs: u64::try_from(b.refresh_hint).ok().filter(|s| *s > 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(t: &str, v: &str) -> pb::Selector {
        pb::Selector { r#type: t.into(), value: v.into() }
    }

    fn full_entry() -> RegistrationEntry {
        RegistrationEntry {
            id: "e1".into(),
            spiffe_id: SpiffeId::new("spiffe://example.org/web").unwrap(),
            parent_id: SpiffeId::new("spiffe://example.org/spire/agent/join_token/t").unwrap(),
            selectors: vec![Selector::parse("k8s:ns:web").unwrap(), Selector::parse("unix:uid:1000").unwrap()],
            x509_svid_ttl: 3600,
            jwt_svid_ttl: 300,
            dns_names: vec!["web.example.org".into()],
            federates_with: vec![TrustDomain::new("other.org").unwrap()],
            admin: true,
            downstream: true,
            hint: "h".into(),
            entry_expiry: 1_900_000_000,
            store_svid: true,
            revision: 7,
            created_at: 1_700_000_000,
        }
    }

    fn pb_entry() -> pb::Entry {
        entry_to_pb(&full_entry())
    }

    fn full_bundle() -> Bundle {
        Bundle {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            x509_authorities: vec![vec![0x30, 0x01, 0x02], vec![0x30, 0x03]],
            jwt_authorities: vec![JwtAuthority {
                key_id: "k1".into(),
                public_key_spki_der: vec![1, 2, 3],
                expires_at: 1_800_000_000,
            }],
            sequence: 42,
            refresh_hint_secs: Some(300),
        }
    }

    #[test]
    fn entry_round_trips() {
        let entries = [
            full_entry(),
            RegistrationEntry::new(
                SpiffeId::new("spiffe://td/a").unwrap(),
                SpiffeId::new("spiffe://td/spire/server").unwrap(),
                vec![Selector::parse("unix:uid:0").unwrap()],
            ),
            RegistrationEntry { selectors: vec![], ..full_entry() },
        ];
        for e in entries {
            assert_eq!(entry_from_pb(&entry_to_pb(&e)).unwrap(), e);
        }
    }

    #[test]
    fn entry_to_pb_writes_every_field() {
        let pb = pb_entry();
        assert_eq!(pb.id, "e1");
        assert_eq!(pb.spiffe_id, "spiffe://example.org/web");
        assert_eq!(pb.parent_id, "spiffe://example.org/spire/agent/join_token/t");
        assert_eq!(pb.selectors, vec![sel("k8s", "ns:web"), sel("unix", "uid:1000")]);
        assert_eq!((pb.x509_svid_ttl, pb.jwt_svid_ttl), (3600, 300));
        assert_eq!(pb.dns_names, vec!["web.example.org".to_string()]);
        assert_eq!(pb.federates_with, vec!["other.org".to_string()]);
        assert!(pb.admin && pb.downstream);
        assert_eq!(pb.hint, "h");
        assert_eq!((pb.expires_at, pb.revision, pb.created_at), (1_900_000_000, 7, 1_700_000_000));
        assert!(pb.store_svid);
    }

    #[test]
    fn entry_ttls_beyond_i32_are_capped() {
        let e = RegistrationEntry { x509_svid_ttl: u32::MAX, jwt_svid_ttl: 1 << 31, ..full_entry() };
        let pb = entry_to_pb(&e);
        assert_eq!((pb.x509_svid_ttl, pb.jwt_svid_ttl), (i32::MAX, i32::MAX));
    }

    #[test]
    fn entry_selectors_are_sorted_and_deduplicated() {
        let input = pb::Entry {
            selectors: vec![sel("unix", "uid:2"), sel("k8s", "ns:a"), sel("unix", "uid:2"), sel("unix", "uid:1")],
            ..pb_entry()
        };
        let got: Vec<String> = entry_from_pb(&input).unwrap().selectors.iter().map(ToString::to_string).collect();
        assert_eq!(got, vec!["k8s:ns:a", "unix:uid:1", "unix:uid:2"]);
    }

    #[test]
    fn entry_refusals_name_the_field() {
        let cases: Vec<(&str, pb::Entry, &str)> = vec![
            ("bad spiffe_id", pb::Entry { spiffe_id: "http://x/y".into(), ..pb_entry() }, "spiffe_id"),
            ("empty spiffe_id", pb::Entry { spiffe_id: String::new(), ..pb_entry() }, "spiffe_id"),
            ("empty parent_id", pb::Entry { parent_id: String::new(), ..pb_entry() }, "parent_id"),
            ("negative x509 ttl", pb::Entry { x509_svid_ttl: -1, ..pb_entry() }, "x509_svid_ttl"),
            ("negative jwt ttl", pb::Entry { jwt_svid_ttl: i32::MIN, ..pb_entry() }, "jwt_svid_ttl"),
            ("bad federates_with", pb::Entry { federates_with: vec!["Bad TD".into()], ..pb_entry() }, "federates_with"),
            ("empty selector value", pb::Entry { selectors: vec![sel("unix", "")], ..pb_entry() }, "selectors"),
            ("empty selector type", pb::Entry { selectors: vec![sel("", "uid:1")], ..pb_entry() }, "selectors"),
            ("bad selector type", pb::Entry { selectors: vec![sel("un ix", "uid:1")], ..pb_entry() }, "selectors"),
            // Order: selectors are checked before the IDs.
            (
                "selectors before ids",
                pb::Entry { selectors: vec![sel("unix", "")], spiffe_id: String::new(), ..pb_entry() },
                "selectors",
            ),
            (
                "federates_with before ids",
                pb::Entry { federates_with: vec!["".into()], parent_id: String::new(), ..pb_entry() },
                "federates_with",
            ),
        ];
        for (name, input, field) in cases {
            let err = entry_from_pb(&input).unwrap_err();
            assert_eq!(err.field, field, "{name}: {err}");
            assert!(err.to_string().starts_with(&format!("{field}: ")), "{name}: {err}");
            assert!(!err.reason.is_empty(), "{name}");
        }
    }

    #[test]
    fn negative_ttl_message() {
        let err = entry_from_pb(&pb::Entry { x509_svid_ttl: -5, ..pb_entry() }).unwrap_err();
        assert_eq!(err.to_string(), "x509_svid_ttl: must not be negative");
    }

    #[test]
    fn selector_round_trips_and_refusals() {
        for text in ["unix:uid:1000", "k8s:pod-label:app:web", "spiffe_id:spiffe://td/x"] {
            let s = Selector::parse(text).unwrap();
            assert_eq!(selector_from_pb(&selector_to_pb(&s)).unwrap(), s, "{text}");
        }
        for (t, v) in [("", "x"), ("unix", ""), ("", ""), ("a/b", "x")] {
            let err = selector_from_pb(&sel(t, v)).unwrap_err();
            assert_eq!(err.field, "selectors", "{t:?} {v:?}");
        }
    }

    #[test]
    fn bundle_round_trips() {
        let bundles = [
            full_bundle(),
            Bundle::new(TrustDomain::new("td").unwrap()),
            Bundle { refresh_hint_secs: None, jwt_authorities: vec![], ..full_bundle() },
        ];
        for b in bundles {
            assert_eq!(bundle_from_pb(&bundle_to_pb(&b)).unwrap(), b);
        }
    }

    #[test]
    fn bundle_refresh_hint() {
        let cases: &[(Option<u64>, i64)] = &[(None, 0), (Some(60), 60), (Some(u64::MAX), i64::MAX)];
        for (hint, wire) in cases {
            let pb = bundle_to_pb(&Bundle { refresh_hint_secs: *hint, ..full_bundle() });
            assert_eq!(pb.refresh_hint, *wire, "{hint:?}");
        }
        let cases: &[(i64, Option<u64>)] = &[(0, None), (-1, None), (60, Some(60))];
        for (wire, hint) in cases {
            let b = bundle_from_pb(&pb::Bundle { refresh_hint: *wire, ..bundle_to_pb(&full_bundle()) }).unwrap();
            assert_eq!(b.refresh_hint_secs, *hint, "{wire}");
        }
    }

    #[test]
    fn bundle_refusals_name_the_field() {
        let no_kid = pb::JwtKey { key_id: String::new(), public_key: vec![1], expires_at: 0 };
        let cases: Vec<(&str, pb::Bundle, &str)> = vec![
            (
                "empty trust domain",
                pb::Bundle { trust_domain: String::new(), ..bundle_to_pb(&full_bundle()) },
                "bundle.trust_domain: ",
            ),
            (
                "bad trust domain",
                pb::Bundle { trust_domain: "Bad TD".into(), ..bundle_to_pb(&full_bundle()) },
                "bundle.trust_domain: ",
            ),
            (
                "jwt key without kid",
                pb::Bundle { jwt_authorities: vec![no_kid], ..bundle_to_pb(&full_bundle()) },
                "bundle.jwt_authorities: key_id is required",
            ),
        ];
        for (name, input, text) in cases {
            let err = bundle_from_pb(&input).unwrap_err();
            assert!(err.to_string().starts_with(text), "{name}: {err}");
        }
    }
}
