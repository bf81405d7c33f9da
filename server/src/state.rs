//! The server's shared state.
//!
//! The datastore is the source of truth; the in-memory [`EntryIndex`] and agent map are caches of it, kept
//! consistent by doing every write as "datastore write, then cache update, then notify" under one async
//! mutex. Agents never cause datastore reads on their hot path (SPIRE's "biggest bottleneck"): authorization
//! and sync read the index. Every change is announced on a broadcast channel, which is what makes entry sync a
//! push instead of SPIRE's 5 s poll.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sigil_core::bundle::Bundle;
use sigil_core::{EntryChanges, EntryIndex, RegistrationEntry, Selector, SpiffeId, TrustDomain};
use tokio::sync::{Mutex, broadcast, watch};

use crate::ca::CaManager;
use crate::config::ServerConfig;
use crate::datastore::{AttestedAgent, Datastore, DatastoreError};
use crate::federation::FederationRelationship;
use crate::metrics::Metrics;

/// What changed; subscribers re-read the state they care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Entries were created, updated or deleted (what changed, for delta recomputes).
    Entries(Arc<EntryChanges>),
    /// The own bundle changed (CA rotation, prepared key).
    Bundle,
    /// A federated bundle was set or deleted.
    FederatedBundles,
    /// A federation relationship was created, updated or deleted (trust domains given).
    FederationRelationships(Vec<TrustDomain>),
    /// An agent was evicted or banned: its streams must end.
    AgentRevoked(SpiffeId),
    /// An agent switched to its renewed SVID, or attested again: streams opened with another SVID must end.
    AgentSvidReplaced(SpiffeId),
}

pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[derive(Debug)]
pub struct ServerState {
    pub config: ServerConfig,
    pub trust_domain: TrustDomain,
    pub server_id: SpiffeId,
    pub ds: Arc<dyn Datastore>,
    pub ca: RwLock<CaManager>,
    index: RwLock<EntryIndex>,
    agents: RwLock<HashMap<SpiffeId, AttestedAgent>>,
    federated: RwLock<HashMap<TrustDomain, Bundle>>,
    relationships: RwLock<BTreeMap<TrustDomain, FederationRelationship>>,
    bundle_tx: watch::Sender<Arc<Bundle>>,
    changes: broadcast::Sender<Change>,
    write_lock: Mutex<()>,
    pub metrics: Metrics,
    /// The foreign bundle fetchers' status, and the way to ask one for a refresh.
    pub federation: crate::federation::Board,
    ready: std::sync::atomic::AtomicBool,
}

/// Why an agent's call is refused (answered with `PermissionDenied`, except datastore failures).
#[derive(Debug, thiserror::Error)]
pub enum AgentAuthError {
    #[error("agent {0} is not attested (evicted?): attest again")]
    NotAttested(SpiffeId),
    #[error("agent {0} is banned")]
    Banned(SpiffeId),
    #[error(
        "agent {id}: SVID serial {serial} is not the agent's current SVID (it was renewed since, or never issued to this agent)"
    )]
    NotCurrentSvid { id: SpiffeId, serial: String },
    #[error(transparent)]
    Datastore(DatastoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error("{0}")]
    Other(String),
    #[error("{0}")]
    InUse(String),
}

