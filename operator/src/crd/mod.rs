//! The operator's custom resources: `ClusterSPIFFEID`, `ClusterFederatedTrustDomain` and `ClusterStaticEntry`
//! (group `sigil.dev`, version `v1alpha1`, all cluster-scoped).
//!
//! Field names on the wire are the same as spire-controller-manager's (`spire.spiffe.io/v1alpha1`), so existing
//! manifests only need their `apiVersion` changed. The schema carries the validation (patterns and CEL rules)
//! so the apiserver refuses bad objects with a message that says what is wrong; nothing here does I/O.
//!
//! The committed YAML in `crds/` is produced by [`generated_files`] (see the `crdgen` binary); a test fails when
//! it drifts from these types.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sigil_core::duration::{DurationError, parse_go_duration};
use sigil_core::{IdError, Selector, SelectorError, SpiffeId, TrustDomain};

/// API group of every Sigil custom resource.
pub const GROUP: &str = "sigil.dev";
/// API version of every Sigil custom resource.
pub const VERSION: &str = "v1alpha1";

/// Pattern for a trust domain name (`example.org`), anchored (SCM's own pattern is not).
pub const TRUST_DOMAIN_PATTERN: &str = r"^[a-z0-9._-]{1,255}$";
/// Pattern for a trust domain in `federatesWith`: a bare name or a trust domain ID (`spiffe://example.org`).
pub const FEDERATES_WITH_PATTERN: &str = r"^(spiffe://)?[a-z0-9._-]{1,255}$";
/// Pattern for a SPIFFE ID: scheme `spiffe`, lowercase trust domain, path segments of `[A-Za-z0-9._-]`.
pub const SPIFFE_ID_PATTERN: &str = r"^spiffe://[a-z0-9._-]{1,255}(/[A-Za-z0-9._-]+)*$";
/// Pattern for a Go duration string as accepted by [`parse_go_duration`] (`sigil_core::duration`) (no sign other than `+`).
pub const GO_DURATION_PATTERN: &str = r"^\+?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$";
/// Printer-column path of the `Ready` condition's status.
pub const READY_PATH: &str = r#".status.conditions[?(@.type=="Ready")].status"#;

/// Why a CRD value could not be turned into a typed value, or why CRD YAML could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// A SPIFFE ID or trust domain field is not valid.
    #[error("{field}: {source}")]
    Id {
        /// JSON name of the field.
        field: &'static str,
        /// What is wrong with the value.
        source: IdError,
    },
    /// A selector is not `type:value`.
    #[error("{field}: {source}")]
    Selector {
        /// JSON name of the field.
        field: &'static str,
        /// What is wrong with the value.
        source: SelectorError,
    },
    /// `https_spiffe` needs the endpoint's SPIFFE ID.
    #[error("bundleEndpointProfile: endpointSPIFFEID is required when type is https_spiffe")]
    MissingEndpointSpiffeId,
    /// A generated CRD has no name, group or plural (cannot happen with the derived CRDs).
    #[error("generated CRD is missing {0}")]
    IncompleteCrd(&'static str),
    /// A CRD could not be rendered as YAML.
    #[error("rendering CRD {name} as YAML: {source}")]
    Yaml {
        /// The CRD's name.
        name: String,
        /// The serializer's error.
        source: serde_yaml::Error,
    },
}

/// A Go duration string as written in the manifest (`"1h"`, `"90m"`, `"1h30m0s"`). The schema only admits strings
/// of the right shape; [`GoDuration::to_duration`] gives the value. Deserializing never fails on the content, so an
/// object stored before the schema was installed still reaches the operator, which reports it in a condition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GoDuration(String);

impl GoDuration {
    /// Checks `input` with [`parse_go_duration`] and keeps it as written.
    pub fn new(input: &str) -> Result<Self, DurationError> {
        parse_go_duration(input)?;
        Ok(Self(input.to_owned()))
    }

