//! Conversions between wire types and core types. Every inbound conversion validates and returns a
//! `Status::invalid_argument` whose message names the field, so bad input never reaches the datastore.

use sigil_core::bundle::{Bundle, JwtAuthority};
use sigil_core::{RegistrationEntry, Selector, SpiffeId, TrustDomain};
use sigil_proto::types as pb;
use tonic::Status;

use crate::datastore::AttestedAgent;

pub fn spiffe_id(field: &str, v: &str) -> Result<SpiffeId, Status> {
    SpiffeId::new(v).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

pub fn trust_domain(field: &str, v: &str) -> Result<TrustDomain, Status> {
    TrustDomain::new(v).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

pub fn selector_from_pb(s: &pb::Selector) -> Result<Selector, Status> {
    Selector::new(&s.r#type, &s.value).map_err(|e| Status::invalid_argument(format!("selectors: {e}")))
}

pub fn selector_to_pb(s: &Selector) -> pb::Selector {
    pb::Selector { r#type: s.kind().to_owned(), value: s.value().to_owned() }
}

/// The longest entry ID a client may choose, in bytes (SPIRE refuses `len(EntryId) > 255`).
pub const MAX_ENTRY_ID_LEN: usize = 255;

/// Checks a client-chosen entry ID by SPIRE's rule (`validEntryIDChars` and the length check in
/// `validateRegistrationEntry`, pkg/server/datastore/sqlstore/sqlstore.go): at most 255 bytes, only the
/// characters `A-Z a-z 0-9 - . _`. The empty ID is allowed here: it means "generate one".
pub fn entry_id(field: &str, v: &str) -> Result<(), Status> {
    if v.len() > MAX_ENTRY_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "{field}: entry ID too long ({} bytes, at most {MAX_ENTRY_ID_LEN})",
            v.len()
        )));
    }
    if let Some(c) = v.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))) {
        return Err(Status::invalid_argument(format!(
            "{field}: entry ID contains invalid characters ({c:?}); only A-Z a-z 0-9 '-' '.' '_' are allowed"
        )));
    }
    Ok(())
}

fn ttl(field: &str, v: i32) -> Result<u32, Status> {
    u32::try_from(v).map_err(|_| Status::invalid_argument(format!("{field}: must not be negative")))
}

/// A client-supplied entry. `id`, `revision` and `created_at` are kept as given (the datastore decides).
pub fn entry_from_pb(e: &pb::Entry) -> Result<RegistrationEntry, Status> {
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
        revision: e.revision,
        created_at: e.created_at,
    })
}

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
    }
}

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
        refresh_hint: b.refresh_hint_secs.map(|s| i64::try_from(s).unwrap_or(i64::MAX)).unwrap_or(0),
    }
}

pub fn bundle_from_pb(b: &pb::Bundle) -> Result<Bundle, Status> {
    let trust_domain = trust_domain("bundle.trust_domain", &b.trust_domain)?;
    for (i, der) in b.x509_authorities.iter().enumerate() {
        sigil_core::x509::check_ca_cert(der)
            .map_err(|e| Status::invalid_argument(format!("bundle.x509_authorities[{i}]: {e}")))?;
    }
    let jwt_authorities = b
        .jwt_authorities
        .iter()
        .map(|k| {
            if k.key_id.is_empty() {
                return Err(Status::invalid_argument("bundle.jwt_authorities: key_id is required"));
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

pub fn agent_to_pb(a: &AttestedAgent) -> pb::Agent {
    pb::Agent {
        id: a.spiffe_id.to_string(),
        attestation_type: a.attestation_type.clone(),
        x509_svid_serial_number: a.cert_serial.clone(),
        x509_svid_expires_at: a.cert_expires_at,
        selectors: a.selectors.iter().map(selector_to_pb).collect(),
        banned: a.banned,
        created_at: a.created_at,
        updated_at: a.updated_at,
    }
}

pub fn datastore_status(e: crate::datastore::DatastoreError) -> Status {
    use crate::datastore::DatastoreError as E;
    match e {
        E::NotFound(m) => Status::not_found(m),
        E::AlreadyExists(m) => Status::already_exists(m),
        E::Conflict(m) => Status::aborted(m),
        E::Invalid(m) => Status::invalid_argument(m),
        E::Backend(m) => {
            tracing::error!(error = %m, "datastore failure");
            Status::internal("datastore failure; see server log")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPIRE's rule: at most 255 bytes of A-Z a-z 0-9 '-' '.' '_' (empty = generated).
    #[test]
    fn entry_id_follows_spire_rule() {
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("b3f0c1de-0000-4000-8000-000000000001", true),
            ("ns.my-app_web.1", true),
            ("UPPER.lower-09_", true),
            ("my/entry", false),
            ("has space", false),
            ("colon:x", false),
            ("tab\t", false),
            ("éntry", false),
            ("emoji😊", false),
            ("percent%20", false),
        ];
        for (id, ok) in cases {
            let r = entry_id("id", id);
            assert_eq!(r.is_ok(), *ok, "{id:?}: {r:?}");
            if let Err(s) = r {
                assert_eq!(s.code(), tonic::Code::InvalidArgument);
                assert!(s.message().contains("entry ID contains invalid characters"), "{}", s.message());
            }
        }
        assert!(entry_id("id", &"x".repeat(MAX_ENTRY_ID_LEN)).is_ok());
        let long = entry_id("id", &"x".repeat(MAX_ENTRY_ID_LEN + 1)).unwrap_err();
        assert!(long.message().contains("entry ID too long"), "{}", long.message());
    }
}
