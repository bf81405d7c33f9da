//! The operator's picture of the cluster and the entries it declares, kept up to date incrementally.
//!
//! Watch events go in through the `upsert_*`/`delete_*` methods. Each one recomputes only the *sources* it can
//! affect (a pod, the pods of a namespace or node, one static entry, or every pod when a ClusterSPIFFEID
//! changes) and marks the entry IDs whose desired state may have changed as dirty. The reconciler takes the
//! dirty IDs and compares [`World::desired`] with what the server holds. Nothing here does I/O.
//!
//! Entry IDs are derived from the entry's identity (SPIFFE ID, parent ID, sorted selectors) plus the configured
//! prefix, so creating the same entry twice (after a restart or a leader change) hits the same ID on the server
//! instead of making a duplicate, and entries without the prefix are never ours to touch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sigil_core::{RegistrationEntry, Selector, SpiffeId, TrustDomain};

use crate::labels::LabelMatcher;
use crate::objects::Interner;
pub use crate::objects::Pod;
use crate::template::Template;

/// Operator-wide settings that shape every entry.
#[derive(Debug)]
pub struct Settings {
    pub trust_domain: TrustDomain,
    pub cluster_name: String,
    pub cluster_domain: String,
    pub parent_id_template: Template,
    /// Namespaces whose pods are never given entries; each pattern must match the whole name.
    pub ignore_namespaces: Vec<regex::Regex>,
    pub class_name: Option<String>,
    pub watch_classless: bool,
    /// Every entry this operator creates has an ID starting with this; others are never touched.
    pub entry_id_prefix: String,
}

impl Settings {
    /// Whether a CR with this className is ours (spire-controller-manager's className/watchClassless rule).
    pub fn owns_class(&self, class_name: Option<&str>) -> bool {
        match (class_name.filter(|c| !c.is_empty()), self.class_name.as_deref()) {
            (Some(c), Some(mine)) => c == mine,
            (Some(_), None) => false,
            (None, Some(_)) => self.watch_classless,
            (None, None) => true,
        }
    }

    pub fn is_ignored_namespace(&self, namespace: &str) -> bool {
        self.ignore_namespaces.iter().any(|r| r.is_match(namespace))
    }
}

/// Orders the owners of one entry: oldest creationTimestamp, then not being deleted, then lowest UID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    /// creationTimestamp, Unix seconds.
    pub created: i64,
    pub deleting: bool,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub meta: Value,
    pub spec: Value,
}

/// A ClusterSPIFFEID after validation.
#[derive(Debug)]
pub struct Policy {
    /// Shared by every entry the policy declares (as its [`Owner`]).
    pub name: Arc<str>,
    pub rank: Arc<Rank>,
    pub class_name: Option<String>,
    pub namespace_selector: LabelMatcher,
    pub pod_selector: LabelMatcher,
    pub spiffe_id: Template,
    pub workload_selectors: Vec<Template>,
    pub dns_names: Vec<Template>,
    pub auto_populate_dns_names: bool,
    pub x509_svid_ttl: u32,
    pub jwt_svid_ttl: u32,
    pub federates_with: Vec<TrustDomain>,
    pub admin: bool,
    pub downstream: bool,
    pub fallback: bool,
    pub hint: String,
}

/// A ClusterStaticEntry after validation: the entry it declares (without an ID).
#[derive(Debug, Clone)]
pub struct StaticEntry {
    pub name: String,
    pub rank: Rank,
    pub class_name: Option<String>,
    pub entry: RegistrationEntry,
}

/// What declares entries: one pod (through every ClusterSPIFFEID that selects it) or one ClusterStaticEntry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// By pod UID (the pod's own shared copy).
    Pod(Arc<str>),
    /// By ClusterStaticEntry name.
    Static(String),
}

/// The CR an entry is declared by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    ClusterSpiffeId(Arc<str>),
    ClusterStaticEntry(String),
}

/// A declared entry as the world keeps it (one per selected pod, so it is kept small): the SPIFFE ID as text,
/// the parent ID and hint shared (interned) with the other entries that have the same ones.
/// [`KeptEntry::to_entry`] gives back the entry it was made from.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptEntry {
    pub id: String,
    spiffe_id: Box<str>,
    parent_id: Arc<str>,
    selectors: Box<[Selector]>,
    dns_names: Box<[Box<str>]>,
    federates_with: Box<[TrustDomain]>,
    hint: Arc<str>,
    x509_svid_ttl: u32,
    jwt_svid_ttl: u32,
    entry_expiry: i64,
    admin: bool,
    downstream: bool,
    store_svid: bool,
}

impl KeptEntry {
    pub fn new(e: RegistrationEntry) -> Self {
        Self {
            spiffe_id: e.spiffe_id.as_str().into(),
            parent_id: Arc::from(e.parent_id.as_str()),
            selectors: e.selectors.into_boxed_slice(),
            dns_names: e.dns_names.into_iter().map(String::into_boxed_str).collect(),
            federates_with: e.federates_with.into_boxed_slice(),
            hint: Arc::from(e.hint.as_str()),
            x509_svid_ttl: e.x509_svid_ttl,
            jwt_svid_ttl: e.jwt_svid_ttl,
            entry_expiry: e.entry_expiry,
            admin: e.admin,
            downstream: e.downstream,
            store_svid: e.store_svid,
            id: e.id,
        }
    }

    /// The entry (revision and creation time 0). None only if an ID no longer parses, which cannot happen
    /// for IDs that parsed when the entry was made.
    pub fn to_entry(&self) -> Option<RegistrationEntry> {
        Some(RegistrationEntry {
            id: self.id.clone(),
            spiffe_id: SpiffeId::new(&self.spiffe_id).ok()?,
            parent_id: SpiffeId::new(&self.parent_id).ok()?,
            selectors: self.selectors.to_vec(),
            x509_svid_ttl: self.x509_svid_ttl,
            jwt_svid_ttl: self.jwt_svid_ttl,
            dns_names: self.dns_names.iter().map(|d| d.to_string()).collect(),
            federates_with: self.federates_with.to_vec(),
            admin: self.admin,
            downstream: self.downstream,
            hint: self.hint.to_string(),
            entry_expiry: self.entry_expiry,
            store_svid: self.store_svid,
            revision: 0,
            created_at: 0,
        })
    }

    fn share(&mut self, interner: &mut Interner) {
        self.parent_id = interner.share(&self.parent_id);
        self.hint = interner.share(&self.hint);
    }

    fn release(&self, interner: &mut Interner) {
        interner.release(&self.parent_id);
        interner.release(&self.hint);
    }
}

/// One entry as one CR declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub entry: KeptEntry,
    pub owner: Owner,
    pub rank: Arc<Rank>,
}

