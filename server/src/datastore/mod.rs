//! The server's persistent state behind one trait, [`Datastore`].
//!
//! SQLite (embedded, the default) lives in [`sqlite`]; PostgreSQL can be added later behind the same trait.
//! The datastore is the source of truth for registration entries, attested agents, join tokens, trust bundles
//! and the CA journal. Every acknowledged write is durable (it survives `kill -9` of the process) and every
//! write that touches several rows is one transaction.
//!
//! Federation relationships (trust domain, bundle endpoint URL and profile, endpoint SPIFFE ID) are stored
//! here too (migration 2); a relationship's foreign bundle is an ordinary bundle row, written in the same
//! transaction when given, and outlives the relationship.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use sigil_core::bundle::Bundle;
use sigil_core::{RegistrationEntry, Selector, SpiffeId, TrustDomain};

use crate::federation::FederationRelationship;

pub mod sqlite;

pub use sqlite::SqliteDatastore;

/// Why a datastore call failed. The messages are safe to show to an admin client, except `Backend`,
/// which is for the server log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatastoreError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The stored revision is not the one the caller based its change on.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("datastore backend failure: {0}")]
    Backend(String),
}

pub type Result<T, E = DatastoreError> = std::result::Result<T, E>;

/// How an [`EntryFilter`] compares an entry's selectors with the given ones (SPIRE semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectorMatch {
    /// The entry's selector set equals the given set.
    Exact,
    /// The entry's selectors are all among the given ones (entry ⊆ given).
    Subset,
    /// The entry has every given selector (entry ⊇ given).
    Superset,
    /// The entry has at least one of the given selectors.
    Any,
}

/// Which entries to list or count; every field set must hold (AND). The default matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    pub by_spiffe_id: Option<SpiffeId>,
    pub by_parent_id: Option<SpiffeId>,
    /// The selector list must not be empty.
    pub by_selectors: Option<(Vec<Selector>, SelectorMatch)>,
    pub by_hint: Option<String>,
    pub by_downstream: Option<bool>,
}

/// One page of a listing. `size` 0 means everything; `token` is the `next_page_token` of the previous page.
/// Pages are in entry-ID order, so every entry appears exactly once across the pages of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub size: u32,
    pub token: Option<String>,
}

/// An agent that has attested. A banned agent's row stays so that re-attestation with its ID is refused;
/// an evicted agent's row is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedAgent {
    pub spiffe_id: SpiffeId,
    pub attestation_type: String,
    /// Serial number of the agent's current SVID (hex): the only agent SVID the server accepts, besides a
    /// renewed one not yet used.
    pub cert_serial: String,
    /// Unix seconds.
    pub cert_expires_at: i64,
    /// Serial number of the SVID the last renewal issued, until the agent first presents it (then it
    /// becomes `cert_serial`); empty when no renewal is pending (SPIRE's `new_cert_serial_number`).
    pub new_cert_serial: String,
    /// Unix seconds; 0 when no renewal is pending.
    pub new_cert_expires_at: i64,
    /// Node selectors from attestation.
    pub selectors: Vec<Selector>,
    pub banned: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// What consuming a join token found. The token is gone afterwards in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JoinTokenOutcome {
    Valid,
    Expired,
    NotFound,
}

