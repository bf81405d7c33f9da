//! The agent API (TLS on TCP). `Attest` needs only server-authenticated TLS; every other RPC requires the
//! agent's X509-SVID (verified against the current bundle during the handshake), a live, unbanned agent
//! record, and that the SVID is the agent's current one: after a renewal the agent's previous SVID stops
//! working as soon as it presents the new one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sigil_core::{EntryChanges, RegistrationEntry, SpiffeId, TrustDomain};
use sigil_proto::agent::{self as pb, node_server};
use sigil_proto::types as tpb;
use sigil_tls::PeerIdentity;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{self, datastore_status};
use crate::attestor::{self, Attestors};
use crate::datastore::AttestedAgent;
use crate::state::{AgentAuthError, Change, ServerState, now_unix};

pub use crate::attestor::join_token_agent_id;

#[derive(Debug, Clone)]
pub struct AgentApi {
    pub state: Arc<ServerState>,
    pub attestors: Arc<Attestors>,
}

impl AgentApi {
    /// The calling agent's record, if its connection carries a verified SVID of a live, unbanned agent and
    /// that SVID is the agent's current one (see [`ServerState::authenticate_agent`]), and the serial of
    /// the SVID it presented.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<(AttestedAgent, String), Status> {
        let peer = req.extensions().get::<PeerIdentity>();
        let (id, serial) = peer.and_then(|p| Some((p.spiffe_id.clone()?, p.serial_hex.clone()?))).ok_or_else(|| {
            Status::unauthenticated("this call needs the agent's X509-SVID as TLS client certificate")
        })?;
        if !id.path().starts_with("/spire/agent/") || !id.is_member_of(&self.state.trust_domain) {
            return Err(Status::permission_denied(format!(
                "{id} is not an agent of trust domain {}",
                self.state.trust_domain
            )));
        }
        let agent = self.state.authenticate_agent(&id, &serial).await.map_err(agent_auth_status)?;
        Ok((agent, serial))
    }

    fn sign_agent_svid(&self, csr: &[u8], agent_id: &SpiffeId) -> Result<crate::ca::IssuedX509, Status> {
        let issued = self
            .state
            .ca()
            .sign_x509_svid_csr(csr, agent_id, &[], Some(self.state.config.agent_ttl), now_unix())
            .map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
        self.state.metrics.x509_svids_signed.inc();
        Ok(issued)
    }
}

fn agent_auth_status(e: AgentAuthError) -> Status {
    match e {
        AgentAuthError::Datastore(e) => datastore_status(e),
        e => Status::permission_denied(e.to_string()),
    }
}

/// What signing one CSR needs from its (authorized) entry.
struct SignTarget {
    spiffe_id: SpiffeId,
    dns_names: Vec<String>,
    ttl: Option<Duration>,
}

impl SignTarget {
    fn of(entry: &RegistrationEntry) -> Self {
        Self {
            spiffe_id: entry.spiffe_id.clone(),
            dns_names: entry.dns_names.clone(),
            ttl: (entry.x509_svid_ttl > 0).then(|| Duration::from_secs(entry.x509_svid_ttl.into())),
        }
    }
}

fn svid_pb(id: &SpiffeId, issued: crate::ca::IssuedX509) -> tpb::X509Svid {
    tpb::X509Svid { spiffe_id: id.to_string(), cert_chain: issued.chain_der, expires_at: issued.expires_at }
}

fn count_attestation(state: &ServerState, kind: &str, result: &str) {
    state
        .metrics
        .attestations
        .get_or_create(&vec![("type".into(), kind.into()), ("result".into(), result.into())])
        .inc();
}