#[derive(Debug, Default, Clone)]
struct Contribution {
    declared: Vec<Declared>,
    /// (ClusterSPIFFEID name, why rendering failed)
    failures: Vec<(Arc<str>, String)>,
    /// ClusterSPIFFEIDs that selected this pod (after the fallback rule).
    selected_by: Vec<Arc<str>>,
}

/// Counts for a ClusterSPIFFEID's status, named as in spire-controller-manager.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyStats {
    pub namespaces_selected: u64,
    pub namespaces_ignored: u64,
    pub pods_selected: u64,
    pub pod_entry_render_failures: u64,
    pub entries_masked: u64,
    pub entries_to_set: u64,
    pub entry_failures: u64,
    /// The first few render failures, for the status condition and Events.
    pub render_failure_samples: Vec<String>,
}

/// What [`World`] keeps counted per ClusterSPIFFEID.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PolicyCounts {
    pods_selected: u64,
    render_failures: u64,
    /// Entries its pods declare (set or masked).
    declared: u64,
}

/// Counts for a ClusterStaticEntry's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticStats {
    pub rendered: bool,
    pub masked: bool,
    pub set: bool,
    pub failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct ServiceSlice {
    namespace: String,
    service: String,
    pod_uids: BTreeSet<String>,
}

/// The operator's in-memory state. See the module docs.
#[derive(Debug)]
pub struct World {
    settings: Settings,
    namespaces: HashMap<String, Namespace>,
    nodes: HashMap<String, Node>,
    pods: HashMap<Arc<str>, Pod>,
    /// Strings pods share (see [`crate::objects`]).
    interner: Interner,
    pods_by_namespace: HashMap<String, BTreeSet<Arc<str>>>,
    pods_by_node: HashMap<String, BTreeSet<Arc<str>>>,
    slices: HashMap<String, ServiceSlice>,
    /// pod UID -> service name -> number of slices of that service naming the pod
    services_by_pod: HashMap<String, BTreeMap<String, usize>>,
    policies: BTreeMap<String, Policy>,
    statics: BTreeMap<String, StaticEntry>,
    contributions: HashMap<Source, Contribution>,
    /// Entry ID -> the source of each declaration of it (a source appears once per entry it declares with
    /// this ID): almost always one, so a small vector (a set's node is ~400 B).
    declared_by_id: HashMap<String, Vec<Source>>,
    /// IDs declared more than once: the only ones where an owner can be masked.
    contested: HashSet<String>,
    /// Per ClusterSPIFFEID, counts kept up to date as contributions change, so a status pass costs no scan of
    /// every pod (at 100,000 pods a scan a second delayed pod changes by tens of milliseconds).
    counts: HashMap<String, PolicyCounts>,
    /// Pod sources with render failures.
    failing: HashSet<Source>,
    write_failures: HashMap<String, String>,
    dirty: HashSet<String>,
}

/// At most this many render-failure messages are kept per ClusterSPIFFEID status.
const FAILURE_SAMPLES: usize = 3;

impl World {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            namespaces: HashMap::new(),
            nodes: HashMap::new(),
            pods: HashMap::new(),
            interner: Interner::default(),
            pods_by_namespace: HashMap::new(),
            pods_by_node: HashMap::new(),
            slices: HashMap::new(),
            services_by_pod: HashMap::new(),
            policies: BTreeMap::new(),
            statics: BTreeMap::new(),
            contributions: HashMap::new(),
            declared_by_id: HashMap::new(),
            contested: HashSet::new(),
            counts: HashMap::new(),
            failing: HashSet::new(),
            write_failures: HashMap::new(),
            dirty: HashSet::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Takes the entry IDs whose desired state may have changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<String> {
        let mut v: Vec<String> = self.dirty.drain().collect();
        v.sort();
        v
    }

    /// Every entry ID some source declares.
    pub fn declared_ids(&self) -> impl Iterator<Item = &String> {
        self.declared_by_id.keys()
    }

    /// The entry the server should hold under this ID: the declaration of the best-ranked owner.
    pub fn desired<'a>(&'a self, id: &'a str) -> Option<&'a Declared> {
        self.declarations(id).min_by(|a, b| (&a.rank, &a.owner).cmp(&(&b.rank, &b.owner)))
    }

