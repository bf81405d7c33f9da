//! The compact form in which the operator keeps watched pods, and the conversions from Kubernetes objects.
//!
//! # Where the bytes went (issue 19)
//! Measured with a counting allocator (`cargo bench -p sigil-operator --bench memory`, 10,000 of the scale
//! benchmark's pods as the api tier returns them), the operator kept ~5.8 KiB of heap per pod before this
//! module: 1.5 KiB the pod (metadata and spec as JSON text, labels in a `BTreeMap`, whose first node alone is
//! ~540 B), 3.2 KiB the world's indexes and rendered entries (every entry ID, pod UID and policy name copied
//! into each index, a `BTreeSet` node per entry ID), 1 KiB the controller's copy of every server entry, plus
//! a transient 0.9 KiB per pod while the initial plan held a copy of every entry to create. With a
//! production-like pod (three containers, env, probes, volumes) the pod alone was 5.6 KiB.
//!
//! After: 1.9 KiB per benchmark pod: 0.5 KiB the pod (this module), 1.3 KiB the rendered entries and indexes
//! ([`crate::world::KeptEntry`], one shared UID, small vectors instead of set nodes), 0.1 KiB the server copy
//! ([`crate::world::ServerCopy`]: revision, creation time and a digest), and a full pass plans 1,000 IDs at a
//! time. A production-like pod still costs its spec text (~5 KiB), which templates may read.
//!
//! # The form kept
//! Templates may read any `.PodMeta` / `.PodSpec` field, so everything a template can reach is kept; what
//! is dropped is what nothing reads (`status`, `managedFields`, `resourceVersion`, the last-applied
//! annotation) and what would be kept twice:
//! - `name`, `namespace`, `uid` and `labels` live only in the [`Pod`]'s fields, and `nodeName` only in
//!   [`Pod::node_name`]; [`Pod::meta_value`] and [`Pod::spec_value`] put them back, so a template sees
//!   exactly the JSON it saw before (the parity tests render through these).
//! - the rest of the metadata and the spec are compact JSON text, parsed when the pod is rendered (a few
//!   microseconds), since parsed trees would be several times larger;
//! - strings that many pods share are interned ([`Interner`]): namespace and node names, label keys and
//!   values, and the spec text without `nodeName`, which is identical for the replicas of a workload
//!   unless the cluster adds per-pod fields (the projected service-account volume has a random name, so
//!   in most clusters each pod still has its own spec text).
//! - the pod UID is one `Arc<str>` shared by the pod map, the namespace and node indexes and the world's
//!   sources.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node as K8sNode, Pod as K8sPod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};

use crate::labels::LabelSet;
use crate::world;

/// Metadata without managedFields and the last-applied annotation: big, and never useful in templates.
fn strip_meta(mut meta: ObjectMeta) -> ObjectMeta {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    // Every status update bumps it; without it an unchanged object compares equal and re-renders nothing.
    meta.resource_version = None;
    meta
}

/// A watched pod in the form the world keeps (status and the fields above dropped). None without a name,
/// namespace or UID.
pub fn pod_from_k8s(p: K8sPod) -> Option<Pod> {
    let meta = serde_json::to_value(strip_meta(p.metadata)).ok()?;
    let spec = serde_json::to_value(&p.spec).ok()?;
    Pod::from_json(meta, spec)
}

/// A watched node: name, metadata and spec (templates see `.NodeMeta` and `.NodeSpec`); status dropped.
pub fn node_from_k8s(n: K8sNode) -> Option<world::Node> {
    let name = n.metadata.name.clone()?;
    let spec = serde_json::to_value(&n.spec).unwrap_or(Value::Null);
    Some(world::Node { name, meta: serde_json::to_value(strip_meta(n.metadata)).unwrap_or(Value::Null), spec })
}

