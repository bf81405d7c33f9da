//! The agent's published state and what one workload sees of it.
//!
//! [`Snapshot`] is immutable and published through a `tokio::sync::watch` channel by the SVID manager;
//! Workload API streams recompute their caller's view on every new snapshot and send only when that view
//! changed.
//!
//! Ordering (checklist D4: the first SVID is the default): matching entries are ordered by entry creation
//! time (oldest first), then by entry id. The oldest registration therefore stays the default when entries
//! are added. SPIRE does not promise an order; this one is deterministic. When several entries carry the
//! same non-empty hint, only the first in that order is returned (hints are unique within a response).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sigil_core::bundle::Bundle;
use sigil_core::{RegistrationEntry, Selector, SpiffeId, TrustDomain, selector};

/// An entry's ID as the agent keeps it: one allocation per entry (beside the entry's own `id`), shared by every
/// map and schedule that names the entry (a `String` per map cost ~70 B each, eight times per cached SVID).
pub type EntryId = Arc<str>;

/// An X509-SVID held by the agent, with its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct CachedSvid {
    pub entry_id: EntryId,
    pub spiffe_id: SpiffeId,
    /// DER certificates, leaf first (`Bytes`: every Workload API message refers to them, none copies them).
    pub chain_der: Vec<bytes::Bytes>,
    /// PKCS#8 DER.
    pub key_pkcs8: bytes::Bytes,
    pub not_before: i64,
    pub not_after: i64,
    /// Unix seconds at which the manager replaces it (about half its lifetime, with jitter).
    pub rotate_at: i64,
    /// The entry's DNS names and X.509 TTL it was signed for (with `spiffe_id`: a change of any needs a new
    /// SVID).
    pub dns_names: Vec<String>,
    pub x509_ttl: u32,
}

impl CachedSvid {
    /// Whether this SVID still fits `e` (signed for its SPIFFE ID, DNS names and TTL).
    pub fn fits(&self, e: &RegistrationEntry) -> bool {
        self.spiffe_id == e.spiffe_id && self.dns_names == e.dns_names && self.x509_ttl == e.x509_svid_ttl
    }
}

impl std::fmt::Debug for CachedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSvid")
            .field("entry_id", &self.entry_id)
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .field("rotate_at", &self.rotate_at)
            .finish_non_exhaustive()
    }
}

/// Everything the Workload API serves from. Published once per change, so the per-entry maps are persistent
/// (cloning is O(1) and a change copies O(log n) nodes, not the map).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// False until the first full entry snapshot arrived from the server (callers then get Unavailable).
    pub synced: bool,
    /// The own trust domain's bundle.
    pub bundle: Option<Arc<Bundle>>,
    pub federated_bundles: BTreeMap<TrustDomain, Arc<Bundle>>,
    /// Authorized entries by id.
    pub entries: imbl::OrdMap<EntryId, Arc<RegistrationEntry>>,
    /// Current SVIDs by entry id.
    pub svids: imbl::OrdMap<EntryId, Arc<CachedSvid>>,
    /// Entries whose SVID is being signed right now (a first response waits for them).
    pub pending: imbl::OrdSet<EntryId>,
    /// The earliest `not_after` of `svids` (a stream wakes then to drop the expired SVID from its view).
    pub next_expiry: Option<i64>,
}

/// Entries whose selectors are all among `selectors`, in the documented order, with duplicate hints
/// removed.
pub fn matching_entries<'a>(
    entries: impl IntoIterator<Item = &'a Arc<RegistrationEntry>>,
    selectors: &BTreeSet<Selector>,
) -> Vec<&'a Arc<RegistrationEntry>> {
    let mut out: Vec<&Arc<RegistrationEntry>> =
        entries.into_iter().filter(|e| selector::all_present(&e.selectors, selectors)).collect();
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
    let mut hints = BTreeSet::new();
    out.retain(|e| e.hint.is_empty() || hints.insert(e.hint.clone()));
    out
}

/// What one workload (by its selectors) may see at `now`.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    /// The agent has not synced yet.
    NotReady,
    /// No entry matches the workload.
    NoIdentity,
    /// Entries match, but no SVID is available yet (or some are still being signed on a first response).
    Waiting,
    Ready(WorkloadView),
}