    fn declarations<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Declared> + 'a {
        let sources = self.declared_by_id.get(id).map_or(&[][..], Vec::as_slice);
        // A source declaring the ID twice (two policies rendering the same entry for one pod) is listed twice.
        sources
            .iter()
            .enumerate()
            .filter(move |(i, s)| !sources[..*i].contains(s))
            .filter_map(|(_, s)| self.contributions.get(s))
            .flat_map(|c| c.declared.iter())
            .filter(move |d| d.entry.id == id)
    }

    /// Remembers the outcome of writing an entry, for the status counts.
    pub fn record_write(&mut self, id: &str, failure: Option<String>) {
        match failure {
            Some(f) => {
                self.write_failures.insert(id.to_string(), f);
            }
            None => {
                self.write_failures.remove(id);
            }
        }
    }

    // ----- namespaces -----

    pub fn upsert_namespace(&mut self, ns: Namespace) {
        let changed = self.namespaces.get(&ns.name).is_none_or(|old| old.labels != ns.labels);
        let name = ns.name.clone();
        self.namespaces.insert(name.clone(), ns);
        if changed {
            self.recompute_namespace(&name);
        }
    }

    pub fn delete_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            self.recompute_namespace(name);
        }
    }

    fn recompute_namespace(&mut self, name: &str) {
        let uids: Vec<Arc<str>> = self.pods_by_namespace.get(name).into_iter().flatten().cloned().collect();
        for uid in uids {
            self.recompute_pod(&uid);
        }
    }

    // ----- nodes -----

    pub fn upsert_node(&mut self, node: Node) {
        if self.nodes.get(&node.name) == Some(&node) {
            return;
        }
        let name = node.name.clone();
        self.nodes.insert(name.clone(), node);
        self.recompute_node(&name);
    }

    pub fn delete_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.recompute_node(name);
        }
    }

    fn recompute_node(&mut self, name: &str) {
        let uids: Vec<Arc<str>> = self.pods_by_node.get(name).into_iter().flatten().cloned().collect();
        for uid in uids {
            self.recompute_pod(&uid);
        }
    }

    // ----- pods -----

    pub fn upsert_pod(&mut self, mut pod: Pod) {
        if self.pods.get(&*pod.uid) == Some(&pod) {
            return;
        }
        // One copy of the UID for the map and the indexes.
        if let Some((k, _)) = self.pods.get_key_value(&*pod.uid) {
            pod.uid = k.clone();
        }
        pod.share(&mut self.interner);
        let uid = pod.uid.clone();
        self.unlink_pod(&uid);
        self.pods_by_namespace.entry(pod.namespace.to_string()).or_default().insert(uid.clone());
        if let Some(node) = &pod.node_name {
            self.pods_by_node.entry(node.to_string()).or_default().insert(uid.clone());
        }
        if let Some(old) = self.pods.insert(uid.clone(), pod) {
            old.release(&mut self.interner);
        }
        self.recompute_pod(&uid);
    }

    pub fn delete_pod(&mut self, uid: &str) {
        self.unlink_pod(uid);
        if let Some(old) = self.pods.remove(uid) {
            old.release(&mut self.interner);
        }
        self.recompute_pod(uid);
    }

    fn unlink_pod(&mut self, uid: &str) {
        if let Some(old) = self.pods.get(uid) {
            if let Some(set) = self.pods_by_namespace.get_mut(&*old.namespace) {
                set.remove(uid);
                if set.is_empty() {
                    self.pods_by_namespace.remove(&*old.namespace);
                }
            }
            if let Some(node) = &old.node_name
                && let Some(set) = self.pods_by_node.get_mut(&**node)
            {
                set.remove(uid);
                if set.is_empty() {
                    self.pods_by_node.remove(&**node);
                }
            }
        }
    }

    // ----- services (EndpointSlices, for autoPopulateDNSNames) -----

    /// An EndpointSlice of `service` in `namespace` naming these pod UIDs; `key` is namespace/slice-name.
    pub fn upsert_endpoint_slice(&mut self, key: &str, namespace: &str, service: &str, pod_uids: BTreeSet<String>) {
        let slice = ServiceSlice { namespace: namespace.to_string(), service: service.to_string(), pod_uids };
        if self.slices.get(key) == Some(&slice) {
            return;
        }
        let mut touched: BTreeSet<String> = slice.pod_uids.clone();
        if let Some(old) = self.slices.remove(key) {
            self.unlink_slice(&old);
            touched.extend(old.pod_uids);
        }
        for uid in &slice.pod_uids {
            *self.services_by_pod.entry(uid.clone()).or_default().entry(slice.service.clone()).or_default() += 1;
        }
        self.slices.insert(key.to_string(), slice);
        self.recompute_pods_for_services(touched);
    }

    pub fn delete_endpoint_slice(&mut self, key: &str) {
        if let Some(old) = self.slices.remove(key) {
            self.unlink_slice(&old);
            self.recompute_pods_for_services(old.pod_uids);
        }
    }

    fn unlink_slice(&mut self, slice: &ServiceSlice) {
        for uid in &slice.pod_uids {
            if let Some(services) = self.services_by_pod.get_mut(uid) {
                if let Some(n) = services.get_mut(&slice.service) {
                    *n -= 1;
                    if *n == 0 {
                        services.remove(&slice.service);
                    }
                }
                if services.is_empty() {
                    self.services_by_pod.remove(uid);
                }
            }
        }
    }

    fn recompute_pods_for_services(&mut self, uids: BTreeSet<String>) {
        // Service names only matter to policies that auto-populate DNS names.
        if !self.policies.values().any(|p| p.auto_populate_dns_names) {
            return;
        }
        for uid in uids {
            if self.pods.contains_key(uid.as_str()) {
                self.recompute_pod(&uid);
            }
        }
    }

    // ----- ClusterSPIFFEIDs -----

    pub fn upsert_policy(&mut self, policy: Policy) {
        self.policies.insert(policy.name.to_string(), policy);
        self.recompute_all_pods();
    }

    pub fn delete_policy(&mut self, name: &str) {
        if self.policies.remove(name).is_some() {
            self.recompute_all_pods();
        }
    }

    pub fn policy_names(&self) -> impl Iterator<Item = &String> {
        self.policies.keys()
    }

    fn recompute_all_pods(&mut self) {
        let uids: Vec<Arc<str>> = self.pods.keys().cloned().collect();
        for uid in uids {
            self.recompute_pod(&uid);
        }
    }

    // ----- ClusterStaticEntries -----

    pub fn upsert_static(&mut self, mut s: StaticEntry) {
        s.entry.id = entry_id(&self.settings.entry_id_prefix, &s.entry);
        let name = s.name.clone();
        let declared = self.settings.owns_class(s.class_name.as_deref()).then(|| Declared {
            entry: KeptEntry::new(s.entry.clone()),
            owner: Owner::ClusterStaticEntry(name.clone()),
            rank: Arc::new(s.rank.clone()),
        });
        self.statics.insert(name.clone(), s);
        let contribution = Contribution { declared: declared.into_iter().collect(), ..Default::default() };
        self.replace_contribution(Source::Static(name), Some(contribution));
    }

    pub fn delete_static(&mut self, name: &str) {
        if self.statics.remove(name).is_some() {
            self.replace_contribution(Source::Static(name.to_string()), None);
        }
    }

    // ----- computing what a pod declares -----

    fn recompute_pod(&mut self, uid: &str) {
        let (key, contribution) = match self.pods.get_key_value(uid) {
            Some((k, pod)) => (k.clone(), Some(self.pod_contribution(pod))),
            None => (Arc::from(uid), None),
        };
        self.replace_contribution(Source::Pod(key), contribution);
    }

    fn replace_contribution(&mut self, source: Source, mut new: Option<Contribution>) {
        for d in new.iter_mut().flat_map(|c| c.declared.iter_mut()) {
            d.entry.share(&mut self.interner);
        }
        let old = self.contributions.remove(&source);
        if let Some(c) = &old {
            self.account(&source, c, false);
        }
        for d in old.iter().flat_map(|c| c.declared.iter()) {
            d.entry.release(&mut self.interner);
            self.dirty.insert(d.entry.id.clone());
            if let Some(set) = self.declared_by_id.get_mut(&d.entry.id) {
                set.retain(|s| *s != source);
                if set.len() < 2 {
                    self.contested.remove(&d.entry.id);
                }
                if set.is_empty() {
                    self.declared_by_id.remove(&d.entry.id);
                    // Nobody declares it any more: a refused write of it is no longer anyone's failure.
                    self.write_failures.remove(&d.entry.id);
                }
            }
        }
        if let Some(new) = new {
            for d in &new.declared {
                self.dirty.insert(d.entry.id.clone());
                let set = self.declared_by_id.entry(d.entry.id.clone()).or_default();
                set.push(source.clone());
                if set.len() > 1 {
                    self.contested.insert(d.entry.id.clone());
                }
            }
            if !new.declared.is_empty() || !new.failures.is_empty() || !new.selected_by.is_empty() {
                self.account(&source, &new, true);
                self.contributions.insert(source, new);
            }
        }
    }

    fn pod_contribution(&self, pod: &Pod) -> Contribution {
        let mut out = Contribution::default();
        // Not scheduled yet: nothing to do until it is (the next pod event brings the node name).
        let Some(node_name) = pod.node_name.as_deref() else {
            return out;
        };
        if self.settings.is_ignored_namespace(&pod.namespace) {
            return out;
        }
        let empty = BTreeMap::new();
        let ns_labels = self.namespaces.get(&*pod.namespace).map_or(&empty, |n| &n.labels);
        let matching: Vec<&Policy> = self
            .policies
            .values()
            .filter(|p| {
                self.settings.owns_class(p.class_name.as_deref())
                    && p.namespace_selector.matches(ns_labels)
                    && p.pod_selector.matches(&pod.labels)
            })
            .collect();
        // Fallback policies apply only when no regular policy selects the pod.
        let chosen: Vec<&Policy> = if matching.iter().any(|p| !p.fallback) {
            matching.into_iter().filter(|p| !p.fallback).collect()
        } else {
            matching
        };
        if chosen.is_empty() {
            return out;
        }
        out.selected_by = chosen.iter().map(|p| p.name.clone()).collect();
        // The node is needed for the parent ID; its watch event will recompute this pod.
        let Some(node) = self.nodes.get(node_name) else {
            return out;
        };
        let data = json!({
            "TrustDomain": self.settings.trust_domain.name(),
            "ClusterName": self.settings.cluster_name,
            "ClusterDomain": self.settings.cluster_domain,
            "PodMeta": pod.meta_value(),
            "PodSpec": pod.spec_value(),
            "NodeMeta": node.meta.clone(),
            "NodeSpec": node.spec.clone(),
        });
        let parent = match self.render_id(&self.settings.parent_id_template, &data, "parentIDTemplate") {
            Ok(p) => p,
            Err(e) => {
                out.failures = chosen.iter().map(|p| (p.name.clone(), e.clone())).collect();
                return out;
            }
        };
        let services = self.services_by_pod.get(&*pod.uid);
        for p in chosen {
            match self.render_pod_entry(p, pod, &parent, &data, services) {
                Ok(entry) => out.declared.push(Declared {
                    entry: KeptEntry::new(entry),
                    owner: Owner::ClusterSpiffeId(p.name.clone()),
                    rank: p.rank.clone(),
                }),
                Err(e) => out.failures.push((p.name.clone(), format!("pod {}/{}: {e}", pod.namespace, pod.name))),
            }
        }
        out
    }

    fn render_id(&self, t: &Template, data: &Value, what: &str) -> Result<SpiffeId, String> {
        let s = t.render(data).map_err(|e| format!("{what}: {e}"))?;
        let id = SpiffeId::new(&s).map_err(|e| format!("{what} rendered {s:?}: {e}"))?;
        if !id.is_member_of(&self.settings.trust_domain) {
            return Err(format!(
                "{what} rendered {s:?}, which is not in the trust domain {}",
                self.settings.trust_domain
            ));
        }
        Ok(id)
    }

    fn render_pod_entry(
        &self,
        p: &Policy,
        pod: &Pod,
        parent: &SpiffeId,
        data: &Value,
        services: Option<&BTreeMap<String, usize>>,
    ) -> Result<RegistrationEntry, String> {
        let spiffe_id = self.render_id(&p.spiffe_id, data, "spiffeIDTemplate")?;
        let pod_uid = Selector::new("k8s", &format!("pod-uid:{}", pod.uid)).map_err(|e| e.to_string())?;
        let mut selectors = vec![pod_uid];
        for t in &p.workload_selectors {
            let s = t.render(data).map_err(|e| format!("workloadSelectorTemplates: {e}"))?;
            let sel = Selector::parse(&s).map_err(|e| format!("workloadSelectorTemplates rendered {s:?}: {e}"))?;
            selectors.push(sel);
        }
        selectors.sort();
        selectors.dedup();
        let mut dns_names: Vec<String> = vec![];
        let push_dns = |name: String, dns_names: &mut Vec<String>| {
            if !dns_names.contains(&name) {
                dns_names.push(name);
            }
        };
        for t in &p.dns_names {
            let name = t.render(data).map_err(|e| format!("dnsNameTemplates: {e}"))?;
            if !sigil_core::entry::is_valid_dns_name(&name) {
                return Err(format!("dnsNameTemplates rendered {name:?}, which is not a valid DNS name"));
            }
            push_dns(name, &mut dns_names);
        }
        if p.auto_populate_dns_names {
            for svc in services.into_iter().flat_map(|m| m.keys()) {
                let ns = &pod.namespace;
                for name in [
                    svc.clone(),
                    format!("{svc}.{ns}"),
                    format!("{svc}.{ns}.svc"),
                    format!("{svc}.{ns}.svc.{}", self.settings.cluster_domain),
                ] {
                    push_dns(name, &mut dns_names);
                }
            }
        }
        let mut federates_with = p.federates_with.clone();
        federates_with.sort();
        federates_with.dedup();
        let mut entry = RegistrationEntry {
            id: String::new(),
            spiffe_id,
            parent_id: parent.clone(),
            selectors,
            x509_svid_ttl: p.x509_svid_ttl,
            jwt_svid_ttl: p.jwt_svid_ttl,
            dns_names,
            federates_with,
            admin: p.admin,
            downstream: p.downstream,
            hint: p.hint.clone(),
            entry_expiry: 0,
            store_svid: false,
            revision: 0,
            created_at: 0,
        };
        entry.validate(&self.settings.trust_domain).map_err(|e| e.to_string())?;
        entry.id = entry_id(&self.settings.entry_id_prefix, &entry);
        Ok(entry)
    }

    // ----- status -----

    /// Adds (or removes) a pod contribution's share of the per-policy counts.
    fn account(&mut self, source: &Source, c: &Contribution, add: bool) {
        if !matches!(source, Source::Pod(_)) {
            return;
        }
        let step = |n: &mut u64| *n = if add { *n + 1 } else { n.saturating_sub(1) };
        for n in &c.selected_by {
            step(&mut self.counts.entry(n.to_string()).or_default().pods_selected);
        }
        for (n, _) in &c.failures {
            step(&mut self.counts.entry(n.to_string()).or_default().render_failures);
        }
        for d in &c.declared {
            if let Owner::ClusterSpiffeId(n) = &d.owner {
                step(&mut self.counts.entry(n.to_string()).or_default().declared);
            }
        }
        if add && !c.failures.is_empty() {
            self.failing.insert(source.clone());
        } else if !add {
            self.failing.remove(source);
        }
    }

    /// The namespaces a policy's namespace selector selects, and how many of them are ignored.
    fn count_namespaces(&self, p: &Policy, st: &mut PolicyStats) {
        for ns in self.namespaces.values() {
            if p.namespace_selector.matches(&ns.labels) {
                if self.settings.is_ignored_namespace(&ns.name) {
                    st.namespaces_ignored += 1;
                } else {
                    st.namespaces_selected += 1;
                }
            }
        }
    }

    /// The status counts of a ClusterSPIFFEID: from the kept counts, plus a look at the few contested IDs,
    /// refused writes and failing pods.
    pub fn policy_stats(&self, name: &str) -> PolicyStats {
        let mut st = PolicyStats::default();
        let Some(p) = self.policies.get(name) else {
            return st;
        };
        self.count_namespaces(p, &mut st);
        let counts = self.counts.get(name).copied().unwrap_or_default();
        st.pods_selected = counts.pods_selected;
        st.pod_entry_render_failures = counts.render_failures;
        let owner = Owner::ClusterSpiffeId(Arc::from(name));
        let is_mine = |d: &&Declared| d.owner == owner;
        let wins = |id: &str| self.desired(id).is_some_and(|w| w.owner == owner);
        for id in &self.contested {
            let mine = self.declarations(id).filter(is_mine).count() as u64;
            if mine > 0 && !wins(id) {
                st.entries_masked += mine;
            }
        }
        st.entries_to_set = counts.declared.saturating_sub(st.entries_masked);
        for id in self.write_failures.keys() {
            if wins(id) {
                st.entry_failures += self.declarations(id).filter(is_mine).count() as u64;
            }
        }
        let mut samples: Vec<&String> = self
            .failing
            .iter()
            .filter_map(|s| self.contributions.get(s))
            .flat_map(|c| c.failures.iter())
            .filter(|(n, _)| &**n == name)
            .map(|(_, m)| m)
            .collect();
        samples.sort();
        st.render_failure_samples = samples.into_iter().take(FAILURE_SAMPLES).cloned().collect();
        st
    }

    /// [`World::policy_stats`] by a scan of every contribution (what it was before the kept counts): the
    /// tests' oracle.
    #[cfg(test)]
    fn policy_stats_by_scan(&self, name: &str) -> PolicyStats {
        let mut st = PolicyStats::default();
        let Some(p) = self.policies.get(name) else {
            return st;
        };
        self.count_namespaces(p, &mut st);
        let owner = Owner::ClusterSpiffeId(Arc::from(name));
        for (source, c) in &self.contributions {
            if !matches!(source, Source::Pod(_)) {
                continue;
            }
            if c.selected_by.iter().any(|n| &**n == name) {
                st.pods_selected += 1;
            }
            for (n, msg) in &c.failures {
                if &**n == name {
                    st.pod_entry_render_failures += 1;
                    st.render_failure_samples.push(msg.clone());
                }
            }
            for d in c.declared.iter().filter(|d| d.owner == owner) {
                self.count_declared(d, &mut st.entries_to_set, &mut st.entries_masked, &mut st.entry_failures);
            }
        }
        st.render_failure_samples.sort();
        st.render_failure_samples.truncate(FAILURE_SAMPLES);
        st
    }

    fn count_declared(&self, d: &Declared, set: &mut u64, masked: &mut u64, failures: &mut u64) {
        match self.desired(&d.entry.id) {
            Some(w) if w.owner == d.owner => {
                *set += 1;
                if self.write_failures.contains_key(&d.entry.id) {
                    *failures += 1;
                }
            }
            _ => *masked += 1,
        }
    }

    pub fn static_stats(&self, name: &str) -> StaticStats {
        let mut st = StaticStats::default();
        let Some(c) = self.contributions.get(&Source::Static(name.to_string())) else {
            return st;
        };
        for d in &c.declared {
            st.rendered = true;
            let (mut set, mut masked, mut failures) = (0, 0, 0);
            self.count_declared(d, &mut set, &mut masked, &mut failures);
            st.set = set > 0 && failures == 0;
            st.masked = masked > 0;
            st.failure = self.write_failures.get(&d.entry.id).cloned();
        }
        st
    }
}

