//! The HTTP endpoints (`/spiffe/...` on the plain listener, `/spiffe/peer/...` on the mTLS listener).
//! Every answer is JSON (the chain is PEM); every failure `{"error": "..."}` with its status.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use spiffe::SpiffeId;

use super::jwt::{self, JwtError};
use super::mtls::{self, MtlsError, PeerIdentity, PeerUrl};
use super::state::{Ready, Shared, Unavailable};
use crate::svid::{self, rotation_due};
use crate::validate::{self, Refusal, Role, now_unix, rfc3339};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct App {
    pub shared: Arc<Shared>,
    /// The peer's mTLS listener and its authorized SPIFFE ID (the defaults of the demo calls).
    pub peer: Option<PeerUrl>,
    pub peer_id: Option<SpiffeId>,
    /// This service's own mTLS listener, as shown by `/spiffe/workload`.
    pub mtls_listen: Option<String>,
}

pub fn json_response(status: StatusCode, v: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], format!("{v:#}\n")).into_response()
}

pub fn fail(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    json_response(status, json!({ "error": msg.to_string() }))
}

fn unavailable(e: &Unavailable) -> Response {
    fail(StatusCode::SERVICE_UNAVAILABLE, e)
}

/// The plain-HTTP API.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/spiffe/.well-known/spiffe-bundle", get(bundle_document))
        .route("/spiffe/svid/x509", get(svid_x509))
        .route("/spiffe/svid/x509/chain", get(svid_chain))
        .route("/spiffe/svid/jwt", get(svid_jwt))
        .route("/spiffe/svid/info", get(svid_info))
        .route("/spiffe/validate/jwt", post(validate_jwt))
        .route("/spiffe/validate/x509", post(validate_x509))
        .route("/spiffe/workload", get(workload))
        .route("/spiffe/trust-bundle", get(trust_bundle))
        .route("/spiffe/demo/mtls/call", post(mtls_call))
        .route("/spiffe/demo/jwt-auth/call", post(jwt_auth_call))
        .route("/spiffe/demo/rotation", get(rotation))
        .route("/spiffe/status", get(status))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// The mTLS listener's API: what the other demo instance calls.
pub fn peer_router(app: App) -> Router {
    Router::new()
        .route("/spiffe/peer/hello", get(peer_hello))
        .route("/spiffe/peer/jwt", get(peer_jwt))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

async fn not_found() -> Response {
    fail(StatusCode::NOT_FOUND, "no such endpoint (see the README's table)")
}

async fn method_not_allowed() -> Response {
    fail(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
}

macro_rules! ready {
    ($app:expr) => {
        match $app.shared.ready() {
            Ok(r) => r,
            Err(e) => return unavailable(&e),
        }
    };
}

/// The value of `name` in a query string (percent- and `+`-decoded).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request the handler refuses before doing anything: 400 with the reason.
#[derive(Debug)]
pub struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        fail(StatusCode::BAD_REQUEST, self.0)
    }
}

/// A JSON object body, empty meaning `{}`.
fn body_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(BadRequest("the body is a JSON object".into())),
        Err(e) => Err(BadRequest(format!("malformed JSON body: {e}"))),
    }
}

fn str_field<'a>(m: &'a serde_json::Map<String, Value>, k: &str) -> Result<Option<&'a str>, BadRequest> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(BadRequest(format!("\"{k}\" is a string"))),
    }
}