impl ServerState {
    /// Loads caches from the datastore and publishes the current bundle.
    pub async fn new(
        config: ServerConfig,
        ds: Arc<dyn Datastore>,
        ca: CaManager,
        metrics: Metrics,
    ) -> Result<Arc<Self>, StateError> {
        let trust_domain = config.trust_domain.clone();
        let server_id =
            trust_domain.join(sigil_core::entry::SERVER_ID_PATH).map_err(|e| StateError::Other(e.to_string()))?;
        let entries = ds.all_entries().await?;
        let agents = ds.list_agents().await?;
        let federated = ds.list_bundles().await?;
        let relationships = ds.list_federation_relationships().await?;
        let own = ds.get_bundle(&trust_domain).await?.unwrap_or_else(|| Bundle::new(trust_domain.clone()));
        let (bundle_tx, _) = watch::channel(Arc::new(own));
        let (changes, _) = broadcast::channel(4096);
        metrics.entries.set(entries.len() as i64);
        let state = Arc::new(Self {
            config,
            trust_domain: trust_domain.clone(),
            server_id,
            ds,
            ca: RwLock::new(ca),
            index: RwLock::new(EntryIndex::new(entries)),
            agents: RwLock::new(agents.into_iter().map(|a| (a.spiffe_id.clone(), a)).collect()),
            federated: RwLock::new(
                federated
                    .into_iter()
                    .filter(|b| b.trust_domain != trust_domain)
                    .map(|b| (b.trust_domain.clone(), b))
                    .collect(),
            ),
            relationships: RwLock::new(relationships.into_iter().map(|r| (r.trust_domain.clone(), r)).collect()),
            bundle_tx,
            changes,
            write_lock: Mutex::new(()),
            metrics,
            federation: crate::federation::Board::default(),
            ready: std::sync::atomic::AtomicBool::new(false),
        });
        state.publish_own_bundle().await?;
        Ok(state)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn notify(&self, change: Change) {
        // No receivers is fine: nobody is connected.
        let _ = self.changes.send(change);
    }

    pub fn bundle_watch(&self) -> watch::Receiver<Arc<Bundle>> {
        self.bundle_tx.subscribe()
    }

    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle_tx.borrow().clone()
    }

    pub fn index(&self) -> RwLockReadGuard<'_, EntryIndex> {
        // A poisoned lock means a panic while updating; the data is still the last consistent state.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ca(&self) -> RwLockReadGuard<'_, CaManager> {
        self.ca.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn federated_bundles(&self) -> Vec<Bundle> {
        let map = self.federated.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Bundle> = map.values().cloned().collect();
        v.sort_by(|a, b| a.trust_domain.cmp(&b.trust_domain));
        v
    }

    pub fn federated_bundle(&self, td: &TrustDomain) -> Option<Bundle> {
        self.federated.read().unwrap_or_else(|p| p.into_inner()).get(td).cloned()
    }

    /// Recomputes the own bundle from the CA's slots; stores and publishes it when the keys changed
    /// (the sequence number grows by one on each change, F2).
    pub async fn publish_own_bundle(&self) -> Result<bool, StateError> {
        let _guard = self.write_lock.lock().await;
        let (x509, jwt) = self.ca().bundle_authorities(now_unix());
        let current = self.bundle();
        if current.x509_authorities == x509 && current.jwt_authorities == jwt && current.sequence > 0 {
            return Ok(false);
        }
        let next = Bundle {
            trust_domain: self.trust_domain.clone(),
            x509_authorities: x509,
            jwt_authorities: jwt,
            sequence: current.sequence + 1,
            refresh_hint_secs: Some(refresh_hint(&self.config).as_secs()),
        };
        self.ds.set_bundle(next.clone()).await?;
        self.bundle_tx.send_replace(Arc::new(next));
        self.notify(Change::Bundle);
        Ok(true)
    }

    /// One CA rotation step: prepares/activates/retires slots, persists the journal, republishes the bundle.
    pub async fn rotate_ca(&self) -> Result<(), StateError> {
        let journal = {
            let mut ca = self.ca.write().unwrap_or_else(|p| p.into_inner());
            ca.rotate(now_unix())?
        };
        if let Some(journal) = journal {
            self.ds.store_ca_journal(journal).await?;
        }
        self.publish_own_bundle().await?;
        Ok(())
    }

    // ----- entries -----

    pub async fn create_entries(
        &self,
        entries: Vec<RegistrationEntry>,
    ) -> Vec<Result<RegistrationEntry, DatastoreError>> {
        let _guard = self.write_lock.lock().await;
        let results = self.ds.create_entries(entries).await;
        let mut changed = EntryChanges::default();
        {
            let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
            for e in results.iter().flatten() {
                let old = idx.upsert(e.clone());
                changed.record(old.as_ref(), Some(e));
            }
            self.metrics.entries.set(idx.len() as i64);
        }
        self.entries_changed(changed);
        results
    }

    fn entries_changed(&self, changed: EntryChanges) {
        if !changed.is_empty() {
            self.metrics.entry_writes.inc_by(changed.ids.len() as u64);
            self.notify(Change::Entries(Arc::new(changed)));
        }
    }

