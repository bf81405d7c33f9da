//! `ClusterSPIFFEID`: gives the pods it selects a SPIFFE ID rendered from templates.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sigil_core::TrustDomain;

use super::{CrdError, FEDERATES_WITH_PATTERN, GoDuration, drop_property_defaults, is_false, parse_trust_domains};

/// Pattern every `spiffeIDTemplate` matches: it starts with `spiffe://` or with a template action (`{{`, which
/// includes `{{-`). Anything else cannot render a `spiffe://` URI: literal text before the first action is
/// rendered as is, and leading whitespace is not trimmed (spire-controller-manager trims nothing either).
pub const SPIFFE_ID_TEMPLATE_PATTERN: &str = r"^(spiffe://|\{\{)";
/// The CEL rule of [`SPIFFE_ID_TEMPLATE_PATTERN`], so the apiserver's refusal carries
/// [`SPIFFE_ID_TEMPLATE_MESSAGE`].
pub const SPIFFE_ID_TEMPLATE_RULE: &str = "self.startsWith('spiffe://') || self.startsWith('{{')";
/// What the apiserver says when [`SPIFFE_ID_TEMPLATE_RULE`] fails.
pub const SPIFFE_ID_TEMPLATE_MESSAGE: &str = "spiffeIDTemplate must start with spiffe:// or with a template action \
     {{ ... }} (nothing before it, not even whitespace)";
/// The same refusal in the operator's own check ([`ClusterSPIFFEIDSpec::check_spiffe_id_template_start`]),
/// which names the field separately.
pub const SPIFFE_ID_TEMPLATE_REASON: &str =
    "must start with spiffe:// or with a template action {{ ... }} (nothing before it, not even whitespace)";

