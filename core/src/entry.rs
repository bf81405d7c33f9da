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
    /// SPIRE's `store_svid` (issued SVIDs are to be stored by an SVIDStore plugin). Stored and shown;
    /// Sigil has no SVID stores, so it has no other effect.
    #[serde(default)]
    pub store_svid: bool,
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
    /// An entry with just its identity, parent and selectors: every other field is zero or empty (no ID
    /// yet, server-default TTLs, no DNS names, no federation, not admin or downstream, no expiry).
    pub fn new(spiffe_id: SpiffeId, parent_id: SpiffeId, selectors: Vec<Selector>) -> Self {
        Self {
            id: String::new(),
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            dns_names: Vec::new(),
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            hint: String::new(),
            entry_expiry: 0,
            store_svid: false,
            revision: 0,
            created_at: 0,
        }
    }

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

/// The longest entry ID, in bytes (SPIRE refuses `len(EntryId) > 255`).
pub const MAX_ENTRY_ID_LEN: usize = 255;

/// Whether SPIRE allows this character in an entry ID (`validEntryIDChars`: `A-Z a-z 0-9 - . _`).
pub fn is_entry_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')
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

/// What one entry write changed, so that each agent's authorized set can be brought up to date by delta:
/// only the changed entries and the entries below their SPIFFE IDs (before and after) can have changed
/// authorization, unless a node alias changed (then an agent's identities may differ: recompute).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryChanges {
    pub ids: Vec<String>,
    pub spiffe_ids: BTreeSet<SpiffeId>,
    pub alias: bool,
}