    pub async fn update_entry(&self, entry: RegistrationEntry) -> Result<RegistrationEntry, DatastoreError> {
        let _guard = self.write_lock.lock().await;
        let updated = self.ds.update_entry(entry, None).await?;
        let old = self.index.write().unwrap_or_else(|p| p.into_inner()).upsert(updated.clone());
        let mut changed = EntryChanges::default();
        changed.record(old.as_ref(), Some(&updated));
        self.entries_changed(changed);
        Ok(updated)
    }

    pub async fn delete_entries(&self, ids: &[String]) -> Vec<Result<RegistrationEntry, DatastoreError>> {
        let _guard = self.write_lock.lock().await;
        let results = self.ds.delete_entries(ids).await;
        let mut changed = EntryChanges::default();
        {
            let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
            for e in results.iter().flatten() {
                idx.remove(&e.id);
                changed.record(Some(e), None);
            }
            self.metrics.entries.set(idx.len() as i64);
        }
        self.entries_changed(changed);
        results
    }

    // ----- agents -----

    pub fn agent(&self, id: &SpiffeId) -> Option<AttestedAgent> {
        self.agents.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    pub fn agents(&self) -> Vec<AttestedAgent> {
        let mut v: Vec<_> = self.agents.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id));
        v
    }

    /// Records an attested agent: a new record, or, for an agent ID already recorded (a node attesting
    /// again, as `k8s_psat` agents do instead of renewing), that same record with the new SVID as the only
    /// accepted one (a pending renewal is dropped), the new selectors and type; `created_at` is kept. Then,
    /// as after a renewal, the previous SVID stops working and streams opened with it end. A banned agent is
    /// refused here, under the write lock, so a ban that comes in while the caller signs wins.
    pub async fn record_attested_agent(&self, agent: AttestedAgent) -> Result<AttestedAgent, AgentAuthError> {
        let _guard = self.write_lock.lock().await;
        let id = agent.spiffe_id.clone();
        let Some(existing) = self.agent(&id) else {
            let stored = self.ds.create_agent(agent).await.map_err(AgentAuthError::Datastore)?;
            self.agents.write().unwrap_or_else(|p| p.into_inner()).insert(id, stored.clone());
            return Ok(stored);
        };
        if existing.banned {
            return Err(AgentAuthError::Banned(id));
        }
        let replaced = AttestedAgent { new_cert_serial: String::new(), new_cert_expires_at: 0, ..agent };
        let stored = self.update_existing_agent(replaced).await?;
        self.notify(Change::AgentSvidReplaced(id.clone()));
        tracing::info!(
            agent = %id,
            previous_serial = %existing.cert_serial,
            serial = %stored.cert_serial,
            "agent attested again; its previous SVID is no longer accepted"
        );
        Ok(stored)
    }

    /// The record of the agent presenting an SVID with `serial` (hex). Only the agent's current SVID is
    /// accepted, and a renewed one not yet used: presenting that one makes it the current SVID, and the old
    /// one stops working (SPIRE's new_cert_serial_number). So a copy of an agent SVID is useless once the
    /// agent has renewed and moved on, and an evicted or banned agent is refused.
    pub async fn authenticate_agent(&self, id: &SpiffeId, serial: &str) -> Result<AttestedAgent, AgentAuthError> {
        let agent = self.accepted_agent(id, serial)?;
        if agent.cert_serial == serial {
            return Ok(agent);
        }
        // The renewed SVID's first use: promote it, re-checking under the write lock (an eviction, a ban or
        // another promotion may have come in between).
        let _guard = self.write_lock.lock().await;
        let agent = self.accepted_agent(id, serial)?;
        if agent.cert_serial == serial {
            return Ok(agent);
        }
        let promoted = AttestedAgent {
            cert_serial: agent.new_cert_serial.clone(),
            cert_expires_at: agent.new_cert_expires_at,
            new_cert_serial: String::new(),
            new_cert_expires_at: 0,
            updated_at: now_unix(),
            ..agent
        };
        let stored = self.update_existing_agent(promoted).await?;
        self.notify(Change::AgentSvidReplaced(id.clone()));
        tracing::info!(agent = %id, serial, "agent switched to its renewed SVID; the previous one is no longer accepted");
        Ok(stored)
    }

    /// The cached record, if `serial` is its current or its pending SVID.
    fn accepted_agent(&self, id: &SpiffeId, serial: &str) -> Result<AttestedAgent, AgentAuthError> {
        let agent = self.agent(id).ok_or_else(|| AgentAuthError::NotAttested(id.clone()))?;
        if agent.banned {
            return Err(AgentAuthError::Banned(id.clone()));
        }
        let current = !agent.cert_serial.is_empty() && agent.cert_serial == serial;
        let pending = !agent.new_cert_serial.is_empty() && agent.new_cert_serial == serial;
        if !current && !pending {
            return Err(AgentAuthError::NotCurrentSvid { id: id.clone(), serial: serial.to_owned() });
        }
        Ok(agent)
    }

    /// Records a renewed agent SVID as pending (see [`authenticate_agent`](Self::authenticate_agent)). The
    /// check and the write are one step under the write lock that eviction and banning take too, so a
    /// renewal that was in flight when the agent was evicted or banned fails instead of bringing the agent
    /// back; it never creates a record.
    pub async fn renew_agent(
        &self,
        id: &SpiffeId,
        presented_serial: &str,
        new_serial: String,
        new_expires_at: i64,
    ) -> Result<(), AgentAuthError> {
        let _guard = self.write_lock.lock().await;
        let agent = self.accepted_agent(id, presented_serial)?;
        let renewed = AttestedAgent {
            new_cert_serial: new_serial,
            new_cert_expires_at: new_expires_at,
            updated_at: now_unix(),
            ..agent
        };
        self.update_existing_agent(renewed).await.map(drop)
    }

    /// Writes an agent record that must exist already, then caches it. The caller holds the write lock.
    async fn update_existing_agent(&self, agent: AttestedAgent) -> Result<AttestedAgent, AgentAuthError> {
        let id = agent.spiffe_id.clone();
        let stored = self.ds.update_agent(agent).await.map_err(|e| match e {
            DatastoreError::NotFound(_) => AgentAuthError::NotAttested(id),
            e => AgentAuthError::Datastore(e),
        })?;
        self.agents.write().unwrap_or_else(|p| p.into_inner()).insert(stored.spiffe_id.clone(), stored.clone());
        Ok(stored)
    }

    /// Evicts an agent: its record is deleted, so it must attest again.
    pub async fn evict_agent(&self, id: &SpiffeId) -> Result<(), DatastoreError> {
        let _guard = self.write_lock.lock().await;
        self.ds.delete_agent(id).await?;
        self.agents.write().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.notify(Change::AgentRevoked(id.clone()));
        Ok(())
    }

    /// Bans an agent: the record stays, marked banned, so it can neither sync nor attest again.
    pub async fn ban_agent(&self, id: &SpiffeId) -> Result<(), DatastoreError> {
        let _guard = self.write_lock.lock().await;
        self.ds.set_agent_banned(id, true).await?;
        if let Some(a) = self.agents.write().unwrap_or_else(|p| p.into_inner()).get_mut(id) {
            a.banned = true;
        }
        self.notify(Change::AgentRevoked(id.clone()));
        Ok(())
    }

    /// The node selectors of an attested agent (empty for join-token agents).
    pub fn agent_selectors(&self, id: &SpiffeId) -> BTreeSet<Selector> {
        self.agent(id).map(|a| a.selectors.into_iter().collect()).unwrap_or_default()
    }

    /// The entries an agent may see and sign, keyed by entry ID.
    pub fn authorized_entries(&self, agent_id: &SpiffeId) -> Vec<RegistrationEntry> {
        let selectors = self.agent_selectors(agent_id);
        self.index().authorized_for(agent_id, &selectors, now_unix()).into_iter().cloned().collect()
    }

    /// Resolves requested entry IDs against what `agent` may sign, under one read lock: item `i` is
    /// `Some(pick(entry))` when the agent is authorized for `entry_ids[i]` (the rule of
    /// [`authorized_entries`](Self::authorized_entries), checked per entry by walking up its ancestry), else
    /// `None`. Only what `pick` extracts is copied out, never the agent's whole entry set.
    pub fn resolve_authorized<'a, T>(
        &self,
        agent: &AttestedAgent,
        entry_ids: impl IntoIterator<Item = &'a str>,
        mut pick: impl FnMut(&RegistrationEntry) -> T,
    ) -> Vec<Option<T>> {
        let selectors: BTreeSet<Selector> = agent.selectors.iter().cloned().collect();
        let now = now_unix();
        let idx = self.index();
        entry_ids
            .into_iter()
            .map(|id| idx.is_authorized(&agent.spiffe_id, &selectors, id, now).map(&mut pick))
            .collect()
    }

    /// One entry `agent` may sign, if it is authorized for it (see [`resolve_authorized`](Self::resolve_authorized)).
    pub fn authorized_entry(&self, agent: &AttestedAgent, entry_id: &str) -> Option<RegistrationEntry> {
        self.resolve_authorized(agent, [entry_id], RegistrationEntry::clone).into_iter().next().flatten()
    }

    // ----- federated bundles -----

    pub async fn set_federated_bundle(&self, bundle: Bundle) -> Result<Bundle, StateError> {
        if bundle.trust_domain == self.trust_domain {
            return Err(StateError::Other("the server's own bundle cannot be set; it is managed by its CA".into()));
        }
        let _guard = self.write_lock.lock().await;
        self.ds.set_bundle(bundle.clone()).await?;
        self.federated.write().unwrap_or_else(|p| p.into_inner()).insert(bundle.trust_domain.clone(), bundle.clone());
        self.notify(Change::FederatedBundles);
        Ok(bundle)
    }

    /// Stores a bundle fetched from a bundle endpoint when it changes the stored one
    /// ([`sigil_core::federation::accept::update`]), and announces it as `bundle set` does, so agents'
    /// sync streams carry it. Returns the stored bundle and whether the served sequence went backwards, or
    /// `None` when nothing changed (nothing written, nobody told).
    pub async fn store_fetched_bundle(&self, fetched: Bundle) -> Result<Option<(Bundle, bool)>, StateError> {
        if fetched.trust_domain == self.trust_domain {
            return Err(StateError::Other("the server's own bundle is never replaced by a fetched one".into()));
        }
        let _guard = self.write_lock.lock().await;
        let stored = self.federated_bundle(&fetched.trust_domain);
        let (bundle, went_back) = match sigil_core::federation::accept::update(stored.as_ref(), fetched) {
            sigil_core::federation::accept::Update::Unchanged => return Ok(None),
            sigil_core::federation::accept::Update::Store { bundle, sequence_went_back } => {
                (bundle, sequence_went_back)
            }
        };
        self.ds.set_bundle(bundle.clone()).await?;
        self.federated.write().unwrap_or_else(|p| p.into_inner()).insert(bundle.trust_domain.clone(), bundle.clone());
        self.notify(Change::FederatedBundles);
        Ok(Some((bundle, went_back)))
    }

    /// Deletes a federated bundle; `mode` says what happens to the entries that federate with it.
    pub async fn delete_federated_bundle(&self, td: &TrustDomain, mode: BundleDeleteMode) -> Result<(), StateError> {
        if td == &self.trust_domain {
            return Err(StateError::Other("the server's own bundle cannot be deleted".into()));
        }
        let _guard = self.write_lock.lock().await;
        let users: Vec<RegistrationEntry> =
            self.index().iter().filter(|e| e.federates_with.contains(td)).map(RegistrationEntry::clone).collect();
        let mut changed = EntryChanges::default();
        match mode {
            BundleDeleteMode::Restrict if !users.is_empty() => {
                let n = users.len();
                return Err(StateError::InUse(format!(
                    "{n} registration entr{} federate with {td}; update them first, or delete with mode dissociate \
                     or delete",
                    if n == 1 { "y" } else { "ies" }
                )));
            }
            BundleDeleteMode::Restrict => {}
            BundleDeleteMode::Dissociate => {
                for mut entry in users {
                    entry.federates_with.retain(|t| t != td);
                    let updated = self.ds.update_entry(entry, None).await?;
                    let old = self.index.write().unwrap_or_else(|p| p.into_inner()).upsert(updated.clone());
                    changed.record(old.as_ref(), Some(&updated));
                }
            }
            BundleDeleteMode::Delete => {
                let ids: Vec<String> = users.into_iter().map(|e| e.id).collect();
                for result in self.ds.delete_entries(&ids).await {
                    let deleted = result?;
                    self.index.write().unwrap_or_else(|p| p.into_inner()).remove(&deleted.id);
                    changed.record(Some(&deleted), None);
                }
                self.metrics.entries.set(self.index().len() as i64);
            }
        }
        self.entries_changed(changed);
        self.ds.delete_bundle(td).await?;
        self.federated.write().unwrap_or_else(|p| p.into_inner()).remove(td);
        self.notify(Change::FederatedBundles);
        Ok(())
    }
}