/// Whether `template` starts as [`SPIFFE_ID_TEMPLATE_PATTERN`] requires.
pub fn spiffe_id_template_starts_well(template: &str) -> bool {
    template.starts_with("spiffe://") || template.starts_with("{{")
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
    ///
    /// Must start with "spiffe://" or with a template action ("{{" or "{{-"); nothing may come before it, not
    /// even whitespace, which is not trimmed (it would be rendered into the ID, as in spire-controller-manager).
    #[serde(rename = "spiffeIDTemplate")]
    #[schemars(length(max = 2048), pattern(SPIFFE_ID_TEMPLATE_PATTERN), extend("x-kubernetes-validations" = [
        {"rule": "self.matches('\\\\S')", "message": "spiffeIDTemplate must not be empty"},
        {"rule": SPIFFE_ID_TEMPLATE_RULE, "message": SPIFFE_ID_TEMPLATE_MESSAGE}
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

impl ClusterSPIFFEIDSpec {
    /// The schema's start rule on `spiffeIDTemplate` ([`SPIFFE_ID_TEMPLATE_RULE`]), for objects the apiserver
    /// stored without it (created before the CRD had the rule).
    pub fn check_spiffe_id_template_start(&self) -> Result<(), CrdError> {
        if spiffe_id_template_starts_well(&self.spiffe_id_template) {
            Ok(())
        } else {
            Err(CrdError::SpiffeIdTemplateStart)
        }
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
    use crate::crd::tests::{field_names, property, rules_of, sorted, spec_schema};
    use crate::crd::{GO_DURATION_PATTERN, generated_files, unwrap_description};

    #[test]
    fn field_names_match_spire_controller_manager() {
        let spec = spec_schema(&ClusterSPIFFEID::crd(), "spec");
        assert_eq!(
            field_names(&spec),
            sorted(&[
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
            ])
        );
        assert_eq!(spec.required, Some(vec!["spiffeIDTemplate".to_string()]));
        let status = spec_schema(&ClusterSPIFFEID::crd(), "status");
        assert_eq!(field_names(&status), sorted(&["stats", "conditions"]));
        assert_eq!(status.required.clone().unwrap_or_default(), Vec::<String>::new());
        let stats = property(&status, &["stats"]);
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
    }

    #[test]
    fn template_is_documented_and_ttl_is_a_go_duration() {
        let spec = spec_schema(&ClusterSPIFFEID::crd(), "spec");
        let template = property(&spec, &["spiffeIDTemplate"]);
        assert!(
            template.description.as_deref().unwrap().contains("Go text/template rendering the workload's SPIFFE ID")
        );
        let ttl = property(&spec, &["ttl"]);
        assert_eq!(ttl.pattern.as_deref(), Some(GO_DURATION_PATTERN));
        assert_eq!(ttl.type_.as_deref(), Some("string"));
    }

    #[test]
    fn spiffe_id_template_must_start_with_spiffe_or_an_action() {
        let template = property(&spec_schema(&ClusterSPIFFEID::crd(), "spec"), &["spiffeIDTemplate"]);
        assert_eq!(template.pattern.as_deref(), Some(SPIFFE_ID_TEMPLATE_PATTERN));
        assert!(
            rules_of(&template)
                .contains(&(SPIFFE_ID_TEMPLATE_RULE.to_string(), SPIFFE_ID_TEMPLATE_MESSAGE.to_string())),
            "{:?}",
            rules_of(&template)
        );
        assert_eq!(
            SPIFFE_ID_TEMPLATE_MESSAGE,
            "spiffeIDTemplate must start with spiffe:// or with a template action {{ ... }} (nothing before it, not \
             even whitespace)"
        );
        assert!(unwrap_description(template.description.as_deref().unwrap()).contains("not even whitespace"));

        // The generated YAML (what crds/ and the chart hold) carries the rule, the message and the pattern.
        let files = generated_files().unwrap();
        let yaml = &files.iter().find(|f| f.name == "sigil.dev_clusterspiffeids.yaml").unwrap().contents;
        let doc: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let field = &doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["spiffeIDTemplate"];
        assert_eq!(field["pattern"].as_str(), Some(r"^(spiffe://|\{\{)"));
        let rules = field["x-kubernetes-validations"].as_sequence().unwrap();
        assert!(
            rules.iter().any(|r| r["rule"].as_str() == Some("self.startsWith('spiffe://') || self.startsWith('{{')")
                && r["message"].as_str() == Some(SPIFFE_ID_TEMPLATE_MESSAGE)),
            "{rules:?}"
        );

        // The pattern, the CEL rule (its two prefixes) and the operator's own check agree.
        let pattern = regex::Regex::new(SPIFFE_ID_TEMPLATE_PATTERN).unwrap();
        let table: &[(&str, bool)] = &[
            ("spiffe://example.org/x", true),
            ("spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}", true),
            ("{{ .TrustDomain }}", true),
            ("{{- .TrustDomain -}}", true),
            ("{{/* c */}}spiffe://x", true),
            ("http://example.org/x", false),
            ("https://example.org/x", false),
            ("SPIFFE://example.org/x", false),
            ("spiffe:/example.org/x", false),
            (" spiffe://example.org/x", false),
            ("\n{{ .TrustDomain }}", false),
            ("{ {.TrustDomain}}", false),
            ("x", false),
            ("", false),
        ];
        for (input, expected) in table {
            assert_eq!(pattern.is_match(input), *expected, "pattern on {input:?}");
            assert_eq!(spiffe_id_template_starts_well(input), *expected, "check on {input:?}");
            let cel = input.starts_with("spiffe://") || input.starts_with("{{");
            assert_eq!(cel, *expected, "CEL on {input:?}");
            let spec = ClusterSPIFFEIDSpec { spiffe_id_template: input.to_string(), ..Default::default() };
            assert_eq!(spec.check_spiffe_id_template_start().is_ok(), *expected, "{input:?}");
        }
        let refused = ClusterSPIFFEIDSpec { spiffe_id_template: "http://x".into(), ..Default::default() };
        assert_eq!(
            refused.check_spiffe_id_template_start().unwrap_err().to_string(),
            format!("spiffeIDTemplate: {SPIFFE_ID_TEMPLATE_REASON}")
        );
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
        assert_eq!(spec.ttl.as_ref().unwrap().to_duration(), Ok(Duration::from_secs(3600)));
        assert!(spec.auto_populate_dns_names);
        assert_eq!(serde_json::to_value(&spec).unwrap(), json);
    }
}
