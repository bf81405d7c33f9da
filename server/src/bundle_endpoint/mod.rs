//! The SPIFFE bundle endpoint (SPIFFE Federation s4-5, checklist G1/G3): the server's own trust bundle for
//! federated trust domains, over HTTPS.
//!
//! As SPIRE's (pkg/server/endpoints/bundle): only path `/` (else 404), only GET (else 405 `method not
//! allowed`; HEAD answers as GET without the body), body = the own bundle as a SPIFFE bundle document with
//! `spiffe_refresh_hint` = the configured hint, `Content-Type: application/json`, 500 if there is no bundle
//! yet. The path is checked before the method, so anything not at `/` is 404 whatever its method.
//!
//! The document comes from [`ServerState::bundle`], the bundle the CA publishes: it holds every unexpired
//! authority whether prepared, active or old ([`crate::ca::CaManager::bundle_authorities`]), and a prepared
//! key is published at least one rotation tick before it is activated, so peers see a new CA before anything
//! is signed by it. Each change has a higher `spiffe_sequence`.
//!
//! The request decision ([`route`], [`reply`]) is pure and table-tested here; the HTTPS server is in
//! `serve.rs`, the https_web certificate files in [`cert_file`].

use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use sigil_core::bundle::Bundle;

use crate::state::ServerState;

pub mod cert_file;
mod serve;

pub use serve::{BundleEndpointError, start};

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// GET or HEAD of `/`.
    Bundle,
    NotFound,
    MethodNotAllowed,
}

/// Routes a request by method and path (the query is not part of `path` and is ignored, as in SPIRE).
pub fn route(method: &Method, path: &str) -> Route {
    if path != "/" {
        return Route::NotFound;
    }
    if method == Method::GET || method == Method::HEAD { Route::Bundle } else { Route::MethodNotAllowed }
}

pub const CONTENT_TYPE_JSON: &str = "application/json";
const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";

/// An answer, before it becomes an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    fn text(status: StatusCode, body: &str) -> Self {
        Self { status, content_type: CONTENT_TYPE_TEXT, body: body.to_owned() }
    }
}

/// The answer to `route`; `document` is only asked for when the bundle is requested.
pub fn reply(route: Route, document: impl FnOnce() -> Option<String>) -> Reply {
    match route {
        // Go's http.NotFound and http.Error texts, which SPIRE answers with.
        Route::NotFound => Reply::text(StatusCode::NOT_FOUND, "404 page not found\n"),
        Route::MethodNotAllowed => Reply::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        Route::Bundle => match document() {
            Some(body) => Reply { status: StatusCode::OK, content_type: CONTENT_TYPE_JSON, body },
            None => Reply::text(StatusCode::INTERNAL_SERVER_ERROR, "trust bundle not available\n"),
        },
    }
}

/// The SPIFFE bundle document of `bundle` with `spiffe_refresh_hint` = `refresh_hint_secs` (the configured
/// hint replaces the stored one, as in SPIRE); `None` while nothing was ever published (sequence 0).
pub fn bundle_document(bundle: &Bundle, refresh_hint_secs: u64) -> Option<String> {
    if bundle.sequence == 0 {
        return None;
    }
    let mut served = bundle.clone();
    served.refresh_hint_secs = Some(refresh_hint_secs);
    Some(served.to_jwks_json())
}

/// Answers requests from the live state. The document is rendered once per published bundle, not per
/// request.
#[derive(Debug)]
pub(crate) struct Handler {
    state: Arc<ServerState>,
    refresh_hint_secs: u64,
    rendered: Mutex<Option<(Arc<Bundle>, Option<String>)>>,
}

impl Handler {
    pub(crate) fn new(state: Arc<ServerState>, refresh_hint_secs: u64) -> Self {
        Self { state, refresh_hint_secs, rendered: Mutex::new(None) }
    }

    fn document(&self) -> Option<String> {
        let bundle = self.state.bundle();
        // A poisoned lock only means a panic while rendering; the cache is re-filled below.
        let mut rendered = self.rendered.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, doc)) = rendered.as_ref()
            && Arc::ptr_eq(cached, &bundle)
        {
            return doc.clone();
        }
        let doc = bundle_document(&bundle, self.refresh_hint_secs);
        *rendered = Some((bundle, doc.clone()));
        doc
    }

    /// Routes, answers and counts one request.
    pub(crate) fn answer(&self, method: &Method, path: &str) -> Reply {
        let r = reply(route(method, path), || self.document());
        self.state.metrics.bundle_endpoint_request(r.status.as_u16());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_core::TrustDomain;

    #[test]
    fn routes() {
        let m = |s: &str| Method::from_bytes(s.as_bytes()).unwrap();
        let cases: &[(&str, &str, Route)] = &[
            ("GET", "/", Route::Bundle),
            ("HEAD", "/", Route::Bundle),
            ("POST", "/", Route::MethodNotAllowed),
            ("PUT", "/", Route::MethodNotAllowed),
            ("DELETE", "/", Route::MethodNotAllowed),
            ("OPTIONS", "/", Route::MethodNotAllowed),
            ("BREW", "/", Route::MethodNotAllowed),
            ("GET", "/x", Route::NotFound),
            ("POST", "/x", Route::NotFound),
            ("GET", "//", Route::NotFound),
            ("GET", "", Route::NotFound),
            ("GET", "*", Route::NotFound),
            ("GET", "/bundle", Route::NotFound),
            ("GET", "/%2F", Route::NotFound),
        ];
        for (method, path, want) in cases {
            assert_eq!(route(&m(method), path), *want, "{method} {path}");
        }
    }

    #[test]
    fn replies() {
        let doc = || Some("{\"keys\":[]}".to_owned());
        let cases: Vec<(Route, Option<String>, Reply)> = vec![
            (
                Route::Bundle,
                doc(),
                Reply { status: StatusCode::OK, content_type: "application/json", body: "{\"keys\":[]}".into() },
            ),
            (
                Route::Bundle,
                None,
                Reply {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    content_type: "text/plain; charset=utf-8",
                    body: "trust bundle not available\n".into(),
                },
            ),
            (
                Route::NotFound,
                doc(),
                Reply {
                    status: StatusCode::NOT_FOUND,
                    content_type: "text/plain; charset=utf-8",
                    body: "404 page not found\n".into(),
                },
            ),
            (
                Route::MethodNotAllowed,
                doc(),
                Reply {
                    status: StatusCode::METHOD_NOT_ALLOWED,
                    content_type: "text/plain; charset=utf-8",
                    body: "method not allowed\n".into(),
                },
            ),
        ];
        for (route, document, want) in cases {
            let asked = std::cell::Cell::new(false);
            let got = reply(route, || {
                asked.set(true);
                document
            });
            assert_eq!(got, want, "{route:?}");
            assert_eq!(asked.get(), route == Route::Bundle, "{route:?}: document asked for only when needed");
        }
    }

    #[test]
    fn document_carries_the_configured_hint_and_the_sequence() {
        let td = TrustDomain::new("example.org").unwrap();
        let mut b = Bundle::new(td.clone());
        assert_eq!(bundle_document(&b, 300), None, "never published");
        b.sequence = 7;
        b.refresh_hint_secs = Some(60);
        let doc = bundle_document(&b, 300).unwrap();
        assert_eq!(doc, "{\"keys\":[],\"spiffe_refresh_hint\":300,\"spiffe_sequence\":7}");
        let back = Bundle::from_jwks_json(td, doc.as_bytes()).unwrap();
        assert_eq!((back.sequence, back.refresh_hint_secs), (7, Some(300)));
    }
}
