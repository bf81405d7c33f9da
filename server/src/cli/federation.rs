//! `sigil-server federation ...`: federation relationships (SPIRE's flags and layout) and, Sigil's
//! addition, the bundle fetcher's status of each, and `federation refresh`.

use std::io::Write;

use sigil_core::TrustDomain;
use sigil_core::bundle::Bundle;
use sigil_proto::admin::{self as pb, federation_relationship::Profile, trust_domains_client::TrustDomainsClient};

use super::args::{BundleFormat, FederationCmd, FederationFields, Output};
use super::{CliError, admin_channel, all_pages, first_status_error, parse_id, rpc};
use crate::api::convert;

const PROFILE_HTTPS_WEB: &str = "https_web";
const PROFILE_HTTPS_SPIFFE: &str = "https_spiffe";

/// The relationship the flags describe (checked here as far as the CLI can, so bad input fails before
/// any connection).
fn relationship_from_fields(f: &FederationFields) -> Result<pb::FederationRelationship, CliError> {
    let td = f.trust_domain.as_deref().ok_or_else(|| CliError::Invalid("-trustDomain is required".into()))?;
    let td = TrustDomain::new(td.trim_start_matches("spiffe://"))
        .map_err(|e| CliError::Invalid(format!("-trustDomain: {e}")))?;
    let url =
        f.bundle_endpoint_url.as_deref().ok_or_else(|| CliError::Invalid("-bundleEndpointURL is required".into()))?;
    crate::federation::check_bundle_endpoint_url(url)
        .map_err(|e| CliError::Invalid(format!("-bundleEndpointURL: {e}")))?;
    let profile = match (f.bundle_endpoint_profile.as_deref(), f.endpoint_spiffe_id.as_deref()) {
        (Some(PROFILE_HTTPS_WEB), None) => Profile::HttpsWeb(pb::HttpsWebProfile {}),
        (Some(PROFILE_HTTPS_WEB), Some(_)) => {
            return Err(CliError::Invalid("-endpointSpiffeID is only used with the https_spiffe profile".into()));
        }
        (Some(PROFILE_HTTPS_SPIFFE), Some(id)) => Profile::HttpsSpiffe(pb::HttpsSpiffeProfile {
            endpoint_spiffe_id: parse_id("endpointSpiffeID", id)?.to_string(),
        }),
        (Some(PROFILE_HTTPS_SPIFFE), None) => {
            return Err(CliError::Invalid(
                "-endpointSpiffeID is required with the https_spiffe bundle endpoint profile".into(),
            ));
        }
        (Some(other), _) => {
            return Err(CliError::Invalid(format!(
                "-bundleEndpointProfile: unknown profile {other:?} (https_web or https_spiffe)"
            )));
        }
        (None, _) => {
            return Err(CliError::Invalid("-bundleEndpointProfile is required (https_web or https_spiffe)".into()));
        }
    };
    let bundle = match &f.trust_domain_bundle_path {
        None => None,
        Some(path) => {
            let data = std::fs::read(path)
                .map_err(|e| CliError::Invalid(format!("-trustDomainBundlePath {}: {e}", path.display())))?;
            let b = match f.trust_domain_bundle_format {
                BundleFormat::Pem => Bundle::from_pem(td.clone(), &data),
                BundleFormat::Spiffe => Bundle::from_jwks_json(td.clone(), &data),
            }
            .map_err(|e| CliError::Invalid(format!("-trustDomainBundlePath {}: {e}", path.display())))?;
            Some(convert::bundle_to_pb(&b))
        }
    };
    Ok(pb::FederationRelationship {
        trust_domain: td.name().to_owned(),
        bundle_endpoint_url: url.to_owned(),
        profile: Some(profile),
        trust_domain_bundle: bundle,
        // Made by hand: no tool's name, so no tool will update or delete it.
        managed_by: String::new(),
    })
}