/// The server's persistent state. Implementations must make every acknowledged write durable and every
/// multi-row write atomic.
#[async_trait::async_trait]
pub trait Datastore: Send + Sync + fmt::Debug + 'static {
    // ----- registration entries -----

    /// Stores a new entry. The datastore assigns `id` (UUID v4) when it is empty, `revision` = 1 and
    /// `created_at` = now. `AlreadyExists` when an entry with the same ID, or with the same SPIFFE ID,
    /// parent ID and selector set, exists; `Invalid` when the entry has no selectors or a malformed ID.
    async fn create_entry(&self, entry: RegistrationEntry) -> Result<RegistrationEntry>;

    /// Creates several entries: one result per input, in order. All successes are committed in one
    /// transaction; a failed item does not affect the others.
    async fn create_entries(&self, entries: Vec<RegistrationEntry>) -> Vec<Result<RegistrationEntry>>;

    /// Replaces every client-settable field of the entry with `entry.id`; `created_at` is kept and `revision`
    /// grows by one. `Conflict` when `expected_revision` is given and differs from the stored revision;
    /// `NotFound` when there is no such entry; `AlreadyExists` when the change would duplicate another entry.
    async fn update_entry(&self, entry: RegistrationEntry, expected_revision: Option<i64>)
    -> Result<RegistrationEntry>;

    /// Deletes entries by ID, in one transaction: one result per ID, the deleted entry or `NotFound`.
    async fn delete_entries(&self, ids: &[String]) -> Vec<Result<RegistrationEntry>>;

    async fn get_entry(&self, id: &str) -> Result<Option<RegistrationEntry>>;

    /// One page of the entries matching `filter`, and the token of the next page when there is one.
    async fn list_entries(&self, filter: &EntryFilter, page: &Page)
    -> Result<(Vec<RegistrationEntry>, Option<String>)>;

    async fn count_entries(&self, filter: &EntryFilter) -> Result<u64>;

    /// Every entry, in ID order (the server builds its in-memory index from this at start).
    async fn all_entries(&self) -> Result<Vec<RegistrationEntry>>;

    // ----- attested agents -----

    /// Records a newly attested agent. `created_at`/`updated_at` of 0 become now. `AlreadyExists` when an
    /// agent with that ID exists (banned or not).
    async fn create_agent(&self, agent: AttestedAgent) -> Result<AttestedAgent>;

    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AttestedAgent>>;

    /// Every agent, in SPIFFE ID order.
    async fn list_agents(&self) -> Result<Vec<AttestedAgent>>;

    /// Updates attestation type, SVID serials and expiries and node selectors; `updated_at` is taken from the
    /// agent (0 = now). `created_at` and `banned` are kept. `NotFound` when there is no such agent: an update
    /// never re-creates an evicted agent.
    async fn update_agent(&self, agent: AttestedAgent) -> Result<AttestedAgent>;

    /// Evicts an agent: its row is deleted. `NotFound` when there is no such agent.
    async fn delete_agent(&self, id: &SpiffeId) -> Result<()>;

    /// Marks an agent banned (or not); the row stays. `NotFound` when there is no such agent.
    async fn set_agent_banned(&self, id: &SpiffeId, banned: bool) -> Result<()>;

    // ----- join tokens -----

    /// Stores a join token valid until `expires_at` (unix seconds). `AlreadyExists` for a duplicate.
    async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<()>;

    /// Deletes the token and says what it was. Atomic: of concurrent consumers of one token, exactly one
    /// sees `Valid` (or `Expired`). A token is expired when `expires_at <= now`.
    async fn consume_join_token(&self, token: &str, now: i64) -> Result<JoinTokenOutcome>;

    /// Deletes every expired token; returns how many.
    async fn prune_join_tokens(&self, now: i64) -> Result<u64>;

    // ----- trust bundles -----

    /// Stores the bundle of its trust domain, replacing any previous one.
    async fn set_bundle(&self, bundle: Bundle) -> Result<()>;

    async fn get_bundle(&self, trust_domain: &TrustDomain) -> Result<Option<Bundle>>;

    /// Every stored bundle (own and federated), in trust domain order.
    async fn list_bundles(&self) -> Result<Vec<Bundle>>;

    /// `NotFound` when there is no bundle for that trust domain.
    async fn delete_bundle(&self, trust_domain: &TrustDomain) -> Result<()>;

    // ----- federation relationships -----

    /// Stores a new relationship and, when given, the foreign bundle (which must be of the relationship's
    /// trust domain), in one transaction. `AlreadyExists` when a relationship with that trust domain exists.
    async fn create_federation_relationship(
        &self,
        relationship: FederationRelationship,
        bundle: Option<Bundle>,
    ) -> Result<FederationRelationship>;

    /// Replaces URL and profile of an existing relationship and, when given, the foreign bundle, in one
    /// transaction. `NotFound` when there is no relationship with that trust domain.
    async fn update_federation_relationship(
        &self,
        relationship: FederationRelationship,
        bundle: Option<Bundle>,
    ) -> Result<FederationRelationship>;

    /// Deletes a relationship; its bundle stays. `NotFound` when there is none.
    async fn delete_federation_relationship(&self, trust_domain: &TrustDomain) -> Result<()>;

    async fn get_federation_relationship(&self, trust_domain: &TrustDomain) -> Result<Option<FederationRelationship>>;

    /// Every relationship, in trust domain order.
    async fn list_federation_relationships(&self) -> Result<Vec<FederationRelationship>>;

    // ----- CA journal -----

    /// The CA module's journal, as last stored.
    async fn load_ca_journal(&self) -> Result<Option<Vec<u8>>>;

    /// Replaces the CA journal.
    async fn store_ca_journal(&self, journal: Vec<u8>) -> Result<()>;
}

/// Opens (creating if needed) the SQLite datastore at `path`.
pub async fn open_sqlite(path: &Path) -> Result<Arc<dyn Datastore>> {
    Ok(Arc::new(SqliteDatastore::open(path).await?))
}
