//! The server's side of the wire <-> core conversions. The conversions themselves are
//! [`sigil_proto::convert`]'s; here every inbound one returns `Status::invalid_argument` whose message names
//! the field, so bad input never reaches the datastore, plus the checks that are the server's own (entry
//! IDs, CA certificates) and the datastore-only types (agents, datastore errors).

use sigil_core::bundle::Bundle;
use sigil_core::{RegistrationEntry, Selector, SpiffeId, TrustDomain};
use sigil_proto::convert::{self, ConvertError};
pub use sigil_proto::convert::{bundle_to_pb, entry_to_pb, selector_to_pb};
use sigil_proto::types as pb;
use tonic::Status;

use crate::datastore::AttestedAgent;

pub fn spiffe_id(field: &str, v: &str) -> Result<SpiffeId, Status> {
    SpiffeId::new(v).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

pub fn trust_domain(field: &str, v: &str) -> Result<TrustDomain, Status> {
    TrustDomain::new(v).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// Wire values the server can't use are the client's error: `InvalidArgument` with the conversion's text.
fn invalid(e: ConvertError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn selector_from_pb(s: &pb::Selector) -> Result<Selector, Status> {
    convert::selector_from_pb(s).map_err(invalid)
}

pub use sigil_core::entry::MAX_ENTRY_ID_LEN;

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
    if let Some(c) = v.chars().find(|c| !sigil_core::entry::is_entry_id_char(*c)) {
        return Err(Status::invalid_argument(format!(
            "{field}: entry ID contains invalid characters ({c:?}); only A-Z a-z 0-9 '-' '.' '_' are allowed"
        )));
    }
    Ok(())
}

/// A client-supplied entry. `id`, `revision` and `created_at` are kept as given (the datastore decides).
pub fn entry_from_pb(e: &pb::Entry) -> Result<RegistrationEntry, Status> {
    convert::entry_from_pb(e).map_err(invalid)
}

/// A client-supplied bundle: the shared conversion plus the server's rule that every X.509 authority is a
/// CA certificate it would accept (checked after the trust domain, before the JWT authorities).
pub fn bundle_from_pb(b: &pb::Bundle) -> Result<Bundle, Status> {
    trust_domain("bundle.trust_domain", &b.trust_domain)?;
    for (i, der) in b.x509_authorities.iter().enumerate() {
        sigil_core::x509::check_ca_cert(der)
            .map_err(|e| Status::invalid_argument(format!("bundle.x509_authorities[{i}]: {e}")))?;
    }
    convert::bundle_from_pb(b).map_err(invalid)
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

    /// The server's messages, exactly as before the conversions moved to `sigil_proto::convert`.
    #[test]
    fn refusals_keep_the_server_messages() {
        let entry = || pb::Entry {
            spiffe_id: "spiffe://td/w".into(),
            parent_id: "spiffe://td/p".into(),
            selectors: vec![pb::Selector { r#type: "unix".into(), value: "uid:1".into() }],
            ..Default::default()
        };
        assert!(entry_from_pb(&entry()).is_ok());
        let entries: Vec<(pb::Entry, &str)> = vec![
            (pb::Entry { x509_svid_ttl: -1, ..entry() }, "x509_svid_ttl: must not be negative"),
            (pb::Entry { jwt_svid_ttl: -1, ..entry() }, "jwt_svid_ttl: must not be negative"),
            (pb::Entry { spiffe_id: "x".into(), ..entry() }, "spiffe_id: "),
            (pb::Entry { parent_id: "x".into(), ..entry() }, "parent_id: "),
            (pb::Entry { federates_with: vec!["A B".into()], ..entry() }, "federates_with: "),
            (pb::Entry { selectors: vec![pb::Selector::default()], spiffe_id: "x".into(), ..entry() }, "selectors: "),
        ];
        for (input, text) in entries {
            let s = entry_from_pb(&input).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{text}");
            assert!(s.message().starts_with(text), "{text}: {}", s.message());
        }
        let no_kid = pb::JwtKey { key_id: String::new(), public_key: vec![1], expires_at: 0 };
        let bundle = || pb::Bundle { trust_domain: "td".into(), ..Default::default() };
        assert!(bundle_from_pb(&bundle()).is_ok());
        let bundles: Vec<(pb::Bundle, &str)> = vec![
            (
                pb::Bundle { trust_domain: String::new(), x509_authorities: vec![vec![1]], ..bundle() },
                "bundle.trust_domain: ",
            ),
            (
                pb::Bundle { x509_authorities: vec![vec![1]], jwt_authorities: vec![no_kid.clone()], ..bundle() },
                "bundle.x509_authorities[0]: ",
            ),
            (pb::Bundle { jwt_authorities: vec![no_kid], ..bundle() }, "bundle.jwt_authorities: key_id is required"),
        ];
        for (input, text) in bundles {
            let s = bundle_from_pb(&input).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{text}");
            assert!(s.message().starts_with(text), "{text}: {}", s.message());
        }
        let s = selector_from_pb(&pb::Selector { r#type: "unix".into(), value: String::new() }).unwrap_err();
        assert!(s.message().starts_with("selectors: "), "{}", s.message());
    }

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