    /// The string as written in the manifest.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The duration's value.
    pub fn to_duration(&self) -> Result<Duration, DurationError> {
        parse_go_duration(&self.0)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for GoDuration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "GoDuration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 64,
            "pattern": GO_DURATION_PATTERN,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{}')", GO_DURATION_PATTERN.replace('\\', "\\\\")),
                "message": "must be a Go duration such as \"1h\", \"90m\" or \"1h30m0s\" (units ns, us, ms, s, m, h; no sign)",
            }],
        })
    }
}

/// Creates registration entries for the pods it selects, rendering the SPIFFE ID (and DNS names and selectors)
/// from templates.
// Several `printcolumn(...)` repeat the same keys, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sigil.dev",
    version = "v1alpha1",
    kind = "ClusterSPIFFEID",
    plural = "clusterspiffeids",
    shortname = "csid",
    category = "sigil",
    status = "ClusterSPIFFEIDStatus",
    derive = "PartialEq",
    doc = "ClusterSPIFFEID gives a SPIFFE ID to the pods it selects: the operator creates one registration entry \
           per selected pod from the templates in spec. Cluster-scoped; same fields as spire-controller-manager's \
           ClusterSPIFFEID (spire.spiffe.io/v1alpha1).",
    printcolumn(name = "SPIFFE ID Template", type_ = "string", json_path = ".spec.spiffeIDTemplate"),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.stats.podsSelected"),
    printcolumn(name = "Entries", type_ = "integer", json_path = ".status.stats.entriesToSet"),
    printcolumn(name = "Masked", type_ = "integer", json_path = ".status.stats.entriesMasked"),
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct ClusterSPIFFEIDSpec {
    /// Go text/template rendering the workload's SPIFFE ID, e.g.
    /// "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}".
    /// Data: .TrustDomain, .ClusterName, .ClusterDomain, .PodMeta, .PodSpec, .NodeMeta, .NodeSpec. The rendered ID
    /// must be in the operator's trust domain. Required.
    #[serde(rename = "spiffeIDTemplate")]
    #[schemars(length(max = 2048), extend("x-kubernetes-validations" = [
        {"rule": "self.matches('\\\\S')", "message": "spiffeIDTemplate must not be empty"}
    ]))]
    pub spiffe_id_template: String,

    /// Selects the namespaces whose pods this ClusterSPIFFEID applies to. Unset selects every namespace (except
    /// the operator's ignored namespaces).
    #[serde(rename = "namespaceSelector", default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Selects the pods (in the selected namespaces) this ClusterSPIFFEID applies to. Unset selects every pod.
    #[serde(rename = "podSelector", default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// Templates rendering extra workload selectors of the form type:value (e.g. "k8s:container-name:app") that a
    /// workload must also present to get this SPIFFE ID, on top of the pod's UID selector.
    #[serde(rename = "workloadSelectorTemplates", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 1024)), extend("x-kubernetes-validations" = [
        {"rule": "self.all(t, t.matches('\\\\S'))", "message": "workloadSelectorTemplates must not contain empty templates"}
    ]))]
    pub workload_selector_templates: Vec<String>,

    /// Templates rendering extra DNS names for the SVIDs, e.g. "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc".
    #[serde(rename = "dnsNameTemplates", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 1024)), extend("x-kubernetes-validations" = [
        {"rule": "self.all(t, t.matches('\\\\S'))", "message": "dnsNameTemplates must not contain empty templates"}
    ]))]
    pub dns_name_templates: Vec<String>,

    /// Adds the DNS names of the Services that select the pod (name, name.namespace, name.namespace.svc and
    /// name.namespace.svc.<cluster domain>) to its SVIDs.
    #[serde(rename = "autoPopulateDNSNames", default, skip_serializing_if = "is_false")]
    pub auto_populate_dns_names: bool,

    /// Upper bound on the lifetime of X509-SVIDs for these workloads, as a Go duration ("1h", "90m", "1h30m0s").
    /// Unset uses the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<GoDuration>,

    /// Upper bound on the lifetime of JWT-SVIDs for these workloads, as a Go duration ("5m", "1h"). Unset uses the
    /// server's default.
    #[serde(rename = "jwtTtl", default, skip_serializing_if = "Option::is_none")]
    pub jwt_ttl: Option<GoDuration>,

    /// Trust domains (e.g. "example.org") whose bundles these workloads receive, so they can talk to workloads
    /// there. Each needs a ClusterFederatedTrustDomain.
    #[serde(rename = "federatesWith", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 264), pattern(FEDERATES_WITH_PATTERN)), extend("x-kubernetes-validations" = [
        {"rule": "self.all(td, td.matches('^(spiffe://)?[a-z0-9._-]+$'))",
         "message": "federatesWith entries must be trust domain names (lowercase letters, digits, '.', '_', '-'), e.g. example.org"}
    ]))]
    pub federates_with: Vec<String>,

    /// Lets these workloads call the server's administrative APIs. Give it only to admin workloads.
    #[serde(default, skip_serializing_if = "is_false")]
    pub admin: bool,

    /// Marks the entries as describing a downstream server (nested CA).
    #[serde(default, skip_serializing_if = "is_false")]
    pub downstream: bool,

    /// Only the operator configured with this class name acts on this object. Unset: operators that watch
    /// classless objects act on it.
    #[serde(rename = "className", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub class_name: Option<String>,

    /// Applies this ClusterSPIFFEID to a pod only when no non-fallback ClusterSPIFFEID selects that pod.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fallback: bool,

    /// Opaque hint passed to the workload with the SVID, telling it how the SVID should be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub hint: Option<String>,
}