impl EntryChanges {
    /// Records one entry's change: `old` (none for a create) to `new` (none for a delete).
    pub fn record(&mut self, old: Option<&RegistrationEntry>, new: Option<&RegistrationEntry>) {
        for e in old.into_iter().chain(new) {
            self.spiffe_ids.insert(e.spiffe_id.clone());
            self.alias |= e.is_node_alias();
        }
        if let Some(e) = new.or(old) {
            self.ids.push(e.id.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Entries indexed by parent ID, so authorization walks only the agent's subtree, and by SPIFFE ID, so a
/// single entry's authorization walks only its ancestry.
#[derive(Debug, Default, Clone)]
pub struct EntryIndex {
    by_id: HashMap<String, RegistrationEntry>,
    children: HashMap<SpiffeId, BTreeSet<String>>,
    /// Almost always one entry per SPIFFE ID: a Vec, not a set (a BTreeSet's first node alone is ~300 bytes,
    /// ~30 MiB at 100,000 entries).
    by_spiffe_id: HashMap<SpiffeId, Vec<String>>,
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

    /// Inserts or replaces an entry (by `id`); returns the replaced one.
    pub fn upsert(&mut self, entry: RegistrationEntry) -> Option<RegistrationEntry> {
        let old = self.remove(&entry.id);
        self.children.entry(entry.parent_id.clone()).or_default().insert(entry.id.clone());
        // `remove` above took any earlier copy of this id out, so it is not in the list.
        self.by_spiffe_id.entry(entry.spiffe_id.clone()).or_default().push(entry.id.clone());
        if entry.is_node_alias() {
            self.aliases.insert(entry.id.clone());
        }
        self.by_id.insert(entry.id.clone(), entry);
        old
    }

    /// The entry IDs whose authorization, for any agent, may differ after `changes`: the changed entries and
    /// every entry below one of their SPIFFE IDs, transitively (a workload entry parented to its agent has
    /// none: the set is just the changed entries). Cost follows what changed, not the index size.
    pub fn affected(&self, changes: &EntryChanges) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = changes.ids.iter().cloned().collect();
        let mut seen: HashSet<&SpiffeId> = HashSet::new();
        let mut queue: VecDeque<&SpiffeId> = changes.spiffe_ids.iter().collect();
        while let Some(parent) = queue.pop_front() {
            if !seen.insert(parent) {
                continue; // cycles in a hand-made entry tree must not loop forever
            }
            for child_id in self.children.get(parent).into_iter().flatten() {
                if let Some(child) = self.by_id.get(child_id) {
                    out.insert(child.id.clone());
                    queue.push_back(&child.spiffe_id);
                }
            }
        }
        out
    }

    pub fn remove(&mut self, id: &str) -> Option<RegistrationEntry> {
        let old = self.by_id.remove(id)?;
        if let Some(set) = self.children.get_mut(&old.parent_id) {
            set.remove(id);
            if set.is_empty() {
                self.children.remove(&old.parent_id);
            }
        }
        if let Some(ids) = self.by_spiffe_id.get_mut(&old.spiffe_id) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_spiffe_id.remove(&old.spiffe_id);
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

    /// The entry `entry_id` if [`authorized_for`](Self::authorized_for) would include it, found by walking *up*
    /// from the entry's parent instead of down the agent's whole subtree: cost follows the entry's ancestry,
    /// not the number of entries the agent is authorized for.
    pub fn is_authorized(
        &self,
        agent_id: &SpiffeId,
        node_selectors: &BTreeSet<Selector>,
        entry_id: &str,
        now_unix: i64,
    ) -> Option<&RegistrationEntry> {
        let entry = self.by_id.get(entry_id)?;
        if entry.is_expired(now_unix) {
            return None;
        }
        self.reaches_identity(&entry.parent_id, agent_id, node_selectors, now_unix).then_some(entry)
    }

    /// True when `start` is one of the agent's identities, or the SPIFFE ID of a live entry whose parent
    /// (transitively) is. This is exactly the set of parent IDs `authorized_for` expands from.
    fn reaches_identity(
        &self,
        start: &SpiffeId,
        agent_id: &SpiffeId,
        node_selectors: &BTreeSet<Selector>,
        now_unix: i64,
    ) -> bool {
        if start == agent_id {
            return true; // the common case: a workload entry parented to the agent itself
        }
        let mut visited: HashSet<&SpiffeId> = HashSet::new();
        let mut stack: Vec<&SpiffeId> = vec![start];
        while let Some(current) = stack.pop() {
            if !visited.insert(current) {
                continue; // cycles in a hand-made entry tree must not loop forever
            }
            if current == agent_id {
                return true;
            }
            let holders = || self.by_spiffe_id.get(current).into_iter().flatten().filter_map(|id| self.by_id.get(id));
            // An identity via a matching alias entry; as in `agent_identities`, the alias's expiry does not matter.
            if holders().any(|e| e.is_node_alias() && all_present(&e.selectors, node_selectors)) {
                return true;
            }
            // Otherwise `current` counts only as the SPIFFE ID of a live entry that is itself authorized.
            stack.extend(holders().filter(|e| !e.is_expired(now_unix)).map(|e| &e.parent_id));
        }
        false
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
            store_svid: false,
            revision: 0,
            created_at: 0,
        }
    }

    #[test]
    fn new_sets_only_identity_parent_and_selectors() {
        let sels = vec![Selector::parse("unix:uid:1").unwrap()];
        let e = RegistrationEntry::new(id("spiffe://td/a"), id("spiffe://td/p"), sels.clone());
        assert_eq!(e, entry("", "spiffe://td/a", "spiffe://td/p", &["unix:uid:1"]));
        assert_eq!((e.spiffe_id.to_string(), e.selectors), ("spiffe://td/a".to_string(), sels));
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
    fn is_authorized_table() {
        let agent = "spiffe://td/spire/agent/join_token/abc";
        let other = "spiffe://td/spire/agent/join_token/zzz";
        let server = "spiffe://td/spire/server";
        let mut expired_alias = entry("old-alias", "spiffe://td/node/old", server, &["join_token:group:a"]);
        expired_alias.entry_expiry = 50;
        let mut expired_mid = entry("expired-mid", "spiffe://td/mid", agent, &["unix:uid:7"]);
        expired_mid.entry_expiry = 50;
        let idx = EntryIndex::new([
            entry("direct", "spiffe://td/web", agent, &["unix:uid:1"]),
            entry("other-agent", "spiffe://td/db", other, &["unix:uid:2"]),
            entry("alias", "spiffe://td/node/group-a", server, &["join_token:group:a"]),
            entry("via-alias", "spiffe://td/api", "spiffe://td/node/group-a", &["unix:uid:3"]),
            entry("nested", "spiffe://td/api/child", "spiffe://td/api", &["unix:uid:4"]),
            entry("deeper", "spiffe://td/api/child/x", "spiffe://td/api/child", &["unix:uid:4"]),
            entry("cycle-a", "spiffe://td/c1", "spiffe://td/c2", &["unix:uid:5"]),
            entry("cycle-b", "spiffe://td/c2", "spiffe://td/c1", &["unix:uid:6"]),
            expired_alias,
            entry("via-old-alias", "spiffe://td/old-child", "spiffe://td/node/old", &["unix:uid:8"]),
            expired_mid,
            entry("under-expired", "spiffe://td/mid/x", "spiffe://td/mid", &["unix:uid:9"]),
            // A second, live holder of the same SPIFFE ID keeps the child reachable.
            entry("mid-again", "spiffe://td/mid", other, &["unix:uid:7"]),
        ]);
        let none = BTreeSet::new();
        let group: BTreeSet<Selector> = [Selector::parse("join_token:group:a").unwrap()].into();
        let cases: &[(&str, &BTreeSet<Selector>, &str, Option<&str>)] = &[
            (agent, &none, "direct", Some("spiffe://td/web")),
            (agent, &none, "other-agent", None),
            (agent, &none, "via-alias", None),
            (agent, &group, "via-alias", Some("spiffe://td/api")),
            (agent, &group, "nested", Some("spiffe://td/api/child")),
            (agent, &group, "deeper", Some("spiffe://td/api/child/x")),
            (agent, &group, "alias", None), // the alias entry itself is parented to the server, not the agent
            (agent, &group, "cycle-a", None),
            (agent, &group, "cycle-b", None),
            (agent, &group, "via-old-alias", Some("spiffe://td/old-child")),
            (agent, &group, "old-alias", None),
            (agent, &none, "expired-mid", None),
            (agent, &none, "under-expired", None),
            (other, &none, "under-expired", Some("spiffe://td/mid/x")),
            (agent, &none, "no-such-entry", None),
            (other, &none, "other-agent", Some("spiffe://td/db")),
        ];
        for (agent_id, sels, entry_id, want) in cases {
            let got = idx.is_authorized(&id(agent_id), sels, entry_id, 100).map(|e| e.spiffe_id.as_str().to_owned());
            assert_eq!(got.as_deref(), *want, "{agent_id} {entry_id}");
            let listed = idx.authorized_for(&id(agent_id), sels, 100).iter().any(|e| e.id == *entry_id);
            assert_eq!(listed, want.is_some(), "authorized_for disagrees: {agent_id} {entry_id}");
        }
    }

    /// Small deterministic PRNG (xorshift64*), so the random graphs are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    #[test]
    fn is_authorized_agrees_with_authorized_for_on_random_graphs() {
        const SERVER: &str = "spiffe://td/spire/server";
        let agents = ["spiffe://td/spire/agent/a0", "spiffe://td/spire/agent/a1", "spiffe://td/spire/agent/a2"];
        let nodes = ["spiffe://td/n0", "spiffe://td/n1", "spiffe://td/n2", "spiffe://td/n3", "spiffe://td/n4"];
        let node_sels = ["k8s_psat:cluster:a", "k8s_psat:cluster:b", "k8s_psat:node:c"];
        let sel_sets: Vec<BTreeSet<Selector>> = [&[][..], &[0], &[0, 1], &[1, 2], &[0, 1, 2]]
            .iter()
            .map(|ix| ix.iter().map(|i| Selector::parse(node_sels[*i]).unwrap()).collect())
            .collect();
        let mut spiffe_pool: Vec<&str> = nodes.to_vec();
        spiffe_pool.push(agents[1]); // an entry may even carry an agent's ID
        let mut parent_pool: Vec<&str> = nodes.to_vec();
        parent_pool.extend(agents);
        parent_pool.extend([SERVER, SERVER]);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (mut yes, mut no, mut deep) = (0usize, 0usize, 0usize);
        for graph in 0..1500 {
            let count = 1 + rng.below(10);
            let mut entries: Vec<RegistrationEntry> = (0..count)
                .map(|i| {
                    let parent = rng.pick(&parent_pool);
                    let mut sels: Vec<&str> = node_sels.iter().copied().filter(|_| rng.below(2) == 0).collect();
                    if parent != SERVER || sels.is_empty() {
                        sels = vec!["unix:uid:1"];
                    }
                    let mut e = entry(&format!("e{i}"), rng.pick(&spiffe_pool), parent, &sels);
                    e.entry_expiry = [0, 0, 0, 50, 100, 150][rng.below(6)];
                    e
                })
                .collect();
            let mut idx = EntryIndex::new(entries.clone());
            // Mutate through upsert/remove so the secondary indexes are exercised, then compare with a fresh build.
            for _ in 0..rng.below(4) {
                let victim = rng.below(entries.len());
                if rng.below(3) == 0 {
                    idx.remove(&entries[victim].id);
                    entries.remove(victim);
                    if entries.is_empty() {
                        break;
                    }
                } else {
                    entries[victim].spiffe_id = id(rng.pick(&spiffe_pool));
                    entries[victim].parent_id = id(rng.pick(&parent_pool));
                    idx.upsert(entries[victim].clone());
                }
            }
            let fresh = EntryIndex::new(entries.clone());
            let mut query: Vec<String> = (0..count).map(|i| format!("e{i}")).collect();
            query.push("missing".into());
            for agent in agents {
                for sels in &sel_sets {
                    for now in [0, 100, 200] {
                        let want: BTreeSet<&str> =
                            fresh.authorized_for(&id(agent), sels, now).iter().map(|e| e.id.as_str()).collect();
                        for q in &query {
                            let got = idx.is_authorized(&id(agent), sels, q, now);
                            assert_eq!(
                                got.is_some(),
                                want.contains(q.as_str()),
                                "graph {graph}: agent {agent} sels {sels:?} now {now} entry {q}\n{entries:#?}"
                            );
                            if let Some(e) = got {
                                assert_eq!(e.id, *q);
                                yes += 1;
                                if e.parent_id.as_str() != agent {
                                    deep += 1;
                                }
                            } else {
                                no += 1;
                            }
                        }
                    }
                }
            }
        }
        // The generator must produce every kind of answer, or the agreement above proves little.
        assert!(yes > 1000 && no > 1000 && deep > 500, "yes {yes} no {no} deep {deep}");
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

    /// Bringing an agent's authorized set up to date from `affected` alone gives exactly what a full
    /// recompute gives, for creates, deletes, re-parenting and SPIFFE ID changes in a nested tree.
    #[test]
    fn delta_from_affected_equals_full_recompute() {
        let agent = id("spiffe://td/spire/agent/a");
        let sels = BTreeSet::new();
        let mut idx = EntryIndex::new([
            entry("mid", "spiffe://td/mid", "spiffe://td/spire/agent/a", &["unix:uid:1"]),
            entry("leaf", "spiffe://td/leaf", "spiffe://td/mid", &["unix:uid:2"]),
            entry("deep", "spiffe://td/deep", "spiffe://td/leaf", &["unix:uid:3"]),
            entry("other", "spiffe://td/other", "spiffe://td/spire/agent/b", &["unix:uid:4"]),
        ]);
        let ids = |idx: &EntryIndex| -> BTreeSet<String> {
            idx.authorized_for(&agent, &sels, 0).into_iter().map(|e| e.id.clone()).collect()
        };
        let steps: Vec<(Option<&str>, Option<RegistrationEntry>)> = vec![
            // "mid" renamed: "leaf" and "deep" hang off the old SPIFFE ID and fall out.
            (Some("mid"), Some(entry("mid", "spiffe://td/mid2", "spiffe://td/spire/agent/a", &["unix:uid:1"]))),
            // "leaf" moved under the new ID: it and "deep" come back.
            (Some("leaf"), Some(entry("leaf", "spiffe://td/leaf", "spiffe://td/mid2", &["unix:uid:2"]))),
            // "other" moved under agent a.
            (Some("other"), Some(entry("other", "spiffe://td/other", "spiffe://td/spire/agent/a", &["unix:uid:4"]))),
            // "mid" deleted: everything below it goes.
            (Some("mid"), None),
            // a new entry under agent a.
            (None, Some(entry("new", "spiffe://td/new", "spiffe://td/spire/agent/a", &["unix:uid:5"]))),
        ];
        let mut have = ids(&idx);
        for (old_id, new) in steps {
            let old = match (&new, old_id) {
                (Some(n), _) => idx.upsert(n.clone()),
                (None, Some(o)) => idx.remove(o),
                (None, None) => None,
            };
            let mut ch = EntryChanges::default();
            ch.record(old.as_ref(), new.as_ref());
            assert!(!ch.alias);
            for a in idx.affected(&ch) {
                if idx.is_authorized(&agent, &sels, &a, 0).is_some() {
                    have.insert(a);
                } else {
                    have.remove(&a);
                }
            }
            assert_eq!(have, ids(&idx), "after {old_id:?} -> {:?}", new.as_ref().map(|e| &e.spiffe_id));
        }
    }

    #[test]
    fn affected_of_a_plain_workload_entry_is_itself_and_aliases_are_flagged() {
        let mut idx = EntryIndex::new([entry("w", "spiffe://td/w", "spiffe://td/spire/agent/a", &["unix:uid:1"])]);
        let e = entry("w2", "spiffe://td/w2", "spiffe://td/spire/agent/a", &["unix:uid:2"]);
        let mut ch = EntryChanges::default();
        ch.record(idx.upsert(e.clone()).as_ref(), Some(&e));
        assert_eq!(idx.affected(&ch), BTreeSet::from(["w2".to_owned()]));
        assert!(!ch.alias);
        let alias = entry("n", "spiffe://td/nodes", "spiffe://td/spire/server", &["k8s_psat:cluster:c"]);
        let mut ch = EntryChanges::default();
        ch.record(None, Some(&alias));
        assert!(ch.alias, "a node alias change makes agents recompute");
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
