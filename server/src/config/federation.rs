//! `[federation]`: SPIRE's `server { federation { ... } }` block, in TOML.
//!
//! This module: the bundle endpoint (`[federation.bundle_endpoint]`, issue 12 item 1); the relationships
//! (`[federation.federates_with."<td>"]`, item 2) are in [`super::federates_with`]. SPIRE's HCL
//!
//! ```hcl
//! federation {
//!   bundle_endpoint {
//!     address = "0.0.0.0"  port = 8443  refresh_hint = "5m"
//!     profile "https_web" { serving_cert_file { cert_file_path = "..."  key_file_path = "..." } }
//!     # or: profile "https_spiffe" {}
//!   }
//! }
//! ```
//!
//! is written here as
//!
//! ```toml
//! [federation.bundle_endpoint]
//! address = "0.0.0.0"
//! port = 8443
//! refresh_hint = "5m"
//! profile = "https_web"                       # or "https_spiffe"
//! [federation.bundle_endpoint.serving_cert_file]  # https_web only
//! cert_file_path = "..."
//! key_file_path = "..."
//! ```
//!
//! The profile is a plain string rather than a `profile.https_web` table because it is one choice of two,
//! spelled as the CLI (`-bundleEndpointProfile https_web`) and the ClusterFederatedTrustDomain CR spell it,
//! and a string cannot name both at once. `serving_cert_file` sits beside it; it is refused with
//! `https_spiffe` and required with `https_web` (ACME, SPIRE's other https_web source, is not supported).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, field, parse_duration, parse_ip};
use crate::ca::rotation::{SlotState, SlotTimes, activate_threshold, prepare_threshold};

/// `[federation]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSection {
    pub bundle_endpoint: Option<BundleEndpointSection>,
    /// Keyed by the foreign trust domain's name.
    #[serde(default)]
    pub federates_with: std::collections::BTreeMap<String, super::federates_with::FederatesWithSection>,
}

/// `[federation.bundle_endpoint]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEndpointSection {
    pub address: Option<String>,
    /// Read as a plain integer so an out-of-range port gets an error naming the key (serde's u16 error
    /// does not).
    pub port: Option<i64>,
    pub refresh_hint: Option<String>,
    pub profile: Option<String>,
    pub serving_cert_file: Option<ServingCertFileSection>,
    /// Accepted by the parser only to be refused with a message saying why (see [`resolve`]).
    pub acme: Option<toml::Value>,
}

/// `[federation.bundle_endpoint.serving_cert_file]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingCertFileSection {
    pub cert_file_path: Option<PathBuf>,
    pub key_file_path: Option<PathBuf>,
    pub file_sync_interval: Option<String>,
}

/// The resolved bundle endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpointConfig {
    pub address: IpAddr,
    /// 0 = a random free port (the bound one is logged and kept in `RunningServer`).
    pub port: u16,
    /// Served as `spiffe_refresh_hint`; whole seconds, at least 1 s.
    pub refresh_hint: Duration,
    pub profile: ServingProfile,
    /// Things worth a warning at start (logged by `run::start`), in the words SPIRE uses where it has them.
    pub warnings: Vec<String>,
}

/// How the endpoint authenticates itself to the peers that fetch from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingProfile {
    /// The server's own X509-SVID `spiffe://<td>/spire/server`, the agent API's certificate.
    HttpsSpiffe,
    /// A Web PKI certificate and key from files, re-read when they change.
    HttpsWeb(ServingCertFile),
}

impl ServingProfile {
    pub fn name(&self) -> &'static str {
        match self {
            ServingProfile::HttpsSpiffe => "https_spiffe",
            ServingProfile::HttpsWeb(_) => "https_web",
        }
    }
}

/// `serving_cert_file`: PEM certificate chain (leaf first) and PEM private key (PKCS#8, SEC1 or PKCS#1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingCertFile {
    pub cert_file_path: PathBuf,
    pub key_file_path: PathBuf,
    /// How often the files are read to see whether they changed.
    pub file_sync_interval: Duration,
}

pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);
pub const DEFAULT_FILE_SYNC_INTERVAL: Duration = Duration::from_secs(3600);
/// Below this the file check would be a busy loop for no benefit.
pub const MIN_FILE_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Checks a refresh hint and returns the warnings it deserves, or why it is refused.
///
/// - Under 1 s or not whole seconds: refused; the bundle carries the hint in whole seconds, and a zero hint
///   would tell peers to poll without pause.
/// - Under 1 m or 24 h and more: warned about, as SPIRE does.
/// - Longer than a third of the time a prepared CA is published before it signs (`ca_ttl / 3` with the A/B
///   schedule): warned about. Peers that poll at the hint may then not see the new CA before it signs, which
///   is what broke federation after CA rotations in helm-charts-hardened #335; the SPIFFE federation spec
///   asks to publish keys 3-5 hints ahead.
pub fn check_refresh_hint(hint: Duration, ca_ttl: Duration) -> Result<Vec<String>, String> {
    if hint < Duration::from_secs(1) {
        return Err("must be at least 1s (the bundle carries it in whole seconds)".into());
    }
    if hint.subsec_nanos() != 0 {
        return Err(format!("{hint:?} is not a whole number of seconds (the bundle carries whole seconds)"));
    }
    let key = "`federation.bundle_endpoint.refresh_hint`";
    let mut warnings = vec![];
    let secs = hint.as_secs();
    if hint < Duration::from_secs(60) {
        warnings.push(format!(
            "{key} {secs}s: bundle endpoint refresh hint set too low; SPIRE servers will not refresh more often than once a minute"
        ));
    }
    if hint >= Duration::from_secs(24 * 3600) {
        warnings.push(format!(
            "{key} {secs}s: bundle endpoint refresh hint set to a high value; to cover unscheduled trust bundle updates a smaller value such as 5m is recommended"
        ));
    }
    let lead = publish_lead(ca_ttl);
    if secs.saturating_mul(3) > lead {
        warnings.push(format!(
            "{key} {secs}s: a new CA is published only {lead}s before it signs (ca_ttl {}s); peers refreshing every {secs}s may not fetch it in time (keep the hint under {}s)",
            ca_ttl.as_secs(),
            lead / 3
        ));
    }
    Ok(warnings)
}

