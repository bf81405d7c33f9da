//! Whether a bundle fetched from a foreign bundle endpoint may be stored, and whether it changes what is
//! stored. Pure; the fetcher calls these after parsing the document with [`Bundle::from_jwks_json`] for the
//! relationship's trust domain.
//!
//! - **Trust domain** (F5): the bundle document does not name its trust domain, so the only evidence is in
//!   the X.509 authorities: a CA certificate carrying a SPIFFE ID (B3) must carry one of the relationship's
//!   trust domain. A peer serving another trust domain's bundle (a wrong URL, a shared reverse proxy) is
//!   refused instead of silently trusting that domain's CAs for this one. JWT authorities carry no such
//!   evidence.
//! - **Authorities** must pass the checks `bundle set` applies ([`crate::x509::check_ca_cert`]), so a fetch
//!   never stores what an operator could not.
//! - **Changes**: the stored bundle is replaced only when the content differs (authorities compared as sets,
//!   JWT authorities by `kid` and key, plus the refresh hint) or the served `spiffe_sequence` differs. The
//!   served sequence is kept: it is the publisher's counter (F2), and agents and `bundle show` print it. A
//!   publisher that serves no sequence (0) gets a local one: the stored sequence + 1 on each change, so the
//!   stored counter still grows with every content change. A served sequence lower than the stored one is
//!   still stored (the peer's datastore was reset, or it is another replica) but reported, so the fetcher
//!   can log it; refusing it would leave this side stuck on keys the peer no longer has.

use crate::bundle::{Bundle, JwtAuthority};
use crate::x509::X509Error;

/// Why a fetched bundle is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchedBundleError {
    #[error("X.509 authority {index} is not a usable CA certificate: {source}")]
    BadAuthority { index: usize, source: X509Error },
    #[error(
        "the bundle is of trust domain {found}, not {expected}: X.509 authority {index} carries SPIFFE ID {id} \
         (is the URL the bundle endpoint of {expected}?)"
    )]
    ForeignTrustDomain { expected: String, found: String, index: usize, id: String },
}

/// Checks a fetched bundle (already parsed for the relationship's trust domain, `bundle.trust_domain`).
pub fn check_fetched_bundle(bundle: &Bundle) -> Result<(), FetchedBundleError> {
    for (index, der) in bundle.x509_authorities.iter().enumerate() {
        let id =
            crate::x509::check_ca_cert(der).map_err(|source| FetchedBundleError::BadAuthority { index, source })?;
        if let Some(id) = id
            && id.trust_domain() != bundle.trust_domain
        {
            return Err(FetchedBundleError::ForeignTrustDomain {
                expected: bundle.trust_domain.to_string(),
                found: id.trust_domain().to_string(),
                index,
                id: id.to_string(),
            });
        }
    }
    Ok(())
}

