//! The watches: each kind of Kubernetes object the operator reads becomes [`Update`]s for the controller's
//! one task. Relists after a disconnect remove what vanished.

use std::collections::BTreeSet;
use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Node as K8sNode, Pod as K8sPod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::config::OperatorConfig;
use crate::crd::{ClusterFederatedTrustDomain, ClusterSPIFFEID, ClusterStaticEntry};
use crate::metrics::Metrics;
use crate::objects;
use crate::world;

/// The kinds of watch; the controller waits for the initial list of each one it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    EndpointSlice,
    ClusterSpiffeId,
    ClusterStaticEntry,
    ClusterFederatedTrustDomain,
}

/// A change seen by a watch.
#[derive(Debug)]
pub enum Update {
    Namespace(world::Namespace),
    NamespaceGone(String),
    Node(world::Node),
    NodeGone(String),
    Pod(Box<world::Pod>),
    PodGone(String),
    Slice { key: String, namespace: String, service: String, pod_uids: BTreeSet<String> },
    SliceGone(String),
    Policy(Box<ClusterSPIFFEID>),
    PolicyGone(String),
    Static(Box<ClusterStaticEntry>),
    StaticGone(String),
    Federation(Box<ClusterFederatedTrustDomain>),
    FederationGone(String),
    Synced(Kind),
}

// ----- converting watched objects -----

fn slice_update(s: EndpointSlice) -> Option<Update> {
    let key = ns_slice_key(&s)?;
    let namespace = s.metadata.namespace.clone()?;
    let service = s.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?.clone();
    let pod_uids = s
        .endpoints
        .iter()
        .filter_map(|e| e.target_ref.as_ref())
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .filter_map(|r| r.uid.clone())
        .collect();
    Some(Update::Slice { key, namespace, service, pod_uids })
}

/// How one kind of object becomes updates: its key, its update, and the update when it is gone.
struct Mapping<K> {
    key: fn(&K) -> Option<String>,
    apply: fn(K) -> Option<Update>,
    gone: fn(String) -> Update,
}

/// Runs a watch forever, turning its events into updates. Relists after a disconnect remove what vanished.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    tx: mpsc::Sender<Update>,
    metrics: Metrics,
    Mapping { key, apply, gone }: Mapping<K>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut known: BTreeSet<String> = BTreeSet::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        let mut synced = false;
        while let Some(ev) = stream.next().await {
            let mut out = vec![];
            match ev {
                Ok(Event::Init) => seen.clear(),
                Ok(Event::InitApply(o)) => {
                    // An object that no longer maps to an update (e.g. a slice without its service label) is
                    // not "seen", so InitDone reports it gone if it was known.
                    let k = key(&o);
                    if let Some(u) = apply(o) {
                        seen.extend(k);
                        out.push(u);
                    }
                }
                Ok(Event::InitDone) => {
                    for k in known.difference(&seen) {
                        out.push(gone(k.clone()));
                    }
                    known = std::mem::take(&mut seen);
                    if !synced {
                        synced = true;
                        out.push(Update::Synced(kind));
                    }
                }
                Ok(Event::Apply(o)) => {
                    let k = key(&o);
                    match (apply(o), k) {
                        (Some(u), k) => {
                            known.extend(k);
                            out.push(u);
                        }
                        (None, Some(k)) => {
                            if known.remove(&k) {
                                out.push(gone(k));
                            }
                        }
                        (None, None) => {}
                    }
                }
                Ok(Event::Delete(o)) => {
                    if let Some(k) = key(&o) {
                        known.remove(&k);
                        out.push(gone(k));
                    }
                }
                Err(e) => {
                    metrics.error("watch");
                    tracing::warn!(?kind, error = %e, "watch error; retrying with backoff");
                }
            }
            for u in out {
                if tx.send(u).await.is_err() {
                    return;
                }
            }
        }
    });
}

fn name_key<K: Resource>(o: &K) -> Option<String> {
    o.meta().name.clone()
}

fn uid_key<K: Resource>(o: &K) -> Option<String> {
    o.meta().uid.clone()
}

fn ns_slice_key(s: &EndpointSlice) -> Option<String> {
    Some(format!("{}/{}", s.metadata.namespace.as_deref()?, s.metadata.name.as_deref()?))
}

/// Starts the watches the configuration asks for; returns the kinds to wait for.
pub fn start_watches(
    client: &Client,
    config: &OperatorConfig,
    tx: &mpsc::Sender<Update>,
    m: &Metrics,
) -> BTreeSet<Kind> {
    // Paginated lists (500 objects a page): a single unpaginated list of 10k pods would hold the whole
    // response in memory at once, and the operator's peak RSS is what it keeps afterwards.
    let wc = || watcher::Config::default().page_size(500);
    let mut kinds = BTreeSet::new();
    let r = config.reconcile;
    if r.cluster_spiffe_ids {
        spawn_watch(
            Api::<K8sNamespace>::all(client.clone()),
            wc(),
            Kind::Namespace,
            tx.clone(),
            m.clone(),
            Mapping {
                key: name_key,
                apply: |n| {
                    let name = n.metadata.name?;
                    Some(Update::Namespace(world::Namespace {
                        name,
                        labels: n.metadata.labels.unwrap_or_default().into_iter().collect(),
                    }))
                },
                gone: Update::NamespaceGone,
            },
        );
        spawn_watch(
            Api::<K8sNode>::all(client.clone()),
            wc(),
            Kind::Node,
            tx.clone(),
            m.clone(),
            Mapping { key: name_key, apply: |n| objects::node_from_k8s(n).map(Update::Node), gone: Update::NodeGone },
        );
        spawn_watch(
            Api::<K8sPod>::all(client.clone()),
            wc(),
            Kind::Pod,
            tx.clone(),
            m.clone(),
            Mapping {
                key: uid_key,
                apply: |p| objects::pod_from_k8s(p).map(|p| Update::Pod(Box::new(p))),
                gone: Update::PodGone,
            },
        );
        spawn_watch(
            Api::<EndpointSlice>::all(client.clone()),
            wc(),
            Kind::EndpointSlice,
            tx.clone(),
            m.clone(),
            Mapping { key: ns_slice_key, apply: slice_update, gone: Update::SliceGone },
        );
        spawn_watch(
            Api::<ClusterSPIFFEID>::all(client.clone()),
            wc(),
            Kind::ClusterSpiffeId,
            tx.clone(),
            m.clone(),
            Mapping { key: name_key, apply: |o| Some(Update::Policy(Box::new(o))), gone: Update::PolicyGone },
        );
        kinds.extend([Kind::Namespace, Kind::Node, Kind::Pod, Kind::EndpointSlice, Kind::ClusterSpiffeId]);
    }
    if r.cluster_static_entries {
        spawn_watch(
            Api::<ClusterStaticEntry>::all(client.clone()),
            wc(),
            Kind::ClusterStaticEntry,
            tx.clone(),
            m.clone(),
            Mapping { key: name_key, apply: |o| Some(Update::Static(Box::new(o))), gone: Update::StaticGone },
        );
        kinds.insert(Kind::ClusterStaticEntry);
    }
    if r.cluster_federated_trust_domains {
        spawn_watch(
            Api::<ClusterFederatedTrustDomain>::all(client.clone()),
            wc(),
            Kind::ClusterFederatedTrustDomain,
            tx.clone(),
            m.clone(),
            Mapping { key: name_key, apply: |o| Some(Update::Federation(Box::new(o))), gone: Update::FederationGone },
        );
        kinds.insert(Kind::ClusterFederatedTrustDomain);
    }
    kinds
}
