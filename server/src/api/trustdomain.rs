//! The admin API's `TrustDomains` service: federation relationships with foreign trust domains, shaped
//! like SPIRE's `spire.api.server.trustdomain.v1`. Served on the admin socket behind the same peer-uid check
//! as the other admin services.

use sigil_core::bundle::Bundle;
use sigil_proto::admin::{self as pb, federation_relationship::Profile, trust_domains_server};
use tonic::{Request, Response, Status};

use super::admin::{AdminApi, ok_status, state_status, status_of};
use super::convert;
use crate::federation::{BundleEndpointProfile, FederationRelationship, FetchStatus, RefreshError, Target};
use crate::state::ServerState;

/// A client-supplied relationship: field-level checks (syntax); the state checks it against the server's
/// own trust domain and the bundle against the relationship.
pub fn relationship_from_pb(
    r: &pb::FederationRelationship,
) -> Result<(FederationRelationship, Option<Bundle>), Status> {
    let trust_domain = convert::trust_domain("trust_domain", &r.trust_domain)?;
    crate::federation::check_bundle_endpoint_url(&r.bundle_endpoint_url)
        .map_err(|e| Status::invalid_argument(format!("bundle_endpoint_url: {e}")))?;
    let profile = match &r.profile {
        Some(Profile::HttpsWeb(_)) => BundleEndpointProfile::HttpsWeb,
        Some(Profile::HttpsSpiffe(p)) => BundleEndpointProfile::HttpsSpiffe {
            endpoint_spiffe_id: convert::spiffe_id("https_spiffe.endpoint_spiffe_id", &p.endpoint_spiffe_id)?,
        },
        None => {
            return Err(Status::invalid_argument("profile: required (https_web or https_spiffe)"));
        }
    };
    let bundle = r
        .trust_domain_bundle
        .as_ref()
        .map(|b| {
            convert::bundle_from_pb(b)
                .map_err(|s| Status::invalid_argument(format!("trust_domain_bundle: {}", s.message())))
        })
        .transpose()?;
    Ok((
        FederationRelationship {
            trust_domain,
            bundle_endpoint_url: r.bundle_endpoint_url.clone(),
            profile,
            managed_by: r.managed_by.clone(),
        },
        bundle,
    ))
}

/// A stored relationship with the current federated bundle of its trust domain, if any.
pub fn relationship_to_pb(r: &FederationRelationship, bundle: Option<&Bundle>) -> pb::FederationRelationship {
    pb::FederationRelationship {
        trust_domain: r.trust_domain.name().to_owned(),
        bundle_endpoint_url: r.bundle_endpoint_url.clone(),
        profile: Some(match &r.profile {
            BundleEndpointProfile::HttpsWeb => Profile::HttpsWeb(pb::HttpsWebProfile {}),
            BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                Profile::HttpsSpiffe(pb::HttpsSpiffeProfile { endpoint_spiffe_id: endpoint_spiffe_id.to_string() })
            }
        }),
        trust_domain_bundle: bundle.map(convert::bundle_to_pb),
        managed_by: r.managed_by.clone(),
    }
}

impl AdminApi {
    fn relationship_out(&self, r: &FederationRelationship) -> pb::FederationRelationship {
        relationship_to_pb(r, self.state.federated_bundle(&r.trust_domain).as_ref())
    }
}

/// A fetcher's status as the admin API shows it, with the stored bundle's sequence.
pub fn status_to_pb(state: &ServerState, target: &Target, s: &FetchStatus) -> pb::FederationStatus {
    let stored = state.federated_bundle(target.trust_domain());
    pb::FederationStatus {
        trust_domain: target.trust_domain().name().to_owned(),
        source: target.source.name().to_owned(),
        overrides_api_relationship: target.overrides_api_relationship,
        bundle_endpoint_url: target.relationship.bundle_endpoint_url.clone(),
        bundle_endpoint_profile: target.relationship.profile.name().to_owned(),
        endpoint_spiffe_id: target.endpoint_spiffe_id().map(ToString::to_string).unwrap_or_default(),
        last_attempt_at: s.last_attempt_at,
        last_success_at: s.last_success_at,
        last_change_at: s.last_change_at,
        last_error: s.last_error.clone(),
        last_error_at: s.last_error_at,
        consecutive_failures: s.consecutive_failures,
        next_refresh_at: s.next_refresh_at,
        has_bundle: stored.is_some(),
        sequence: stored.map(|b| b.sequence).unwrap_or_default(),
    }
}

