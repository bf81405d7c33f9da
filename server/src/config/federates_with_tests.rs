//! Table tests of `[federation.federates_with."<td>"]`.

use std::path::PathBuf;

use sigil_core::federation::{BundleEndpointProfile, FederationRelationship};
use sigil_core::{SpiffeId, TrustDomain};

use super::ConfiguredRelationship;
use crate::config::{FileConfig, Overrides, ServerConfig};

fn resolve_text(text: &str) -> Result<Vec<ConfiguredRelationship>, String> {
    let file = FileConfig::parse(&format!("[server]\ntrust_domain = \"a.test\"\n{text}"))?;
    ServerConfig::resolve(file, Overrides::default()).map(|c| c.federates_with).map_err(|e| e.to_string())
}

fn rel(td: &str, url: &str, profile: BundleEndpointProfile, ca: Option<&str>) -> ConfiguredRelationship {
    ConfiguredRelationship {
        relationship: FederationRelationship {
            trust_domain: TrustDomain::new(td).unwrap(),
            bundle_endpoint_url: url.into(),
            profile,
            managed_by: String::new(),
        },
        ca_file_path: ca.map(PathBuf::from),
    }
}

fn spiffe(id: &str) -> BundleEndpointProfile {
    BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id: SpiffeId::new(id).unwrap() }
}

#[test]
fn absent_means_none() {
    assert_eq!(resolve_text("").unwrap(), vec![]);
    assert_eq!(resolve_text("[federation]\n").unwrap(), vec![]);
    assert_eq!(resolve_text("[federation.federates_with]\n").unwrap(), vec![]);
}