async fn jwt_authorities(r: &Ready) -> Result<Vec<(String, Vec<(String, Vec<u8>)>)>, String> {
    let set = r.client.fetch_jwt_bundles().await.map_err(|e| e.to_string())?;
    let mut v: Vec<_> = set
        .iter()
        .map(|(td, b)| {
            (td.to_string(), b.jwt_authorities().map(|a| (a.key_id().to_owned(), a.jwk_json().to_vec())).collect())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

async fn bundle_document(State(app): State<App>) -> Response {
    let r = ready!(app);
    let td = r.svid.spiffe_id().trust_domain().clone();
    let x509: Vec<Vec<u8>> =
        r.bundles.get(&td).map(|b| b.authorities().iter().map(|a| a.as_bytes().to_vec()).collect()).unwrap_or_default();
    let jwt = match jwt_authorities(&r).await {
        Ok(v) => v.into_iter().find(|(t, _)| *t == td.to_string()).map(|(_, k)| k).unwrap_or_default(),
        Err(e) => return fail(StatusCode::SERVICE_UNAVAILABLE, format!("JWT bundles: {e}")),
    };
    let seq = app.shared.with(|s| s.bundle_sequence);
    json_response(StatusCode::OK, crate::bundle::document(&x509, &jwt, seq))
}

async fn svid_x509(State(app): State<App>) -> Response {
    let r = ready!(app);
    match svid::summarize(&r.svid) {
        Ok(s) => json_response(StatusCode::OK, json!(s)),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, format!("unparsable X509-SVID: {e}")),
    }
}

async fn svid_chain(State(app): State<App>) -> Response {
    let r = ready!(app);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-pem-file")], svid::chain_pem(&r.svid)).into_response()
}

async fn svid_jwt(State(app): State<App>, RawQuery(q): RawQuery) -> Response {
    let r = ready!(app);
    let Some(audience) = query_param(q.as_deref(), "audience").filter(|a| !a.is_empty()) else {
        return fail(StatusCode::BAD_REQUEST, "?audience= is required");
    };
    let svid = match jwt::fetch(&r.client, &audience).await {
        Ok(s) => s,
        Err(e) => return fail(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let (hdr, claims) = match jwt::decode(svid.token()) {
        Ok(d) => d,
        Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    json_response(
        StatusCode::OK,
        json!({
            "spiffe_id": svid.spiffe_id().to_string(),
            "audience": svid.audience(),
            "expires_at": rfc3339(svid.expiry().unix_timestamp()),
            "hint": svid.hint(),
            "token": svid.token(),
            "header": hdr,
            "claims": claims,
        }),
    )
}

async fn svid_info(State(app): State<App>) -> Response {
    let r = ready!(app);
    let s = match svid::summarize(&r.svid) {
        Ok(s) => s,
        Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, format!("unparsable X509-SVID: {e}")),
    };
    let now = now_unix();
    let due = rotation_due(s.not_before_unix, s.not_after_unix);
    json_response(
        StatusCode::OK,
        json!({
            "spiffe_id": s.spiffe_id,
            "hint": s.hint,
            "not_before": s.not_before,
            "expires_at": s.not_after,
            "expires_in_seconds": (s.not_after_unix - now).max(0),
            "rotation_due_at": rfc3339(due),
            "rotation_in_seconds": (due - now).max(0),
        }),
    )
}

async fn validate_jwt(State(app): State<App>, body: Bytes) -> Response {
    let r = ready!(app);
    let m = match body_object(&body) {
        Ok(m) => m,
        Err(resp) => return resp.into_response(),
    };
    let (token, audience) = match (str_field(&m, "token"), str_field(&m, "audience")) {
        (Ok(Some(t)), Ok(Some(a))) => (t.to_owned(), a.to_owned()),
        (Err(resp), _) | (_, Err(resp)) => return resp.into_response(),
        _ => return fail(StatusCode::BAD_REQUEST, "the body is {\"token\": \"...\", \"audience\": \"...\"}"),
    };
    match jwt::validate(&r.client, &token, &audience).await {
        Ok(svid) => json_response(
            StatusCode::OK,
            json!({
                "valid": true,
                "spiffe_id": svid.spiffe_id().to_string(),
                "audience": svid.audience(),
                "expires_at": rfc3339(svid.expiry().unix_timestamp()),
                "claims": jwt::claims_json(&token),
            }),
        ),
        Err(e @ JwtError::Malformed(_)) => fail(StatusCode::BAD_REQUEST, e),
        Err(e @ JwtError::Invalid(_)) => {
            json_response(StatusCode::UNAUTHORIZED, json!({"valid": false, "error": e.to_string()}))
        }
        Err(e @ JwtError::WorkloadApi(_)) => fail(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn validate_x509(State(app): State<App>, body: Bytes) -> Response {
    let r = ready!(app);
    // Raw PEM, or {"pem": "..."}.
    let text = String::from_utf8_lossy(&body).into_owned();
    let pem_text = if text.trim_start().starts_with('{') {
        match body_object(&body).and_then(|m| str_field(&m, "pem").map(|p| p.map(str::to_owned))) {
            Ok(Some(p)) => p,
            Ok(None) => return fail(StatusCode::BAD_REQUEST, "the body is PEM, or {\"pem\": \"...\"}"),
            Err(resp) => return resp.into_response(),
        }
    } else {
        text
    };
    let chain = match validate::parse_pem_chain(&pem_text) {
        Ok(c) => c,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    let facts = chain.first().map(|c| validate::leaf_facts(c));
    match validate::verify_chain(&chain, &r.bundles, now_unix(), Role::Client) {
        Ok(id) => {
            let f = facts.and_then(Result::ok);
            json_response(
                StatusCode::OK,
                json!({
                    "valid": true,
                    "spiffe_id": id.to_string(),
                    "trust_domain": id.trust_domain_name(),
                    "not_after": f.map(|f| rfc3339(f.not_after)),
                }),
            )
        }
        Err(e @ Refusal::Malformed(_)) => fail(StatusCode::BAD_REQUEST, e),
        Err(e) => json_response(StatusCode::FORBIDDEN, json!({"valid": false, "error": e.to_string()})),
    }
}

fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

async fn workload(State(app): State<App>) -> Response {
    let r = ready!(app);
    let id = r.svid.spiffe_id();
    json_response(
        StatusCode::OK,
        json!({
            "spiffe_id": id.to_string(),
            "trust_domain": id.trust_domain_name(),
            "endpoint_socket": app.shared.endpoint,
            "hint": r.svid.hint(),
            "pid": std::process::id(),
            "uid": own_uid(),
            "mtls_listen": app.mtls_listen,
            "peer": app.peer.as_ref().map(ToString::to_string),
            "peer_id": app.peer_id.as_ref().map(ToString::to_string),
        }),
    )
}

async fn trust_bundle(State(app): State<App>) -> Response {
    let r = ready!(app);
    let jwt = match jwt_authorities(&r).await {
        Ok(v) => v,
        Err(e) => return fail(StatusCode::SERVICE_UNAVAILABLE, format!("JWT bundles: {e}")),
    };
    let mut domains: Vec<Value> = vec![];
    for (td, auths) in svid::x509_authorities(&r.bundles) {
        let keys: Vec<Value> = jwt
            .iter()
            .find(|(t, _)| *t == td)
            .map(|(_, ks)| ks.iter().map(|(kid, _)| json!({"key_id": kid})).collect())
            .unwrap_or_default();
        domains.push(json!({"trust_domain": td, "x509_authorities": auths, "jwt_authorities": keys}));
    }
    let seq = app.shared.with(|s| s.bundle_sequence);
    json_response(
        StatusCode::OK,
        json!({
            "trust_domain": r.svid.spiffe_id().trust_domain_name(),
            "trust_domains": domains,
            "sequence": seq,
        }),
    )
}

/// The peer and its authorized ID of a demo call: the body's `peer`/`peer_id`, else the flags.
fn call_target(app: &App, m: &serde_json::Map<String, Value>) -> Result<(PeerUrl, SpiffeId), BadRequest> {
    let peer = match str_field(m, "peer")? {
        Some(p) => p.parse::<PeerUrl>().map_err(BadRequest)?,
        None => app.peer.clone().ok_or_else(|| {
            BadRequest("no peer: start with --peer https://host:port or give \"peer\" in the body".into())
        })?,
    };
    let peer_id = match str_field(m, "peer_id")? {
        Some(p) => SpiffeId::new(p).map_err(|e| BadRequest(format!("peer_id {p:?}: {e}")))?,
        None => app.peer_id.clone().ok_or_else(|| {
            BadRequest("no authorized peer ID: start with --peer-id or give \"peer_id\" in the body".into())
        })?,
    };
    Ok((peer, peer_id))
}

fn call_failed(e: &MtlsError, peer_id: &SpiffeId) -> Response {
    let status = match e {
        MtlsError::Refused(Refusal::NotAuthorized { .. }) => StatusCode::FORBIDDEN,
        MtlsError::NoSvid => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    };
    json_response(status, json!({"ok": false, "error": e.to_string(), "authorized_peer_id": peer_id.to_string()}))
}

async fn mtls_call(State(app): State<App>, body: Bytes) -> Response {
    let r = ready!(app);
    let (peer, peer_id) = match body_object(&body).and_then(|m| call_target(&app, &m)) {
        Ok(t) => t,
        Err(resp) => return resp.into_response(),
    };
    match mtls::call(app.shared.clone(), &peer, peer_id.clone(), "/spiffe/peer/hello", None).await {
        Ok(res) if res.status == 200 => json_response(
            StatusCode::OK,
            json!({
                "ok": true,
                "client_id": r.svid.spiffe_id().to_string(),
                "server_id": res.server_id,
                "authorized_peer_id": peer_id.to_string(),
                "peer": peer.to_string(),
                "peer_response": res.body,
            }),
        ),
        Ok(res) => json_response(
            StatusCode::BAD_GATEWAY,
            json!({"ok": false, "error": format!("the peer answered {}", res.status), "peer_response": res.body}),
        ),
        Err(e) => call_failed(&e.classified(), &peer_id),
    }
}

async fn jwt_auth_call(State(app): State<App>, body: Bytes) -> Response {
    let r = ready!(app);
    let m = match body_object(&body) {
        Ok(m) => m,
        Err(resp) => return resp.into_response(),
    };
    let (peer, peer_id) = match call_target(&app, &m) {
        Ok(t) => t,
        Err(resp) => return resp.into_response(),
    };
    // The audience is the peer's SPIFFE ID unless the body asks for another (to see the peer refuse it).
    let audience = match str_field(&m, "audience") {
        Ok(a) => a.map_or_else(|| peer_id.to_string(), str::to_owned),
        Err(resp) => return resp.into_response(),
    };
    let token = match jwt::fetch(&r.client, &audience).await {
        Ok(s) => s.token().to_owned(),
        Err(e) => return fail(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    match mtls::call(app.shared.clone(), &peer, peer_id.clone(), "/spiffe/peer/jwt", Some(&token)).await {
        Ok(res) if res.status == 200 => json_response(
            StatusCode::OK,
            json!({
                "ok": true,
                "client_id": r.svid.spiffe_id().to_string(),
                "server_id": res.server_id,
                "authorized_peer_id": peer_id.to_string(),
                "audience": audience,
                "token_claims": jwt::claims_json(&token),
                "peer_response": res.body,
            }),
        ),
        Ok(res) => {
            let why = res.body.get("error").and_then(Value::as_str).unwrap_or("no reason given").to_owned();
            let status = StatusCode::from_u16(res.status).unwrap_or(StatusCode::BAD_GATEWAY);
            json_response(
                status,
                json!({"ok": false, "error": format!("the peer refused the JWT-SVID: {why}"), "audience": audience}),
            )
        }
        Err(e) => call_failed(&e.classified(), &peer_id),
    }
}

async fn rotation(State(app): State<App>) -> Response {
    let r = ready!(app);
    let (seen, rotations, gaps) =
        app.shared.with(|s| (s.history.seen().to_vec(), s.history.rotations(), s.history.gaps()));
    json_response(
        StatusCode::OK,
        json!({
            "spiffe_id": r.svid.spiffe_id().to_string(),
            "svids": seen,
            "rotations": rotations,
            "gaps": gaps,
            "no_gap": gaps.is_empty(),
        }),
    )
}

async fn status(State(app): State<App>) -> Response {
    let ready = app.shared.ready();
    let (reachable, present, rotations, last, last_error) = app.shared.with(|s| {
        (
            s.agent_reachable,
            s.svid.is_some(),
            s.history.rotations(),
            s.history.last_rotation().map(|l| l.received_at.clone()),
            s.last_error.clone(),
        )
    });
    match ready {
        Ok(r) => json_response(
            StatusCode::OK,
            json!({
                "status": "ok",
                "agent_reachable": reachable,
                "svid_present": present,
                "spiffe_id": r.svid.spiffe_id().to_string(),
                "rotations": rotations,
                "last_rotation": last,
                "endpoint_socket": app.shared.endpoint,
            }),
        ),
        Err(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "error": e.to_string(),
                "status": "unavailable",
                "agent_reachable": reachable,
                "svid_present": present,
                "rotations": rotations,
                "last_rotation": last,
                "last_error": last_error,
                "endpoint_socket": app.shared.endpoint,
            }),
        ),
    }
}

async fn peer_hello(State(app): State<App>, Extension(PeerIdentity(client)): Extension<PeerIdentity>) -> Response {
    let r = ready!(app);
    json_response(
        StatusCode::OK,
        json!({"server_id": r.svid.spiffe_id().to_string(), "client_id": client.to_string(), "via": "mTLS"}),
    )
}

async fn peer_jwt(
    State(app): State<App>,
    Extension(PeerIdentity(client)): Extension<PeerIdentity>,
    headers: HeaderMap,
) -> Response {
    let r = ready!(app);
    let own = r.svid.spiffe_id().to_string();
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = match jwt::bearer(auth) {
        Ok(t) => t,
        Err(e) => return fail(StatusCode::UNAUTHORIZED, e),
    };
    match jwt::validate(&r.client, token, &own).await {
        Ok(svid) => json_response(
            StatusCode::OK,
            json!({
                "server_id": own,
                "client_id": client.to_string(),
                "jwt_subject": svid.spiffe_id().to_string(),
                "audience": svid.audience(),
                "claims": jwt::claims_json(token),
                "via": "JWT-SVID bearer over mTLS",
            }),
        ),
        Err(e @ JwtError::WorkloadApi(_)) => fail(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => fail(StatusCode::UNAUTHORIZED, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        let cases: &[(Option<&str>, &str, Option<&str>)] = &[
            (Some("audience=spiffe%3A%2F%2Fexample.org%2Fb"), "audience", Some("spiffe://example.org/b")),
            (Some("x=1&audience=a+b"), "audience", Some("a b")),
            (Some("audience"), "audience", Some("")),
            (Some("audience=100%"), "audience", Some("100%")),
            (Some("audience=%zz"), "audience", Some("%zz")),
            (Some("aud=x"), "audience", None),
            (None, "audience", None),
        ];
        for (q, name, want) in cases {
            assert_eq!(query_param(*q, name).as_deref(), *want, "{q:?}");
        }
    }
}