/// SPIRE's layout for a relationship.
fn print_relationship(out: &mut impl Write, r: &pb::FederationRelationship) -> Result<(), CliError> {
    writeln!(out, "Trust domain              : {}", r.trust_domain)?;
    writeln!(out, "Bundle endpoint URL       : {}", r.bundle_endpoint_url)?;
    match &r.profile {
        Some(Profile::HttpsWeb(_)) => writeln!(out, "Bundle endpoint profile   : {PROFILE_HTTPS_WEB}")?,
        Some(Profile::HttpsSpiffe(p)) => {
            writeln!(out, "Bundle endpoint profile   : {PROFILE_HTTPS_SPIFFE}")?;
            writeln!(out, "Endpoint SPIFFE ID        : {}", p.endpoint_spiffe_id)?;
        }
        None => {}
    }
    if let Some(b) = &r.trust_domain_bundle {
        writeln!(
            out,
            "Trust domain bundle       : {} X.509 authorit{}, {} JWT authorit{}, sequence {}",
            b.x509_authorities.len(),
            plural_y(b.x509_authorities.len()),
            b.jwt_authorities.len(),
            plural_y(b.jwt_authorities.len()),
            b.sequence_number
        )?;
    }
    Ok(())
}

fn relationship_json(r: &pb::FederationRelationship) -> Result<serde_json::Value, CliError> {
    let mut v = serde_json::json!({
        "trust_domain": r.trust_domain,
        "bundle_endpoint_url": r.bundle_endpoint_url,
    });
    match &r.profile {
        Some(Profile::HttpsWeb(_)) => v["https_web"] = serde_json::json!({}),
        Some(Profile::HttpsSpiffe(p)) => {
            v["https_spiffe"] = serde_json::json!({ "endpoint_spiffe_id": p.endpoint_spiffe_id })
        }
        None => {}
    }
    if let Some(b) = &r.trust_domain_bundle {
        // spire.api.types.Bundle, as `bundle show -output json` prints it (absent when none is stored).
        v["trust_domain_bundle"] = super::output::bundle_json(b);
    }
    Ok(v)
}

fn print_relationship_result(
    out: &mut impl Write,
    status: Option<pb::Status>,
    rel: Option<pb::FederationRelationship>,
    output: Output,
) -> Result<(), CliError> {
    if output == Output::Json {
        // SPIRE's Batch{Create,Update}FederationRelationshipResponse, failures included (exit 0, as SPIRE).
        let mut result = serde_json::json!({ "status": super::output::status_json(status.as_ref()) });
        if let Some(r) = &rel {
            result["federation_relationship"] = relationship_json(r)?;
        }
        super::output::print_json(out, &serde_json::json!({ "results": [result] }))?;
        return Ok(());
    }
    let st = status.unwrap_or_default();
    first_status_error(st.code, &st.message)?;
    let r = rel.ok_or_else(|| CliError::Rpc("server returned no federation relationship".into()))?;
    print_relationship(out, &r)?;
    Ok(())
}

const SOURCE_CONFIG: &str = "config";

/// The fetchers' status, of one trust domain or all.
async fn list_statuses(
    client: &mut TrustDomainsClient<tonic::transport::Channel>,
    td: Option<&TrustDomain>,
) -> Result<Vec<pb::FederationStatus>, CliError> {
    let req = pb::ListFederationStatusRequest { trust_domain: td.map(|t| t.name().to_owned()).unwrap_or_default() };
    Ok(client.list_federation_status(req).await.map_err(rpc)?.into_inner().statuses)
}

/// A config file relationship, described from its fetcher's status.
fn relationship_of_status(s: &pb::FederationStatus) -> pb::FederationRelationship {
    let profile = if s.bundle_endpoint_profile == PROFILE_HTTPS_SPIFFE {
        Profile::HttpsSpiffe(pb::HttpsSpiffeProfile { endpoint_spiffe_id: s.endpoint_spiffe_id.clone() })
    } else {
        Profile::HttpsWeb(pb::HttpsWebProfile {})
    };
    pb::FederationRelationship {
        trust_domain: s.trust_domain.clone(),
        bundle_endpoint_url: s.bundle_endpoint_url.clone(),
        profile: Some(profile),
        trust_domain_bundle: None,
        managed_by: String::new(),
    }
}

