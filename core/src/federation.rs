//! Federation relationships: which foreign trust domains this server federates with, and where and how
//! their bundles are published (SPIFFE Federation, G1/G2).
//!
//! - this module: the validated relationship itself;
//! - [`refresh`]: when to fetch a foreign bundle again (refresh hint, bounds, backoff);
//! - [`accept`]: whether a fetched bundle may be stored and whether it changes the stored one.
//!
//! The fetching itself (HTTPS, TLS checks) is I/O and lives in the server.

use crate::{SpiffeId, TrustDomain};

pub mod accept;
pub mod refresh;

/// How the foreign bundle endpoint authenticates itself (SPIFFE Federation 5.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BundleEndpointProfile {
    /// `https_web`: a Web PKI server certificate (G4).
    HttpsWeb,
    /// `https_spiffe`: an X509-SVID for exactly this SPIFFE ID (G5).
    HttpsSpiffe { endpoint_spiffe_id: SpiffeId },
}

impl BundleEndpointProfile {
    /// The profile's name as SPIRE and the SPIFFE standard spell it.
    pub fn name(&self) -> &'static str {
        match self {
            BundleEndpointProfile::HttpsWeb => "https_web",
            BundleEndpointProfile::HttpsSpiffe { .. } => "https_spiffe",
        }
    }
}

/// A federation relationship with one foreign trust domain. Endpoint URL, profile and trust domain are
/// each given explicitly, none inferred from another (G2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FederationRelationship {
    pub trust_domain: TrustDomain,
    /// Checked by [`check_bundle_endpoint_url`].
    pub bundle_endpoint_url: String,
    pub profile: BundleEndpointProfile,
    /// Which tool manages the relationship ("" = made by hand); tools touch only their own.
    pub managed_by: String,
}

/// Why a relationship is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    #[error("trust domain {0} is the server's own trust domain; federation needs a foreign one")]
    OwnTrustDomain(TrustDomain),
    #[error("bundle endpoint URL {url:?} cannot be parsed: {reason}")]
    UrlUnparsable { url: String, reason: String },
    #[error("bundle endpoint URL {0:?} must use the https scheme")]
    UrlNotHttps(String),
    #[error("bundle endpoint URL {0:?} must specify the host")]
    UrlNoHost(String),
    #[error("bundle endpoint URL {0:?} must not contain user info")]
    UrlUserInfo(String),
}

/// The rules SPIRE applies to a bundle endpoint URL: it parses, its scheme is `https`, it has a host and
/// no user info. Whitespace and control characters never parse.
pub fn check_bundle_endpoint_url(url: &str) -> Result<(), FederationError> {
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| FederationError::UrlUnparsable {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    if uri.scheme_str() != Some("https") {
        return Err(FederationError::UrlNotHttps(url.to_owned()));
    }
    let Some(authority) = uri.authority() else {
        return Err(FederationError::UrlNoHost(url.to_owned()));
    };
    if authority.as_str().contains('@') {
        return Err(FederationError::UrlUserInfo(url.to_owned()));
    }
    if authority.host().is_empty() {
        return Err(FederationError::UrlNoHost(url.to_owned()));
    }
    Ok(())
}

impl FederationRelationship {
    /// Checks the relationship against the server's own trust domain.
    pub fn validate(&self, own: &TrustDomain) -> Result<(), FederationError> {
        if &self.trust_domain == own {
            return Err(FederationError::OwnTrustDomain(own.clone()));
        }
        check_bundle_endpoint_url(&self.bundle_endpoint_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_endpoint_url_rules() {
        type Want = fn(&FederationError) -> bool;
        let ok: &[&str] = &[
            "https://example.org",
            "https://example.org/",
            "https://example.org:8443/bundle",
            "https://10.0.0.1:8443/",
            "https://[::1]:8443/",
            "https://example.org/path?query=1",
        ];
        for url in ok {
            assert_eq!(check_bundle_endpoint_url(url), Ok(()), "{url}");
        }
        let bad: &[(&str, Want)] = &[
            ("http://example.org/", |e| matches!(e, FederationError::UrlNotHttps(_))),
            ("ftp://example.org/", |e| matches!(e, FederationError::UrlNotHttps(_))),
            ("example.org/bundle", |e| {
                matches!(e, FederationError::UrlNotHttps(_) | FederationError::UrlUnparsable { .. })
            }),
            ("/bundle", |e| matches!(e, FederationError::UrlNotHttps(_))),
            ("https://user@example.org/", |e| matches!(e, FederationError::UrlUserInfo(_))),
            ("https://user:pw@example.org/", |e| matches!(e, FederationError::UrlUserInfo(_))),
            ("https://:8443/", |e| matches!(e, FederationError::UrlNoHost(_) | FederationError::UrlUnparsable { .. })),
            ("https://", |e| matches!(e, FederationError::UrlNoHost(_) | FederationError::UrlUnparsable { .. })),
            ("", |e| matches!(e, FederationError::UrlUnparsable { .. })),
            ("https://exa mple.org/", |e| matches!(e, FederationError::UrlUnparsable { .. })),
            ("https://example.org/\n", |e| matches!(e, FederationError::UrlUnparsable { .. })),
        ];
        for (url, want) in bad {
            let err = check_bundle_endpoint_url(url).expect_err(url);
            assert!(want(&err), "{url:?}: {err:?}");
        }
    }

    #[test]
    fn own_trust_domain_refused() {
        let own = TrustDomain::new("example.org").unwrap();
        let rel = FederationRelationship {
            trust_domain: own.clone(),
            bundle_endpoint_url: "https://example.org/".into(),
            profile: BundleEndpointProfile::HttpsWeb,
            managed_by: String::new(),
        };
        assert_eq!(rel.validate(&own), Err(FederationError::OwnTrustDomain(own.clone())));
        let foreign = FederationRelationship { trust_domain: TrustDomain::new("partner.test").unwrap(), ..rel };
        assert_eq!(foreign.validate(&own), Ok(()));
        assert_eq!(foreign.profile.name(), "https_web");
    }
}