/// What deleting a federated bundle does to the entries that federate with it (SPIRE's `bundle delete -mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BundleDeleteMode {
    /// Refuse while any entry federates with it (SPIRE's default).
    #[default]
    Restrict,
    /// Remove the trust domain from those entries' federates_with.
    Dissociate,
    /// Delete those entries.
    Delete,
}

impl ServerState {
    // ----- federation relationships -----

    /// Every relationship, in trust domain order.
    pub fn federation_relationships(&self) -> Vec<FederationRelationship> {
        self.relationships.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    pub fn federation_relationship(&self, td: &TrustDomain) -> Option<FederationRelationship> {
        self.relationships.read().unwrap_or_else(|p| p.into_inner()).get(td).cloned()
    }

    /// Checks a relationship and the bundle given with it before anything is written.
    fn check_relationship(&self, rel: &FederationRelationship, bundle: Option<&Bundle>) -> Result<(), StateError> {
        rel.validate(&self.trust_domain).map_err(|e| StateError::Other(e.to_string()))?;
        if let Some(b) = bundle
            && b.trust_domain != rel.trust_domain
        {
            return Err(StateError::Other(format!(
                "trust_domain_bundle: the bundle is of trust domain {}, not of the relationship's trust domain {}",
                b.trust_domain, rel.trust_domain
            )));
        }
        Ok(())
    }

    /// Records the result of a relationship write (and its bundle) in the caches and announces it.
    fn relationship_written(&self, rel: &FederationRelationship, bundle: Option<Bundle>) {
        self.relationships.write().unwrap_or_else(|p| p.into_inner()).insert(rel.trust_domain.clone(), rel.clone());
        if let Some(b) = bundle {
            self.federated.write().unwrap_or_else(|p| p.into_inner()).insert(b.trust_domain.clone(), b);
            self.notify(Change::FederatedBundles);
        }
        self.notify(Change::FederationRelationships(vec![rel.trust_domain.clone()]));
    }

    /// Creates a relationship; the bundle, when given, becomes the federated bundle of its trust domain
    /// (one transaction with the relationship).
    pub async fn create_federation_relationship(
        &self,
        rel: FederationRelationship,
        bundle: Option<Bundle>,
    ) -> Result<FederationRelationship, StateError> {
        self.check_relationship(&rel, bundle.as_ref())?;
        let _guard = self.write_lock.lock().await;
        let stored = self.ds.create_federation_relationship(rel, bundle.clone()).await?;
        self.relationship_written(&stored, bundle);
        Ok(stored)
    }

    /// Replaces URL and profile of a relationship (and its federated bundle, when given).
    pub async fn update_federation_relationship(
        &self,
        rel: FederationRelationship,
        bundle: Option<Bundle>,
    ) -> Result<FederationRelationship, StateError> {
        self.check_relationship(&rel, bundle.as_ref())?;
        let _guard = self.write_lock.lock().await;
        let stored = self.ds.update_federation_relationship(rel, bundle.clone()).await?;
        self.relationship_written(&stored, bundle);
        Ok(stored)
    }

    /// Deletes a relationship. The federated bundle stays, as in SPIRE: entries may still federate with it
    /// and it can be deleted on its own.
    pub async fn delete_federation_relationship(&self, td: &TrustDomain) -> Result<(), StateError> {
        let _guard = self.write_lock.lock().await;
        self.ds.delete_federation_relationship(td).await?;
        self.relationships.write().unwrap_or_else(|p| p.into_inner()).remove(td);
        self.notify(Change::FederationRelationships(vec![td.clone()]));
        Ok(())
    }
}

/// SPIRE publishes a refresh hint; a tenth of the CA lifetime, clamped to [1 min, 5 min], lets federated
/// peers see a prepared CA well before it activates (G8 asks for 3-5x the hint ahead).
pub fn refresh_hint(config: &ServerConfig) -> Duration {
    (config.ca_ttl / 10).clamp(Duration::from_secs(60), Duration::from_secs(300))
}
