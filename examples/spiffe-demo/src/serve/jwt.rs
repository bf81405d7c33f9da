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

/// The `aud` claim (a string or an array of strings).
pub fn audiences(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => vec![],
    }
}

/// The readable reasons checked before the signature (the verifier's own messages are terse): the
/// audience, and expiry at `now` (unix seconds).
pub fn precheck(claims: &Value, audience: &str, now: i64) -> Result<(), JwtError> {
    let auds = audiences(claims);
    if !auds.iter().any(|a| a == audience) {
        return Err(JwtError::Invalid(format!("audience mismatch: the token is for {auds:?}, not {audience:?}")));
    }
    match claims["exp"].as_i64() {
        None => Err(JwtError::Invalid("no exp claim".into())),
        Some(exp) if exp <= now => Err(JwtError::Invalid(format!("expired at {}", crate::validate::rfc3339(exp)))),
        Some(_) => Ok(()),
    }
}

/// An error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Validates `token` for `audience` against the JWT bundles from the Workload API.
pub async fn validate(client: &WorkloadApiClient, token: &str, audience: &str) -> Result<JwtSvid, JwtError> {
    let (_, claims) = decode(token)?;
    precheck(&claims, audience, crate::validate::now_unix())?;
    let bundles = client.fetch_jwt_bundles().await.map_err(|e| JwtError::WorkloadApi(e.to_string()))?;
    JwtSvid::parse_and_validate(token, &bundles, &[audience]).map_err(|e| JwtError::Invalid(chain(&e)))
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
    fn prechecks() {
        let c = json!({"aud": ["x", "y"], "exp": 100});
        assert_eq!(precheck(&c, "y", 99), Ok(()));
        let cases = [
            (json!({"aud": "x", "exp": 100}), "z", 50, "audience mismatch: the token is for [\"x\"], not \"z\""),
            (json!({"aud": ["x"], "exp": 100}), "x", 100, "expired at 1970-01-01T00:01:40Z"),
            (json!({"aud": "x"}), "x", 0, "no exp claim"),
            (json!({"exp": 100}), "x", 0, "audience mismatch: the token is for [], not \"x\""),
        ];
        for (claims, aud, now, want) in cases {
            assert_eq!(precheck(&claims, aud, now), Err(JwtError::Invalid(want.into())), "{claims}");
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
