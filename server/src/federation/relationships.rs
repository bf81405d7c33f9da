//! Which relationships the fetcher runs: the config file's (`[federation.federates_with]`) and the admin
//! API's (CLI, operator), one per trust domain, the config file's winning (as in SPIRE). Pure.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sigil_core::TrustDomain;
use sigil_core::federation::{BundleEndpointProfile, FederationRelationship};

use crate::config::ConfiguredRelationship;

/// Where a relationship comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The server's config file.
    Config,
    /// The TrustDomains admin API (datastore).
    Api,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }
}

/// One relationship the fetcher runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub relationship: FederationRelationship,
    pub source: Source,
    /// https_web from the config file only: trust these CAs instead of the system roots.
    pub ca_file_path: Option<PathBuf>,
    /// A config file relationship hiding an API one with the same trust domain.
    pub overrides_api_relationship: bool,
}

impl Target {
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.relationship.trust_domain
    }

    /// Whether `other` fetches the same way (same endpoint, profile, trust anchors and source): if not, its
    /// fetcher is restarted. `managed_by` and the override flag do not change how anything is fetched.
    pub fn fetches_like(&self, other: &Target) -> bool {
        let (a, b) = (&self.relationship, &other.relationship);
        a.trust_domain == b.trust_domain
            && a.bundle_endpoint_url == b.bundle_endpoint_url
            && a.profile == b.profile
            && self.ca_file_path == other.ca_file_path
            && self.source == other.source
    }

    pub fn endpoint_spiffe_id(&self) -> Option<&sigil_core::SpiffeId> {
        match &self.relationship.profile {
            BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => Some(endpoint_spiffe_id),
            BundleEndpointProfile::HttpsWeb => None,
        }
    }
}

/// The relationships to run, by trust domain: every config file relationship, and every API relationship
/// whose trust domain the config file does not name.
pub fn effective(config: &[ConfiguredRelationship], api: &[FederationRelationship]) -> BTreeMap<TrustDomain, Target> {
    let mut out = BTreeMap::new();
    for r in api {
        out.insert(
            r.trust_domain.clone(),
            Target {
                relationship: r.clone(),
                source: Source::Api,
                ca_file_path: None,
                overrides_api_relationship: false,
            },
        );
    }
    for c in config {
        let td = c.relationship.trust_domain.clone();
        let overrides_api_relationship = out.contains_key(&td);
        out.insert(
            td,
            Target {
                relationship: c.relationship.clone(),
                source: Source::Config,
                ca_file_path: c.ca_file_path.clone(),
                overrides_api_relationship,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(td: &str, url: &str) -> FederationRelationship {
        FederationRelationship {
            trust_domain: TrustDomain::new(td).unwrap(),
            bundle_endpoint_url: url.into(),
            profile: BundleEndpointProfile::HttpsWeb,
            managed_by: String::new(),
        }
    }

    fn conf(td: &str, url: &str) -> ConfiguredRelationship {
        ConfiguredRelationship { relationship: rel(td, url), ca_file_path: Some("/ca.pem".into()) }
    }

    #[test]
    fn config_overrides_api() {
        type Want<'a> = &'a [(&'a str, &'a str, Source, bool)];
        let cases: &[(&[ConfiguredRelationship], &[FederationRelationship], Want<'_>)] = &[
            (&[], &[], &[]),
            (&[], &[rel("b.test", "https://api/b")], &[("b.test", "https://api/b", Source::Api, false)]),
            (&[conf("b.test", "https://conf/b")], &[], &[("b.test", "https://conf/b", Source::Config, false)]),
            (
                &[conf("b.test", "https://conf/b")],
                &[rel("b.test", "https://api/b"), rel("c.test", "https://api/c")],
                &[("b.test", "https://conf/b", Source::Config, true), ("c.test", "https://api/c", Source::Api, false)],
            ),
        ];
        for (config, api, want) in cases {
            let got: Vec<(String, String, Source, bool)> = effective(config, api)
                .into_values()
                .map(|t| {
                    (
                        t.relationship.trust_domain.to_string(),
                        t.relationship.bundle_endpoint_url,
                        t.source,
                        t.overrides_api_relationship,
                    )
                })
                .collect();
            let want: Vec<(String, String, Source, bool)> =
                want.iter().map(|(td, url, s, o)| ((*td).into(), (*url).into(), *s, *o)).collect();
            assert_eq!(got, want, "config {config:?} api {api:?}");
        }
    }

    #[test]
    fn what_restarts_a_fetcher() {
        let base =
            effective(&[], &[rel("b.test", "https://api/b")]).remove(&TrustDomain::new("b.test").unwrap()).unwrap();
        let with = |f: fn(&mut Target)| {
            let mut t = base.clone();
            f(&mut t);
            t
        };
        let cases: Vec<(&str, Target, bool)> = vec![
            ("same", base.clone(), true),
            ("managed_by", with(|t| t.relationship.managed_by = "sigil-operator/x".into()), true),
            ("override flag", with(|t| t.overrides_api_relationship = true), true),
            ("url", with(|t| t.relationship.bundle_endpoint_url = "https://other/".into()), false),
            (
                "profile",
                with(|t| {
                    t.relationship.profile = BundleEndpointProfile::HttpsSpiffe {
                        endpoint_spiffe_id: sigil_core::SpiffeId::new("spiffe://b.test/spire/server").unwrap(),
                    }
                }),
                false,
            ),
            ("ca file", with(|t| t.ca_file_path = Some("/ca.pem".into())), false),
            ("source", with(|t| t.source = Source::Config), false),
        ];
        for (what, t, same) in cases {
            assert_eq!(base.fetches_like(&t), same, "{what}");
        }
    }
}
