//! `[federation.federates_with."<trust domain>"]`: SPIRE's `federates_with "<td>" { ... }` blocks, the
//! federation relationships of the config file (issue 12 item 2). SPIRE's HCL
//!
//! ```hcl
//! federates_with "b.test" {
//!   bundle_endpoint_url = "https://b.test:8443"
//!   bundle_endpoint_profile "https_spiffe" { endpoint_spiffe_id = "spiffe://b.test/spire/server" }
//!   # or: bundle_endpoint_profile "https_web" {}
//! }
//! ```
//!
//! is written here as
//!
//! ```toml
//! [federation.federates_with."b.test"]
//! bundle_endpoint_url = "https://b.test:8443"
//! bundle_endpoint_profile = "https_spiffe"          # or "https_web"
//! endpoint_spiffe_id = "spiffe://b.test/spire/server" # https_spiffe only, required there
//! # ca_file_path = "/etc/sigil/b-test-ca.pem"        # https_web only: trust these CAs, not the system roots
//! ```
//!
//! The profile is a string, as `[federation.bundle_endpoint] profile` is (one choice of two, spelled as the
//! CLI's `-bundleEndpointProfile`), and the profile's one setting sits beside it. `ca_file_path` is a Sigil
//! addition for bundle endpoints with a private Web PKI (SPIRE can only use the system roots); it is read at
//! start (an unusable file stops the start) and again at every fetch, so a renewed CA file is picked up.
//!
//! These relationships override ones with the same trust domain made through the admin API (CLI, operator),
//! as in SPIRE; the table key may be written `b.test` or `spiffe://b.test`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use sigil_core::federation::{BundleEndpointProfile, FederationRelationship};
use sigil_core::{SpiffeId, TrustDomain};

use super::ConfigError;

/// `[federation.federates_with."<td>"]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatesWithSection {
    pub bundle_endpoint_url: Option<String>,
    pub bundle_endpoint_profile: Option<String>,
    pub endpoint_spiffe_id: Option<String>,
    pub ca_file_path: Option<PathBuf>,
}

/// A federation relationship of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredRelationship {
    pub relationship: FederationRelationship,
    /// https_web only: PEM CA certificates trusted instead of the system roots.
    pub ca_file_path: Option<PathBuf>,
}

fn key_error(key: &str, field: &str, message: impl Into<String>) -> ConfigError {
    let path = if field.is_empty() {
        format!("federation.federates_with.\"{key}\"")
    } else {
        format!("federation.federates_with.\"{key}\".{field}")
    };
    ConfigError::DynField { field: path, message: message.into() }
}

/// Resolves every `[federation.federates_with."<td>"]` table, in trust domain order.
pub fn resolve(
    own: &TrustDomain,
    sections: BTreeMap<String, FederatesWithSection>,
) -> Result<Vec<ConfiguredRelationship>, ConfigError> {
    let mut out: BTreeMap<TrustDomain, ConfiguredRelationship> = BTreeMap::new();
    for (key, s) in sections {
        let rel = resolve_one(own, &key, s)?;
        let td = rel.relationship.trust_domain.clone();
        if out.contains_key(&td) {
            return Err(key_error(&key, "", format!("trust domain {td} is configured twice")));
        }
        out.insert(td, rel);
    }
    Ok(out.into_values().collect())
}

fn resolve_one(own: &TrustDomain, key: &str, s: FederatesWithSection) -> Result<ConfiguredRelationship, ConfigError> {
    let err = |field: &str, message: String| key_error(key, field, message);
    let trust_domain = TrustDomain::new(key.strip_prefix("spiffe://").unwrap_or(key))
        .map_err(|e| err("", format!("is not a trust domain name: {e}")))?;
    if &trust_domain == own {
        return Err(err("", format!("{own} is the server's own trust domain; federation needs a foreign one")));
    }
    let url = s
        .bundle_endpoint_url
        .filter(|u| !u.is_empty())
        .ok_or_else(|| err("bundle_endpoint_url", "is required".into()))?;
    sigil_core::federation::check_bundle_endpoint_url(&url).map_err(|e| err("bundle_endpoint_url", e.to_string()))?;
    let profile_name = s.bundle_endpoint_profile.ok_or_else(|| {
        err(
            "bundle_endpoint_profile",
            "is required: \"https_spiffe\" (with endpoint_spiffe_id) or \"https_web\"".into(),
        )
    })?;
    let (profile, ca_file_path) = match profile_name.as_str() {
        "https_spiffe" => {
            if s.ca_file_path.is_some() {
                return Err(err(
                    "ca_file_path",
                    "is only used with bundle_endpoint_profile = \"https_web\"; https_spiffe checks the endpoint's \
                     SVID against the stored bundle of its trust domain"
                        .into(),
                ));
            }
            let text = s.endpoint_spiffe_id.ok_or_else(|| {
                err(
                    "endpoint_spiffe_id",
                    format!("is required with https_spiffe, e.g. \"spiffe://{trust_domain}/spire/server\""),
                )
            })?;
            let id = SpiffeId::new(&text).map_err(|e| err("endpoint_spiffe_id", format!("{text:?}: {e}")))?;
            (BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id: id }, None)
        }
        "https_web" => {
            if s.endpoint_spiffe_id.is_some() {
                return Err(err(
                    "endpoint_spiffe_id",
                    "is only used with bundle_endpoint_profile = \"https_spiffe\"; https_web checks the host name \
                     of the URL"
                        .into(),
                ));
            }
            let ca = match s.ca_file_path {
                Some(p) if p.as_os_str().is_empty() => return Err(err("ca_file_path", "must not be empty".into())),
                other => other,
            };
            (BundleEndpointProfile::HttpsWeb, ca)
        }
        other => {
            return Err(err("bundle_endpoint_profile", format!("{other:?} is not one of https_spiffe, https_web")));
        }
    };
    Ok(ConfiguredRelationship {
        relationship: FederationRelationship {
            trust_domain,
            bundle_endpoint_url: url,
            profile,
            managed_by: String::new(),
        },
        ca_file_path,
    })
}

#[cfg(test)]
#[path = "federates_with_tests.rs"]
mod tests;