/// What the operator observed the last time it reconciled a ClusterSPIFFEID.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = drop_property_defaults)]
pub struct ClusterSPIFFEIDStatus {
    /// Counters from the last reconciliation.
    #[serde(default)]
    pub stats: ClusterSPIFFEIDStats,

    /// Latest observations of the object's state; type "Ready" is True when every selected pod has its entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Counters from the last reconciliation of a ClusterSPIFFEID (same meaning as spire-controller-manager's).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = drop_property_defaults)]
pub struct ClusterSPIFFEIDStats {
    /// How many namespaces the namespaceSelector selected.
    #[serde(rename = "namespacesSelected", default)]
    pub namespaces_selected: i64,
    /// How many selected namespaces were skipped because the operator is configured to ignore them.
    #[serde(rename = "namespacesIgnored", default)]
    pub namespaces_ignored: i64,
    /// How many pods were selected in the selected namespaces.
    #[serde(rename = "podsSelected", default)]
    pub pods_selected: i64,
    /// How many selected pods got no entry because a template failed to render or rendered an invalid value.
    #[serde(rename = "podEntryRenderFailures", default)]
    pub pod_entry_render_failures: i64,
    /// How many entries were dropped because an older object produced the same entry (same SPIFFE ID, parent
    /// and selectors).
    #[serde(rename = "entriesMasked", default)]
    pub entries_masked: i64,
    /// How many entries should exist on the server for this object.
    #[serde(rename = "entriesToSet", default)]
    pub entries_to_set: i64,
    /// How many entries the server refused to create or update.
    #[serde(rename = "entryFailures", default)]
    pub entry_failures: i64,
}

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
    /// on the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

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

/// Status counters and flags default to zero/false when absent, in Rust only: a `default` in the schema would make
/// the apiserver write them into objects nobody has reconciled yet.
fn drop_property_defaults(schema: &mut schemars::Schema) {
    if let Some(properties) = schema.get_mut("properties").and_then(serde_json::Value::as_object_mut) {
        for property in properties.values_mut() {
            if let Some(property) = property.as_object_mut() {
                property.remove("default");
            }
        }
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn parse_trust_domains(field: &'static str, names: &[String]) -> Result<Vec<TrustDomain>, CrdError> {
    names.iter().map(|name| TrustDomain::new(name).map_err(|source| CrdError::Id { field, source })).collect()
}

impl ClusterSPIFFEIDSpec {
    /// `federatesWith` as trust domains.
    pub fn federates_with(&self) -> Result<Vec<TrustDomain>, CrdError> {
        parse_trust_domains("federatesWith", &self.federates_with)
    }
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

/// The three CRDs, in a fixed order, with descriptions unwrapped (see [`unwrap_description`]).
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![ClusterSPIFFEID::crd(), ClusterFederatedTrustDomain::crd(), ClusterStaticEntry::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
                unwrap_descriptions(schema);
            }
        }
    }
    crds
}

/// Joins the lines of each paragraph of a doc comment (rustfmt wraps them; `kubectl explain` wraps again, so
/// the hard breaks would show mid-sentence). Paragraphs (blank lines) are kept.
pub fn unwrap_description(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| paragraph.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "))
        .filter(|paragraph| !paragraph.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn unwrap_descriptions(schema: &mut JSONSchemaProps) {
    if let Some(description) = schema.description.as_mut() {
        *description = unwrap_description(description);
    }
    for property in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        unwrap_descriptions(property);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(items)) => unwrap_descriptions(items),
        Some(JSONSchemaPropsOrArray::Schemas(list)) => list.iter_mut().for_each(unwrap_descriptions),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        unwrap_descriptions(extra);
    }
}

/// One file of the `crds/` directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedFile {
    /// File name, e.g. `sigil.dev_clusterspiffeids.yaml`.
    pub name: String,
    /// Full YAML text.
    pub contents: String,
}

