//! The admin API on the local Unix socket. Only root or the server's own uid may call it: the caller is
//! identified by the kernel (SO_PEERCRED), never by anything it sends.

use std::sync::Arc;
use std::time::Duration;

use sigil_proto::admin::{self as pb, agents_server, bundles_server, entries_server, svids_server};
use sigil_proto::types as tpb;
use tonic::service::Interceptor;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::convert::{self, datastore_status};
use crate::datastore::{EntryFilter, Page, SelectorMatch};
use crate::state::{ServerState, StateError, now_unix};

/// Refuses callers whose uid is neither 0 nor the server's.
#[derive(Debug, Clone, Copy)]
pub struct PeerUidCheck {
    pub server_uid: u32,
}

impl Interceptor for PeerUidCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let uid = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| cred.uid())
            .ok_or_else(|| Status::permission_denied("admin API: caller credentials unavailable"))?;
        if uid == 0 || uid == self.server_uid {
            Ok(req)
        } else {
            Err(Status::permission_denied(format!(
                "admin API: uid {uid} is not allowed (only root or the server's uid {})",
                self.server_uid
            )))
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminApi {
    pub state: Arc<ServerState>,
}

fn ok_status() -> Option<pb::Status> {
    Some(pb::Status { code: 0, message: String::new() })
}

fn status_of(s: &Status) -> Option<pb::Status> {
    Some(pb::Status { code: s.code() as i32, message: s.message().to_owned() })
}

fn state_status(e: StateError) -> Status {
    match e {
        StateError::Datastore(d) => datastore_status(d),
        StateError::Ca(c) => Status::internal(c.to_string()),
        StateError::Other(m) => Status::invalid_argument(m),
        StateError::InUse(m) => Status::failed_precondition(m),
    }
}

fn filter_from_pb(f: Option<&pb::EntryFilter>) -> Result<EntryFilter, Status> {
    let mut out = EntryFilter::default();
    let Some(f) = f else { return Ok(out) };
    if !f.by_spiffe_id.is_empty() {
        out.by_spiffe_id = Some(convert::spiffe_id("filter.by_spiffe_id", &f.by_spiffe_id)?);
    }
    if !f.by_parent_id.is_empty() {
        out.by_parent_id = Some(convert::spiffe_id("filter.by_parent_id", &f.by_parent_id)?);
    }
    if !f.by_selectors.is_empty() {
        let sels = f.by_selectors.iter().map(convert::selector_from_pb).collect::<Result<Vec<_>, _>>()?;
        let mode = match pb::SelectorMatch::try_from(f.selector_match) {
            Ok(pb::SelectorMatch::Exact) => SelectorMatch::Exact,
            Ok(pb::SelectorMatch::Subset) => SelectorMatch::Subset,
            Ok(pb::SelectorMatch::Superset) => SelectorMatch::Superset,
            Ok(pb::SelectorMatch::Any) => SelectorMatch::Any,
            Err(_) => return Err(Status::invalid_argument("filter.selector_match: unknown value")),
        };
        out.by_selectors = Some((sels, mode));
    }
    if !f.by_hint.is_empty() {
        out.by_hint = Some(f.by_hint.clone());
    }
    Ok(out)
}

impl AdminApi {
    fn validate(&self, e: &tpb::Entry) -> Result<sigil_core::RegistrationEntry, Status> {
        let entry = convert::entry_from_pb(e)?;
        entry.validate(&self.state.trust_domain).map_err(|err| Status::invalid_argument(err.to_string()))?;
        Ok(entry)
    }
}

#[tonic::async_trait]
impl entries_server::Entries for AdminApi {
    async fn batch_create_entry(
        &self,
        req: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchCreateEntryResponse>, Status> {
        let req = req.into_inner();
        // Validate everything first; only valid entries go to the datastore, in one batch.
        let mut slots: Vec<Result<sigil_core::RegistrationEntry, Status>> =
            req.entries.iter().map(|e| self.validate(e)).collect();
        let valid: Vec<_> = slots
            .iter_mut()
            .filter_map(|s| {
                s.as_mut().ok().map(|e| {
                    let mut e = e.clone();
                    e.id.clear();
                    e
                })
            })
            .collect();
        let mut stored = self.state.create_entries(valid).await.into_iter();
        let results = slots
            .into_iter()
            .map(|slot| match slot {
                Err(s) => pb::batch_create_entry_response::Result { status: status_of(&s), entry: None },
                Ok(_) => match stored.next() {
                    Some(Ok(e)) => pb::batch_create_entry_response::Result {
                        status: ok_status(),
                        entry: Some(convert::entry_to_pb(&e)),
                    },
                    Some(Err(err)) => pb::batch_create_entry_response::Result {
                        status: status_of(&datastore_status(err)),
                        entry: None,
                    },
                    None => pb::batch_create_entry_response::Result {
                        status: status_of(&Status::internal("datastore returned fewer results than entries")),
                        entry: None,
                    },
                },
            })
            .collect();
        Ok(Response::new(pb::BatchCreateEntryResponse { results }))
    }

    async fn batch_update_entry(
        &self,
        req: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchUpdateEntryResponse>, Status> {
        let mut results = vec![];
        for e in req.into_inner().entries {
            let r = async {
                if e.id.is_empty() {
                    return Err(Status::invalid_argument("id: required for update"));
                }
                let entry = self.validate(&e)?;
                self.state.update_entry(entry).await.map_err(datastore_status)
            }
            .await;
            results.push(match r {
                Ok(e) => pb::batch_update_entry_response::Result {
                    status: ok_status(),
                    entry: Some(convert::entry_to_pb(&e)),
                },
                Err(s) => pb::batch_update_entry_response::Result { status: status_of(&s), entry: None },
            });
        }
        Ok(Response::new(pb::BatchUpdateEntryResponse { results }))
    }

    async fn batch_delete_entry(
        &self,
        req: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchDeleteEntryResponse>, Status> {
        let ids = req.into_inner().ids;
        let out = self.state.delete_entries(&ids).await;
        let results = ids
            .into_iter()
            .zip(out)
            .map(|(id, r)| pb::batch_delete_entry_response::Result {
                status: match r {
                    Ok(_) => ok_status(),
                    Err(e) => status_of(&datastore_status(e)),
                },
                id,
            })
            .collect();
        Ok(Response::new(pb::BatchDeleteEntryResponse { results }))
    }

    async fn get_entry(&self, req: Request<pb::GetEntryRequest>) -> Result<Response<tpb::Entry>, Status> {
        let id = req.into_inner().id;
        match self.state.index().get(&id) {
            Some(e) => Ok(Response::new(convert::entry_to_pb(e))),
            None => Err(Status::not_found(format!("no entry with id {id:?}"))),
        }
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let req = req.into_inner();
        let filter = filter_from_pb(req.filter.as_ref())?;
        let page = Page { size: req.page_size, token: (!req.page_token.is_empty()).then_some(req.page_token) };
        let (entries, next) = self.state.ds.list_entries(&filter, &page).await.map_err(datastore_status)?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries: entries.iter().map(convert::entry_to_pb).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn count_entries(
        &self,
        req: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountEntriesResponse>, Status> {
        let filter = filter_from_pb(req.into_inner().filter.as_ref())?;
        let count = self.state.ds.count_entries(&filter).await.map_err(datastore_status)?;
        Ok(Response::new(pb::CountEntriesResponse { count }))
    }
}

#[tonic::async_trait]
impl agents_server::Agents for AdminApi {
    async fn list_agents(
        &self,
        _req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self.state.agents().iter().map(convert::agent_to_pb).collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn get_agent(&self, req: Request<pb::GetAgentRequest>) -> Result<Response<tpb::Agent>, Status> {
        let id = convert::spiffe_id("id", &req.into_inner().id)?;
        self.state
            .agent(&id)
            .map(|a| Response::new(convert::agent_to_pb(&a)))
            .ok_or_else(|| Status::not_found(format!("no attested agent {id}")))
    }

    async fn delete_agent(
        &self,
        req: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let id = convert::spiffe_id("id", &req.into_inner().id)?;
        self.state.evict_agent(&id).await.map_err(datastore_status)?;
        tracing::info!(agent = %id, "agent evicted");
        Ok(Response::new(pb::DeleteAgentResponse {}))
    }

    async fn ban_agent(&self, req: Request<pb::BanAgentRequest>) -> Result<Response<pb::BanAgentResponse>, Status> {
        let id = convert::spiffe_id("id", &req.into_inner().id)?;
        self.state.ban_agent(&id).await.map_err(datastore_status)?;
        tracing::info!(agent = %id, "agent banned");
        Ok(Response::new(pb::BanAgentResponse {}))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let req = req.into_inner();
        let ttl = match req.ttl {
            0 => self.state.config.join_token_ttl,
            t if t < 0 => return Err(Status::invalid_argument("ttl: must not be negative")),
            t => Duration::from_secs(t as u64),
        };
        let alias = if req.agent_alias_spiffe_id.is_empty() {
            None
        } else {
            let id = convert::spiffe_id("spiffeID", &req.agent_alias_spiffe_id)?;
            if !id.is_member_of(&self.state.trust_domain) || id.is_trust_domain_id() {
                return Err(Status::invalid_argument(format!(
                    "spiffeID: {id} must be in trust domain {} and have a path",
                    self.state.trust_domain
                )));
            }
            Some(id)
        };
        let token = uuid::Uuid::new_v4().to_string();
        let expires_at = now_unix() + ttl.as_secs() as i64;
        self.state.ds.create_join_token(&token, expires_at).await.map_err(datastore_status)?;
        if let Some(alias) = alias {
            // As SPIRE: an entry for the alias ID, parented to the agent ID this token will produce, with
            // the `spiffe_id` selector naming that agent.
            let agent_id = crate::api::agent::join_token_agent_id(&self.state.trust_domain, &token)?;
            let sel = sigil_core::Selector::new("spiffe_id", agent_id.as_str())
                .map_err(|e| Status::internal(e.to_string()))?;
            let entry = sigil_core::RegistrationEntry {
                id: String::new(),
                spiffe_id: alias,
                parent_id: agent_id,
                selectors: vec![sel],
                x509_svid_ttl: 0,
                jwt_svid_ttl: 0,
                dns_names: vec![],
                federates_with: vec![],
                admin: false,
                downstream: false,
                hint: String::new(),
                entry_expiry: 0,
                revision: 0,
                created_at: 0,
            };
            if let Some(Err(e)) = self.state.create_entries(vec![entry]).await.into_iter().next() {
                return Err(datastore_status(e));
            }
        }
        Ok(Response::new(pb::CreateJoinTokenResponse { token, expires_at }))
    }
}

#[tonic::async_trait]
impl bundles_server::Bundles for AdminApi {
    async fn get_bundle(&self, _req: Request<pb::GetBundleRequest>) -> Result<Response<tpb::Bundle>, Status> {
        Ok(Response::new(convert::bundle_to_pb(&self.state.bundle())))
    }

    async fn list_federated_bundles(
        &self,
        _req: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        let bundles = self.state.federated_bundles().iter().map(convert::bundle_to_pb).collect();
        Ok(Response::new(pb::ListFederatedBundlesResponse { bundles }))
    }

    async fn set_federated_bundle(
        &self,
        req: Request<pb::SetFederatedBundleRequest>,
    ) -> Result<Response<pb::SetFederatedBundleResponse>, Status> {
        let b = req.into_inner().bundle.ok_or_else(|| Status::invalid_argument("bundle: required"))?;
        let bundle = convert::bundle_from_pb(&b)?;
        let stored = self.state.set_federated_bundle(bundle).await.map_err(state_status)?;
        Ok(Response::new(pb::SetFederatedBundleResponse { bundle: Some(convert::bundle_to_pb(&stored)) }))
    }

    async fn delete_federated_bundle(
        &self,
        req: Request<pb::DeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::DeleteFederatedBundleResponse>, Status> {
        let td = convert::trust_domain("trust_domain", &req.into_inner().trust_domain)?;
        self.state.delete_federated_bundle(&td).await.map_err(state_status)?;
        Ok(Response::new(pb::DeleteFederatedBundleResponse {}))
    }
}

fn ttl_opt(field: &str, v: i32) -> Result<Option<Duration>, Status> {
    match v {
        0 => Ok(None),
        t if t < 0 => Err(Status::invalid_argument(format!("{field}: must not be negative"))),
        t => Ok(Some(Duration::from_secs(t as u64))),
    }
}

#[tonic::async_trait]
impl svids_server::Svids for AdminApi {
    async fn mint_x509_svid(
        &self,
        req: Request<pb::MintX509SvidRequest>,
    ) -> Result<Response<pb::MintX509SvidResponse>, Status> {
        let req = req.into_inner();
        let id = convert::spiffe_id("spiffe_id", &req.spiffe_id)?;
        if !id.is_member_of(&self.state.trust_domain) {
            return Err(Status::invalid_argument(format!(
                "spiffe_id: {id} is not in trust domain {}",
                self.state.trust_domain
            )));
        }
        for d in &req.dns_names {
            if !sigil_core::entry::is_valid_dns_name(d) {
                return Err(Status::invalid_argument(format!("dns_names: invalid DNS name {d:?}")));
            }
        }
        let ttl = ttl_opt("ttl", req.ttl)?;
        let issued = self
            .state
            .ca()
            .sign_x509_svid_csr(&req.csr, &id, &req.dns_names, ttl, now_unix())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.state.metrics.x509_svids_signed.inc();
        Ok(Response::new(pb::MintX509SvidResponse {
            svid: Some(tpb::X509Svid {
                spiffe_id: id.to_string(),
                cert_chain: issued.chain_der,
                expires_at: issued.expires_at,
            }),
        }))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        let req = req.into_inner();
        let id = convert::spiffe_id("spiffe_id", &req.spiffe_id)?;
        if !id.is_member_of(&self.state.trust_domain) {
            return Err(Status::invalid_argument(format!(
                "spiffe_id: {id} is not in trust domain {}",
                self.state.trust_domain
            )));
        }
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience: at least one non-empty audience is required"));
        }
        let ttl = ttl_opt("ttl", req.ttl)?;
        let (token, expires_at) = self
            .state
            .ca()
            .sign_jwt_svid(&id, &req.audience, ttl, now_unix())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.state.metrics.jwt_svids_signed.inc();
        Ok(Response::new(pb::MintJwtSvidResponse { token, expires_at }))
    }
}