fn sorted_x509(b: &Bundle) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = b.x509_authorities.iter().map(Vec::as_slice).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn sorted_jwt(b: &Bundle) -> Vec<(&str, &[u8])> {
    let mut v: Vec<(&str, &[u8])> = b
        .jwt_authorities
        .iter()
        .map(|JwtAuthority { key_id, public_key_spki_der, .. }| (key_id.as_str(), public_key_spki_der.as_slice()))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Same trust domain, same authorities (in any order; a JWT authority's expiry is not published, so not
/// compared) and same refresh hint. The sequence is not compared.
pub fn same_content(a: &Bundle, b: &Bundle) -> bool {
    a.trust_domain == b.trust_domain
        && a.refresh_hint_secs == b.refresh_hint_secs
        && sorted_x509(a) == sorted_x509(b)
        && sorted_jwt(a) == sorted_jwt(b)
}

/// What to do with a fetched bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// It is what is stored already: write nothing, tell nobody.
    Unchanged,
    /// Store `bundle` (with the sequence decided here) and announce it.
    Store {
        bundle: Bundle,
        /// The served sequence is lower than the stored one (see the module notes).
        sequence_went_back: bool,
    },
}

/// Decides whether `fetched` replaces `stored` (see the module notes for the sequence rules).
pub fn update(stored: Option<&Bundle>, mut fetched: Bundle) -> Update {
    let Some(stored) = stored else {
        if fetched.sequence == 0 {
            fetched.sequence = 1;
        }
        return Update::Store { bundle: fetched, sequence_went_back: false };
    };
    let same = same_content(stored, &fetched);
    if fetched.sequence == 0 {
        if same {
            return Update::Unchanged;
        }
        fetched.sequence = stored.sequence.saturating_add(1);
        return Update::Store { bundle: fetched, sequence_went_back: false };
    }
    if same && fetched.sequence == stored.sequence {
        return Update::Unchanged;
    }
    let sequence_went_back = fetched.sequence < stored.sequence;
    Update::Store { bundle: fetched, sequence_went_back }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TrustDomain;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    /// A CA certificate, optionally with a SPIFFE ID URI SAN.
    fn ca(uri: Option<&str>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        if let Some(u) = uri {
            p.subject_alt_names = vec![rcgen::SanType::URI(u.try_into().unwrap())];
        }
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn leaf() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["x.test".to_owned()]).unwrap().self_signed(&key).unwrap().der().to_vec()
    }

    fn bundle(name: &str, x509: Vec<Vec<u8>>, jwt: &[(&str, u8)], sequence: u64, hint: Option<u64>) -> Bundle {
        Bundle {
            trust_domain: td(name),
            x509_authorities: x509,
            jwt_authorities: jwt
                .iter()
                .map(|(kid, k)| JwtAuthority {
                    key_id: (*kid).to_owned(),
                    public_key_spki_der: vec![*k],
                    expires_at: 0,
                })
                .collect(),
            sequence,
            refresh_hint_secs: hint,
        }
    }

    #[test]
    fn trust_domain_and_authority_checks() {
        type Want = fn(&Result<(), FetchedBundleError>) -> bool;
        let cases: Vec<(&str, Bundle, Want)> = vec![
            (
                "own CA with the trust domain ID",
                bundle("b.test", vec![ca(Some("spiffe://b.test"))], &[], 1, None),
                |r| r.is_ok(),
            ),
            ("CA without SPIFFE ID (upstream authority)", bundle("b.test", vec![ca(None)], &[], 1, None), |r| {
                r.is_ok()
            }),
            ("JWT only", bundle("b.test", vec![], &[("k", 1)], 1, None), |r| r.is_ok()),
            ("empty", bundle("b.test", vec![], &[], 1, None), |r| r.is_ok()),
            (
                "another trust domain's CA",
                bundle("b.test", vec![ca(Some("spiffe://b.test")), ca(Some("spiffe://c.test"))], &[], 1, None),
                |r| matches!(r, Err(FetchedBundleError::ForeignTrustDomain { index: 1, .. })),
            ),
            ("a leaf, not a CA", bundle("b.test", vec![leaf()], &[], 1, None), |r| {
                matches!(r, Err(FetchedBundleError::BadAuthority { index: 0, source: X509Error::CaNotCa }))
            }),
        ];
        for (what, b, want) in cases {
            let got = check_fetched_bundle(&b);
            assert!(want(&got), "{what}: {got:?}");
        }
        let err = check_fetched_bundle(&bundle("b.test", vec![ca(Some("spiffe://c.test"))], &[], 1, None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the bundle is of trust domain c.test, not b.test: X.509 authority 0 carries SPIFFE ID spiffe://c.test \
             (is the URL the bundle endpoint of b.test?)"
        );
    }

    #[test]
    fn update_table() {
        let (x, y) = (ca(Some("spiffe://b.test")), ca(None));
        let b = |x509: Vec<Vec<u8>>, jwt: &[(&str, u8)], seq: u64, hint: Option<u64>| {
            bundle("b.test", x509, jwt, seq, hint)
        };
        let store = |bundle: Bundle, back: bool| Update::Store { bundle, sequence_went_back: back };
        let cases: Vec<(&str, Option<Bundle>, Bundle, Update)> = vec![
            (
                "nothing stored: stored as served",
                None,
                b(vec![x.clone()], &[], 7, Some(60)),
                store(b(vec![x.clone()], &[], 7, Some(60)), false),
            ),
            (
                "nothing stored, no served sequence: 1",
                None,
                b(vec![x.clone()], &[], 0, None),
                store(b(vec![x.clone()], &[], 1, None), false),
            ),
            (
                "identical",
                Some(b(vec![x.clone()], &[("k", 1)], 7, Some(60))),
                b(vec![x.clone()], &[("k", 1)], 7, Some(60)),
                Update::Unchanged,
            ),
            (
                "same authorities in another order",
                Some(b(vec![x.clone(), y.clone()], &[("k", 1), ("l", 2)], 7, Some(60))),
                b(vec![y.clone(), x.clone()], &[("l", 2), ("k", 1)], 7, Some(60)),
                Update::Unchanged,
            ),
            (
                "new CA and new sequence",
                Some(b(vec![x.clone()], &[], 7, Some(60))),
                b(vec![x.clone(), y.clone()], &[], 8, Some(60)),
                store(b(vec![x.clone(), y.clone()], &[], 8, Some(60)), false),
            ),
            (
                "same keys, new sequence (e.g. after `bundle set` of the same keys)",
                Some(b(vec![x.clone()], &[], 0, None)),
                b(vec![x.clone()], &[], 3, None),
                store(b(vec![x.clone()], &[], 3, None), false),
            ),
            (
                "hint changed",
                Some(b(vec![x.clone()], &[], 7, Some(60))),
                b(vec![x.clone()], &[], 7, Some(5)),
                store(b(vec![x.clone()], &[], 7, Some(5)), false),
            ),
            (
                "JWT key replaced under the same kid",
                Some(b(vec![], &[("k", 1)], 7, None)),
                b(vec![], &[("k", 2)], 8, None),
                store(b(vec![], &[("k", 2)], 8, None), false),
            ),
            (
                "sequence went back with other keys: stored, reported",
                Some(b(vec![x.clone()], &[], 40, None)),
                b(vec![y.clone()], &[], 2, None),
                store(b(vec![y.clone()], &[], 2, None), true),
            ),
            (
                "no served sequence, unchanged",
                Some(b(vec![x.clone()], &[], 12, None)),
                b(vec![x.clone()], &[], 0, None),
                Update::Unchanged,
            ),
            (
                "no served sequence, changed: stored + 1",
                Some(b(vec![x.clone()], &[], 12, None)),
                b(vec![y.clone()], &[], 0, None),
                store(b(vec![y.clone()], &[], 13, None), false),
            ),
            (
                "emptied by the publisher (F1 allows it)",
                Some(b(vec![x.clone()], &[], 7, None)),
                b(vec![], &[], 8, None),
                store(b(vec![], &[], 8, None), false),
            ),
        ];
        for (what, stored, fetched, want) in cases {
            assert_eq!(update(stored.as_ref(), fetched), want, "{what}");
        }
    }

    #[test]
    fn jwt_expiry_is_not_content() {
        let mut a = bundle("b.test", vec![], &[("k", 1)], 1, None);
        let b = a.clone();
        a.jwt_authorities[0].expires_at = 1_900_000_000;
        assert!(same_content(&a, &b));
        assert!(!same_content(&a, &bundle("c.test", vec![], &[("k", 1)], 1, None)));
    }
}
