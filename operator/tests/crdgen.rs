#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The committed CRD YAML must be exactly what the types in `operator/src/crd/` generate: `crds/`, and the
//! `sigil-crds` chart's `templates/` (the same text, Helm-escaped). `cargo run -p sigil-operator --bin crdgen`
//! rewrites both.

use std::collections::BTreeMap;
use std::path::Path;

use sigil_operator::crd::{
    CHART_TEMPLATES_DIR, GENERATED_HEADER, GeneratedFile, chart_files, diff_files, generated_files,
    is_generated_file_name,
};
use sigil_operator::template::Template;

fn committed_files(relative: &str) -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_generated_file_name(&name) {
            files.insert(name, std::fs::read_to_string(entry.path()).unwrap());
        }
    }
    files
}

fn assert_up_to_date(relative: &str, expected: &[GeneratedFile]) {
    let differences = diff_files(expected, &committed_files(relative));
    let listed: Vec<String> = differences.iter().map(ToString::to_string).collect();
    assert!(
        differences.is_empty(),
        "{relative}/ is out of date with operator/src/crd/:\n  {}\nrun `cargo run -p sigil-operator --bin crdgen` and \
         commit crds/ and {CHART_TEMPLATES_DIR}/",
        listed.join("\n  ")
    );
}

#[test]
fn committed_crds_match_the_types() {
    assert_up_to_date("crds", &generated_files().unwrap());
}

#[test]
fn committed_chart_templates_match_the_types() {
    assert_up_to_date(CHART_TEMPLATES_DIR, &chart_files().unwrap());
}

#[test]
fn committed_crds_are_complete_yaml_documents() {
    let files = committed_files("crds");
    assert_eq!(files.len(), 3, "{:?}", files.keys().collect::<Vec<_>>());
    for (name, text) in &files {
        assert!(text.starts_with(GENERATED_HEADER), "{name} lacks the generated header");
        let doc: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
        assert_eq!(doc["kind"].as_str(), Some("CustomResourceDefinition"), "{name}");
        assert_eq!(doc["spec"]["group"].as_str(), Some("sigil.dev"), "{name}");
        let plural = doc["spec"]["names"]["plural"].as_str().unwrap();
        assert_eq!(name, &format!("sigil.dev_{plural}.yaml"));
    }
}

/// What `helm template` does with the chart's copies (Go text/template, no values used) gives back `crds/`
/// byte for byte; and the chart keeps no CRD on uninstall (no `helm.sh/resource-policy`).
#[test]
fn chart_templates_render_to_the_committed_crds() {
    let crds = committed_files("crds");
    let chart = committed_files(CHART_TEMPLATES_DIR);
    assert_eq!(chart.keys().collect::<Vec<_>>(), crds.keys().collect::<Vec<_>>());
    for (name, text) in &chart {
        let rendered = Template::parse(text)
            .and_then(|t| t.render(&serde_json::json!({})))
            .unwrap_or_else(|e| panic!("{CHART_TEMPLATES_DIR}/{name}: {e}"));
        assert_eq!(&rendered, &crds[name], "{CHART_TEMPLATES_DIR}/{name} does not render to crds/{name}");
        assert!(!text.contains("resource-policy"), "{name}");
    }
}

#[test]
fn chart_metadata_and_values_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sigil-crds");
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart["name"].as_str(), Some("sigil-crds"));
    assert_eq!(chart["type"].as_str(), Some("application"));
    assert_eq!(chart["version"].as_str(), Some("0.1.0"));
    // appVersion is the workspace's version.
    let workspace: toml::Value =
        toml::from_str(&std::fs::read_to_string(root.join("../../Cargo.toml")).unwrap()).unwrap();
    assert_eq!(chart["appVersion"].as_str(), workspace["workspace"]["package"]["version"].as_str());
    assert!(!root.join("crds").exists(), "CRDs belong in templates/: Helm never upgrades a chart's crds/");

    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("values.yaml")).unwrap()).unwrap();
    assert!(values.as_mapping().is_some_and(|m| m.is_empty()), "values.yaml: {values:?}");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("values.schema.json")).unwrap()).unwrap();
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["additionalProperties"], false);
    let keys: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["global"], "only Helm's own key");
}
