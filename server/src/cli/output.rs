//! `-output json`: SPIRE's shapes. SPIRE's CLI prints its API responses with protojson
//! (`pkg/common/cliprinter/internal/protojson/protojson.go` in spiffe/spire v1.13.6): `UseProtoNames` (snake_case
//! keys) and `EmitUnpopulated` (every field, defaults included), then drops `null`s (unset messages) and
//! re-encodes through a Go map, so keys come out sorted and compact, one document and a newline. protojson
//! writes int64/uint64 as strings, int32 as numbers and bytes as standard base64. The message types are
//! spire-api-sdk's (`proto/spire/api/types/*.proto`, `proto/spire/api/server/*/v1/*.proto`).
//!
//! serde_json's map is sorted too, so `serde_json::to_string` of these values is byte-for-byte SPIRE's layout
//! (except that Go escapes `<`, `>` and `&` as `\u003c`...; JSON readers see the same strings).

use std::io::Write;

use base64::Engine;
use serde_json::{Value, json};
use sigil_core::SpiffeId;
use sigil_proto::admin as pb;
use sigil_proto::types as tpb;

/// One JSON document and a newline, as SPIRE's `json.Encoder` writes it.
pub(super) fn print_json(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    writeln!(out, "{v}")
}

/// protojson's int64/uint64.
fn int64(v: impl ToString) -> Value {
    Value::String(v.to_string())
}

fn b64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// `spire.api.types.SPIFFEID`. An ID the server sent that does not parse is shown with an empty path.
pub(super) fn spiffe_id_json(id: &str) -> Value {
    match SpiffeId::new(id) {
        Ok(id) => json!({ "trust_domain": id.trust_domain().name(), "path": id.path() }),
        Err(_) => json!({ "trust_domain": id.trim_start_matches("spiffe://"), "path": "" }),
    }
}

fn selectors_json(sels: &[tpb::Selector]) -> Value {
    Value::Array(sels.iter().map(|s| json!({ "type": s.r#type, "value": s.value })).collect())
}

/// `spire.api.types.Status`. SPIRE's OK status says "OK"; Sigil's server leaves it empty.
pub(super) fn status_json(st: Option<&pb::Status>) -> Value {
    let (code, message) = st.map_or((0, ""), |s| (s.code, s.message.as_str()));
    let message = if code == 0 && message.is_empty() { "OK" } else { message };
    json!({ "code": code, "message": message })
}

/// `spire.api.types.Entry`.
pub(super) fn entry_json(e: &tpb::Entry) -> Value {
    json!({
        "id": e.id,
        "spiffe_id": spiffe_id_json(&e.spiffe_id),
        "parent_id": spiffe_id_json(&e.parent_id),
        "selectors": selectors_json(&e.selectors),
        "x509_svid_ttl": e.x509_svid_ttl,
        "federates_with": e.federates_with,
        "admin": e.admin,
        "downstream": e.downstream,
        "expires_at": int64(e.expires_at),
        "dns_names": e.dns_names,
        "revision_number": int64(e.revision),
        "store_svid": e.store_svid,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "hint": e.hint,
        "created_at": int64(e.created_at),
    })
}

/// `Batch{Create,Update}EntryResponse`: `{"results":[{"status":...,"entry":...}]}`.
pub(super) fn entry_results_json(results: &[(Option<pb::Status>, tpb::Entry)]) -> Value {
    json!({
        "results": results
            .iter()
            .map(|(st, e)| json!({ "status": status_json(st.as_ref()), "entry": entry_json(e) }))
            .collect::<Vec<_>>(),
    })
}

/// `ListEntriesResponse` (all pages joined, as SPIRE's `entry show` does).
pub(super) fn entries_json(entries: &[tpb::Entry]) -> Value {
    json!({ "entries": entries.iter().map(entry_json).collect::<Vec<_>>(), "next_page_token": "" })
}

/// `spire.api.types.Agent`. `can_reattest` is always false: Sigil has no reattestation.
pub(super) fn agent_json(a: &tpb::Agent) -> Value {
    json!({
        "id": spiffe_id_json(&a.id),
        "attestation_type": a.attestation_type,
        "x509svid_serial_number": a.x509_svid_serial_number,
        "x509svid_expires_at": int64(a.x509_svid_expires_at),
        "selectors": selectors_json(&a.selectors),
        "banned": a.banned,
        "can_reattest": false,
    })
}

/// `spire.api.types.Bundle`. Sigil does not taint keys, so `tainted` is false.
pub(super) fn bundle_json(b: &tpb::Bundle) -> Value {
    json!({
        "trust_domain": b.trust_domain,
        "x509_authorities": b
            .x509_authorities
            .iter()
            .map(|der| json!({ "asn1": b64(der), "tainted": false }))
            .collect::<Vec<_>>(),
        "jwt_authorities": b
            .jwt_authorities
            .iter()
            .map(|k| json!({
                "public_key": b64(&k.public_key),
                "key_id": k.key_id,
                "expires_at": int64(k.expires_at),
                "tainted": false,
            }))
            .collect::<Vec<_>>(),
        "refresh_hint": int64(b.refresh_hint),
        "sequence_number": int64(b.sequence_number),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_json_is_protojson_shaped() {
        let e = tpb::Entry {
            id: "e1".into(),
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/host".into(),
            selectors: vec![tpb::Selector { r#type: "unix".into(), value: "uid:1000".into() }],
            created_at: 1_700_000_000,
            ..Default::default()
        };
        assert_eq!(
            entry_json(&e).to_string(),
            r#"{"admin":false,"created_at":"1700000000","dns_names":[],"downstream":false,"expires_at":"0","federates_with":[],"hint":"","id":"e1","jwt_svid_ttl":0,"parent_id":{"path":"/host","trust_domain":"example.org"},"revision_number":"0","selectors":[{"type":"unix","value":"uid:1000"}],"spiffe_id":{"path":"/web","trust_domain":"example.org"},"store_svid":false,"x509_svid_ttl":0}"#
        );
        assert_eq!(status_json(None).to_string(), r#"{"code":0,"message":"OK"}"#);
    }

    /// Agents cannot be attested in the CLI tests (no agent there), so the agent shape is checked here against
    /// the same fixture: keys and JSON types of spire-api-sdk's `types.Agent` (see tests/cli.rs).
    #[test]
    fn agent_json_matches_the_spire_fixture() {
        fn keys(v: &Value) -> Vec<(String, &'static str)> {
            v.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let t = match v {
                        Value::String(_) => "string",
                        Value::Bool(_) => "bool",
                        Value::Number(_) => "number",
                        Value::Array(_) => "array",
                        Value::Object(_) => "object",
                        Value::Null => "null",
                    };
                    (k.clone(), t)
                })
                .collect()
        }
        let want: Value = serde_json::from_str(include_str!("../../tests/fixtures/spire-cli/agent_show.json")).unwrap();
        let a = tpb::Agent {
            id: "spiffe://example.org/spire/agent/join_token/t".into(),
            selectors: vec![tpb::Selector { r#type: "join_token".into(), value: "t".into() }],
            ..Default::default()
        };
        let got = agent_json(&a);
        assert_eq!(keys(&got), keys(&want));
        assert_eq!(keys(&got["id"]), keys(&want["id"]));
        assert_eq!(keys(&got["selectors"][0]), keys(&want["selectors"][0]));
    }
}