#[tonic::async_trait]
impl node_server::Node for AgentApi {
    async fn attest(&self, req: Request<pb::AttestRequest>) -> Result<Response<pb::AttestResponse>, Status> {
        let req = req.into_inner();
        let node = self.attestors.attest(&self.state, &req.attestation_type, &req.payload).await.map_err(|r| {
            if let Some(result) = r.result {
                count_attestation(&self.state, &req.attestation_type, result);
            }
            r.status
        })?;
        let kind = node.attestation_type;
        let agent_id = node.agent_id;
        if self.state.agent(&agent_id).is_some_and(|a| a.banned) {
            count_attestation(&self.state, kind, "banned");
            return Err(Status::permission_denied(format!("agent {agent_id} is banned")));
        }
        let issued = self.sign_agent_svid(&req.csr, &agent_id)?;
        let serial = issued.chain_der.first().and_then(|leaf| sigil_tls::serial_hex(leaf)).unwrap_or_default();
        let now = now_unix();
        // An agent ID attested before (the same node again) keeps its one record: same ID, created_at kept,
        // the new SVID replaces the previous one, which stops working.
        let recorded = self
            .state
            .record_attested_agent(AttestedAgent {
                spiffe_id: agent_id.clone(),
                attestation_type: kind.into(),
                cert_serial: serial,
                cert_expires_at: issued.expires_at,
                selectors: node.selectors,
                banned: false,
                created_at: now,
                updated_at: now,
                new_cert_serial: String::new(),
                new_cert_expires_at: 0,
            })
            .await;
        if let Err(e) = recorded {
            count_attestation(
                &self.state,
                kind,
                if matches!(e, AgentAuthError::Banned(_)) { "banned" } else { "error" },
            );
            return Err(agent_auth_status(e));
        }
        count_attestation(&self.state, kind, "ok");
        tracing::info!(agent = %agent_id, attestation_type = kind, "agent attested");
        Ok(Response::new(pb::AttestResponse {
            svid: Some(svid_pb(&agent_id, issued)),
            bundle: Some(convert::bundle_to_pb(&self.state.bundle())),
        }))
    }

    async fn renew_agent_svid(
        &self,
        req: Request<pb::RenewAgentSvidRequest>,
    ) -> Result<Response<pb::RenewAgentSvidResponse>, Status> {
        let (agent, presented) = self.authenticate(&req).await?;
        if attestor::must_reattest(&agent.attestation_type) {
            return Err(Status::permission_denied(format!(
                "AGENT_MUST_REATTEST: agent {} attested with {} and must attest again instead of renewing its SVID",
                agent.spiffe_id, agent.attestation_type
            )));
        }
        let issued = self.sign_agent_svid(&req.get_ref().csr, &agent.spiffe_id)?;
        let serial = issued
            .chain_der
            .first()
            .and_then(|leaf| sigil_tls::serial_hex(leaf))
            .ok_or_else(|| Status::internal("the renewed agent SVID has no readable serial number"))?;
        let id = agent.spiffe_id;
        // Recorded only if the agent is still attested, unbanned and presenting an accepted SVID now: an
        // eviction or ban while this call was signing wins.
        self.state.renew_agent(&id, &presented, serial, issued.expires_at).await.map_err(agent_auth_status)?;
        Ok(Response::new(pb::RenewAgentSvidResponse { svid: Some(svid_pb(&id, issued)) }))
    }

    type SyncEntriesStream = ReceiverStream<Result<pb::SyncEntriesUpdate, Status>>;

    async fn sync_entries(
        &self,
        req: Request<pb::SyncEntriesRequest>,
    ) -> Result<Response<Self::SyncEntriesStream>, Status> {
        let (agent, serial) = self.authenticate(&req).await?;
        // Subscribe before the snapshot, so no change between the two is missed.
        let changes = self.state.subscribe();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_sync(self.state.clone(), agent.spiffe_id, serial, changes, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn batch_new_x509_svid(
        &self,
        req: Request<pb::BatchNewX509SvidRequest>,
    ) -> Result<Response<pb::BatchNewX509SvidResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let params = req.into_inner().params;
        if params.len() > 1000 {
            return Err(Status::invalid_argument("params: at most 1000 CSRs per batch"));
        }
        // Authorize every CSR under one read lock of the index, walking up from each requested entry;
        // only what signing needs is copied out.
        let targets = self.state.resolve_authorized(&agent, params.iter().map(|p| p.entry_id.as_str()), SignTarget::of);
        let total = params.len();
        // Signing is CPU-bound: spread the batch over the cores, off the async runtime.
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(total.max(1));
        let chunk = total.div_ceil(workers).max(1);
        let mut jobs = params.into_iter().zip(targets);
        let mut tasks = vec![];
        loop {
            let part: Vec<_> = jobs.by_ref().take(chunk).collect();
            if part.is_empty() {
                break;
            }
            let state = self.state.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                let now = now_unix();
                let ca = state.ca();
                part.into_iter()
                    .map(|(p, target)| {
                        let Some(target) = target else {
                            return pb::batch_new_x509_svid_response::Result {
                                code: tonic::Code::PermissionDenied as i32,
                                message: format!("entry {:?} is not authorized for this agent", p.entry_id),
                                entry_id: p.entry_id,
                                svid: None,
                            };
                        };
                        match ca.sign_x509_svid_csr(&p.csr, &target.spiffe_id, &target.dns_names, target.ttl, now) {
                            Ok(issued) => pb::batch_new_x509_svid_response::Result {
                                code: 0,
                                message: String::new(),
                                entry_id: p.entry_id,
                                svid: Some(svid_pb(&target.spiffe_id, issued)),
                            },
                            Err(e) => pb::batch_new_x509_svid_response::Result {
                                code: tonic::Code::InvalidArgument as i32,
                                message: format!("csr: {e}"),
                                entry_id: p.entry_id,
                                svid: None,
                            },
                        }
                    })
                    .collect::<Vec<_>>()
            }));
        }
        let mut results = Vec::with_capacity(total);
        for t in tasks {
            results.extend(t.await.map_err(|e| Status::internal(format!("signing task failed: {e}")))?);
        }
        let signed = results.iter().filter(|r| r.code == 0).count();
        self.state.metrics.x509_svids_signed.inc_by(signed as u64);
        Ok(Response::new(pb::BatchNewX509SvidResponse { results }))
    }

    async fn new_jwt_svid(
        &self,
        req: Request<pb::NewJwtSvidRequest>,
    ) -> Result<Response<pb::NewJwtSvidResponse>, Status> {
        let (agent, _) = self.authenticate(&req).await?;
        let req = req.into_inner();
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience: at least one non-empty audience is required"));
        }
        let entry = self.state.authorized_entry(&agent, &req.entry_id).ok_or_else(|| {
            Status::permission_denied(format!("entry {:?} is not authorized for this agent", req.entry_id))
        })?;
        let ttl = (entry.jwt_svid_ttl > 0).then(|| Duration::from_secs(entry.jwt_svid_ttl.into()));
        let (token, expires_at) = self
            .state
            .ca()
            .sign_jwt_svid(&entry.spiffe_id, &req.audience, ttl, now_unix())
            .map_err(|e| Status::internal(e.to_string()))?;
        self.state.metrics.jwt_svids_signed.inc();
        Ok(Response::new(pb::NewJwtSvidResponse { token, expires_at }))
    }
}

