//! `ClusterStaticEntry`: one registration entry declared as written.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sigil_core::{Selector, SpiffeId, TrustDomain};

use super::{
    CrdError, FEDERATES_WITH_PATTERN, GoDuration, SPIFFE_ID_PATTERN, drop_property_defaults, is_false,
    parse_trust_domains,
};

/// Declares one registration entry as-is (for workloads or nodes outside the cluster's pods).
// Several `printcolumn(...)` repeat the same keys, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sigil.dev",
    version = "v1alpha1",
    kind = "ClusterStaticEntry",
    plural = "clusterstaticentries",
    shortname = "cse",
    category = "sigil",
    status = "ClusterStaticEntryStatus",
    derive = "PartialEq",
    doc = "ClusterStaticEntry declares one registration entry as written (no templates), e.g. for workloads that \
           do not run in this cluster. Cluster-scoped; same fields as spire-controller-manager's \
           ClusterStaticEntry (spire.spiffe.io/v1alpha1).",
    printcolumn(name = "SPIFFE ID", type_ = "string", json_path = ".spec.spiffeID"),
    printcolumn(name = "Parent ID", type_ = "string", json_path = ".spec.parentID"),
    printcolumn(name = "Set", type_ = "boolean", json_path = ".status.set"),
    printcolumn(name = "Masked", type_ = "boolean", json_path = ".status.masked"),
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct ClusterStaticEntrySpec {
    /// SPIFFE ID of the workload (or of the node alias), e.g. "spiffe://example.org/db".
    #[serde(rename = "spiffeID")]
    #[schemars(length(max = 2048), pattern(SPIFFE_ID_PATTERN), extend("x-kubernetes-validations" = [
        {"rule": "self.startsWith('spiffe://')", "message": "spiffeID must be a SPIFFE ID starting with spiffe://"},
        {"rule": "!self.matches('^spiffe://[^/]*(/[^/]*)*/[.][.]?(/|$)')", "message": "spiffeID must not contain . or .. path segments"}
    ]))]
    pub spiffe_id: String,

    /// SPIFFE ID of the agent (node) allowed to obtain this identity, or the server's ID for a node alias.
    #[serde(rename = "parentID")]
    #[schemars(length(max = 2048), pattern(SPIFFE_ID_PATTERN), extend("x-kubernetes-validations" = [
        {"rule": "self.startsWith('spiffe://')", "message": "parentID must be a SPIFFE ID starting with spiffe://"},
        {"rule": "!self.matches('^spiffe://[^/]*(/[^/]*)*/[.][.]?(/|$)')", "message": "parentID must not contain . or .. path segments"}
    ]))]
    pub parent_id: String,

    /// Selectors of the form type:value (e.g. "unix:uid:1000", "k8s:ns:default"); a workload gets this identity
    /// only when it presents all of them. At least one.
    #[schemars(length(max = 64), inner(length(max = 1024)), extend("x-kubernetes-validations" = [
        {"rule": "size(self) > 0", "message": "selectors must list at least one type:value selector"},
        {"rule": "self.all(s, s.matches('^[A-Za-z0-9_-]+:.+$'))",
         "message": "every selector must have the form type:value, e.g. k8s:ns:default"}
    ]))]
    pub selectors: Vec<String>,

    /// Trust domains (e.g. "example.org") whose bundles the workload receives.
    #[serde(rename = "federatesWith", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 264), pattern(FEDERATES_WITH_PATTERN)), extend("x-kubernetes-validations" = [
        {"rule": "self.all(td, td.matches('^(spiffe://)?[a-z0-9._-]+$'))",
         "message": "federatesWith entries must be trust domain names (lowercase letters, digits, '.', '_', '-'), e.g. example.org"}
    ]))]
    pub federates_with: Vec<String>,

    /// Upper bound on the lifetime of the X509-SVID, as a Go duration ("1h", "90m"). Unset uses the server's
    /// default.
    #[serde(rename = "x509SVIDTTL", default, skip_serializing_if = "Option::is_none")]
    pub x509_svid_ttl: Option<GoDuration>,

    /// Upper bound on the lifetime of JWT-SVIDs, as a Go duration ("5m"). Unset uses the server's default.
    #[serde(rename = "jwtSVIDTTL", default, skip_serializing_if = "Option::is_none")]
    pub jwt_svid_ttl: Option<GoDuration>,

    /// DNS names added to the X509-SVID.
    #[serde(rename = "dnsNames", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub dns_names: Vec<String>,

    /// Opaque hint passed to the workload with the SVID, telling it how the SVID should be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub hint: Option<String>,

    /// Lets the workload call the server's administrative APIs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub admin: bool,

    /// Marks the entry as describing a downstream server (nested CA).
    #[serde(default, skip_serializing_if = "is_false")]
    pub downstream: bool,

    /// The issued SVID is to be stored by an SVID store plugin instead of served over the Workload API.
    #[serde(rename = "storeSVID", default, skip_serializing_if = "is_false")]
    pub store_svid: bool,

    /// Only the operator configured with this class name acts on this object. Unset: operators that watch
    /// classless objects act on it.
    #[serde(rename = "className", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub class_name: Option<String>,
}