/// Seconds between the publication of a prepared CA and its activation, by the CA's own schedule.
fn publish_lead(ca_ttl: Duration) -> u64 {
    let ttl = i64::try_from(ca_ttl.as_secs()).unwrap_or(i64::MAX);
    let times = SlotTimes { state: SlotState::Active, not_before: 0, not_after: ttl };
    u64::try_from(activate_threshold(&times) - prepare_threshold(&times)).unwrap_or(0)
}

/// Resolves `[federation]`; `None` when there is no bundle endpoint.
pub fn resolve(section: FederationSection, ca_ttl: Duration) -> Result<Option<BundleEndpointConfig>, ConfigError> {
    let Some(s) = section.bundle_endpoint else {
        return Ok(None);
    };
    if s.acme.is_some() {
        return Err(field(
            "federation.bundle_endpoint.acme",
            "ACME is not supported; use profile = \"https_web\" with a [federation.bundle_endpoint.serving_cert_file] \
             table (a certificate kept up to date by e.g. cert-manager or certbot; the files are re-read when they \
             change), or profile = \"https_spiffe\"",
        ));
    }
    let mut warnings = vec![];
    // SPIRE: an empty address listens on all interfaces.
    let address = match s.address.as_deref() {
        None | Some("") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(a) => parse_ip("federation.bundle_endpoint.address", a)?,
    };
    let port = match s.port {
        None => {
            warnings.push(
                "no `federation.bundle_endpoint.port`: the bundle endpoint listens on a random port (logged at \
                 start); peers need a fixed one, e.g. port = 8443"
                    .to_owned(),
            );
            0
        }
        Some(p) => u16::try_from(p)
            .map_err(|_| field("federation.bundle_endpoint.port", format!("{p} is not a port number (0-65535)")))?,
    };
    let refresh_hint = match s.refresh_hint {
        None => DEFAULT_REFRESH_HINT,
        Some(text) => parse_duration(&text).map_err(|m| field("federation.bundle_endpoint.refresh_hint", m))?,
    };
    warnings.extend(
        check_refresh_hint(refresh_hint, ca_ttl).map_err(|m| field("federation.bundle_endpoint.refresh_hint", m))?,
    );
    let profile = match (s.profile.as_deref(), s.serving_cert_file) {
        (Some("https_spiffe"), None) => ServingProfile::HttpsSpiffe,
        (Some("https_web"), Some(files)) => ServingProfile::HttpsWeb(resolve_serving_cert_file(files)?),
        (Some("https_web"), None) => {
            return Err(field(
                "federation.bundle_endpoint.serving_cert_file",
                "profile \"https_web\" needs a [federation.bundle_endpoint.serving_cert_file] table with \
                 cert_file_path and key_file_path (ACME is not supported)",
            ));
        }
        (Some("https_spiffe"), Some(_)) => {
            return Err(field(
                "federation.bundle_endpoint.serving_cert_file",
                "is only used with profile = \"https_web\"; https_spiffe serves the server's own X509-SVID",
            ));
        }
        (Some(other), _) => {
            return Err(field(
                "federation.bundle_endpoint.profile",
                format!("{other:?} is not one of https_spiffe, https_web"),
            ));
        }
        (None, Some(_)) => {
            return Err(field(
                "federation.bundle_endpoint.profile",
                "is required with a [federation.bundle_endpoint.serving_cert_file] table: set profile = \"https_web\"",
            ));
        }
        (None, None) => {
            warnings.push(
                "no `federation.bundle_endpoint.profile`: using https_spiffe (the server's own SVID), as SPIRE does \
                 (SPIRE deprecates the default); set profile = \"https_spiffe\" or \"https_web\""
                    .to_owned(),
            );
            ServingProfile::HttpsSpiffe
        }
    };
    Ok(Some(BundleEndpointConfig { address, port, refresh_hint, profile, warnings }))
}

fn resolve_serving_cert_file(s: ServingCertFileSection) -> Result<ServingCertFile, ConfigError> {
    let required = |name: &'static str, v: Option<PathBuf>| -> Result<PathBuf, ConfigError> {
        v.filter(|p| !p.as_os_str().is_empty()).ok_or_else(|| field(name, "is required"))
    };
    let cert_file_path = required("federation.bundle_endpoint.serving_cert_file.cert_file_path", s.cert_file_path)?;
    let key_file_path = required("federation.bundle_endpoint.serving_cert_file.key_file_path", s.key_file_path)?;
    let interval_key = "federation.bundle_endpoint.serving_cert_file.file_sync_interval";
    let file_sync_interval = match s.file_sync_interval {
        None => DEFAULT_FILE_SYNC_INTERVAL,
        Some(text) => parse_duration(&text).map_err(|m| field(interval_key, m))?,
    };
    if file_sync_interval < MIN_FILE_SYNC_INTERVAL {
        return Err(field(interval_key, "must be at least 100ms"));
    }
    Ok(ServingCertFile { cert_file_path, key_file_path, file_sync_interval })
}

#[cfg(test)]
#[path = "federation_tests.rs"]
mod tests;
