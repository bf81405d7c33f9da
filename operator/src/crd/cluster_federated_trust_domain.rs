//! `ClusterFederatedTrustDomain`: a federation relationship with a foreign trust domain.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sigil_core::{SpiffeId, TrustDomain};

use super::{CrdError, SPIFFE_ID_PATTERN, TRUST_DOMAIN_PATTERN};

/// Federates with a foreign trust domain: the server fetches that trust domain's bundle from its bundle endpoint.
// Several `printcolumn(...)` repeat the same keys, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sigil.dev",
    version = "v1alpha1",
    kind = "ClusterFederatedTrustDomain",
    plural = "clusterfederatedtrustdomains",
    shortname = "cftd",
    category = "sigil",
    status = "ClusterFederatedTrustDomainStatus",
    derive = "PartialEq",
    doc = "ClusterFederatedTrustDomain sets up a federation relationship with a foreign trust domain: the server \
           keeps that trust domain's bundle up to date from its bundle endpoint. Cluster-scoped; same fields as \
           spire-controller-manager's ClusterFederatedTrustDomain (spire.spiffe.io/v1alpha1).",
    printcolumn(name = "Trust Domain", type_ = "string", json_path = ".spec.trustDomain"),
    printcolumn(name = "Endpoint URL", type_ = "string", json_path = ".spec.bundleEndpointURL"),
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(
        name = "Fetched",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="BundleFetched")].status"#
    ),
    printcolumn(name = "Sequence", type_ = "integer", json_path = ".status.bundle.sequence"),
    printcolumn(name = "Last Fetch", type_ = "date", json_path = ".status.bundle.lastSuccessTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct ClusterFederatedTrustDomainSpec {
    /// Name of the foreign trust domain, e.g. "example.org" (lowercase letters, digits, '.', '_' and '-').
    /// When two objects name the same trust domain, the oldest wins.
    #[serde(rename = "trustDomain")]
    #[schemars(length(max = 255), pattern(TRUST_DOMAIN_PATTERN), extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[a-z0-9._-]+$')",
         "message": "trustDomain must be a trust domain name (lowercase letters, digits, '.', '_', '-'), e.g. example.org, without spiffe://"}
    ]))]
    pub trust_domain: String,

    /// HTTPS URL of the foreign trust domain's bundle endpoint, e.g. "https://example.org/bundle". Must not
    /// contain userinfo (user:password@).
    #[serde(rename = "bundleEndpointURL")]
    #[schemars(length(max = 2048), extend("x-kubernetes-validations" = [
        {"rule": "self.startsWith('https://')", "message": "bundleEndpointURL must be an https:// URL"},
        {"rule": "!self.matches('^[^/?#]*//[^/?#]*@')", "message": "bundleEndpointURL must not contain userinfo (user:password@)"},
        {"rule": "isURL(self) && url(self).getHostname() != ''", "message": "bundleEndpointURL must be a valid URL with a host"}
    ]))]
    pub bundle_endpoint_url: String,

    /// How the bundle endpoint is authenticated.
    #[serde(rename = "bundleEndpointProfile")]
    pub bundle_endpoint_profile: BundleEndpointProfile,

    /// The foreign trust domain's bundle (SPIFFE bundle JSON). Optional; with https_spiffe it is the bundle used to
    /// authenticate the endpoint the first time.
    #[serde(rename = "trustDomainBundle", default, skip_serializing_if = "Option::is_none")]
    pub trust_domain_bundle: Option<String>,

    /// Only the operator configured with this class name acts on this object. Unset: operators that watch
    /// classless objects act on it.
    #[serde(rename = "className", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub class_name: Option<String>,
}

/// How a bundle endpoint is authenticated (SPIFFE Federation, endpoint profiles).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'https_spiffe' || has(self.endpointSPIFFEID)",
     "message": "endpointSPIFFEID is required when bundleEndpointProfile.type is https_spiffe"}
]))]
pub struct BundleEndpointProfile {
    /// Endpoint profile: "https_web" (server certificate from a Web PKI CA) or "https_spiffe" (server presents
    /// an X509-SVID for endpointSPIFFEID).
    #[serde(rename = "type")]
    pub kind: BundleEndpointProfileType,

