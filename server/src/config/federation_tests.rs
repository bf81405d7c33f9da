//! Table tests of `[federation]` (kept beside federation.rs so that file stays about the rules).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::config::{FileConfig, Overrides, ServerConfig};

const MIN: u64 = 60;
const HOUR: u64 = 3600;

fn resolve_text(text: &str) -> Result<Option<BundleEndpointConfig>, String> {
    let file = FileConfig::parse(&format!("[server]\ntrust_domain = \"td\"\n{text}"))?;
    ServerConfig::resolve(file, Overrides::default()).map(|c| c.bundle_endpoint).map_err(|e| e.to_string())
}

fn endpoint(text: &str) -> BundleEndpointConfig {
    match resolve_text(&format!("[federation.bundle_endpoint]\n{text}")) {
        Ok(Some(c)) => c,
        other => panic!("{text:?} -> {other:?}"),
    }
}

#[test]
fn publish_lead_follows_the_ca_schedule() {
    // Prepared at half the lifetime before the end, activated at a sixth (capped at 30 and 7 days).
    let cases: &[(u64, u64)] = &[(24 * HOUR, 8 * HOUR), (2 * MIN, 40), (90 * 24 * HOUR, 23 * 24 * HOUR), (0, 0)];
    for (ttl, lead) in cases {
        assert_eq!(publish_lead(Duration::from_secs(*ttl)), *lead, "ca_ttl {ttl}s");
    }
}