/// Whether an entry ID is one this operator makes: exactly the prefix plus 32 lowercase hex digits. A plain
/// prefix test would claim `sigil.prod.eu.<hex>` for the operator whose prefix is `sigil.prod.`.
pub fn is_own_entry_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == 32 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The ID an entry gets on the server: the prefix plus 128 bits of SHA-256 over its identity.
pub fn entry_id(prefix: &str, entry: &RegistrationEntry) -> String {
    let mut selectors: Vec<String> = entry.selectors.iter().map(|s| s.to_string()).collect();
    selectors.sort();
    let mut h = Sha256::new();
    h.update(entry.spiffe_id.as_str().as_bytes());
    h.update([0]);
    h.update(entry.parent_id.as_str().as_bytes());
    for s in &selectors {
        h.update([0]);
        h.update(s.as_bytes());
    }
    let digest = h.finalize();
    format!("{prefix}{}", hex::encode(&digest[..16]))
}

/// What the operator keeps of an entry the server holds: whether it needs an update (a digest of the fields
/// the operator sets) and what an update must carry. The whole entry would be ~1 KiB per pod; this is 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerCopy {
    pub revision: i64,
    pub created_at: i64,
    pub digest: [u8; 16],
}

impl ServerCopy {
    pub fn of(e: &RegistrationEntry) -> Self {
        Self { revision: e.revision, created_at: e.created_at, digest: settable_digest(e) }
    }
}