/// SPIRE's words for a refresh of a trust domain nothing federates with.
fn no_relationship(td: &sigil_core::TrustDomain) -> Status {
    Status::not_found(format!("there is no federation relationship with trust domain {td}"))
}

/// The relationship of `td` comes from the config file (and is not in the datastore): say so, since the
/// admin API cannot change it.
fn config_only(state: &ServerState, td: &sigil_core::TrustDomain) -> Option<Status> {
    let in_config = state.config.federates_with.iter().any(|c| &c.relationship.trust_domain == td);
    (in_config && state.federation_relationship(td).is_none()).then(|| {
        Status::failed_precondition(format!(
            "the federation relationship with {td} comes from the server's config file              ([federation.federates_with.\"{td}\"]); change it there"
        ))
    })
}

#[tonic::async_trait]
impl trust_domains_server::TrustDomains for AdminApi {
    async fn list_federation_relationships(
        &self,
        req: Request<pb::ListFederationRelationshipsRequest>,
    ) -> Result<Response<pb::ListFederationRelationshipsResponse>, Status> {
        let req = req.into_inner();
        // Trust domain order; the token is the last trust domain of the previous page.
        let all = self.state.federation_relationships();
        let rest = all.iter().filter(|r| req.page_token.is_empty() || r.trust_domain.name() > req.page_token.as_str());
        let size = if req.page_size == 0 { usize::MAX } else { req.page_size as usize };
        let page: Vec<_> = rest.clone().take(size).collect();
        let more = rest.count() > page.len();
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => last.trust_domain.name().to_owned(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListFederationRelationshipsResponse {
            federation_relationships: page.into_iter().map(|r| self.relationship_out(r)).collect(),
            next_page_token,
        }))
    }

    async fn get_federation_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<pb::FederationRelationship>, Status> {
        let td = convert::trust_domain("trust_domain", &req.into_inner().trust_domain)?;
        self.state
            .federation_relationship(&td)
            .map(|r| Response::new(self.relationship_out(&r)))
            .ok_or_else(|| Status::not_found(format!("no federation relationship with trust domain {td}")))
    }

    async fn batch_create_federation_relationship(
        &self,
        req: Request<pb::BatchCreateFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchCreateFederationRelationshipResponse>, Status> {
        let mut results = vec![];
        for r in req.into_inner().federation_relationships {
            let outcome = async {
                let (rel, bundle) = relationship_from_pb(&r)?;
                self.state.create_federation_relationship(rel, bundle).await.map_err(state_status)
            }
            .await;
            results.push(match outcome {
                Ok(rel) => {
                    tracing::info!(trust_domain = %rel.trust_domain, profile = rel.profile.name(), "federation relationship created");
                    pb::batch_create_federation_relationship_response::Result {
                        status: ok_status(),
                        federation_relationship: Some(self.relationship_out(&rel)),
                    }
                }
                Err(s) => pb::batch_create_federation_relationship_response::Result {
                    status: status_of(&s),
                    federation_relationship: None,
                },
            });
        }
        Ok(Response::new(pb::BatchCreateFederationRelationshipResponse { results }))
    }

    async fn batch_update_federation_relationship(
        &self,
        req: Request<pb::BatchUpdateFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchUpdateFederationRelationshipResponse>, Status> {
        let mut results = vec![];
        for r in req.into_inner().federation_relationships {
            let outcome = async {
                let (rel, bundle) = relationship_from_pb(&r)?;
                if let Some(s) = config_only(&self.state, &rel.trust_domain) {
                    return Err(s);
                }
                self.state.update_federation_relationship(rel, bundle).await.map_err(state_status)
            }
            .await;
            results.push(match outcome {
                Ok(rel) => {
                    tracing::info!(trust_domain = %rel.trust_domain, profile = rel.profile.name(), "federation relationship updated");
                    pb::batch_update_federation_relationship_response::Result {
                        status: ok_status(),
                        federation_relationship: Some(self.relationship_out(&rel)),
                    }
                }
                Err(s) => pb::batch_update_federation_relationship_response::Result {
                    status: status_of(&s),
                    federation_relationship: None,
                },
            });
        }
        Ok(Response::new(pb::BatchUpdateFederationRelationshipResponse { results }))
    }

    async fn batch_delete_federation_relationship(
        &self,
        req: Request<pb::BatchDeleteFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchDeleteFederationRelationshipResponse>, Status> {
        let mut results = vec![];
        for name in req.into_inner().trust_domains {
            let outcome = async {
                let td = convert::trust_domain("trust_domain", &name)?;
                if let Some(s) = config_only(&self.state, &td) {
                    return Err(s);
                }
                self.state.delete_federation_relationship(&td).await.map_err(state_status)?;
                Ok::<_, Status>(td)
            }
            .await;
            results.push(pb::batch_delete_federation_relationship_response::Result {
                status: match &outcome {
                    Ok(td) => {
                        tracing::info!(trust_domain = %td, "federation relationship deleted");
                        ok_status()
                    }
                    Err(s) => status_of(s),
                },
                trust_domain: name,
            });
        }
        Ok(Response::new(pb::BatchDeleteFederationRelationshipResponse { results }))
    }

    async fn refresh_bundle(
        &self,
        req: Request<pb::RefreshBundleRequest>,
    ) -> Result<Response<pb::RefreshBundleResponse>, Status> {
        let td = convert::trust_domain("trust_domain", &req.into_inner().trust_domain)?;
        let known = self.state.federation_relationship(&td).is_some()
            || self.state.config.federates_with.iter().any(|c| c.relationship.trust_domain == td);
        let mut outcome = self.state.federation.refresh(&td).await;
        if outcome == Err(RefreshError::NotFound) && known {
            // Written a moment ago, its fetcher not registered yet: wait for it a little.
            for _ in 0..40 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                if self.state.federation.status(&td).is_some() {
                    outcome = self.state.federation.refresh(&td).await;
                    break;
                }
            }
        }
        let changed = match outcome {
            Ok(changed) => changed,
            Err(RefreshError::NotFound) if !known => return Err(no_relationship(&td)),
            Err(RefreshError::NotFound) => {
                return Err(Status::unavailable(format!("the bundle fetcher of {td} is not running yet; try again")));
            }
            Err(RefreshError::Failed(e)) => {
                return Err(Status::unavailable(format!("failed to refresh the bundle of {td}: {e}")));
            }
            Err(RefreshError::Unavailable(e)) => return Err(Status::unavailable(e)),
        };
        tracing::info!(trust_domain = %td, changed, "bundle refreshed on request");
        let status = self.state.federation.status(&td).map(|(t, s)| status_to_pb(&self.state, &t, &s));
        Ok(Response::new(pb::RefreshBundleResponse { changed, status }))
    }

    async fn list_federation_status(
        &self,
        req: Request<pb::ListFederationStatusRequest>,
    ) -> Result<Response<pb::ListFederationStatusResponse>, Status> {
        let req = req.into_inner();
        let statuses = if req.trust_domain.is_empty() {
            self.state.federation.statuses().iter().map(|(t, s)| status_to_pb(&self.state, t, s)).collect()
        } else {
            let td = convert::trust_domain("trust_domain", &req.trust_domain)?;
            let (t, s) = self.state.federation.status(&td).ok_or_else(|| no_relationship(&td))?;
            vec![status_to_pb(&self.state, &t, &s)]
        };
        Ok(Response::new(pb::ListFederationStatusResponse { statuses }))
    }
}