    /// SPIFFE ID of the bundle endpoint server, e.g. "spiffe://example.org/spire/server". Required for
    /// https_spiffe, ignored for https_web.
    #[serde(rename = "endpointSPIFFEID", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(SPIFFE_ID_PATTERN), extend("x-kubernetes-validations" = [
        {"rule": "self.startsWith('spiffe://')", "message": "endpointSPIFFEID must be a SPIFFE ID starting with spiffe://"},
        {"rule": "!self.matches('^spiffe://[^/]*(/[^/]*)*/[.][.]?(/|$)')", "message": "endpointSPIFFEID must not contain . or .. path segments"}
    ]))]
    pub endpoint_spiffe_id: Option<String>,
}

/// Bundle endpoint profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BundleEndpointProfileType {
    /// The endpoint's certificate chains to a Web PKI root.
    #[serde(rename = "https_web")]
    HttpsWeb,
    /// The endpoint presents an X509-SVID for the configured endpoint SPIFFE ID.
    #[serde(rename = "https_spiffe")]
    HttpsSpiffe,
}

/// What the operator observed the last time it reconciled a ClusterFederatedTrustDomain.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ClusterFederatedTrustDomainStatus {
    /// Latest observations of the object's state; type "Ready" is True when the federation relationship is set
    /// on the server; type "BundleFetched" is True when the server's last fetch of the foreign bundle succeeded
    /// (reason Fetched), False when fetching fails (reason FetchFailed, with the error), Unknown before the
    /// first fetch or when the server cannot say (reason Pending).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// How the server's fetching of the foreign trust domain's bundle goes, as the server reports it (polled
    /// every few seconds). Absent while the relationship is not this object's on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<FederationBundleStatus>,
}

/// The server's fetching of one foreign bundle. Times are RFC 3339, second precision; absent = never.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct FederationBundleStatus {
    /// Where the relationship the server uses comes from: "api" (this operator, the CLI) or "config" (the
    /// server's config file, which wins over the API's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When a fetch last succeeded.
    #[serde(rename = "lastSuccessTime", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub last_success_time: Option<String>,
    /// When a fetched bundle last differed from the stored one (and was stored).
    #[serde(rename = "lastChangeTime", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub last_change_time: Option<String>,
    /// spiffe_sequence of the bundle the server stores for the trust domain; absent when it stores none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// When the server fetches next.
    #[serde(rename = "nextRefreshTime", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub next_refresh_time: Option<String>,
    /// The most recent failure, kept after later successes (consecutiveFailures says whether it is current).
    #[serde(rename = "lastError", default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When lastError happened.
    #[serde(rename = "lastErrorTime", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub last_error_time: Option<String>,
    /// Failed fetches since the last success; 0 when the last fetch succeeded.
    #[serde(rename = "consecutiveFailures", default)]
    pub consecutive_failures: u32,
}

impl ClusterFederatedTrustDomainSpec {
    /// `trustDomain` as a trust domain.
    pub fn trust_domain(&self) -> Result<TrustDomain, CrdError> {
        TrustDomain::new(&self.trust_domain).map_err(|source| CrdError::Id { field: "trustDomain", source })
    }