/// What an agent's sync stream last sent of one entry: enough to tell a later change and to pick the
/// federated bundles (not the entry itself: a stream holds this for every entry its agent may see).
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    revision: i64,
    federates_with: Vec<TrustDomain>,
}

impl Sent {
    fn of(e: &RegistrationEntry) -> Self {
        Self { revision: e.revision, federates_with: e.federates_with.clone() }
    }
}

/// Federated bundles relevant to a set of entries: those any entry federates with.
fn federated_for(state: &ServerState, entries: &BTreeMap<String, Sent>) -> Vec<tpb::Bundle> {
    let mut tds: Vec<&TrustDomain> = entries.values().flat_map(|e| e.federates_with.iter()).collect();
    tds.sort();
    tds.dedup();
    tds.into_iter().filter_map(|td| state.federated_bundle(td)).map(|b| convert::bundle_to_pb(&b)).collect()
}

/// Brings `sent` up to date with the entries `agent_id` may see now and fills `update` with the difference.
/// With `changes` (and no node alias among them) only the affected entries are looked at, so the cost of a
/// change follows what changed, not how many entries the agent has; without, everything is recomputed (at
/// (re)connect, after a missed announcement, when an alias changed). Returns whether the federated bundles
/// the agent needs may have changed.
fn sync_entries_delta(
    state: &ServerState,
    agent_id: &SpiffeId,
    changes: Option<&EntryChanges>,
    sent: &mut BTreeMap<String, Sent>,
    update: &mut pb::SyncEntriesUpdate,
) -> bool {
    let selectors = state.agent_selectors(agent_id);
    let now = now_unix();
    let idx = state.index();
    let mut federation_changed = false;
    let mut apply = |id: &str, current: Option<&RegistrationEntry>, sent: &mut BTreeMap<String, Sent>| match current {
        Some(e) => {
            let before = sent.get(id);
            if before.is_none_or(|b| b.revision != e.revision || b.federates_with != e.federates_with) {
                federation_changed |=
                    !e.federates_with.is_empty() || before.is_some_and(|b| !b.federates_with.is_empty());
                update.upserted.push(convert::entry_to_pb(e));
                sent.insert(id.to_owned(), Sent::of(e));
            }
        }
        None => {
            if let Some(b) = sent.remove(id) {
                federation_changed |= !b.federates_with.is_empty();
                update.removed_entry_ids.push(id.to_owned());
            }
        }
    };
    match changes.filter(|c| !c.alias) {
        Some(c) => {
            for id in idx.affected(c) {
                let current = idx.is_authorized(agent_id, &selectors, &id, now);
                apply(&id, current, sent);
            }
        }
        None => {
            let now_set: BTreeMap<&str, &RegistrationEntry> =
                idx.authorized_for(agent_id, &selectors, now).into_iter().map(|e| (e.id.as_str(), e)).collect();
            let gone: Vec<String> = sent.keys().filter(|id| !now_set.contains_key(id.as_str())).cloned().collect();
            for id in gone {
                apply(&id, None, sent);
            }
            for (id, e) in now_set {
                apply(id, Some(e), sent);
            }
        }
    }
    federation_changed
}