/// The SVIDs, own bundle and federated bundles of one workload.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadView {
    pub svids: Vec<(Arc<RegistrationEntry>, Arc<CachedSvid>)>,
    pub bundle: Arc<Bundle>,
    /// Bundles of the trust domains the matching entries federate with (those the agent has).
    pub federated: BTreeMap<TrustDomain, Arc<Bundle>>,
}

impl Snapshot {
    /// The entries for `selectors` (see [`matching_entries`]).
    pub fn identities(&self, selectors: &BTreeSet<Selector>) -> Vec<Arc<RegistrationEntry>> {
        matching_entries(self.entries.values(), selectors).into_iter().cloned().collect()
    }

    /// The view of a workload. `first` asks to wait while a matching entry's SVID is still being signed.
    pub fn view(&self, selectors: &BTreeSet<Selector>, now: i64, first: bool) -> View {
        let Some(bundle) = self.bundle.clone().filter(|_| self.synced) else {
            return View::NotReady;
        };
        let matching = matching_entries(self.entries.values(), selectors);
        if matching.is_empty() {
            return View::NoIdentity;
        }
        if first && matching.iter().any(|e| self.pending.contains(e.id.as_str())) {
            return View::Waiting;
        }
        let svids: Vec<_> = matching
            .iter()
            .filter_map(|e| {
                self.svids
                    .get(e.id.as_str())
                    .filter(|s| s.not_after > now && s.spiffe_id == e.spiffe_id)
                    .map(|s| (Arc::clone(e), Arc::clone(s)))
            })
            .collect();
        if svids.is_empty() {
            return View::Waiting;
        }
        let federated = matching
            .iter()
            .flat_map(|e| e.federates_with.iter())
            .filter_map(|td| self.federated_bundles.get(td).map(|b| (td.clone(), Arc::clone(b))))
            .collect();
        View::Ready(WorkloadView { svids, bundle, federated })
    }