#[test]
fn refresh_hint_checks() {
    let low = "set too low";
    let high = "set to a high value";
    let lead = "before it signs";
    let day = Duration::from_secs(24 * HOUR);
    let s = Duration::from_secs;
    type Want<'a> = Result<&'a [&'a str], &'a str>;
    let cases: &[(Duration, Duration, Want<'_>)] = &[
        (s(300), day, Ok(&[])),
        (s(60), day, Ok(&[])),
        (s(59), day, Ok(&[low])),
        (s(1), day, Ok(&[low])),
        (s(8 * HOUR / 3), day, Ok(&[])),
        (s(8 * HOUR / 3 + 1), day, Ok(&[lead])),
        (s(24 * HOUR - 1), day, Ok(&[lead])),
        (s(24 * HOUR), day, Ok(&[high, lead])),
        (s(24 * HOUR), s(365 * 24 * HOUR), Ok(&[high])),
        (s(13), s(2 * MIN), Ok(&[low])),
        (s(14), s(2 * MIN), Ok(&[low, lead])),
        (s(0), day, Err("must be at least 1s (the bundle carries it in whole seconds)")),
        (Duration::from_millis(999), day, Err("must be at least 1s (the bundle carries it in whole seconds)")),
        (
            Duration::from_millis(1500),
            day,
            Err("1.5s is not a whole number of seconds (the bundle carries whole seconds)"),
        ),
    ];
    for (hint, ttl, want) in cases {
        let got = check_refresh_hint(*hint, *ttl);
        match (got, want) {
            (Ok(warnings), Ok(want)) => {
                assert_eq!(warnings.len(), want.len(), "{hint:?}/{ttl:?}: {warnings:?}");
                for (w, part) in warnings.iter().zip(want.iter()) {
                    assert!(w.starts_with("`federation.bundle_endpoint.refresh_hint` "), "{w}");
                    assert!(w.contains(part), "{hint:?}/{ttl:?}: {w:?} lacks {part:?}");
                }
            }
            (Err(e), Err(want)) => assert_eq!(e, *want, "{hint:?}"),
            (got, _) => panic!("{hint:?}/{ttl:?} -> {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn lead_warning_text() {
    let w = check_refresh_hint(Duration::from_secs(300), Duration::from_secs(120)).unwrap();
    assert_eq!(
        w,
        [
            "`federation.bundle_endpoint.refresh_hint` 300s: a new CA is published only 40s before it signs (ca_ttl 120s); peers refreshing every 300s may not fetch it in time (keep the hint under 13s)"
        ]
    );
}

#[test]
fn absent_section_means_no_endpoint() {
    assert_eq!(resolve_text("").unwrap(), None);
    assert_eq!(resolve_text("[federation]\n").unwrap(), None);
}

#[test]
fn good_configs() {
    let files = |interval: u64| {
        ServingProfile::HttpsWeb(ServingCertFile {
            cert_file_path: "/etc/sigil/web.crt".into(),
            key_file_path: "/etc/sigil/web.key".into(),
            file_sync_interval: Duration::from_millis(interval),
        })
    };
    let web = "profile = \"https_web\"\n[federation.bundle_endpoint.serving_cert_file]\ncert_file_path = \"/etc/sigil/web.crt\"\nkey_file_path = \"/etc/sigil/web.key\"\n";
    let any: IpAddr = "0.0.0.0".parse().unwrap();
    type Want = (IpAddr, u16, u64, ServingProfile);
    let cases: Vec<(String, Want)> = vec![
        ("port = 8443\nprofile = \"https_spiffe\"\n".into(), (any, 8443, 300, ServingProfile::HttpsSpiffe)),
        ("port = 0\nprofile = \"https_spiffe\"\n".into(), (any, 0, 300, ServingProfile::HttpsSpiffe)),
        (
            "address = \"\"\nport = 8443\nprofile = \"https_spiffe\"\n".into(),
            (any, 8443, 300, ServingProfile::HttpsSpiffe),
        ),
        (
            "address = \"::1\"\nport = 65535\nrefresh_hint = \"1h30m\"\nprofile = \"https_spiffe\"\n".into(),
            ("::1".parse().unwrap(), 65535, 5400, ServingProfile::HttpsSpiffe),
        ),
        (
            format!("address = \"127.0.0.1\"\nport = 8443\n{web}"),
            ("127.0.0.1".parse().unwrap(), 8443, 300, files(3_600_000)),
        ),
        (format!("port = 8443\n{web}file_sync_interval = \"250ms\"\n"), (any, 8443, 300, files(250))),
        (format!("port = 8443\n{web}file_sync_interval = \"5m\"\n"), (any, 8443, 300, files(300_000))),
    ];
    for (text, (address, port, hint, profile)) in cases {
        let c = endpoint(&text);
        let want =
            BundleEndpointConfig { address, port, refresh_hint: Duration::from_secs(hint), profile, warnings: vec![] };
        assert_eq!(c, want, "{text}");
    }
}

#[test]
fn warnings_for_spire_defaults() {
    let c = endpoint("");
    assert_eq!(c.port, 0);
    assert_eq!(c.profile, ServingProfile::HttpsSpiffe);
    assert_eq!(
        c.warnings,
        [
            "no `federation.bundle_endpoint.port`: the bundle endpoint listens on a random port (logged at start); peers need a fixed one, e.g. port = 8443",
            "no `federation.bundle_endpoint.profile`: using https_spiffe (the server's own SVID), as SPIRE does (SPIRE deprecates the default); set profile = \"https_spiffe\" or \"https_web\"",
        ]
    );
    let c = endpoint("port = 8443\nprofile = \"https_spiffe\"\nrefresh_hint = \"30s\"\n");
    assert_eq!(c.refresh_hint, Duration::from_secs(30));
    assert_eq!(
        c.warnings,
        [
            "`federation.bundle_endpoint.refresh_hint` 30s: bundle endpoint refresh hint set too low; SPIRE servers will not refresh more often than once a minute"
        ]
    );
    // A short CA lifetime makes the default hint too long to see a new CA in time.
    let c = resolve_text("ca_ttl = \"2m\"\n[federation.bundle_endpoint]\nport = 1\nprofile = \"https_spiffe\"\n")
        .unwrap()
        .unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].contains("published only 40s before it signs"), "{:?}", c.warnings);
}

#[test]
fn bad_configs_name_the_key() {
    let web_table = "[federation.bundle_endpoint.serving_cert_file]\ncert_file_path = \"/c\"\nkey_file_path = \"/k\"\n";
    let cases: Vec<(String, &str)> = vec![
        (
            "port = 70000\n".into(),
            "config field `federation.bundle_endpoint.port`: 70000 is not a port number (0-65535)",
        ),
        ("port = -1\n".into(), "config field `federation.bundle_endpoint.port`: -1 is not a port number (0-65535)"),
        (
            "address = \"localhost\"\n".into(),
            "config field `federation.bundle_endpoint.address`: \"localhost\" is not an IP address",
        ),
        (
            "refresh_hint = \"soon\"\n".into(),
            "config field `federation.bundle_endpoint.refresh_hint`: \"soon\" is not a duration like 90s, 5m, 24h or 1h30m",
        ),
        (
            "refresh_hint = \"0s\"\n".into(),
            "config field `federation.bundle_endpoint.refresh_hint`: must be at least 1s (the bundle carries it in whole seconds)",
        ),
        (
            "refresh_hint = \"1500ms\"\n".into(),
            "config field `federation.bundle_endpoint.refresh_hint`: 1.5s is not a whole number of seconds (the bundle carries whole seconds)",
        ),
        (
            "profile = \"https\"\n".into(),
            "config field `federation.bundle_endpoint.profile`: \"https\" is not one of https_spiffe, https_web",
        ),
        (
            "profile = \"HTTPS_WEB\"\n".into(),
            "config field `federation.bundle_endpoint.profile`: \"HTTPS_WEB\" is not one of https_spiffe, https_web",
        ),
        (
            "profile = \"https_web\"\n".into(),
            "config field `federation.bundle_endpoint.serving_cert_file`: profile \"https_web\" needs a [federation.bundle_endpoint.serving_cert_file] table with cert_file_path and key_file_path (ACME is not supported)",
        ),
        (
            format!("profile = \"https_spiffe\"\n{web_table}"),
            "config field `federation.bundle_endpoint.serving_cert_file`: is only used with profile = \"https_web\"; https_spiffe serves the server's own X509-SVID",
        ),
        (
            web_table.to_owned(),
            "config field `federation.bundle_endpoint.profile`: is required with a [federation.bundle_endpoint.serving_cert_file] table: set profile = \"https_web\"",
        ),
        (
            "profile = \"https_web\"\n[federation.bundle_endpoint.serving_cert_file]\nkey_file_path = \"/k\"\n".into(),
            "config field `federation.bundle_endpoint.serving_cert_file.cert_file_path`: is required",
        ),
        (
            "profile = \"https_web\"\n[federation.bundle_endpoint.serving_cert_file]\ncert_file_path = \"/c\"\nkey_file_path = \"\"\n".into(),
            "config field `federation.bundle_endpoint.serving_cert_file.key_file_path`: is required",
        ),
        (
            format!("profile = \"https_web\"\n{web_table}file_sync_interval = \"10ms\"\n"),
            "config field `federation.bundle_endpoint.serving_cert_file.file_sync_interval`: must be at least 100ms",
        ),
        (
            format!("profile = \"https_web\"\n{web_table}file_sync_interval = \"hourly\"\n"),
            "config field `federation.bundle_endpoint.serving_cert_file.file_sync_interval`: \"hourly\" is not a duration like 90s, 5m, 24h or 1h30m",
        ),
    ];
    for (text, want) in cases {
        let got = resolve_text(&format!("[federation.bundle_endpoint]\n{text}"));
        assert_eq!(got.map(|_| ()), Err(want.to_owned()), "{text}");
    }
}

#[test]
fn acme_is_refused_however_it_is_written() {
    let want = "config field `federation.bundle_endpoint.acme`: ACME is not supported; use profile = \"https_web\" with a [federation.bundle_endpoint.serving_cert_file] table (a certificate kept up to date by e.g. cert-manager or certbot; the files are re-read when they change), or profile = \"https_spiffe\"";
    let cases = [
        // SPIRE's profile "https_web" { acme { ... } }, written as a table beside the profile.
        "profile = \"https_web\"\n[federation.bundle_endpoint.acme]\ndomain_name = \"example.org\"\nemail = \"a@example.org\"\ntos_accepted = true\n",
        // SPIRE's deprecated top-level acme block, without a profile.
        "[federation.bundle_endpoint.acme]\ndomain_name = \"example.org\"\n",
        "acme = true\n",
    ];
    for text in cases {
        assert_eq!(resolve_text(&format!("[federation.bundle_endpoint]\n{text}")).map(|_| ()), Err(want.to_owned()));
    }
}

#[test]
fn unknown_keys_and_wrong_types_are_refused_by_the_parser() {
    let cases: &[(&str, &str)] = &[
        ("[federation.bundle_endpoint]\nrefresh = \"5m\"\n", "unknown field `refresh`"),
        ("[federation.bundle_endpont]\n", "unknown field `bundle_endpont`"),
        ("[federation.bundle_endpoint]\nport = \"8443\"\n", "invalid type: string \"8443\""),
        ("[federation.bundle_endpoint]\nrefresh_hint = 300\n", "invalid type: integer `300`"),
        (
            "[federation.bundle_endpoint]\nprofile = \"https_web\"\n[federation.bundle_endpoint.serving_cert_file]\ncert_file = \"/c\"\n",
            "unknown field `cert_file`",
        ),
        // SPIRE's HCL block spelling carried over literally.
        ("[federation.bundle_endpoint.profile.https_web]\n", "invalid type: map, expected a string"),
    ];
    for (text, want) in cases {
        let err = resolve_text(text).unwrap_err();
        assert!(err.contains(want), "{text:?} -> {err}");
    }
}

#[test]
fn federation_example_file_is_valid() {
    let file = FileConfig::parse(include_str!("../../examples/server-federation.toml")).unwrap();
    let c = ServerConfig::resolve(file, Overrides::default()).unwrap();
    let be = c.bundle_endpoint.unwrap();
    assert_eq!(be.port, 8443);
    assert_eq!(be.refresh_hint, Duration::from_secs(300));
    assert_eq!(be.profile, ServingProfile::HttpsSpiffe);
    assert_eq!(be.warnings, Vec::<String>::new());
    // The federates_with tables.
    let rels: Vec<(&str, &str, &str)> = c
        .federates_with
        .iter()
        .map(|r| {
            (
                r.relationship.trust_domain.name(),
                r.relationship.profile.name(),
                r.relationship.bundle_endpoint_url.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rels,
        [
            ("b.test", "https_spiffe", "https://b.test:8443"),
            ("partner.example", "https_web", "https://bundles.partner.example/spiffe"),
        ]
    );
    // The https_web alternative in the same file (lines marked `#~ `) is valid too.
    let text = include_str!("../../examples/server-federation.toml");
    let web = text.replacen("\nprofile = \"https_spiffe\"", "\n", 1).replace("#~ ", "");
    let c = ServerConfig::resolve(FileConfig::parse(&web).unwrap(), Overrides::default()).unwrap();
    assert_eq!(
        c.bundle_endpoint.unwrap().profile,
        ServingProfile::HttpsWeb(ServingCertFile {
            cert_file_path: PathBuf::from("/etc/sigil/bundle-endpoint/tls.crt"),
            key_file_path: PathBuf::from("/etc/sigil/bundle-endpoint/tls.key"),
            file_sync_interval: Duration::from_secs(3600),
        })
    );
}