/// Shares equal strings. An entry is dropped again by [`Interner::release`] once only the interner holds it.
#[derive(Debug, Default)]
pub struct Interner {
    set: HashSet<Arc<str>>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.set.insert(a.clone());
        a
    }

    /// The same string, shared with earlier equal ones.
    pub fn share(&mut self, s: &Arc<str>) -> Arc<str> {
        if let Some(a) = self.set.get(&**s) {
            return a.clone();
        }
        self.set.insert(s.clone());
        s.clone()
    }

    /// Called with a handle about to be dropped: forgets the string if that handle is its last user.
    pub fn release(&mut self, s: &Arc<str>) {
        // The interner's own handle plus the caller's.
        if Arc::strong_count(s) == 2 {
            self.set.remove(&**s);
        }
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// A pod's labels: sorted (key, value) pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Arc<str>, Arc<str>)]>);

impl Labels {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Arc<str>, Arc<str>)>) -> Self {
        let mut v: Vec<(Arc<str>, Arc<str>)> = pairs.into_iter().collect();
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
        Self(v.into_boxed_slice())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn share(&mut self, interner: &mut Interner) {
        for (k, v) in self.0.iter_mut() {
            *k = interner.share(k);
            *v = interner.share(v);
        }
    }

    fn release(&self, interner: &mut Interner) {
        for (k, v) in self.0.iter() {
            interner.release(k);
            interner.release(v);
        }
    }
}

impl LabelSet for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok().map(|i| &*self.0[i].1)
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(m: &BTreeMap<String, String>) -> Self {
        Self::from_pairs(m.iter().map(|(k, v)| (Arc::from(k.as_str()), Arc::from(v.as_str()))))
    }
}

/// A pod as the operator keeps it. See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub uid: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Box<str>,
    /// `spec.nodeName`, if the pod is scheduled.
    pub node_name: Option<Arc<str>>,
    pub labels: Labels,
    /// The metadata as compact JSON without name, namespace, uid and (non-empty) labels.
    meta_rest: Box<str>,
    /// The spec as compact JSON without a non-empty nodeName.
    spec_rest: Arc<str>,
}

const META_KEYS_KEPT_APART: [&str; 3] = ["name", "namespace", "uid"];

fn str_field(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(String::from)
}

impl Pod {
    /// From a pod's metadata and spec as Kubernetes JSON (what templates see as `.PodMeta` and `.PodSpec`).
    /// None without a name, namespace or UID.
    pub fn from_json(meta: Value, spec: Value) -> Option<Pod> {
        let Value::Object(mut meta) = meta else { return None };
        let uid = str_field(&meta, "uid")?;
        let namespace = str_field(&meta, "namespace")?;
        let name = str_field(&meta, "name")?;
        for k in META_KEYS_KEPT_APART {
            meta.remove(k);
        }
        // Only string labels can be kept apart (Kubernetes has no others); an empty map stays in the text, so
        // "labels: {}" and no labels at all both come back as they were.
        let labels = match meta.get("labels") {
            Some(Value::Object(l)) if !l.is_empty() && l.values().all(Value::is_string) => {
                let pairs: Vec<(Arc<str>, Arc<str>)> =
                    l.iter().filter_map(|(k, v)| Some((Arc::from(k.as_str()), Arc::from(v.as_str()?)))).collect();
                meta.remove("labels");
                Labels::from_pairs(pairs)
            }
            _ => Labels::default(),
        };
        let mut spec = spec;
        let node_name = match spec.as_object_mut() {
            Some(s) => match s.get("nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()).map(Arc::from) {
                Some(n) => {
                    s.remove("nodeName");
                    Some(n)
                }
                None => None,
            },
            None => None,
        };
        Some(Pod {
            uid: Arc::from(uid),
            namespace: Arc::from(namespace),
            name: name.into_boxed_str(),
            node_name,
            labels,
            meta_rest: Value::Object(meta).to_string().into_boxed_str(),
            spec_rest: Arc::from(spec.to_string()),
        })
    }

    /// `.PodMeta`: the metadata exactly as given to [`Pod::from_json`].
    pub fn meta_value(&self) -> Value {
        let mut v = parse(&self.meta_rest);
        if let Value::Object(m) = &mut v {
            m.insert("name".into(), Value::String(self.name.to_string()));
            m.insert("namespace".into(), Value::String(self.namespace.to_string()));
            m.insert("uid".into(), Value::String(self.uid.to_string()));
            if !self.labels.is_empty() {
                let labels = self.labels.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
                m.insert("labels".into(), Value::Object(labels));
            }
        }
        v
    }