/// 128 bits of SHA-256 over the fields the operator sets besides the identity (which is in the ID): TTLs,
/// federatesWith (as a set), admin, downstream, DNS names (in order), hint, storeSVID. Strings are
/// length-prefixed and lists count-prefixed, so no two different entries share an encoding.
pub fn settable_digest(e: &RegistrationEntry) -> [u8; 16] {
    fn put(h: &mut Sha256, s: &str) {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    let mut h = Sha256::new();
    let mut federates: Vec<&str> = e.federates_with.iter().map(|t| t.name()).collect();
    federates.sort_unstable();
    federates.dedup();
    put(&mut h, &e.hint);
    h.update((federates.len() as u64).to_le_bytes());
    for f in &federates {
        put(&mut h, f);
    }
    h.update((e.dns_names.len() as u64).to_le_bytes());
    for d in &e.dns_names {
        put(&mut h, d);
    }
    h.update(e.x509_svid_ttl.to_le_bytes());
    h.update(e.jwt_svid_ttl.to_le_bytes());
    h.update([u8::from(e.admin), u8::from(e.downstream), u8::from(e.store_svid)]);
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Whether the server's copy differs from the desired entry in a field the operator sets.
pub fn needs_update(current: &RegistrationEntry, desired: &RegistrationEntry) -> bool {
    settable_digest(current) != settable_digest(desired)
}

/// What to write so the server matches the world for these entry IDs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    pub create: Vec<RegistrationEntry>,
    pub update: Vec<RegistrationEntry>,
    pub delete: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }

    pub fn len(&self) -> usize {
        self.create.len() + self.update.len() + self.delete.len()
    }
}

