//! Registration entries and the rule that decides which entries an agent may see and sign.
//!
//! Authorization follows SPIRE so existing entry trees carry over: an agent is authorized for every entry
//! that descends from one of its IDs, where its IDs are its own agent ID plus the SPIFFE IDs of the *alias*
//! (node) entries whose selectors its node selectors satisfy. Descent is transitive: an entry whose parent is
//! the SPIFFE ID of an authorized entry is authorized too (nested workloads, downstream servers).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::id::{SpiffeId, TrustDomain};
use crate::selector::{Selector, all_present};

/// Path of the server's own ID; alias (node) entries are parented to it, as in SPIRE.
pub const SERVER_ID_PATH: &str = "/spire/server";

/// A registration entry. `id` is assigned by the server; `revision` grows on every update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationEntry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub parent_id: SpiffeId,
    pub selectors: Vec<Selector>,
    /// Seconds; 0 means the server default.
    pub x509_svid_ttl: u32,
    /// Seconds; 0 means the server default.
    pub jwt_svid_ttl: u32,
    pub dns_names: Vec<String>,
    pub federates_with: Vec<TrustDomain>,
    pub admin: bool,
    pub downstream: bool,
    pub hint: String,
    /// Unix seconds; 0 means no expiry.
    pub entry_expiry: i64,
    pub revision: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// Why an entry was refused before it reached the datastore.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry needs at least one selector")]
    NoSelectors,
    #[error("spiffe_id {0} is not in the server's trust domain {1}")]
    ForeignSpiffeId(SpiffeId, TrustDomain),
    #[error("parent_id {0} is not in the server's trust domain {1}")]
    ForeignParentId(SpiffeId, TrustDomain),
    #[error("spiffe_id {0} needs a non-empty path")]
    RootSpiffeId(SpiffeId),
    #[error("invalid DNS name {0:?}")]
    BadDnsName(String),
    #[error("hint is longer than 1024 bytes")]
    HintTooLong,
    #[error("ttl {0}s is too long (at most 10 years)")]
    TtlTooLong(u32),
    #[error(transparent)]
    Id(#[from] crate::id::IdError),
}

impl RegistrationEntry {
    /// Checks the fields a client supplies. IDs are already typed; this adds the rules that need context.
    pub fn validate(&self, td: &TrustDomain) -> Result<(), EntryError> {
        if self.selectors.is_empty() {
            return Err(EntryError::NoSelectors);
        }
        if !self.spiffe_id.is_member_of(td) {
            return Err(EntryError::ForeignSpiffeId(self.spiffe_id.clone(), td.clone()));
        }
        if !self.parent_id.is_member_of(td) {
            return Err(EntryError::ForeignParentId(self.parent_id.clone(), td.clone()));
        }
        if self.spiffe_id.is_trust_domain_id() {
            return Err(EntryError::RootSpiffeId(self.spiffe_id.clone()));
        }
        self.spiffe_id.check_issuable()?;
        for name in &self.dns_names {
            if !is_valid_dns_name(name) {
                return Err(EntryError::BadDnsName(name.clone()));
            }
        }
        if self.hint.len() > 1024 {
            return Err(EntryError::HintTooLong);
        }
        const TEN_YEARS: u32 = 10 * 365 * 24 * 3600;
        for ttl in [self.x509_svid_ttl, self.jwt_svid_ttl] {
            if ttl > TEN_YEARS {
                return Err(EntryError::TtlTooLong(ttl));
            }
        }
        Ok(())
    }

    /// An alias (node) entry: parented to the server, so its selectors describe nodes, not workloads.
    pub fn is_node_alias(&self) -> bool {
        self.parent_id.path() == SERVER_ID_PATH
    }

    /// True when the entry has an expiry in the past.
    pub fn is_expired(&self, now_unix: i64) -> bool {
        self.entry_expiry != 0 && self.entry_expiry <= now_unix
    }
}