    /// The bundle of `td` if a workload with `selectors` may validate against it: the own bundle always (as
    /// SPIRE: a caller without entries still validates its own trust domain's tokens), a federated bundle only
    /// when one of the caller's entries federates with `td`.
    pub fn validation_bundle(&self, selectors: &BTreeSet<Selector>, td: &TrustDomain) -> Option<Bundle> {
        match &self.bundle {
            Some(b) if &b.trust_domain == td => Some(b.as_ref().clone()),
            _ => {
                let federates =
                    matching_entries(self.entries.values(), selectors).iter().any(|e| e.federates_with.contains(td));
                federates.then(|| self.federated_bundles.get(td).map(|b| b.as_ref().clone())).flatten()
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn entry(id: &str, spiffe: &str, sels: &[&str], created_at: i64, hint: &str) -> Arc<RegistrationEntry> {
        Arc::new(RegistrationEntry {
            id: id.into(),
            spiffe_id: SpiffeId::new(spiffe).unwrap(),
            parent_id: SpiffeId::new("spiffe://td/spire/agent/join_token/x").unwrap(),
            selectors: sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            dns_names: vec![],
            federates_with: vec![],
            admin: false,
            downstream: false,
            hint: hint.into(),
            entry_expiry: 0,
            store_svid: false,
            revision: 0,
            created_at,
        })
    }

    fn sels(items: &[&str]) -> BTreeSet<Selector> {
        items.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    #[test]
    fn matching_order_and_hints_table() {
        let entries = vec![
            entry("b", "spiffe://td/b", &["unix:uid:1"], 10, ""),
            entry("a", "spiffe://td/a", &["unix:uid:1"], 10, ""),
            entry("old", "spiffe://td/old", &["unix:uid:1", "unix:gid:2"], 5, "db"),
            entry("dup-hint", "spiffe://td/dup", &["unix:uid:1"], 20, "db"),
            entry("other", "spiffe://td/other", &["unix:uid:2"], 1, ""),
            entry("needs-more", "spiffe://td/more", &["unix:uid:1", "unix:gid:3"], 1, ""),
        ];
        let cases: &[(&[&str], &[&str])] = &[
            (&["unix:uid:1", "unix:gid:2"], &["old", "a", "b"]),
            (&["unix:uid:1"], &["a", "b", "dup-hint"]),
            (&["unix:uid:2"], &["other"]),
            (&["unix:uid:3"], &[]),
            (&[], &[]),
        ];
        for (workload, want) in cases {
            let got: Vec<&str> = matching_entries(&entries, &sels(workload)).iter().map(|e| e.id.as_str()).collect();
            assert_eq!(got, *want, "{workload:?}");
        }
    }

    pub(crate) fn svid(entry_id: &str, spiffe: &str, not_after: i64) -> Arc<CachedSvid> {
        Arc::new(CachedSvid {
            entry_id: entry_id.into(),
            spiffe_id: SpiffeId::new(spiffe).unwrap(),
            chain_der: vec![bytes::Bytes::from_static(&[1])],
            key_pkcs8: bytes::Bytes::from_static(&[2]),
            not_before: 0,
            not_after,
            rotate_at: not_after / 2,
            dns_names: vec![],
            x509_ttl: 0,
        })
    }

    #[test]
    fn an_svid_fits_the_entry_it_was_signed_for_only() {
        let e = entry("a", "spiffe://td/a", &["unix:uid:1"], 1, "");
        let s = svid("a", "spiffe://td/a", 100);
        assert!(s.fits(&e));
        let renamed = RegistrationEntry { spiffe_id: SpiffeId::new("spiffe://td/b").unwrap(), ..(*e).clone() };
        let with_dns = RegistrationEntry { dns_names: vec!["a.example".into()], ..(*e).clone() };
        let other_ttl = RegistrationEntry { x509_svid_ttl: 60, ..(*e).clone() };
        for changed in [renamed, with_dns, other_ttl] {
            assert!(!s.fits(&changed), "{changed:?}");
        }
    }

    #[test]
    fn view_table() {
        let td = TrustDomain::new("td").unwrap();
        let bundle = Arc::new(Bundle::new(td));
        let mut snap = Snapshot::default();
        let w = sels(&["unix:uid:1"]);
        assert_eq!(snap.view(&w, 0, true), View::NotReady);
        snap.synced = true;
        snap.bundle = Some(bundle);
        assert_eq!(snap.view(&w, 0, true), View::NoIdentity);
        snap.entries.insert("a".into(), entry("a", "spiffe://td/a", &["unix:uid:1"], 1, ""));
        snap.entries.insert("b".into(), entry("b", "spiffe://td/b", &["unix:uid:1"], 2, ""));
        assert_eq!(snap.view(&w, 0, true), View::Waiting);
        snap.svids.insert("a".into(), svid("a", "spiffe://td/a", 100));
        snap.pending.insert("b".into());
        assert_eq!(snap.view(&w, 0, true), View::Waiting, "first response waits for pending");
        let View::Ready(v) = snap.view(&w, 0, false) else { panic!("not ready") };
        assert_eq!(v.svids.len(), 1);
        snap.pending.clear();
        snap.svids.insert("b".into(), svid("b", "spiffe://td/b", 50));
        let View::Ready(v) = snap.view(&w, 10, true) else { panic!("not ready") };
        let ids: Vec<&str> = v.svids.iter().map(|(e, _)| e.id.as_str()).collect();
        assert_eq!(ids, vec!["a", "b"]);
        // Expired SVIDs are never served.
        let View::Ready(v) = snap.view(&w, 60, true) else { panic!("not ready") };
        assert_eq!(v.svids.len(), 1);
        assert_eq!(snap.view(&w, 100, true), View::Waiting);
        // An SVID signed for an old SPIFFE ID of the entry is not served.
        snap.svids.insert("a".into(), svid("a", "spiffe://td/renamed", 1000));
        snap.svids.insert("b".into(), svid("b", "spiffe://td/b", 1000));
        let View::Ready(v) = snap.view(&w, 10, true) else { panic!("not ready") };
        assert_eq!(v.svids.iter().map(|(e, _)| e.id.as_str()).collect::<Vec<_>>(), vec!["b"]);
    }
}
