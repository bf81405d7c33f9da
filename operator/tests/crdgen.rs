#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The committed CRD YAML in `crds/` must be exactly what the types in `operator/src/crd/` generate.

use std::collections::BTreeMap;
use std::path::Path;

use sigil_operator::crd::{GENERATED_HEADER, diff_files, generated_files, is_generated_file_name};

fn committed_files() -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
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

#[test]
fn committed_crds_match_the_types() {
    let expected = generated_files().unwrap();
    let differences = diff_files(&expected, &committed_files());
    let listed: Vec<String> = differences.iter().map(ToString::to_string).collect();
    assert!(
        differences.is_empty(),
        "crds/ is out of date with operator/src/crd/:\n  {}\nrun `cargo run -p sigil-operator --bin crdgen` and commit crds/",
        listed.join("\n  ")
    );
}

#[test]
fn committed_crds_are_complete_yaml_documents() {
    let files = committed_files();
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