    /// `.PodSpec`: the spec exactly as given to [`Pod::from_json`].
    pub fn spec_value(&self) -> Value {
        let mut v = parse(&self.spec_rest);
        if let (Value::Object(m), Some(n)) = (&mut v, &self.node_name) {
            m.insert("nodeName".into(), Value::String(n.to_string()));
        }
        v
    }

    /// Shares this pod's common strings with the other pods'.
    pub fn share(&mut self, interner: &mut Interner) {
        self.namespace = interner.share(&self.namespace);
        if let Some(n) = &self.node_name {
            self.node_name = Some(interner.share(n));
        }
        self.labels.share(interner);
        self.spec_rest = interner.share(&self.spec_rest);
    }

    /// Before the pod is dropped: lets the interner forget strings no other pod uses.
    pub fn release(&self, interner: &mut Interner) {
        interner.release(&self.namespace);
        if let Some(n) = &self.node_name {
            interner.release(n);
        }
        self.labels.release(interner);
        interner.release(&self.spec_rest);
    }
}

/// `null` if the text somehow doesn't parse (templates then report the field).
fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn meta_and_spec_come_back_exactly_as_given() {
        let cases = [
            (
                json!({"name": "web", "namespace": "shop", "uid": "u1", "labels": {"app": "web", "v": "1"},
                       "annotations": {"a": "b"}, "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1}),
                json!({"nodeName": "n1", "serviceAccountName": "sa", "containers": [{"name": "app"}]}),
            ),
            (json!({"name": "web", "namespace": "shop", "uid": "u1"}), json!({"serviceAccountName": "sa"})),
            (json!({"name": "web", "namespace": "shop", "uid": "u1", "labels": {}}), json!({"nodeName": ""})),
            (json!({"name": "", "namespace": "shop", "uid": "u1", "labels": {"a": ""}}), json!({})),
        ];
        for (meta, spec) in cases {
            let p = Pod::from_json(meta.clone(), spec.clone()).unwrap();
            assert_eq!(p.meta_value(), meta);
            assert_eq!(p.spec_value(), spec);
        }
    }

    #[test]
    fn fields_kept_apart_are_read_from_the_json() {
        let p = Pod::from_json(
            json!({"name": "web", "namespace": "shop", "uid": "u1", "labels": {"b": "2", "a": "1"}}),
            json!({"nodeName": "n1"}),
        )
        .unwrap();
        assert_eq!((&*p.uid, &*p.namespace, &*p.name, p.node_name.as_deref()), ("u1", "shop", "web", Some("n1")));
        assert_eq!(p.labels.iter().collect::<Vec<_>>(), vec![("a", "1"), ("b", "2")]);
        assert_eq!((p.labels.label("b"), p.labels.label("c")), (Some("2"), None));
        let unscheduled = Pod::from_json(json!({"name": "w", "namespace": "s", "uid": "u"}), json!({})).unwrap();
        assert_eq!(unscheduled.node_name, None);
        for missing in ["name", "namespace", "uid"] {
            let mut meta = json!({"name": "w", "namespace": "s", "uid": "u"});
            meta.as_object_mut().unwrap().remove(missing);
            assert!(Pod::from_json(meta, json!({})).is_none(), "{missing}");
        }
    }

    #[test]
    fn interned_strings_are_shared_and_forgotten_with_their_last_pod() {
        let mk = |uid: &str, node: &str| {
            Pod::from_json(
                json!({"name": uid, "namespace": "shop", "uid": uid, "labels": {"app": "web"}}),
                json!({"nodeName": node, "serviceAccountName": "sa"}),
            )
            .unwrap()
        };
        let mut i = Interner::default();
        let mut a = mk("a", "n1");
        let mut b = mk("b", "n2");
        a.share(&mut i);
        b.share(&mut i);
        assert!(Arc::ptr_eq(&a.spec_rest, &b.spec_rest), "same spec without nodeName");
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
        // shop, n1, n2, app, web, the spec text
        assert_eq!(i.len(), 6);
        b.release(&mut i);
        drop(b);
        assert_eq!(i.len(), 5, "n2 was b's alone");
        a.release(&mut i);
        drop(a);
        assert!(i.is_empty());
    }
}