/// Compares the desired state of `ids` with the server's entries (only IDs with our prefix may be in `current`).
pub fn plan<'a>(
    world: &World,
    ids: impl IntoIterator<Item = &'a String>,
    current: &HashMap<String, ServerCopy>,
) -> Plan {
    let mut plan = Plan::default();
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id.as_str()) {
            continue;
        }
        match (world.desired(id).and_then(|d| d.entry.to_entry()), current.get(id)) {
            (Some(e), None) => plan.create.push(e),
            (Some(mut e), Some(c)) => {
                if settable_digest(&e) != c.digest {
                    e.revision = c.revision;
                    e.created_at = c.created_at;
                    plan.update.push(e);
                }
            }
            (None, Some(_)) => plan.delete.push(id.clone()),
            (None, None) => {}
        }
    }
    plan
}

/// The full comparison: every declared ID and every ID the server holds under our prefix.
pub fn full_plan(world: &World, current: &HashMap<String, ServerCopy>) -> Plan {
    plan(world, full_plan_ids(world, current), current)
}

/// The IDs a full comparison covers, sorted and without duplicates (so they can be planned in slices).
pub fn full_plan_ids<'a>(world: &'a World, current: &'a HashMap<String, ServerCopy>) -> Vec<&'a String> {
    let mut ids: Vec<&String> = world.declared_ids().chain(current.keys()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "sigil-operator.test.";

    fn settings() -> Settings {
        Settings {
            trust_domain: TrustDomain::new("example.org").unwrap(),
            cluster_name: "demo".into(),
            cluster_domain: "cluster.local".into(),
            parent_id_template: Template::parse(
                "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}",
            )
            .unwrap(),
            ignore_namespaces: vec![regex::Regex::new("^(?:kube-system)$").unwrap()],
            class_name: None,
            watch_classless: true,
            entry_id_prefix: PREFIX.into(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod(uid: &str, ns: &str, name: &str, node: Option<&str>, l: &[(&str, &str)]) -> Pod {
        Pod::from_json(
            json!({"name": name, "namespace": ns, "uid": uid, "labels": labels(l)}),
            json!({"serviceAccountName": format!("sa-{name}"), "nodeName": node}),
        )
        .unwrap()
    }

    fn node(name: &str, uid: &str) -> Node {
        Node { name: name.into(), meta: json!({"name": name, "uid": uid}), spec: json!({}) }
    }

    fn ns(name: &str, l: &[(&str, &str)]) -> Namespace {
        Namespace { name: name.into(), labels: labels(l) }
    }

    fn rank(created: i64, uid: &str) -> Rank {
        Rank { created, deleting: false, uid: uid.into() }
    }

    fn policy(name: &str, template: &str) -> Policy {
        Policy {
            name: name.into(),
            rank: rank(100, &format!("uid-{name}")).into(),
            class_name: None,
            namespace_selector: LabelMatcher::everything(),
            pod_selector: LabelMatcher::everything(),
            spiffe_id: Template::parse(template).unwrap(),
            workload_selectors: vec![],
            dns_names: vec![],
            auto_populate_dns_names: false,
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: vec![],
            admin: false,
            downstream: false,
            fallback: false,
            hint: String::new(),
        }
    }

    const SA_TEMPLATE: &str =
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}";

    fn world_with_pod() -> World {
        let mut w = World::new(settings());
        w.upsert_namespace(ns("apps", &[("team", "a")]));
        w.upsert_node(node("n1", "node-uid-1"));
        w.upsert_policy(policy("default", SA_TEMPLATE));
        w.upsert_pod(pod("p1", "apps", "web", Some("n1"), &[("app", "web")]));
        w
    }

    /// The desired entries, as (spiffe_id, parent_id, selectors).
    fn desired(w: &World) -> Vec<(String, String, Vec<String>)> {
        let mut ids: Vec<&String> = w.declared_ids().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| w.desired(id))
            .map(|d| {
                (
                    d.entry.spiffe_id.to_string(),
                    d.entry.parent_id.to_string(),
                    d.entry.selectors.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn pod_gets_the_rendered_entry_under_its_agent() {
        let w = world_with_pod();
        assert_eq!(
            desired(&w),
            vec![(
                "spiffe://example.org/ns/apps/sa/sa-web".to_string(),
                "spiffe://example.org/spire/agent/k8s_psat/demo/node-uid-1".to_string(),
                vec!["k8s:pod-uid:p1".to_string()],
            )]
        );
        let id = w.declared_ids().next().unwrap().clone();
        assert!(id.starts_with(PREFIX));
        assert_eq!(id.len(), PREFIX.len() + 32);
        assert_eq!(w.policy_stats("default").pods_selected, 1);
        assert_eq!(w.policy_stats("default").entries_to_set, 1);
    }

    #[test]
    fn own_entry_ids_are_exactly_prefix_and_hash() {
        let hex = "0123456789abcdef0123456789abcdef";
        let cases = [
            (format!("sigil.prod.{hex}"), true),
            (format!("sigil.prod.eu.{hex}"), false),
            (format!("sigil.prod.{}", &hex[1..]), false),
            (format!("sigil.prod.{hex}0"), false),
            (format!("sigil.prod.{}", hex.to_uppercase()), false),
            ("sigil.prod.".to_string(), false),
            (format!("other.{hex}"), false),
        ];
        for (id, want) in cases {
            assert_eq!(is_own_entry_id("sigil.prod.", &id), want, "{id}");
        }
        let w = world_with_pod();
        let id = w.declared_ids().next().unwrap();
        assert!(is_own_entry_id(PREFIX, id), "what entry_id makes is recognised");
    }

    #[test]
    fn entry_ids_are_deterministic_and_identity_based() {
        let a = world_with_pod();
        let b = world_with_pod();
        let ida: Vec<_> = a.declared_ids().cloned().collect();
        let idb: Vec<_> = b.declared_ids().cloned().collect();
        assert_eq!(ida, idb);
        let mut e = a.desired(&ida[0]).unwrap().entry.to_entry().unwrap();
        let before = entry_id(PREFIX, &e);
        e.hint = "changed".into();
        assert_eq!(entry_id(PREFIX, &e), before, "non-identity fields don't change the ID");
        e.selectors.reverse();
        assert_eq!(entry_id(PREFIX, &e), before, "selector order doesn't change the ID");
        e.selectors.push(Selector::parse("k8s:ns:apps").unwrap());
        assert_ne!(entry_id(PREFIX, &e), before);
    }

    #[test]
    fn unscheduled_pod_is_skipped_until_it_has_a_node() {
        let mut w = World::new(settings());
        w.upsert_namespace(ns("apps", &[]));
        w.upsert_policy(policy("default", SA_TEMPLATE));
        w.upsert_pod(pod("p1", "apps", "web", None, &[]));
        assert!(desired(&w).is_empty());
        assert_eq!(w.policy_stats("default").pod_entry_render_failures, 0, "skipped quietly");
        w.upsert_pod(pod("p1", "apps", "web", Some("n1"), &[]));
        assert!(desired(&w).is_empty(), "node not known yet");
        w.upsert_node(node("n1", "node-uid-1"));
        assert_eq!(desired(&w).len(), 1);
    }

    #[test]
    fn pod_deletion_marks_its_entry_dirty_and_undesired() {
        let mut w = world_with_pod();
        let id = w.declared_ids().next().unwrap().clone();
        w.take_dirty();
        w.delete_pod("p1");
        assert_eq!(w.take_dirty(), vec![id.clone()]);
        assert!(w.desired(&id).is_none());
        assert!(w.take_dirty().is_empty());
    }

    #[test]
    fn unchanged_updates_mark_nothing_dirty() {
        let mut w = world_with_pod();
        w.take_dirty();
        w.upsert_pod(pod("p1", "apps", "web", Some("n1"), &[("app", "web")]));
        w.upsert_namespace(ns("apps", &[("team", "a")]));
        w.upsert_node(node("n1", "node-uid-1"));
        assert!(w.take_dirty().is_empty());
    }

    #[test]
    fn namespace_label_change_reselects_its_pods() {
        let mut w = World::new(settings());
        w.upsert_node(node("n1", "u1"));
        let mut p = policy("team-a", SA_TEMPLATE);
        p.namespace_selector =
            LabelMatcher::from_selector(Some(&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some(labels(&[("team", "a")])),
                match_expressions: None,
            }))
            .unwrap();
        w.upsert_policy(p);
        w.upsert_namespace(ns("apps", &[("team", "b")]));
        w.upsert_pod(pod("p1", "apps", "web", Some("n1"), &[]));
        assert!(desired(&w).is_empty());
        w.upsert_namespace(ns("apps", &[("team", "a")]));
        assert_eq!(desired(&w).len(), 1);
        let st = w.policy_stats("team-a");
        assert_eq!((st.namespaces_selected, st.pods_selected), (1, 1));
        w.upsert_namespace(ns("apps", &[]));
        assert!(desired(&w).is_empty());
    }

    #[test]
    fn node_change_rerenders_its_pods() {
        let mut w = world_with_pod();
        w.take_dirty();
        w.upsert_node(node("n1", "node-uid-2"));
        let d = desired(&w);
        assert_eq!(d[0].1, "spiffe://example.org/spire/agent/k8s_psat/demo/node-uid-2");
        assert_eq!(w.take_dirty().len(), 2, "old ID to delete, new ID to create");
    }

    #[test]
    fn ignored_namespaces_get_no_entries_and_are_counted() {
        let mut w = World::new(settings());
        w.upsert_node(node("n1", "u1"));
        w.upsert_policy(policy("default", SA_TEMPLATE));
        w.upsert_namespace(ns("kube-system", &[]));
        w.upsert_namespace(ns("kube-system-extra", &[]));
        w.upsert_pod(pod("p1", "kube-system", "dns", Some("n1"), &[]));
        w.upsert_pod(pod("p2", "kube-system-extra", "x", Some("n1"), &[]));
        let d = desired(&w);
        assert_eq!(d.len(), 1, "patterns match whole names only");
        assert!(d[0].0.contains("/ns/kube-system-extra/"));
        let st = w.policy_stats("default");
        assert_eq!((st.namespaces_selected, st.namespaces_ignored), (1, 1));
    }

    #[test]
    fn fallback_applies_only_when_nothing_else_selects_the_pod() {
        let mut w = World::new(settings());
        w.upsert_node(node("n1", "u1"));
        w.upsert_namespace(ns("apps", &[]));
        let mut fb = policy("fallback", "spiffe://example.org/fallback/{{ .PodMeta.Name }}");
        fb.fallback = true;
        w.upsert_policy(fb);
        let mut web = policy("web", "spiffe://example.org/web/{{ .PodMeta.Name }}");
        web.pod_selector =
            LabelMatcher::from_selector(Some(&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some(labels(&[("app", "web")])),
                match_expressions: None,
            }))
            .unwrap();
        w.upsert_policy(web);
        w.upsert_pod(pod("p1", "apps", "a", Some("n1"), &[("app", "web")]));
        w.upsert_pod(pod("p2", "apps", "b", Some("n1"), &[("app", "db")]));
        let ids: BTreeSet<String> = desired(&w).into_iter().map(|d| d.0).collect();
        assert_eq!(
            ids,
            BTreeSet::from(["spiffe://example.org/web/a".to_string(), "spiffe://example.org/fallback/b".to_string()])
        );
    }

    #[test]
    fn same_entry_from_two_policies_goes_to_the_oldest_and_the_other_is_masked() {
        let mut w = world_with_pod();
        let mut newer = policy("newer", SA_TEMPLATE);
        newer.rank = rank(200, "zzz").into();
        newer.hint = "from-newer".into();
        w.upsert_policy(newer);
        let ids: Vec<_> = w.declared_ids().cloned().collect();
        assert_eq!(ids.len(), 1);
        assert_eq!(w.desired(&ids[0]).unwrap().owner, Owner::ClusterSpiffeId("default".into()));
        assert_eq!(w.policy_stats("newer").entries_masked, 1);
        assert_eq!(w.policy_stats("default").entries_to_set, 1);
        // Same creation time: not-being-deleted wins, then the lowest UID.
        let mut older_uid = policy("tie", SA_TEMPLATE);
        older_uid.rank = rank(100, "aaa").into();
        w.upsert_policy(older_uid);
        assert_eq!(w.desired(&ids[0]).unwrap().owner, Owner::ClusterSpiffeId("tie".into()));
        let mut deleting = policy("tie", SA_TEMPLATE);
        deleting.rank = Rank { created: 100, deleting: true, uid: "aaa".into() }.into();
        w.upsert_policy(deleting);
        assert_eq!(w.desired(&ids[0]).unwrap().owner, Owner::ClusterSpiffeId("default".into()));
    }

    #[test]
    fn render_failures_are_counted_not_fatal() {
        let mut w = world_with_pod();
        w.upsert_policy(policy("foreign", "spiffe://other.org/{{ .PodMeta.Name }}"));
        w.upsert_policy(policy("bad-selector", SA_TEMPLATE));
        let st = w.policy_stats("foreign");
        assert_eq!(st.pod_entry_render_failures, 1);
        assert!(st.render_failure_samples[0].contains("not in the trust domain example.org"), "{st:?}");
        assert_eq!(desired(&w).len(), 1, "the valid policy still declares its entry");
    }

    #[test]
    fn workload_selector_and_dns_templates_render() {
        let mut w = World::new(settings());
        w.upsert_node(node("n1", "u1"));
        w.upsert_namespace(ns("apps", &[]));
        let mut p = policy("p", SA_TEMPLATE);
        p.workload_selectors = vec![Template::parse("k8s:ns:{{ .PodMeta.Namespace }}").unwrap()];
        p.dns_names = vec![Template::parse("{{ .PodMeta.Name }}.example.org").unwrap()];
        p.auto_populate_dns_names = true;
        w.upsert_policy(p);
        w.upsert_pod(pod("p1", "apps", "web", Some("n1"), &[]));
        w.upsert_endpoint_slice("apps/web-abc", "apps", "websvc", BTreeSet::from(["p1".to_string()]));
        let id = w.declared_ids().next().unwrap().clone();
        let e = &w.desired(&id).unwrap().entry.to_entry().unwrap();
        assert_eq!(
            e.selectors.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            vec!["k8s:ns:apps", "k8s:pod-uid:p1"]
        );
        assert_eq!(
            e.dns_names,
            vec!["web.example.org", "websvc", "websvc.apps", "websvc.apps.svc", "websvc.apps.svc.cluster.local"]
        );
        w.delete_endpoint_slice("apps/web-abc");
        let e = &w.desired(&id).unwrap().entry.to_entry().unwrap();
        assert_eq!(e.dns_names, vec!["web.example.org"]);
    }

    #[test]
    fn class_names_follow_class_name_and_watch_classless() {
        let cases = [
            (None, true, None, true),
            (None, false, Some("a"), false),
            (Some("a"), true, Some("a"), true),
            (Some("a"), true, Some("b"), false),
            (Some("a"), true, None, true),
            (Some("a"), false, None, false),
            (Some("a"), false, Some(""), false),
        ];
        for (mine, classless, cr, want) in cases {
            let mut s = settings();
            s.class_name = mine.map(String::from);
            s.watch_classless = classless;
            assert_eq!(s.owns_class(cr), want, "{mine:?} {classless} {cr:?}");
        }
    }

    #[test]
    fn static_entries_declare_one_entry() {
        let mut w = World::new(settings());
        let entry = RegistrationEntry::new(
            SpiffeId::new("spiffe://example.org/db").unwrap(),
            SpiffeId::new("spiffe://example.org/spire/agent/join_token/x").unwrap(),
            vec![Selector::parse("unix:uid:1000").unwrap()],
        );
        w.upsert_static(StaticEntry { name: "db".into(), rank: rank(1, "u"), class_name: None, entry: entry.clone() });
        let st = w.static_stats("db");
        assert!(st.rendered && st.set && !st.masked, "{st:?}");
        w.upsert_static(StaticEntry { name: "db2".into(), rank: rank(2, "u2"), class_name: None, entry });
        assert!(w.static_stats("db2").masked);
        w.delete_static("db");
        assert!(w.static_stats("db2").set, "the survivor takes over");
    }

    #[test]
    fn plan_creates_updates_and_deletes_only_what_differs() {
        let mut w = world_with_pod();
        let id = w.declared_ids().next().unwrap().clone();
        let mut current = HashMap::new();
        let p = full_plan(&w, &current);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (1, 0, 0));
        let mut stored = p.create[0].clone();
        stored.revision = 3;
        current.insert(id.clone(), ServerCopy::of(&stored));
        assert!(full_plan(&w, &current).is_empty(), "nothing differs, nothing is written");
        stored.hint = "drifted".into();
        current.insert(id.clone(), ServerCopy::of(&stored));
        let p = full_plan(&w, &current);
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].hint, "");
        assert_eq!(p.update[0].revision, 3);
        w.delete_pod("p1");
        let p = full_plan(&w, &current);
        assert_eq!(p.delete, vec![id]);
    }

    #[test]
    fn needs_update_table() {
        let w = world_with_pod();
        let id = w.declared_ids().next().unwrap().clone();
        let mut base = w.desired(&id).unwrap().entry.to_entry().unwrap();
        base.dns_names = vec!["ab".into(), "c".into()];
        let td = TrustDomain::new("b.org").unwrap();
        let td2 = TrustDomain::new("a.org").unwrap();
        let mut with_fed = base.clone();
        with_fed.federates_with = vec![td.clone(), td2.clone()];
        let mut with_fed_rev = base.clone();
        with_fed_rev.federates_with = vec![td2, td];
        type Mutate = Box<dyn Fn(&mut RegistrationEntry)>;
        let cases: Vec<(&str, Mutate, bool)> = vec![
            ("identical", Box::new(|_| {}), false),
            ("revision only", Box::new(|e| e.revision = 9), false),
            ("created_at only", Box::new(|e| e.created_at = 9), false),
            ("x509 ttl", Box::new(|e| e.x509_svid_ttl = 60), true),
            ("jwt ttl", Box::new(|e| e.jwt_svid_ttl = 60), true),
            ("admin", Box::new(|e| e.admin = true), true),
            ("downstream", Box::new(|e| e.downstream = true), true),
            ("dns", Box::new(|e| e.dns_names = vec!["a".into()]), true),
            ("hint", Box::new(|e| e.hint = "h".into()), true),
            ("store_svid", Box::new(|e| e.store_svid = true), true),
            ("dns order", Box::new(|e| e.dns_names.reverse()), true),
            ("dns split differently", Box::new(|e| e.dns_names = vec!["a".into(), "bc".into()]), true),
            (
                "hint moved into dns",
                Box::new(|e| {
                    e.dns_names = vec![e.hint.clone()];
                    e.hint = String::new();
                }),
                true,
            ),
        ];
        for (name, f, want) in cases {
            let mut c = base.clone();
            f(&mut c);
            assert_eq!(needs_update(&c, &base), want, "{name}");
        }
        assert!(!needs_update(&with_fed, &with_fed_rev), "federatesWith order doesn't matter");
    }

    /// The kept counts agree with a scan of every contribution, through masking, failures and deletions.
    #[test]
    fn policy_stats_from_kept_counts_match_a_full_scan() {
        let check = |w: &World, step: &str| {
            for name in w.policy_names() {
                assert_eq!(w.policy_stats(name), w.policy_stats_by_scan(name), "{step}: {name}");
            }
        };
        let mut w = world_with_pod();
        w.upsert_pod(pod("p2", "apps", "db", Some("n1"), &[("app", "db")]));
        check(&w, "one policy");
        let mut newer = policy("newer", SA_TEMPLATE);
        newer.rank = rank(200, "zzz").into();
        w.upsert_policy(newer);
        check(&w, "masked by an older policy");
        assert_eq!(w.policy_stats("newer").entries_masked, 2, "the check compares something");
        w.upsert_policy(policy("foreign", "spiffe://other.org/{{ .PodMeta.Name }}"));
        check(&w, "render failures");
        assert_eq!(w.policy_stats("foreign").pod_entry_render_failures, 2);
        let id = w.declared_ids().next().unwrap().clone();
        w.record_write(&id, Some("refused".into()));
        check(&w, "a refused write");
        w.delete_pod("p1");
        check(&w, "pod deleted");
        w.delete_policy("default");
        check(&w, "older policy deleted");
        assert_eq!(w.policy_stats("newer").entries_to_set, 1);
    }
}