/// What the operator observed the last time it reconciled a ClusterStaticEntry.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = drop_property_defaults)]
pub struct ClusterStaticEntryStatus {
    /// True when the spec was turned into a valid registration entry.
    #[serde(default)]
    pub rendered: bool,
    /// True when the entry was dropped because an older object produced the same entry.
    #[serde(default)]
    pub masked: bool,
    /// True when the entry was created or updated on the server.
    #[serde(default)]
    pub set: bool,
    /// Latest observations of the object's state; type "Ready" is True when the entry is set on the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl ClusterStaticEntrySpec {
    /// `spiffeID` as a SPIFFE ID.
    pub fn spiffe_id(&self) -> Result<SpiffeId, CrdError> {
        SpiffeId::new(&self.spiffe_id).map_err(|source| CrdError::Id { field: "spiffeID", source })
    }

    /// `parentID` as a SPIFFE ID.
    pub fn parent_id(&self) -> Result<SpiffeId, CrdError> {
        SpiffeId::new(&self.parent_id).map_err(|source| CrdError::Id { field: "parentID", source })
    }

    /// `selectors` parsed as `type:value`.
    pub fn selectors(&self) -> Result<Vec<Selector>, CrdError> {
        self.selectors
            .iter()
            .map(|s| Selector::parse(s).map_err(|source| CrdError::Selector { field: "selectors", source }))
            .collect()
    }

    /// `federatesWith` as trust domains.
    pub fn federates_with(&self) -> Result<Vec<TrustDomain>, CrdError> {
        parse_trust_domains("federatesWith", &self.federates_with)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::CustomResourceExt;

    use super::*;
    use crate::crd::tests::{field_names, sorted, spec_schema};

    #[test]
    fn field_names_match_spire_controller_manager() {
        let spec = spec_schema(&ClusterStaticEntry::crd(), "spec");
        assert_eq!(
            field_names(&spec),
            sorted(&[
                "spiffeID",
                "parentID",
                "selectors",
                "federatesWith",
                "x509SVIDTTL",
                "jwtSVIDTTL",
                "dnsNames",
                "hint",
                "admin",
                "downstream",
                "storeSVID",
                "className",
            ])
        );
        let mut required = spec.required.clone().unwrap_or_default();
        required.sort();
        assert_eq!(required, sorted(&["parentID", "selectors", "spiffeID"]));
        let status = spec_schema(&ClusterStaticEntry::crd(), "status");
        assert_eq!(field_names(&status), sorted(&["rendered", "masked", "set", "conditions"]));
        assert_eq!(status.required.clone().unwrap_or_default(), Vec::<String>::new());
    }

    #[test]
    fn typed_accessors_convert_or_explain() {
        let entry = ClusterStaticEntrySpec {
            spiffe_id: "spiffe://example.org/db".into(),
            parent_id: "spiffe://example.org/spire/agent/x".into(),
            selectors: vec!["unix:uid:1000".into(), "k8s:ns:default".into()],
            federates_with: vec!["other.test".into(), "spiffe://third.test".into()],
            ..Default::default()
        };
        assert_eq!(entry.spiffe_id().unwrap().as_str(), "spiffe://example.org/db");
        assert_eq!(entry.parent_id().unwrap().as_str(), "spiffe://example.org/spire/agent/x");
        let selectors = entry.selectors().unwrap();
        assert_eq!(
            selectors.iter().map(|s| (s.kind(), s.value())).collect::<Vec<_>>(),
            [("unix", "uid:1000"), ("k8s", "ns:default")]
        );
        let tds: Vec<String> = entry.federates_with().unwrap().iter().map(|t| t.name().to_string()).collect();
        assert_eq!(tds, ["other.test", "third.test"]);

        let bad = ClusterStaticEntrySpec {
            spiffe_id: "http://example.org/db".into(),
            selectors: vec!["nocolon".into()],
            ..entry.clone()
        };
        assert!(bad.spiffe_id().unwrap_err().to_string().starts_with("spiffeID: "));
        assert!(bad.selectors().unwrap_err().to_string().contains("type:value"));
    }

    #[test]
    fn spire_controller_manager_json_round_trips() {
        let entry = serde_json::json!({
            "spiffeID": "spiffe://x.test/a", "parentID": "spiffe://x.test/b", "selectors": ["a:b"],
            "x509SVIDTTL": "2h", "jwtSVIDTTL": "6m", "storeSVID": true, "dnsNames": ["d"],
        });
        let spec: ClusterStaticEntrySpec = serde_json::from_value(entry.clone()).unwrap();
        assert!(spec.store_svid);
        assert_eq!(spec.x509_svid_ttl.unwrap().to_duration(), Ok(Duration::from_secs(7200)));
        let back: ClusterStaticEntrySpec = serde_json::from_value(entry.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), entry);
    }
}