/// A DNS SAN: labels of letters, digits and '-', optionally a leading `*.` wildcard, at most 253 bytes.
pub fn is_valid_dns_name(name: &str) -> bool {
    let body = name.strip_prefix("*.").unwrap_or(name);
    if body.is_empty() || name.len() > 253 {
        return false;
    }
    body.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// The IDs an agent acts as: its own ID plus the alias entries its node selectors satisfy.
pub fn agent_identities<'a>(
    agent_id: &SpiffeId,
    node_selectors: &BTreeSet<Selector>,
    entries: impl IntoIterator<Item = &'a RegistrationEntry>,
) -> BTreeSet<SpiffeId> {
    let mut ids = BTreeSet::from([agent_id.clone()]);
    for e in entries {
        if e.is_node_alias() && all_present(&e.selectors, node_selectors) {
            ids.insert(e.spiffe_id.clone());
        }
    }
    ids
}

/// Entries indexed by parent ID, so authorization walks only the agent's subtree.
#[derive(Debug, Default, Clone)]
pub struct EntryIndex {
    by_id: HashMap<String, RegistrationEntry>,
    children: HashMap<SpiffeId, BTreeSet<String>>,
    aliases: BTreeSet<String>,
}

impl EntryIndex {
    pub fn new(entries: impl IntoIterator<Item = RegistrationEntry>) -> Self {
        let mut idx = Self::default();
        for e in entries {
            idx.upsert(e);
        }
        idx
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&RegistrationEntry> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &RegistrationEntry> {
        self.by_id.values()
    }

    /// Inserts or replaces an entry (by `id`).
    pub fn upsert(&mut self, entry: RegistrationEntry) {
        self.remove(&entry.id);
        self.children.entry(entry.parent_id.clone()).or_default().insert(entry.id.clone());
        if entry.is_node_alias() {
            self.aliases.insert(entry.id.clone());
        }
        self.by_id.insert(entry.id.clone(), entry);
    }

    pub fn remove(&mut self, id: &str) -> Option<RegistrationEntry> {
        let old = self.by_id.remove(id)?;
        if let Some(set) = self.children.get_mut(&old.parent_id) {
            set.remove(id);
            if set.is_empty() {
                self.children.remove(&old.parent_id);
            }
        }
        self.aliases.remove(id);
        Some(old)
    }

    /// The IDs an agent acts as (see [`agent_identities`]), using only alias entries.
    pub fn agent_identities(&self, agent_id: &SpiffeId, node_selectors: &BTreeSet<Selector>) -> BTreeSet<SpiffeId> {
        agent_identities(agent_id, node_selectors, self.aliases.iter().filter_map(|id| self.by_id.get(id)))
    }

    /// Every entry the agent is authorized for, sorted by entry ID. Expired entries are left out.
    pub fn authorized_for(
        &self,
        agent_id: &SpiffeId,
        node_selectors: &BTreeSet<Selector>,
        now_unix: i64,
    ) -> Vec<&RegistrationEntry> {
        let roots = self.agent_identities(agent_id, node_selectors);
        let mut seen_parents: HashSet<SpiffeId> = HashSet::new();
        let mut queue: VecDeque<SpiffeId> = roots.into_iter().collect();
        let mut out: BTreeSet<&str> = BTreeSet::new();
        while let Some(parent) = queue.pop_front() {
            if !seen_parents.insert(parent.clone()) {
                continue; // cycles in a hand-made entry tree must not loop forever
            }
            for child_id in self.children.get(&parent).into_iter().flatten() {
                let Some(child) = self.by_id.get(child_id) else { continue };
                if child.is_expired(now_unix) {
                    continue;
                }
                if out.insert(child.id.as_str()) {
                    queue.push_back(child.spiffe_id.clone());
                }
            }
        }
        out.into_iter().filter_map(|id| self.by_id.get(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    fn entry(eid: &str, spiffe: &str, parent: &str, sels: &[&str]) -> RegistrationEntry {
        RegistrationEntry {
            id: eid.into(),
            spiffe_id: id(spiffe),
            parent_id: id(parent),
            selectors: sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
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
        }
    }

    fn ids(v: &[&RegistrationEntry]) -> Vec<String> {
        v.iter().map(|e| e.id.clone()).collect()
    }

    #[test]
    fn authorization_table() {
        let agent = "spiffe://td/spire/agent/join_token/abc";
        let other = "spiffe://td/spire/agent/join_token/zzz";
        let idx = EntryIndex::new([
            entry("direct", "spiffe://td/web", agent, &["unix:uid:1"]),
            entry("other-agent", "spiffe://td/db", other, &["unix:uid:2"]),
            entry("alias", "spiffe://td/node/group-a", "spiffe://td/spire/server", &["join_token:group:a"]),
            entry("via-alias", "spiffe://td/api", "spiffe://td/node/group-a", &["unix:uid:3"]),
            entry("nested", "spiffe://td/api/child", "spiffe://td/api", &["unix:uid:4"]),
            entry("cycle-a", "spiffe://td/c1", "spiffe://td/c2", &["unix:uid:5"]),
            entry("cycle-b", "spiffe://td/c2", "spiffe://td/c1", &["unix:uid:6"]),
        ]);
        let with_group: BTreeSet<Selector> = [Selector::parse("join_token:group:a").unwrap()].into();
        let cases: &[(&str, &BTreeSet<Selector>, &[&str])] = &[
            (agent, &BTreeSet::new(), &["direct"]),
            (agent, &with_group, &["direct", "nested", "via-alias"]),
            (other, &BTreeSet::new(), &["other-agent"]),
            ("spiffe://td/spire/agent/join_token/none", &BTreeSet::new(), &[]),
        ];
        for (agent_id, sels, want) in cases {
            let got = ids(&idx.authorized_for(&id(agent_id), sels, 0));
            assert_eq!(got, want.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{agent_id}");
        }
    }

    #[test]
    fn expired_entries_are_not_authorized() {
        let agent = "spiffe://td/spire/agent/join_token/abc";
        let mut e = entry("old", "spiffe://td/web", agent, &["unix:uid:1"]);
        e.entry_expiry = 100;
        let idx = EntryIndex::new([e]);
        assert_eq!(idx.authorized_for(&id(agent), &BTreeSet::new(), 99).len(), 1);
        assert!(idx.authorized_for(&id(agent), &BTreeSet::new(), 100).is_empty());
    }

    #[test]
    fn upsert_moves_entry_to_new_parent() {
        let a = "spiffe://td/spire/agent/join_token/a";
        let b = "spiffe://td/spire/agent/join_token/b";
        let mut idx = EntryIndex::new([entry("e", "spiffe://td/web", a, &["unix:uid:1"])]);
        idx.upsert(entry("e", "spiffe://td/web", b, &["unix:uid:1"]));
        assert!(idx.authorized_for(&id(a), &BTreeSet::new(), 0).is_empty());
        assert_eq!(ids(&idx.authorized_for(&id(b), &BTreeSet::new(), 0)), vec!["e"]);
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn validate_table() {
        let td = TrustDomain::new("td").unwrap();
        let ok = entry("e", "spiffe://td/web", "spiffe://td/agent", &["unix:uid:1"]);
        assert_eq!(ok.validate(&td), Ok(()));
        let mut no_sel = ok.clone();
        no_sel.selectors.clear();
        assert_eq!(no_sel.validate(&td), Err(EntryError::NoSelectors));
        let foreign = entry("e", "spiffe://other/web", "spiffe://td/agent", &["unix:uid:1"]);
        assert!(matches!(foreign.validate(&td), Err(EntryError::ForeignSpiffeId(..))));
        let root = entry("e", "spiffe://td", "spiffe://td/agent", &["unix:uid:1"]);
        assert!(matches!(root.validate(&td), Err(EntryError::RootSpiffeId(..))));
        let mut bad_dns = ok.clone();
        bad_dns.dns_names = vec!["bad_name".into()];
        assert!(matches!(bad_dns.validate(&td), Err(EntryError::BadDnsName(..))));
        let mut long_ttl = ok;
        long_ttl.x509_svid_ttl = u32::MAX;
        assert!(matches!(long_ttl.validate(&td), Err(EntryError::TtlTooLong(..))));
    }

    #[test]
    fn dns_names() {
        for good in ["a", "web.default.svc", "*.example.org", "a-b.c"] {
            assert!(is_valid_dns_name(good), "{good}");
        }
        for bad in ["", "*.", "-a", "a-", "a..b", "a_b", "a b", &"x".repeat(64)] {
            assert!(!is_valid_dns_name(bad), "{bad}");
        }
    }
}