/// Whether `serial` (which authenticated a stream) is still the current SVID of an attested, unbanned agent.
fn still_current(state: &ServerState, agent_id: &SpiffeId, serial: &str) -> bool {
    state.agent(agent_id).is_some_and(|a| !a.banned && a.cert_serial == serial)
}

fn svid_replaced_or_revoked(agent_id: &SpiffeId) -> Status {
    Status::permission_denied(format!(
        "agent {agent_id} was evicted or banned, or switched to a renewed SVID: this stream's SVID is no longer accepted"
    ))
}

/// One agent's sync stream: a full snapshot, then diffs as changes are announced. It ends when the agent is
/// evicted or banned, or switches to a renewed SVID (streams opened with the old one end).
async fn run_sync(
    state: Arc<ServerState>,
    agent_id: SpiffeId,
    serial: String,
    mut changes: broadcast::Receiver<Change>,
    tx: mpsc::Sender<Result<pb::SyncEntriesUpdate, Status>>,
) {
    // Replaced between authentication and the subscription: no notification would come.
    if !still_current(&state, &agent_id, &serial) {
        let _ = tx.send(Err(svid_replaced_or_revoked(&agent_id))).await;
        return;
    }
    state.metrics.agents_connected.inc();
    let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
    let mut first = pb::SyncEntriesUpdate {
        full_snapshot: true,
        bundle: Some(convert::bundle_to_pb(&state.bundle())),
        federated_bundles_changed: true,
        ..Default::default()
    };
    sync_entries_delta(&state, &agent_id, None, &mut sent, &mut first);
    first.federated_bundles = federated_for(&state, &sent);
    if tx.send(Ok(first)).await.is_err() {
        state.metrics.agents_connected.dec();
        return;
    }
    loop {
        let change = tokio::select! {
            c = changes.recv() => c,
            () = tx.closed() => break,
        };
        // `Some(None)`: recompute the agent's whole set.
        let (entries_changed, bundle_changed, federated_changed) = match change {
            Ok(Change::Entries(c)) => (Some(Some(c)), false, false),
            Ok(Change::Bundle) => (None, true, false),
            Ok(Change::FederatedBundles) => (None, false, true),
            Ok(Change::AgentRevoked(id)) if id == agent_id => {
                let _ =
                    tx.send(Err(Status::permission_denied(format!("agent {agent_id} was evicted or banned")))).await;
                break;
            }
            Ok(Change::AgentSvidReplaced(id)) if id == agent_id && !still_current(&state, &agent_id, &serial) => {
                let _ = tx.send(Err(svid_replaced_or_revoked(&agent_id))).await;
                break;
            }
            Ok(Change::AgentRevoked(_) | Change::AgentSvidReplaced(_) | Change::FederationRelationships(_)) => {
                continue;
            }
            // Missed some announcements (a revocation among them, maybe): check the agent again, then
            // recompute everything; the diff makes it exact again.
            Err(broadcast::error::RecvError::Lagged(_)) if !still_current(&state, &agent_id, &serial) => {
                let _ = tx.send(Err(svid_replaced_or_revoked(&agent_id))).await;
                break;
            }
            Err(broadcast::error::RecvError::Lagged(_)) => (Some(None), true, true),
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let mut update = pb::SyncEntriesUpdate::default();
        if let Some(changes) = entries_changed
            && sync_entries_delta(&state, &agent_id, changes.as_deref(), &mut sent, &mut update)
        {
            update.federated_bundles = federated_for(&state, &sent);
            update.federated_bundles_changed = true;
        }
        if bundle_changed {
            update.bundle = Some(convert::bundle_to_pb(&state.bundle()));
        }
        if federated_changed {
            update.federated_bundles = federated_for(&state, &sent);
            update.federated_bundles_changed = true;
        }
        let empty = update.upserted.is_empty()
            && update.removed_entry_ids.is_empty()
            && update.bundle.is_none()
            && !update.federated_bundles_changed;
        if !empty && tx.send(Ok(update)).await.is_err() {
            break;
        }
    }
    state.metrics.agents_connected.dec();
}
