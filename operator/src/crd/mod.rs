//! The operator's custom resources: `ClusterSPIFFEID`, `ClusterFederatedTrustDomain` and `ClusterStaticEntry`
//! (group `sigil.dev`, version `v1alpha1`, all cluster-scoped), one module per kind:
//! [`cluster_spiffe_id`], [`cluster_federated_trust_domain`], [`cluster_static_entry`]. Their types are
//! re-exported here (`crate::crd::ClusterSPIFFEID`, ...); this module holds what the kinds share (patterns,
//! [`GoDuration`], [`CrdError`]) and the YAML generation.
//!
//! Field names on the wire are the same as spire-controller-manager's (`spire.spiffe.io/v1alpha1`), so existing
//! manifests only need their `apiVersion` changed. The schema carries the validation (patterns and CEL rules)
//! so the apiserver refuses bad objects with a message that says what is wrong; nothing here does I/O.
//!
//! The committed YAML in `crds/` is produced by [`generated_files`], and the `sigil-crds` Helm chart's copy in
//! [`CHART_TEMPLATES_DIR`] by [`chart_files`] (the same text, Helm-escaped); the `crdgen` binary writes both, and
//! a test fails when either drifts from these types.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sigil_core::duration::{DurationError, parse_go_duration};
use sigil_core::{IdError, SelectorError, TrustDomain};

pub mod cluster_federated_trust_domain;
pub mod cluster_spiffe_id;
pub mod cluster_static_entry;

pub use self::cluster_federated_trust_domain::{
    BundleEndpointProfile, BundleEndpointProfileType, ClusterFederatedTrustDomain, ClusterFederatedTrustDomainSpec,
    ClusterFederatedTrustDomainStatus, FederationBundleStatus,
};
pub use self::cluster_spiffe_id::{
    ClusterSPIFFEID, ClusterSPIFFEIDSpec, ClusterSPIFFEIDStats, ClusterSPIFFEIDStatus, SPIFFE_ID_TEMPLATE_MESSAGE,
    SPIFFE_ID_TEMPLATE_PATTERN, SPIFFE_ID_TEMPLATE_REASON, SPIFFE_ID_TEMPLATE_RULE, spiffe_id_template_starts_well,
};
pub use self::cluster_static_entry::{ClusterStaticEntry, ClusterStaticEntrySpec, ClusterStaticEntryStatus};

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
    /// `spiffeIDTemplate` cannot render a `spiffe://` URI (see [`SPIFFE_ID_TEMPLATE_PATTERN`]).
    #[error("spiffeIDTemplate: {}", SPIFFE_ID_TEMPLATE_REASON)]
    SpiffeIdTemplateStart,
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
    "# Generated from operator/src/crd/ by `cargo run -p sigil-operator --bin crdgen`. Do not edit.\n";

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

/// Where the `sigil-crds` Helm chart keeps its copy of the CRDs, relative to the repository root.
pub const CHART_TEMPLATES_DIR: &str = "charts/sigil-crds/templates";

/// What Helm renders back as `{{`: Helm treats every file under a chart's `templates/` as a Go template.
pub const HELM_OPEN_ACTION: &str = r#"{{ "{{" }}"#;

/// `text` as a Helm template that renders to exactly `text`: every `{{` becomes [`HELM_OPEN_ACTION`] (a
/// closing `}}` outside an action is plain text, so nothing else needs escaping).
pub fn helm_escape(text: &str) -> String {
    text.replace("{{", HELM_OPEN_ACTION)
}

/// Every file the `sigil-crds` chart's `templates/` should hold: the same files as [`generated_files`],
/// escaped with [`helm_escape`], so `helm template` prints the text of `crds/` unchanged.
pub fn chart_files() -> Result<Vec<GeneratedFile>, CrdError> {
    Ok(generated_files()?
        .into_iter()
        .map(|file| GeneratedFile { contents: helm_escape(&file.contents), name: file.name })
        .collect())
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

    pub(super) fn spec_schema(crd: &CustomResourceDefinition, part: &str) -> JSONSchemaProps {
        let root = crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
        root.properties.as_ref().unwrap()[part].clone()
    }

    pub(super) fn property(schema: &JSONSchemaProps, path: &[&str]) -> JSONSchemaProps {
        let mut current = schema.clone();
        for name in path {
            current =
                current.properties.as_ref().unwrap_or_else(|| panic!("no properties above {name}"))[*name].clone();
        }
        current
    }

    pub(super) fn field_names(schema: &JSONSchemaProps) -> Vec<String> {
        schema.properties.as_ref().map(|p| p.keys().cloned().collect()).unwrap_or_default()
    }

    pub(super) fn sorted(names: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    /// Walks every property below `schema`, calling `visit(path, property)`.
    pub(super) fn walk(path: &str, schema: &JSONSchemaProps, visit: &mut dyn FnMut(&str, &JSONSchemaProps)) {
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

    pub(super) fn rules_of(schema: &JSONSchemaProps) -> Vec<(String, String)> {
        schema
            .x_kubernetes_validations
            .iter()
            .flatten()
            .map(|r| (r.rule.clone(), r.message.clone().unwrap_or_default()))
            .collect()
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
    fn chart_files_render_to_the_crds_with_go_templates() {
        assert_eq!(helm_escape("a {{ .X }} b {{- y }}}"), r#"a {{ "{{" }} .X }} b {{ "{{" }}- y }}}"#);
        assert_eq!(helm_escape("no actions }}"), "no actions }}");
        let plain = generated_files().unwrap();
        let chart = chart_files().unwrap();
        assert_eq!(plain.len(), chart.len());
        let mut escaped = 0;
        for (p, c) in plain.iter().zip(&chart) {
            assert_eq!(p.name, c.name);
            escaped += usize::from(p.contents != c.contents);
            // Rendered as a Go template (what Helm does with templates/), the chart's copy is the CRD again.
            let rendered = crate::template::Template::parse(&c.contents)
                .and_then(|t| t.render(&serde_json::json!({})))
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(rendered, p.contents, "{}", c.name);
        }
        // The ClusterSPIFFEID documents and validates templates, so its text has actions to escape.
        assert!(escaped >= 1);
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