/// First line of every generated file.
pub const GENERATED_HEADER: &str =
    "# Generated from operator/src/crd.rs by `cargo run -p sigil-operator --bin crdgen`. Do not edit.\n";

/// Name of the file holding `crd`: `<group>_<plural>.yaml` (the controller-gen convention).
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// Whether a file in `crds/` is one [`generated_files`] owns (so a stale one is reported).
pub fn is_generated_file_name(name: &str) -> bool {
    name.starts_with(&format!("{GROUP}_")) && name.ends_with(".yaml")
}

/// The YAML text of `crd`, with [`GENERATED_HEADER`] first.
pub fn render_crd(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    let name = crd.metadata.name.clone().ok_or(CrdError::IncompleteCrd("metadata.name"))?;
    let yaml = serde_yaml::to_string(crd).map_err(|source| CrdError::Yaml { name, source })?;
    Ok(format!("{GENERATED_HEADER}{yaml}"))
}

/// Every file the `crds/` directory should hold, in a fixed order.
pub fn generated_files() -> Result<Vec<GeneratedFile>, CrdError> {
    crds().iter().map(|crd| Ok(GeneratedFile { name: crd_file_name(crd), contents: render_crd(crd)? })).collect()
}

/// How a directory's CRD files differ from the generated ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrdDifference {
    /// A generated file is absent.
    Missing(String),
    /// A file's text differs; `line` is the first differing line (1-based).
    Differs {
        /// File name.
        name: String,
        /// First differing line, 1-based.
        line: usize,
    },
    /// A `sigil.dev_*.yaml` file that no type generates any more.
    Unexpected(String),
}

impl fmt::Display for CrdDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(name) => write!(f, "{name}: missing"),
            Self::Differs { name, line } => write!(f, "{name}: differs from the types (first at line {line})"),
            Self::Unexpected(name) => write!(f, "{name}: not generated by any type (stale?)"),
        }
    }
}

