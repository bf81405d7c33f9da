//! `sigil-server federation ...`: federation relationships (SPIRE's flags and layout) and, Sigil's
//! addition, the bundle fetcher's status of each, and `federation refresh`.

use std::io::Write;

use sigil_core::TrustDomain;
use sigil_core::bundle::Bundle;
use sigil_proto::admin::{self as pb, federation_relationship::Profile, trust_domains_client::TrustDomainsClient};

use super::args::{BundleFormat, FederationCmd, FederationFields, Output};
use super::{CliError, admin_channel, first_status_error, parse_id, render_bundle, rpc};
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
            "Trust domain bundle       : {} X.509 authorities, {} JWT authorities, sequence {}",
            b.x509_authorities.len(),
            b.jwt_authorities.len(),
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
        // The SPIFFE bundle document (JWKS), as `bundle show -format spiffe` prints it.
        let jwks = render_bundle(b, BundleFormat::Spiffe)?;
        v["trust_domain_bundle"] =
            serde_json::from_str(&jwks).map_err(|e| CliError::Rpc(format!("server returned a bad bundle: {e}")))?;
    }
    Ok(v)
}

fn print_relationship_result(
    out: &mut impl Write,
    status: Option<pb::Status>,
    rel: Option<pb::FederationRelationship>,
    output: Output,
) -> Result<(), CliError> {
    let st = status.unwrap_or_default();
    first_status_error(st.code, &st.message)?;
    let r = rel.ok_or_else(|| CliError::Rpc("server returned no federation relationship".into()))?;
    match output {
        Output::Json => writeln!(out, "{}", relationship_json(&r)?)?,
        Output::Pretty => print_relationship(out, &r)?,
    }
    Ok(())
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
            let mut all = vec![];
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_federation_relationships(pb::ListFederationRelationshipsRequest {
                        page_size: 500,
                        page_token,
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                all.extend(page.federation_relationships);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            match output {
                Output::Json => {
                    let items = all.iter().map(relationship_json).collect::<Result<Vec<_>, _>>()?;
                    writeln!(out, "{}", serde_json::Value::Array(items))?;
                }
                Output::Pretty => {
                    writeln!(
                        out,
                        "Found {} federation relationship{}",
                        all.len(),
                        if all.len() == 1 { "" } else { "s" }
                    )?;
                    for r in &all {
                        writeln!(out)?;
                        print_relationship(out, r)?;
                    }
                }
            }
            Ok(())
        }
        FederationCmd::Show { socket, trust_domain, output } => {
            let td = TrustDomain::new(trust_domain.trim_start_matches("spiffe://"))
                .map_err(|e| CliError::Invalid(format!("-trustDomain: {e}")))?;
            let ch = admin_channel(&socket.socket_path).await?;
            let r = TrustDomainsClient::new(ch)
                .get_federation_relationship(pb::GetFederationRelationshipRequest {
                    trust_domain: td.name().to_owned(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            match output {
                Output::Json => writeln!(out, "{}", relationship_json(&r)?)?,
                Output::Pretty => {
                    writeln!(out, "Found a federation relationship with trust domain {td}:\n")?;
                    print_relationship(out, &r)?;
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
            let st = r.status.unwrap_or_default();
            first_status_error(st.code, &st.message)?;
            match output {
                Output::Json => writeln!(out, "{}", serde_json::json!({ "trust_domain": r.trust_domain }))?,
                Output::Pretty => writeln!(out, "federation relationship deleted.")?,
            }
            Ok(())
        }
    }
}