    /// The endpoint's SPIFFE ID for https_spiffe (an error when it is missing), `None` for https_web.
    pub fn endpoint_spiffe_id(&self) -> Result<Option<SpiffeId>, CrdError> {
        let profile = &self.bundle_endpoint_profile;
        match (profile.kind, profile.endpoint_spiffe_id.as_deref()) {
            (BundleEndpointProfileType::HttpsWeb, _) => Ok(None),
            (BundleEndpointProfileType::HttpsSpiffe, None) => Err(CrdError::MissingEndpointSpiffeId),
            (BundleEndpointProfileType::HttpsSpiffe, Some(id)) => SpiffeId::new(id)
                .map(Some)
                .map_err(|source| CrdError::Id { field: "bundleEndpointProfile.endpointSPIFFEID", source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;
    use crate::crd::tests::{field_names, property, rules_of, sorted, spec_schema};

    #[test]
    fn field_names_match_spire_controller_manager() {
        let spec = spec_schema(&ClusterFederatedTrustDomain::crd(), "spec");
        assert_eq!(
            field_names(&spec),
            sorted(&["trustDomain", "bundleEndpointURL", "bundleEndpointProfile", "trustDomainBundle", "className"])
        );
        let mut required = spec.required.clone().unwrap_or_default();
        required.sort();
        assert_eq!(required, sorted(&["bundleEndpointProfile", "bundleEndpointURL", "trustDomain"]));
        let status = spec_schema(&ClusterFederatedTrustDomain::crd(), "status");
        assert_eq!(field_names(&status), sorted(&["conditions", "bundle"]));
        assert_eq!(status.required.clone().unwrap_or_default(), Vec::<String>::new());
        let profile = property(&spec, &["bundleEndpointProfile"]);
        assert_eq!(field_names(&profile), sorted(&["type", "endpointSPIFFEID"]));
        assert_eq!(profile.required, Some(vec!["type".to_string()]));
        let kinds: Vec<String> =
            property(&profile, &["type"]).enum_.iter().flatten().map(|v| v.0.as_str().unwrap().to_string()).collect();
        assert_eq!(
            sorted(&kinds.iter().map(String::as_str).collect::<Vec<_>>()),
            sorted(&["https_spiffe", "https_web"])
        );
    }

    #[test]
    fn printer_columns() {
        let cftd = ClusterFederatedTrustDomain::crd();
        let names: Vec<&str> =
            cftd.spec.versions[0].additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Trust Domain", "Endpoint URL", "Ready", "Fetched", "Sequence", "Last Fetch", "Age"]);
    }

    #[test]
    fn validation_rules() {
        let spec = spec_schema(&ClusterFederatedTrustDomain::crd(), "spec");
        let profile = property(&spec, &["bundleEndpointProfile"]);
        assert!(rules_of(&profile).iter().any(|(rule, message)| rule.contains("https_spiffe")
            && message == "endpointSPIFFEID is required when bundleEndpointProfile.type is https_spiffe"));
        let url = property(&spec, &["bundleEndpointURL"]);
        let messages: Vec<String> = rules_of(&url).into_iter().map(|(_, m)| m).collect();
        assert!(messages.contains(&"bundleEndpointURL must be an https:// URL".to_string()), "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("userinfo")), "{messages:?}");
        let td = property(&spec, &["trustDomain"]);
        assert_eq!(td.pattern.as_deref(), Some(TRUST_DOMAIN_PATTERN));
    }

    #[test]
    fn typed_accessors_convert_or_explain() {
        let mut cftd = ClusterFederatedTrustDomainSpec {
            trust_domain: "backend".into(),
            bundle_endpoint_url: "https://backend.test/bundle".into(),
            bundle_endpoint_profile: BundleEndpointProfile {
                kind: BundleEndpointProfileType::HttpsSpiffe,
                endpoint_spiffe_id: None,
            },
            trust_domain_bundle: None,
            class_name: None,
        };
        assert_eq!(cftd.trust_domain().unwrap().name(), "backend");
        assert!(matches!(cftd.endpoint_spiffe_id(), Err(CrdError::MissingEndpointSpiffeId)));
        cftd.bundle_endpoint_profile.endpoint_spiffe_id = Some("spiffe://backend/server".into());
        assert_eq!(cftd.endpoint_spiffe_id().unwrap().unwrap().as_str(), "spiffe://backend/server");
        cftd.bundle_endpoint_profile.kind = BundleEndpointProfileType::HttpsWeb;
        assert_eq!(cftd.endpoint_spiffe_id().unwrap(), None);
    }
}