/// Compares the generated files with what a directory holds (`actual`: file name to text, only the names for
/// which [`is_generated_file_name`] holds are considered). Empty when they agree.
pub fn diff_files(expected: &[GeneratedFile], actual: &BTreeMap<String, String>) -> Vec<CrdDifference> {
    let mut differences = Vec::new();
    for file in expected {
        match actual.get(&file.name) {
            None => differences.push(CrdDifference::Missing(file.name.clone())),
            Some(text) if *text != file.contents => {
                let line = first_differing_line(&file.contents, text);
                differences.push(CrdDifference::Differs { name: file.name.clone(), line });
            }
            Some(_) => {}
        }
    }
    for name in actual.keys() {
        if is_generated_file_name(name) && !expected.iter().any(|f| &f.name == name) {
            differences.push(CrdDifference::Unexpected(name.clone()));
        }
    }
    differences
}

fn first_differing_line(a: &str, b: &str) -> usize {
    let mut left = a.lines();
    let mut right = b.lines();
    let mut line = 1;
    loop {
        match (left.next(), right.next()) {
            (Some(x), Some(y)) if x == y => line += 1,
            (None, None) => return line,
            _ => return line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_duration_pattern_agrees_with_parser() {
        let pattern = regex::Regex::new(GO_DURATION_PATTERN).unwrap();
        let inputs = [
            "0", "+0", "-0", "5s", "+5s", "-5s", "5.s", ".5s", ".s", ".", "1.5h", "2h45m", "1h30m0s", "300ms", "12µs",
            "12μs", "11us", "10ns", "", "-", "+", "3", "1h30", "1d", "5sec", "1H", "1h s", " 1h", "1h ", "1..5h",
        ];
        for input in inputs {
            assert_eq!(pattern.is_match(input), parse_go_duration(input).is_ok(), "{input:?}");
        }
    }

    #[test]
    fn go_duration_keeps_text_and_value() {
        let d = GoDuration::new("1h30m0s").unwrap();
        assert_eq!(d.as_str(), "1h30m0s");
        assert_eq!(d.to_duration(), Ok(Duration::from_secs(5400)));
        assert_eq!(serde_json::to_value(&d).unwrap(), serde_json::json!("1h30m0s"));
        assert_eq!(
            GoDuration::new("1 hour"),
            Err(DurationError::UnknownUnit { input: "1 hour".into(), unit: " hour".into() })
        );
        let lenient: GoDuration = serde_json::from_value(serde_json::json!("bad")).unwrap();
        assert!(lenient.to_duration().is_err());
    }

    #[test]
    fn schema_patterns_match_the_rules() {
        let table: &[(&str, &str, bool)] = &[
            (TRUST_DOMAIN_PATTERN, "example.org", true),
            (TRUST_DOMAIN_PATTERN, "my_td-1.test", true),
            (TRUST_DOMAIN_PATTERN, "Example.org", false),
            (TRUST_DOMAIN_PATTERN, "spiffe://example.org", false),
            (TRUST_DOMAIN_PATTERN, "", false),
            (TRUST_DOMAIN_PATTERN, "a/b", false),
            (FEDERATES_WITH_PATTERN, "example.org", true),
            (FEDERATES_WITH_PATTERN, "spiffe://example.org", true),
            (FEDERATES_WITH_PATTERN, "spiffe://example.org/x", false),
            (SPIFFE_ID_PATTERN, "spiffe://example.org/ns/default/sa/web", true),
            (SPIFFE_ID_PATTERN, "spiffe://example.org", true),
            (SPIFFE_ID_PATTERN, "spiffe://example.org/", false),
            (SPIFFE_ID_PATTERN, "spiffe://example.org//a", false),
            (SPIFFE_ID_PATTERN, "spiffe://Example.org/a", false),
            (SPIFFE_ID_PATTERN, "https://example.org/a", false),
            (SPIFFE_ID_PATTERN, "spiffe://example.org/a?b", false),
        ];
        for (pattern, input, expected) in table {
            let re = regex::Regex::new(pattern).unwrap();
            assert_eq!(re.is_match(input), *expected, "{pattern} on {input:?}");
        }
    }

    fn spec_schema(crd: &CustomResourceDefinition, part: &str) -> JSONSchemaProps {
        let root = crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
        root.properties.as_ref().unwrap()[part].clone()
    }

    fn property(schema: &JSONSchemaProps, path: &[&str]) -> JSONSchemaProps {
        let mut current = schema.clone();
        for name in path {
            current =
                current.properties.as_ref().unwrap_or_else(|| panic!("no properties above {name}"))[*name].clone();
        }
        current
    }

    fn field_names(schema: &JSONSchemaProps) -> Vec<String> {
        schema.properties.as_ref().map(|p| p.keys().cloned().collect()).unwrap_or_default()
    }

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn field_names_match_spire_controller_manager() {
        let table: &[(CustomResourceDefinition, &str, &[&str], &[&str])] = &[
            (
                ClusterSPIFFEID::crd(),
                "spec",
                &[
                    "spiffeIDTemplate",
                    "namespaceSelector",
                    "podSelector",
                    "workloadSelectorTemplates",
                    "dnsNameTemplates",
                    "autoPopulateDNSNames",
                    "ttl",
                    "jwtTtl",
                    "federatesWith",
                    "admin",
                    "downstream",
                    "className",
                    "fallback",
                    "hint",
                ],
                &["spiffeIDTemplate"],
            ),
            (
                ClusterFederatedTrustDomain::crd(),
                "spec",
                &["trustDomain", "bundleEndpointURL", "bundleEndpointProfile", "trustDomainBundle", "className"],
                &["bundleEndpointProfile", "bundleEndpointURL", "trustDomain"],
            ),
            (
                ClusterStaticEntry::crd(),
                "spec",
                &[
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
                ],
                &["parentID", "selectors", "spiffeID"],
            ),
            (ClusterStaticEntry::crd(), "status", &["rendered", "masked", "set", "conditions"], &[]),
            (ClusterFederatedTrustDomain::crd(), "status", &["conditions"], &[]),
            (ClusterSPIFFEID::crd(), "status", &["stats", "conditions"], &[]),
        ];
        for (crd, part, fields, required) in table {
            let schema = spec_schema(crd, part);
            assert_eq!(field_names(&schema), sorted(fields), "{} {part}", crd.spec.names.kind);
            let mut got_required = schema.required.clone().unwrap_or_default();
            got_required.sort();
            assert_eq!(got_required, sorted(required), "{} {part} required", crd.spec.names.kind);
        }
        let stats = property(&spec_schema(&ClusterSPIFFEID::crd(), "status"), &["stats"]);
        assert_eq!(
            field_names(&stats),
            sorted(&[
                "namespacesSelected",
                "namespacesIgnored",
                "podsSelected",
                "podEntryRenderFailures",
                "entriesMasked",
                "entriesToSet",
                "entryFailures"
            ])
        );
        let profile = property(&spec_schema(&ClusterFederatedTrustDomain::crd(), "spec"), &["bundleEndpointProfile"]);
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
    fn crd_names_scope_and_subresources() {
        let table: &[(CustomResourceDefinition, &str, &str, &str)] = &[
            (ClusterSPIFFEID::crd(), "clusterspiffeids.sigil.dev", "ClusterSPIFFEID", "csid"),
            (
                ClusterFederatedTrustDomain::crd(),
                "clusterfederatedtrustdomains.sigil.dev",
                "ClusterFederatedTrustDomain",
                "cftd",
            ),
            (ClusterStaticEntry::crd(), "clusterstaticentries.sigil.dev", "ClusterStaticEntry", "cse"),
        ];
        for (crd, name, kind, short) in table {
            assert_eq!(crd.metadata.name.as_deref(), Some(*name));
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Cluster");
            assert_eq!(crd.spec.names.kind, *kind);
            assert_eq!(crd.spec.names.short_names, Some(vec![short.to_string()]));
            assert_eq!(crd.spec.names.categories, Some(vec!["sigil".to_string()]));
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, VERSION);
            assert!(version.served && version.storage);
            assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{kind} status");
            let columns: Vec<&str> =
                version.additional_printer_columns.iter().flatten().map(|c| c.json_path.as_str()).collect();
            assert!(columns.contains(&READY_PATH), "{kind}: {columns:?}");
            assert!(columns.contains(&".metadata.creationTimestamp"), "{kind}: {columns:?}");
        }
        let cftd = ClusterFederatedTrustDomain::crd();
        let names: Vec<&str> =
            cftd.spec.versions[0].additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Trust Domain", "Endpoint URL", "Ready", "Age"]);
    }

    /// Walks every property below `schema`, calling `visit(path, property)`.
    fn walk(path: &str, schema: &JSONSchemaProps, visit: &mut dyn FnMut(&str, &JSONSchemaProps)) {
        for (name, prop) in schema.properties.iter().flatten() {
            let here = format!("{path}.{name}");
            visit(&here, prop);
            walk(&here, prop, visit);
        }
        if let Some(
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items),
        ) = &schema.items
        {
            walk(&format!("{path}[]"), items, visit);
        }
    }

    #[test]
    fn every_field_is_documented() {
        for crd in crds() {
            for part in ["spec", "status"] {
                let schema = spec_schema(&crd, part);
                assert!(schema.description.as_deref().is_some_and(|d| !d.is_empty()), "{} {part}", crd.spec.names.kind);
                let mut undocumented = Vec::new();
                walk(part, &schema, &mut |path, prop| {
                    if prop.description.as_deref().is_none_or(str::is_empty) {
                        undocumented.push(path.to_string());
                    }
                });
                assert!(undocumented.is_empty(), "{}: undocumented {undocumented:?}", crd.spec.names.kind);
            }
        }
        let template = property(&spec_schema(&ClusterSPIFFEID::crd(), "spec"), &["spiffeIDTemplate"]);
        assert!(
            template.description.as_deref().unwrap().contains("Go text/template rendering the workload's SPIFFE ID")
        );
    }

    fn rules_of(schema: &JSONSchemaProps) -> Vec<(String, String)> {
        schema
            .x_kubernetes_validations
            .iter()
            .flatten()
            .map(|r| (r.rule.clone(), r.message.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn validation_rules_have_messages_and_bounded_cost() {
        for crd in crds() {
            let schema = spec_schema(&crd, "spec");
            let mut checked = 0;
            walk("spec", &schema, &mut |path, prop| {
                for (rule, message) in rules_of(prop) {
                    checked += 1;
                    assert!(!message.is_empty(), "{path}: rule {rule} has no message");
                    // Without bounds the apiserver's CEL cost estimate refuses the CRD.
                    match prop.type_.as_deref() {
                        Some("string") => assert!(prop.max_length.is_some(), "{path}: CEL on unbounded string"),
                        Some("array") => {
                            assert!(prop.max_items.is_some(), "{path}: CEL on unbounded array");
                            let Some(JSONSchemaPropsOrArray::Schema(items)) = &prop.items else {
                                panic!("{path}: array without items");
                            };
                            assert!(items.max_length.is_some(), "{path}: CEL on unbounded items");
                        }
                        _ => {}
                    }
                }
            });
            assert!(checked > 0, "{} has no CEL rules", crd.spec.names.kind);
        }
        let profile = property(&spec_schema(&ClusterFederatedTrustDomain::crd(), "spec"), &["bundleEndpointProfile"]);
        assert!(rules_of(&profile).iter().any(|(rule, message)| rule.contains("https_spiffe")
            && message == "endpointSPIFFEID is required when bundleEndpointProfile.type is https_spiffe"));
        let url = property(&spec_schema(&ClusterFederatedTrustDomain::crd(), "spec"), &["bundleEndpointURL"]);
        let messages: Vec<String> = rules_of(&url).into_iter().map(|(_, m)| m).collect();
        assert!(messages.contains(&"bundleEndpointURL must be an https:// URL".to_string()), "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("userinfo")), "{messages:?}");
        let td = property(&spec_schema(&ClusterFederatedTrustDomain::crd(), "spec"), &["trustDomain"]);
        assert_eq!(td.pattern.as_deref(), Some(TRUST_DOMAIN_PATTERN));
        let ttl = property(&spec_schema(&ClusterSPIFFEID::crd(), "spec"), &["ttl"]);
        assert_eq!(ttl.pattern.as_deref(), Some(GO_DURATION_PATTERN));
        assert_eq!(ttl.type_.as_deref(), Some("string"));
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

    #[test]
    fn spire_controller_manager_json_round_trips() {
        let json = serde_json::json!({
            "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}",
            "podSelector": {"matchLabels": {"app": "web"}},
            "federatesWith": ["auditing"],
            "ttl": "1h",
            "jwtTtl": "5m",
            "autoPopulateDNSNames": true,
            "className": "sigil",
        });
        let spec: ClusterSPIFFEIDSpec = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(spec.ttl.as_ref().map(GoDuration::as_str), Some("1h"));
        assert!(spec.auto_populate_dns_names);
        assert_eq!(serde_json::to_value(&spec).unwrap(), json);

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

    #[test]
    fn descriptions_are_unwrapped_but_keep_paragraphs() {
        let table: &[(&str, &str)] = &[
            ("one line", "one line"),
            ("wrapped\nline", "wrapped line"),
            ("  indented\n  lines  ", "indented lines"),
            ("first\nparagraph\n\nsecond", "first paragraph\n\nsecond"),
            ("", ""),
        ];
        for (input, expected) in table {
            assert_eq!(unwrap_description(input), *expected, "{input:?}");
        }
        for crd in crds() {
            let mut wrapped = Vec::new();
            walk("", &spec_schema(&crd, "spec"), &mut |path, prop| {
                if prop.description.as_deref().is_some_and(|d| d.replace("\n\n", "").contains('\n')) {
                    wrapped.push(path.to_string());
                }
            });
            assert!(wrapped.is_empty(), "{}: {wrapped:?}", crd.spec.names.kind);
        }
    }

    #[test]
    fn diff_files_reports_missing_changed_and_stale() {
        let expected = vec![
            GeneratedFile { name: "sigil.dev_a.yaml".into(), contents: "x\ny\n".into() },
            GeneratedFile { name: "sigil.dev_b.yaml".into(), contents: "b\n".into() },
        ];
        let mut actual = BTreeMap::new();
        actual.insert("sigil.dev_a.yaml".to_string(), "x\nz\n".to_string());
        actual.insert("sigil.dev_old.yaml".to_string(), String::new());
        actual.insert("README.md".to_string(), String::new());
        assert_eq!(
            diff_files(&expected, &actual),
            [
                CrdDifference::Differs { name: "sigil.dev_a.yaml".into(), line: 2 },
                CrdDifference::Missing("sigil.dev_b.yaml".into()),
                CrdDifference::Unexpected("sigil.dev_old.yaml".into()),
            ]
        );
        actual.remove("sigil.dev_old.yaml");
        actual.insert("sigil.dev_a.yaml".into(), "x\ny\n".into());
        actual.insert("sigil.dev_b.yaml".into(), "b\n".into());
        assert!(diff_files(&expected, &actual).is_empty());
    }

    #[test]
    fn generated_files_are_named_and_marked() {
        let files = generated_files().unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "sigil.dev_clusterspiffeids.yaml",
                "sigil.dev_clusterfederatedtrustdomains.yaml",
                "sigil.dev_clusterstaticentries.yaml"
            ]
        );
        for file in &files {
            assert!(file.contents.starts_with(GENERATED_HEADER), "{}", file.name);
            assert!(file.contents.contains("apiVersion: apiextensions.k8s.io/v1"), "{}", file.name);
        }
    }
}
