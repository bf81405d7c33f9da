//! JWT-SVIDs: fetch one for an audience, show its header and claims, and validate one as a relying party
//! does (signature against the JWT bundle of the subject's trust domain, expiry, audience), with the
//! `spiffe` crate's verifier.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use spiffe::{JwtSvid, WorkloadApiClient};

/// Why a JWT is not shown or not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed JWT: {0}")]
    Malformed(String),
    #[error("JWT-SVID refused: {0}")]
    Invalid(String),
    #[error("Workload API: {0}")]
    WorkloadApi(String),
}

/// The decoded header and claims of a compact JWS (no verification: for display).
pub fn decode(token: &str) -> Result<(Value, Value), JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(_sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("expected 3 dot-separated parts".into()));
    };
    let part = |name: &str, p: &str| -> Result<Value, JwtError> {
        let bytes = URL_SAFE_NO_PAD.decode(p).map_err(|e| JwtError::Malformed(format!("{name}: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| JwtError::Malformed(format!("{name}: {e}")))
    };
    Ok((part("header", h)?, part("claims", c)?))
}

/// The token of an `Authorization: Bearer` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, JwtError> {
    let v = header.ok_or_else(|| JwtError::Invalid("no Authorization header".into()))?;
    let (scheme, token) =
        v.split_once(' ').ok_or_else(|| JwtError::Invalid("Authorization is not `Bearer <token>`".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(JwtError::Invalid("Authorization is not `Bearer <token>`".into()));
    }
    Ok(token.trim())
}

/// A JWT-SVID for `audience` from the Workload API.
pub async fn fetch(client: &WorkloadApiClient, audience: &str) -> Result<JwtSvid, JwtError> {
    client.fetch_jwt_svid([audience], None).await.map_err(|e| JwtError::WorkloadApi(e.to_string()))
}

/// Validates `token` for `audience` against the JWT bundles from the Workload API.
pub async fn validate(client: &WorkloadApiClient, token: &str, audience: &str) -> Result<JwtSvid, JwtError> {
    decode(token)?;
    let bundles = client.fetch_jwt_bundles().await.map_err(|e| JwtError::WorkloadApi(e.to_string()))?;
    JwtSvid::parse_and_validate(token, &bundles, &[audience]).map_err(|e| JwtError::Invalid(e.to_string()))
}

/// The claims of a validated token, as JSON.
pub fn claims_json(token: &str) -> Value {
    decode(token).map(|(_, c)| c).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn decoding() {
        let t = format!("{}.{}.sig", enc(&json!({"alg":"ES256","kid":"k"})), enc(&json!({"sub":"spiffe://x/y"})));
        let (h, c) = decode(&t).unwrap();
        assert_eq!((h["kid"].as_str(), c["sub"].as_str()), (Some("k"), Some("spiffe://x/y")));
        let cases = [
            ("a.b", "expected 3 dot-separated parts"),
            ("a.b.c.d", "expected 3 dot-separated parts"),
            ("!!.e30.x", "header: "),
            ("e30.bm90anNvbg.x", "claims: "),
        ];
        for (tok, want) in cases {
            let e = decode(tok).unwrap_err().to_string();
            assert!(e.starts_with("malformed JWT: ") && e.contains(want), "{tok}: {e}");
        }
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        for bad in [None, Some("Basic abc"), Some("Bearer"), Some("Bearer  ")] {
            assert!(bearer(bad).is_err(), "{bad:?}");
        }
    }
}