/// The API's relationships with their status, and the config file's: one per trust domain (the config
/// file's wins, as on the server), in trust domain order.
fn merge(
    api: Vec<pb::FederationRelationship>,
    statuses: Vec<pb::FederationStatus>,
) -> Vec<(pb::FederationRelationship, Option<pb::FederationStatus>)> {
    let mut by_td: std::collections::BTreeMap<String, (pb::FederationRelationship, Option<pb::FederationStatus>)> =
        api.into_iter().map(|r| (r.trust_domain.clone(), (r, None))).collect();
    for s in statuses {
        if s.source == SOURCE_CONFIG {
            let mut shown = relationship_of_status(&s);
            // The stored bundle is the same whichever relationship fetches it.
            shown.trust_domain_bundle = by_td.get(&s.trust_domain).and_then(|(r, _)| r.trust_domain_bundle.clone());
            by_td.insert(s.trust_domain.clone(), (shown, Some(s)));
        } else if let Some(entry) = by_td.get_mut(&s.trust_domain) {
            entry.1 = Some(s);
        }
    }
    by_td.into_values().collect()
}

fn time_text(unix: i64) -> String {
    if unix == 0 {
        return "never".into();
    }
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// The fetcher's lines under a relationship (Sigil's addition to SPIRE's layout).
fn status_lines(s: &pb::FederationStatus) -> Vec<String> {
    let source = match (s.source.as_str(), s.overrides_api_relationship) {
        (SOURCE_CONFIG, true) => "config file (overrides the admin API's relationship with this trust domain)",
        (SOURCE_CONFIG, false) => "config file",
        _ => "admin API",
    };
    let state = if s.last_attempt_at == 0 {
        "not fetched yet".to_owned()
    } else if s.consecutive_failures == 0 {
        "ok".to_owned()
    } else {
        format!("failing ({} in a row; the last good bundle stays in use)", s.consecutive_failures)
    };
    let error = if s.last_error.is_empty() {
        "none".to_owned()
    } else {
        format!("{} ({})", s.last_error, time_text(s.last_error_at))
    };
    let bundle = if s.has_bundle { format!("sequence {}", s.sequence) } else { "none stored".to_owned() };
    vec![
        format!("Source                    : {source}"),
        format!("Fetch status              : {state}"),
        format!("Last success              : {}", time_text(s.last_success_at)),
        format!("Last bundle change        : {}", time_text(s.last_change_at)),
        format!("Last error                : {error}"),
        format!("Next refresh              : {}", time_text(s.next_refresh_at)),
        format!("Stored bundle             : {bundle}"),
    ]
}

fn print_status(out: &mut impl Write, s: &pb::FederationStatus) -> Result<(), CliError> {
    for line in status_lines(s) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn status_json(s: &pb::FederationStatus) -> serde_json::Value {
    serde_json::json!({
        "source": s.source,
        "overrides_api_relationship": s.overrides_api_relationship,
        "last_attempt_at": s.last_attempt_at,
        "last_success_at": s.last_success_at,
        "last_change_at": s.last_change_at,
        "last_error": s.last_error,
        "last_error_at": s.last_error_at,
        "consecutive_failures": s.consecutive_failures,
        "next_refresh_at": s.next_refresh_at,
        "has_bundle": s.has_bundle,
        "sequence": s.sequence,
    })
}

fn shown_json(r: &pb::FederationRelationship, s: Option<&pb::FederationStatus>) -> Result<serde_json::Value, CliError> {
    let mut v = relationship_json(r)?;
    if let Some(s) = s {
        v["status"] = status_json(s);
    }
    Ok(v)
}

pub(super) async fn run_federation(cmd: FederationCmd, out: &mut impl Write) -> Result<(), CliError> {
    match cmd {
        FederationCmd::Create { socket, fields, output } => {
            let rel = relationship_from_fields(&fields)?;
            let ch = admin_channel(&socket.socket_path).await?;
            let resp = TrustDomainsClient::new(ch)
                .batch_create_federation_relationship(pb::BatchCreateFederationRelationshipRequest {
                    federation_relationships: vec![rel],
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let r = resp.results.into_iter().next().ok_or_else(|| CliError::Rpc("empty response".into()))?;
            print_relationship_result(out, r.status, r.federation_relationship, output)
        }
        FederationCmd::Update { socket, fields, output } => {
            let rel = relationship_from_fields(&fields)?;
            let ch = admin_channel(&socket.socket_path).await?;
            let resp = TrustDomainsClient::new(ch)
                .batch_update_federation_relationship(pb::BatchUpdateFederationRelationshipRequest {
                    federation_relationships: vec![rel],
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let r = resp.results.into_iter().next().ok_or_else(|| CliError::Rpc("empty response".into()))?;
            print_relationship_result(out, r.status, r.federation_relationship, output)
        }
        FederationCmd::List { socket, output } => {
            let ch = admin_channel(&socket.socket_path).await?;
            let mut client = TrustDomainsClient::new(ch);
            let all = all_pages(async |page_token| {
                let page = client
                    .list_federation_relationships(pb::ListFederationRelationshipsRequest {
                        page_size: 500,
                        page_token,
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                Ok((page.federation_relationships, page.next_page_token))
            })
            .await?;
            // The fetchers' status: of these relationships, and of the config file's, which the list (as
            // SPIRE's) does not hold.
            let statuses = list_statuses(&mut client, None).await?;
            let shown = merge(all, statuses);
            match output {
                Output::Json => {
                    let items = shown.iter().map(|(r, s)| shown_json(r, s.as_ref())).collect::<Result<Vec<_>, _>>()?;
                    // SPIRE's ListFederationRelationshipsResponse (all pages joined); each item may carry
                    // Sigil's `status` key.
                    super::output::print_json(
                        out,
                        &serde_json::json!({ "federation_relationships": items, "next_page_token": "" }),
                    )?;
                }
                Output::Pretty => {
                    writeln!(
                        out,
                        "Found {} federation relationship{}",
                        shown.len(),
                        if shown.len() == 1 { "" } else { "s" }
                    )?;
                    for (r, s) in &shown {
                        writeln!(out)?;
                        print_relationship(out, r)?;
                        if let Some(s) = s {
                            print_status(out, s)?;
                        }
                    }
                }
            }
            Ok(())
        }
        FederationCmd::Show { socket, trust_domain, output } => {
            let td = TrustDomain::new(trust_domain.trim_start_matches("spiffe://"))
                .map_err(|e| CliError::Invalid(format!("-trustDomain: {e}")))?;
            let ch = admin_channel(&socket.socket_path).await?;
            let mut client = TrustDomainsClient::new(ch);
            let got = client
                .get_federation_relationship(pb::GetFederationRelationshipRequest {
                    trust_domain: td.name().to_owned(),
                })
                .await;
            // No status when no fetcher runs for it (yet); the relationship is still shown.
            let status = list_statuses(&mut client, Some(&td)).await.ok().and_then(|v| v.into_iter().next());
            let r = match (got, &status) {
                (Ok(r), _) => r.into_inner(),
                // A config file relationship: the API does not hold it, the fetcher runs it.
                (Err(e), Some(s)) if e.code() == tonic::Code::NotFound && s.source == SOURCE_CONFIG => {
                    relationship_of_status(s)
                }
                (Err(e), _) => return Err(rpc(e)),
            };
            match output {
                Output::Json => writeln!(out, "{}", shown_json(&r, status.as_ref())?)?,
                Output::Pretty => {
                    writeln!(out, "Found a federation relationship with trust domain {td}:\n")?;
                    print_relationship(out, &r)?;
                    if let Some(s) = &status {
                        print_status(out, s)?;
                    }
                }
            }
            Ok(())
        }
        FederationCmd::Delete { socket, id, output } => {
            let td = TrustDomain::new(id.trim_start_matches("spiffe://"))
                .map_err(|e| CliError::Invalid(format!("-id: {e}")))?;
            let ch = admin_channel(&socket.socket_path).await?;
            let resp = TrustDomainsClient::new(ch)
                .batch_delete_federation_relationship(pb::BatchDeleteFederationRelationshipRequest {
                    trust_domains: vec![td.name().to_owned()],
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let r = resp.results.into_iter().next().ok_or_else(|| CliError::Rpc("empty response".into()))?;
            if output == Output::Json {
                // SPIRE's BatchDeleteFederationRelationshipResponse.
                let result = serde_json::json!({
                    "status": super::output::status_json(r.status.as_ref()),
                    "trust_domain": r.trust_domain,
                });
                super::output::print_json(out, &serde_json::json!({ "results": [result] }))?;
                return Ok(());
            }
            let st = r.status.unwrap_or_default();
            first_status_error(st.code, &st.message)?;
            writeln!(out, "federation relationship deleted.")?;
            Ok(())
        }
        FederationCmd::Refresh { socket, id, output } => {
            let td = TrustDomain::new(id.trim_start_matches("spiffe://"))
                .map_err(|e| CliError::Invalid(format!("-id: {e}")))?;
            let ch = admin_channel(&socket.socket_path).await?;
            let resp = TrustDomainsClient::new(ch)
                .refresh_bundle(pb::RefreshBundleRequest { trust_domain: td.name().to_owned() })
                .await
                .map_err(rpc)?
                .into_inner();
            let sequence = resp.status.as_ref().map(|s| s.sequence).unwrap_or_default();
            match output {
                Output::Json => {
                    let mut v = serde_json::json!({ "trust_domain": td.name(), "changed": resp.changed });
                    if let Some(s) = &resp.status {
                        v["status"] = status_json(s);
                    }
                    writeln!(out, "{v}")?;
                }
                // SPIRE prints "Bundle refreshed"; what changed is Sigil's addition.
                Output::Pretty if resp.changed => {
                    writeln!(out, "Bundle refreshed: the bundle of {td} changed (sequence {sequence})")?
                }
                Output::Pretty => {
                    writeln!(out, "Bundle refreshed: the bundle of {td} is unchanged (sequence {sequence})")?
                }
            }
            Ok(())
        }
    }
}

/// "authority" / "authorities".
fn plural_y(n: usize) -> &'static str {
    if n == 1 { "y" } else { "ies" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(source: &str) -> pb::FederationStatus {
        pb::FederationStatus {
            trust_domain: "b.test".into(),
            source: source.into(),
            bundle_endpoint_url: "https://b.test:8443".into(),
            bundle_endpoint_profile: "https_spiffe".into(),
            endpoint_spiffe_id: "spiffe://b.test/spire/server".into(),
            ..Default::default()
        }
    }

    #[test]
    fn status_lines_table() {
        let failing = pb::FederationStatus {
            last_attempt_at: 1_800_000_100,
            last_success_at: 1_800_000_000,
            last_change_at: 1_800_000_000,
            last_error: "cannot connect to b.test:8443: refused".into(),
            last_error_at: 1_800_000_100,
            consecutive_failures: 3,
            next_refresh_at: 1_800_000_104,
            has_bundle: true,
            sequence: 7,
            overrides_api_relationship: true,
            ..status("config")
        };
        assert_eq!(
            status_lines(&failing),
            [
                "Source                    : config file (overrides the admin API's relationship with this trust domain)",
                "Fetch status              : failing (3 in a row; the last good bundle stays in use)",
                "Last success              : 2027-01-15T08:00:00Z",
                "Last bundle change        : 2027-01-15T08:00:00Z",
                "Last error                : cannot connect to b.test:8443: refused (2027-01-15T08:01:40Z)",
                "Next refresh              : 2027-01-15T08:01:44Z",
                "Stored bundle             : sequence 7",
            ]
        );
        let fresh = status("api");
        let lines = status_lines(&fresh);
        assert_eq!(lines[0], "Source                    : admin API");
        assert_eq!(lines[1], "Fetch status              : not fetched yet");
        assert_eq!(lines[2], "Last success              : never");
        assert_eq!(lines[4], "Last error                : none");
        assert_eq!(lines[6], "Stored bundle             : none stored");
    }

    #[test]
    fn config_relationships_join_and_win() {
        let api = |td: &str, url: &str| pb::FederationRelationship {
            trust_domain: td.into(),
            bundle_endpoint_url: url.into(),
            profile: Some(Profile::HttpsWeb(pb::HttpsWebProfile {})),
            ..Default::default()
        };
        let conf = |td: &str| pb::FederationStatus { trust_domain: td.into(), ..status("config") };
        let running = |td: &str| pb::FederationStatus { trust_domain: td.into(), ..status("api") };
        let shown = merge(
            vec![api("a.test", "https://a/"), api("b.test", "https://api-b/"), api("d.test", "https://d/")],
            vec![running("a.test"), conf("b.test"), conf("c.test")],
        );
        let got: Vec<(&str, &str, Option<&str>)> = shown
            .iter()
            .map(|(r, s)| {
                (r.trust_domain.as_str(), r.bundle_endpoint_url.as_str(), s.as_ref().map(|s| s.source.as_str()))
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a.test", "https://a/", Some("api")),
                ("b.test", "https://b.test:8443", Some("config")),
                ("c.test", "https://b.test:8443", Some("config")),
                ("d.test", "https://d/", None),
            ]
        );
        assert!(
            matches!(&shown[1].0.profile, Some(Profile::HttpsSpiffe(p)) if p.endpoint_spiffe_id == "spiffe://b.test/spire/server")
        );
    }
}
