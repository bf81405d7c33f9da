//! Conversions from the agent API's wire types to core types. Invalid input from the server is an error
//! naming the field; the caller logs and skips it.

use sigil_core::bundle::{Bundle, JwtAuthority};
use sigil_core::{RegistrationEntry, Selector, SpiffeId, TrustDomain};
use sigil_proto::types as pb;

/// A wire value the agent cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConvertError {
    pub field: &'static str,
    pub reason: String,
}

fn err(field: &'static str, reason: impl std::fmt::Display) -> ConvertError {
    ConvertError { field, reason: reason.to_string() }
}

pub fn entry_from_pb(e: &pb::Entry) -> Result<RegistrationEntry, ConvertError> {
    let mut selectors = e
        .selectors
        .iter()
        .map(|s| Selector::new(&s.r#type, &s.value).map_err(|x| err("selectors", x)))
        .collect::<Result<Vec<_>, _>>()?;
    selectors.sort();
    selectors.dedup();
    Ok(RegistrationEntry {
        id: e.id.clone(),
        spiffe_id: SpiffeId::new(&e.spiffe_id).map_err(|x| err("spiffe_id", x))?,
        parent_id: SpiffeId::new(&e.parent_id).map_err(|x| err("parent_id", x))?,
        selectors,
        x509_svid_ttl: u32::try_from(e.x509_svid_ttl).map_err(|x| err("x509_svid_ttl", x))?,
        jwt_svid_ttl: u32::try_from(e.jwt_svid_ttl).map_err(|x| err("jwt_svid_ttl", x))?,
        dns_names: e.dns_names.clone(),
        federates_with: e
            .federates_with
            .iter()
            .map(|td| TrustDomain::new(td).map_err(|x| err("federates_with", x)))
            .collect::<Result<_, _>>()?,
        admin: e.admin,
        downstream: e.downstream,
        hint: e.hint.clone(),
        entry_expiry: e.expires_at,
        revision: e.revision,
        created_at: e.created_at,
    })
}

pub fn bundle_from_pb(b: &pb::Bundle) -> Result<Bundle, ConvertError> {
    Ok(Bundle {
        trust_domain: TrustDomain::new(&b.trust_domain).map_err(|x| err("bundle.trust_domain", x))?,
        x509_authorities: b.x509_authorities.clone(),
        jwt_authorities: b
            .jwt_authorities
            .iter()
            .map(|k| JwtAuthority {
                key_id: k.key_id.clone(),
                public_key_spki_der: k.public_key.clone(),
                expires_at: k.expires_at,
            })
            .collect(),
        sequence: b.sequence_number,
        refresh_hint_secs: u64::try_from(b.refresh_hint).ok().filter(|s| *s > 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb_entry() -> pb::Entry {
        pb::Entry {
            id: "e1".into(),
            spiffe_id: "spiffe://td/web".into(),
            parent_id: "spiffe://td/spire/agent/join_token/t".into(),
            selectors: vec![
                pb::Selector { r#type: "unix".into(), value: "uid:1".into() },
                pb::Selector { r#type: "unix".into(), value: "uid:1".into() },
            ],
            x509_svid_ttl: 30,
            federates_with: vec!["other.org".into()],
            ..Default::default()
        }
    }

    #[test]
    fn entry_table() {
        let ok = entry_from_pb(&pb_entry()).unwrap();
        assert_eq!(ok.selectors.len(), 1, "duplicates removed");
        assert_eq!(ok.x509_svid_ttl, 30);
        assert_eq!(ok.federates_with[0].name(), "other.org");
        let cases: Vec<(pb::Entry, &str)> = vec![
            (pb::Entry { spiffe_id: "http://x".into(), ..pb_entry() }, "spiffe_id"),
            (pb::Entry { parent_id: String::new(), ..pb_entry() }, "parent_id"),
            (pb::Entry { x509_svid_ttl: -1, ..pb_entry() }, "x509_svid_ttl"),
            (pb::Entry { federates_with: vec!["Bad TD".into()], ..pb_entry() }, "federates_with"),
            (
                pb::Entry {
                    selectors: vec![pb::Selector { r#type: "unix".into(), value: String::new() }],
                    ..pb_entry()
                },
                "selectors",
            ),
        ];
        for (input, field) in cases {
            assert_eq!(entry_from_pb(&input).unwrap_err().field, field);
        }
    }

    #[test]
    fn bundle_refresh_hint() {
        let b = pb::Bundle { trust_domain: "td".into(), refresh_hint: 0, ..Default::default() };
        assert_eq!(bundle_from_pb(&b).unwrap().refresh_hint_secs, None);
        let b = pb::Bundle { trust_domain: "td".into(), refresh_hint: 60, ..Default::default() };
        assert_eq!(bundle_from_pb(&b).unwrap().refresh_hint_secs, Some(60));
        let b = pb::Bundle { trust_domain: "".into(), ..Default::default() };
        assert_eq!(bundle_from_pb(&b).unwrap_err().field, "bundle.trust_domain");
    }
}