#[test]
fn good_configs() {
    let cases: Vec<(&str, Vec<ConfiguredRelationship>)> = vec![
        (
            "[federation.federates_with.\"b.test\"]\nbundle_endpoint_url = \"https://b.test:8443\"\nbundle_endpoint_profile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://b.test/spire/server\"\n",
            vec![rel("b.test", "https://b.test:8443", spiffe("spiffe://b.test/spire/server"), None)],
        ),
        (
            "[federation.federates_with.\"spiffe://b.test\"]\nbundle_endpoint_url = \"https://b.test/\"\nbundle_endpoint_profile = \"https_web\"\n",
            vec![rel("b.test", "https://b.test/", BundleEndpointProfile::HttpsWeb, None)],
        ),
        (
            "[federation.federates_with.\"b.test\"]\nbundle_endpoint_url = \"https://10.0.0.2:8443/bundle\"\nbundle_endpoint_profile = \"https_web\"\nca_file_path = \"/etc/sigil/b.pem\"\n",
            vec![rel(
                "b.test",
                "https://10.0.0.2:8443/bundle",
                BundleEndpointProfile::HttpsWeb,
                Some("/etc/sigil/b.pem"),
            )],
        ),
        (
            // The endpoint may live in another trust domain (a relay), and tables come out in trust domain order.
            "[federation.federates_with.\"z.test\"]\nbundle_endpoint_url = \"https://relay.test/z\"\nbundle_endpoint_profile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://relay.test/bundles\"\n\
             [federation.federates_with.c]\nbundle_endpoint_url = \"https://c\"\nbundle_endpoint_profile = \"https_web\"\n",
            vec![
                rel("c", "https://c", BundleEndpointProfile::HttpsWeb, None),
                rel("z.test", "https://relay.test/z", spiffe("spiffe://relay.test/bundles"), None),
            ],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(resolve_text(text).unwrap(), want, "{text}");
    }
}

#[test]
fn bad_configs_name_the_key() {
    let head = "[federation.federates_with.\"b.test\"]\n";
    let url = "bundle_endpoint_url = \"https://b.test:8443\"\n";
    let sp = "bundle_endpoint_profile = \"https_spiffe\"\n";
    let web = "bundle_endpoint_profile = \"https_web\"\n";
    let id = "endpoint_spiffe_id = \"spiffe://b.test/spire/server\"\n";
    let key = "config field `federation.federates_with.\"b.test\"";
    let cases: Vec<(String, String)> = vec![
        (format!("{head}{sp}{id}"), format!("{key}.bundle_endpoint_url`: is required")),
        (format!("{head}bundle_endpoint_url = \"\"\n{sp}{id}"), format!("{key}.bundle_endpoint_url`: is required")),
        (
            format!("{head}bundle_endpoint_url = \"http://b.test:8443\"\n{sp}{id}"),
            format!("{key}.bundle_endpoint_url`: bundle endpoint URL \"http://b.test:8443\" must use the https scheme"),
        ),
        (
            format!("{head}bundle_endpoint_url = \"https://user@b.test/\"\n{sp}{id}"),
            format!("{key}.bundle_endpoint_url`: bundle endpoint URL \"https://user@b.test/\" must not contain user info"),
        ),
        (
            format!("{head}{url}{id}"),
            format!(
                "{key}.bundle_endpoint_profile`: is required: \"https_spiffe\" (with endpoint_spiffe_id) or \"https_web\""
            ),
        ),
        (
            format!("{head}{url}bundle_endpoint_profile = \"spiffe\"\n"),
            format!("{key}.bundle_endpoint_profile`: \"spiffe\" is not one of https_spiffe, https_web"),
        ),
        (
            format!("{head}{url}{sp}"),
            format!("{key}.endpoint_spiffe_id`: is required with https_spiffe, e.g. \"spiffe://b.test/spire/server\""),
        ),
        (
            format!("{head}{url}{sp}endpoint_spiffe_id = \"b.test/spire/server\"\n"),
            format!("{key}.endpoint_spiffe_id`: \"b.test/spire/server\": "),
        ),
        (format!("{head}{url}{web}{id}"), format!("{key}.endpoint_spiffe_id`: is only used with bundle_endpoint_profile = \"https_spiffe\"")),
        (
            format!("{head}{url}{sp}{id}ca_file_path = \"/ca.pem\"\n"),
            format!("{key}.ca_file_path`: is only used with bundle_endpoint_profile = \"https_web\""),
        ),
        (format!("{head}{url}{web}ca_file_path = \"\"\n"), format!("{key}.ca_file_path`: must not be empty")),
        (
            format!("[federation.federates_with.\"a.test\"]\n{url}{web}"),
            "config field `federation.federates_with.\"a.test\"`: a.test is the server's own trust domain; federation needs a foreign one".into(),
        ),
        (
            format!("[federation.federates_with.\"B.test\"]\n{url}{web}"),
            "config field `federation.federates_with.\"B.test\"`: is not a trust domain name: ".into(),
        ),
        (
            format!("[federation.federates_with.\"b.test\"]\n{url}{web}[federation.federates_with.\"spiffe://b.test\"]\n{url}{web}"),
            "config field `federation.federates_with.\"spiffe://b.test\"`: trust domain b.test is configured twice".into(),
        ),
    ];
    for (text, want) in cases {
        let err = resolve_text(&text).unwrap_err();
        assert!(err.starts_with(&want), "{text}\n got: {err}\nwant: {want}");
    }
}

#[test]
fn unknown_keys_and_spire_blocks_are_refused_by_the_parser() {
    let cases: &[(&str, &str)] = &[
        (
            "[federation.federates_with.\"b.test\"]\nbundle_endpoint = \"https://b.test\"\n",
            "unknown field `bundle_endpoint`",
        ),
        ("[federation.federates_with.\"b.test\"]\nbundle_endpoint_url = 8443\n", "invalid type: integer `8443`"),
        // SPIRE's HCL block spelling carried over literally.
        (
            "[federation.federates_with.\"b.test\".bundle_endpoint_profile.https_spiffe]\nendpoint_spiffe_id = \"spiffe://b.test/spire/server\"\n",
            "invalid type: map, expected a string",
        ),
    ];
    for (text, want) in cases {
        let err = resolve_text(text).unwrap_err();
        assert!(err.contains(want), "{text:?} -> {err}");
    }
}
