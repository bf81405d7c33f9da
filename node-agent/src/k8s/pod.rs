//! The kubelet's `/pods` answer, kept compact: only what `k8s` selectors need, indexed by pod UID and
//! by container ID, and the selector values themselves (SPIRE's `getSelectorValuesFromPodInfo` and
//! `getSelectorValuesFromWorkloadContainerStatus`).
//!
//! A node runs at most ~110 pods, but each pod's JSON carries its whole spec (env, volumes, probes, managed
//! fields): the list is parsed once per fetch into this form and shared by every lookup, the rest of the
//! JSON is skipped by serde without being stored.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer};

use super::cgroup::ContainerInfo;

/// Why a pod list or a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    #[error("the kubelet's pod list is not valid JSON: {0}")]
    Json(String),
    /// SPIRE answers Internal: two pods claim one container, which the kubelet never reports.
    #[error("two pods found with container {container_id}: {first} and {second}")]
    TwoPods { container_id: String, first: String, second: String },
}

/// An owner reference (`pod-owner`, `pod-owner-uid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// One entry of `containerStatuses`, `initContainerStatuses` or `ephemeralContainerStatuses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// The ID with the runtime scheme removed (`containerd://<id>` -> `<id>`); empty while the container
    /// has not been created.
    pub container_id: String,
}

/// Which status list a container was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    Regular,
    Init,
    Ephemeral,
}

/// The parts of a pod that selectors are made of.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// Sorted by key (the JSON object's order does not matter to selectors).
    pub labels: Vec<(String, String)>,
    pub owners: Vec<Owner>,
    pub service_account: String,
    pub node_name: String,
    pub containers: Vec<Container>,
    pub init_containers: Vec<Container>,
    pub ephemeral_containers: Vec<Container>,
}

/// A parsed pod list, indexed.
#[derive(Debug, Default)]
pub struct PodList {
    pods: Vec<Pod>,
    by_uid: HashMap<String, usize>,
    /// Container ID -> (pod index, kind, index in that status list), in search order within a pod.
    by_container: HashMap<String, Vec<(usize, ContainerKind, usize)>>,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The `k8s` selector values (without the `k8s:` type).
    Found(Vec<String>),
    /// Neither the container nor (with `disable_container_selectors`) its pod is listed yet: the kubelet
    /// may not have reported it; fetch again.
    NotFound,
}

impl PodList {
    /// Parses the kubelet's `/pods` body: a PodList whose `items` is an array or null.
    pub fn parse(body: &[u8]) -> Result<Self, PodError> {
        let raw: RawPodList = serde_json::from_slice(body).map_err(|e| PodError::Json(e.to_string()))?;
        Ok(Self::from_pods(raw.items.into_iter().map(RawPod::into_pod).collect()))
    }

    /// Indexes pods (tests and benches build lists this way).
    pub fn from_pods(pods: Vec<Pod>) -> Self {
        let mut by_uid = HashMap::with_capacity(pods.len());
        let mut by_container: HashMap<String, Vec<(usize, ContainerKind, usize)>> = HashMap::new();
        for (p, pod) in pods.iter().enumerate() {
            // Pods are keyed by metadata.uid, as SPIRE does; a duplicate UID keeps the first.
            by_uid.entry(pod.uid.clone()).or_insert(p);
            let lists = [
                (ContainerKind::Regular, &pod.containers),
                (ContainerKind::Init, &pod.init_containers),
                (ContainerKind::Ephemeral, &pod.ephemeral_containers),
            ];
            for (kind, list) in lists {
                for (c, status) in list.iter().enumerate() {
                    // No ID yet: not created, nothing can be running in it.
                    if !status.container_id.is_empty() {
                        by_container.entry(status.container_id.clone()).or_default().push((p, kind, c));
                    }
                }
            }
        }
        Self { pods, by_uid, by_container }
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod_by_uid(&self, uid: &str) -> Option<&Pod> {
        self.by_uid.get(uid).and_then(|&i| self.pods.get(i))
    }

    /// Whether a container with this ID is listed (in any pod).
    pub fn has_container(&self, container_id: &str) -> bool {
        self.by_container.contains_key(container_id)
    }

    /// The selectors for a process in `info`'s container, as SPIRE's attestor loop derives them: with a
    /// pod UID only that pod is considered; without one, every pod (and two holding the container is an
    /// error). `disable_container_selectors` drops `container-*` selectors and, when the pod is known but
    /// the container is not listed yet (a postStart hook still running, SPIRE #3092/#3460), answers with
    /// the pod selectors at once.
    pub fn lookup(&self, info: &ContainerInfo, disable_container_selectors: bool) -> Result<Lookup, PodError> {
        let hits = self.by_container.get(&info.container_id).map(Vec::as_slice).unwrap_or_default();
        let selected = match &info.pod_uid {
            Some(uid) => {
                let Some(&want) = self.by_uid.get(uid) else { return Ok(Lookup::NotFound) };
                match hits.iter().find(|(p, _, _)| *p == want) {
                    Some(hit) => Some(*hit),
                    None if disable_container_selectors => {
                        return Ok(self
                            .pods
                            .get(want)
                            .map_or(Lookup::NotFound, |pod| Lookup::Found(pod_selectors(pod))));
                    }
                    None => None,
                }
            }
            None => {
                let mut pods_seen = hits.iter().map(|(p, _, _)| *p);
                let first = pods_seen.next();
                if let (Some(a), Some(b)) = (first, pods_seen.find(|p| Some(*p) != first)) {
                    let uid = |i: usize| self.pods.get(i).map(|p| p.uid.clone()).unwrap_or_default();
                    return Err(PodError::TwoPods {
                        container_id: info.container_id.clone(),
                        first: uid(a),
                        second: uid(b),
                    });
                }
                hits.first().copied()
            }
        };
        let Some((p, kind, c)) = selected else { return Ok(Lookup::NotFound) };
        if kind == ContainerKind::Ephemeral {
            // A debug container (`kubectl debug`) gets none of the pod's identity: adding one needs only
            // `pods/ephemeralcontainers`, often granted to people who may not exec into the pod, and it can
            // mount the pod's volumes. It is found (answered at once, no ~30 s of polling as in SPIRE,
            // which does not search them) with no `k8s` selectors, like a process outside any pod.
            return Ok(Lookup::Found(Vec::new()));
        }
        let Some(pod) = self.pods.get(p) else { return Ok(Lookup::NotFound) };
        let mut values = pod_selectors(pod);
        if !disable_container_selectors {
            let list = match kind {
                ContainerKind::Regular => &pod.containers,
                ContainerKind::Init => &pod.init_containers,
                ContainerKind::Ephemeral => &pod.ephemeral_containers,
            };
            if let Some(status) = list.get(c) {
                values.extend(container_selectors(status));
            }
        }
        Ok(Lookup::Found(values))
    }
}

/// The pod-level `k8s` selector values. Like SPIRE, `pod-image`/`pod-init-image` name both the image and
/// the image ID of every status (deduplicated; an empty `imageID` of a container still pulling gives
/// `pod-image:` exactly as SPIRE does), and the counts are those of `containerStatuses` and
/// `initContainerStatuses` (ephemeral containers are not part of the pod's images).
pub fn pod_selectors(pod: &Pod) -> Vec<String> {
    let mut out = Vec::with_capacity(8 + 2 * (pod.containers.len() + pod.init_containers.len()) + pod.labels.len());
    out.push(format!("sa:{}", pod.service_account));
    out.push(format!("ns:{}", pod.namespace));
    out.push(format!("node-name:{}", pod.node_name));
    out.push(format!("pod-uid:{}", pod.uid));
    out.push(format!("pod-name:{}", pod.name));
    out.push(format!("pod-image-count:{}", pod.containers.len()));
    out.push(format!("pod-init-image-count:{}", pod.init_containers.len()));
    push_images(&mut out, "pod-image", &pod.containers);
    push_images(&mut out, "pod-init-image", &pod.init_containers);
    for (k, v) in &pod.labels {
        out.push(format!("pod-label:{k}:{v}"));
    }
    for o in &pod.owners {
        out.push(format!("pod-owner:{}:{}", o.kind, o.name));
        out.push(format!("pod-owner-uid:{}:{}", o.kind, o.uid));
    }
    out
}

fn push_images(out: &mut Vec<String>, prefix: &str, statuses: &[Container]) {
    let mut seen: Vec<&str> = Vec::with_capacity(statuses.len() * 2);
    for s in statuses {
        for image in [s.image.as_str(), s.image_id.as_str()] {
            if !seen.contains(&image) {
                seen.push(image);
                out.push(format!("{prefix}:{image}"));
            }
        }
    }
}

/// The container-level values: `container-name`, and `container-image` for the image and the image ID.
pub fn container_selectors(status: &Container) -> Vec<String> {
    let mut out = vec![format!("container-name:{}", status.name), format!("container-image:{}", status.image)];
    if status.image_id != status.image {
        out.push(format!("container-image:{}", status.image_id));
    }
    out
}

/// `containerd://<id>` -> `<id>`: SPIRE parses the status's container ID as a URL and compares the host
/// part, whatever the scheme (`containerd`, `cri-o`, `docker`). No scheme: no host, never matches.
pub fn strip_runtime_scheme(id: &str) -> &str {
    match id.split_once("://") {
        Some((_, rest)) => rest.split(['/', '?', '#']).next().unwrap_or_default(),
        None => "",
    }
}

// The wire form: every field optional and `null` accepted, since Go's encoder omits or nulls empty ones.

fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct RawPodList {
    #[serde(default, deserialize_with = "null_default")]
    items: Vec<RawPod>,
}

#[derive(Deserialize, Default)]
struct RawPod {
    #[serde(default, deserialize_with = "null_default")]
    metadata: RawMeta,
    #[serde(default, deserialize_with = "null_default")]
    spec: RawSpec,
    #[serde(default, deserialize_with = "null_default")]
    status: RawStatus,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    namespace: String,
    #[serde(default, deserialize_with = "null_default")]
    uid: String,
    #[serde(default, deserialize_with = "null_default")]
    labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    owner_references: Vec<RawOwner>,
}

#[derive(Deserialize, Default)]
struct RawOwner {
    #[serde(default, deserialize_with = "null_default")]
    kind: String,
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    uid: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default, deserialize_with = "null_default")]
    service_account_name: String,
    #[serde(default, deserialize_with = "null_default")]
    node_name: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawStatus {
    #[serde(default, deserialize_with = "null_default")]
    container_statuses: Vec<RawContainer>,
    #[serde(default, deserialize_with = "null_default")]
    init_container_statuses: Vec<RawContainer>,
    #[serde(default, deserialize_with = "null_default")]
    ephemeral_container_statuses: Vec<RawContainer>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawContainer {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    image: String,
    #[serde(default, rename = "imageID", deserialize_with = "null_default")]
    image_id: String,
    #[serde(default, rename = "containerID", deserialize_with = "null_default")]
    container_id: String,
}

impl RawContainer {
    fn into_container(self) -> Container {
        let container_id = strip_runtime_scheme(&self.container_id).to_owned();
        Container { name: self.name, image: self.image, image_id: self.image_id, container_id }
    }
}

impl RawPod {
    fn into_pod(self) -> Pod {
        let containers = |v: Vec<RawContainer>| v.into_iter().map(RawContainer::into_container).collect();
        Pod {
            name: self.metadata.name,
            namespace: self.metadata.namespace,
            uid: self.metadata.uid,
            labels: self.metadata.labels.into_iter().collect(),
            owners: self
                .metadata
                .owner_references
                .into_iter()
                .map(|o| Owner { kind: o.kind, name: o.name, uid: o.uid })
                .collect(),
            service_account: self.spec.service_account_name,
            node_name: self.spec.node_name,
            containers: containers(self.status.container_statuses),
            init_containers: containers(self.status.init_container_statuses),
            ephemeral_containers: containers(self.status.ephemeral_container_statuses),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// A kubelet `/pods` answer trimmed from a kind node (containerd 2.x), with the fields selectors do not
    /// use kept so that parsing has to skip them.
    pub(crate) const FIXTURE: &str = r#"{
  "kind": "PodList",
  "apiVersion": "v1",
  "metadata": {},
  "items": [
    {
      "metadata": {
        "name": "web-7c9f8d6b5-x2x9q",
        "generateName": "web-7c9f8d6b5-",
        "namespace": "shop",
        "uid": "5d1b2a9e-3c4f-4e6a-9b7c-1a2b3c4d5e6f",
        "resourceVersion": "48211",
        "creationTimestamp": "2026-08-01T09:12:44Z",
        "labels": {"pod-template-hash": "7c9f8d6b5", "app": "web"},
        "annotations": {"kubernetes.io/config.seen": "2026-08-01T09:12:44.301Z", "kubernetes.io/config.source": "api"},
        "ownerReferences": [
          {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7c9f8d6b5",
           "uid": "0f9e8d7c-6b5a-4938-8271-605f4e3d2c1b", "controller": true, "blockOwnerDeletion": true}
        ],
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
          "time": "2026-08-01T09:12:44Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]
      },
      "spec": {
        "volumes": [{"name": "kube-api-access-7rq2d", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}],
        "initContainers": [{"name": "migrate", "image": "registry.example/shop/migrate:1.4.2", "args": ["--up"], "resources": {}}],
        "containers": [
          {"name": "app", "image": "registry.example/shop/web:1.4.2", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
           "env": [{"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix:///run/spire/sockets/agent.sock"}],
           "resources": {"limits": {"memory": "256Mi"}}, "imagePullPolicy": "IfNotPresent"},
          {"name": "envoy", "image": "docker.io/envoyproxy/envoy:v1.31.0", "resources": {}}
        ],
        "ephemeralContainers": [{"name": "debugger-x7k2p", "image": "docker.io/library/busybox:1.36", "targetContainerName": "app"}],
        "restartPolicy": "Always",
        "serviceAccountName": "web",
        "serviceAccount": "web",
        "nodeName": "kind-worker",
        "securityContext": {},
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
      },
      "status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-08-01T09:12:51Z"}],
        "hostIP": "172.18.0.3",
        "podIP": "10.244.1.7",
        "startTime": "2026-08-01T09:12:44Z",
        "initContainerStatuses": [
          {"name": "migrate", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}, "ready": true, "restartCount": 0,
           "image": "registry.example/shop/migrate:1.4.2",
           "imageID": "registry.example/shop/migrate@sha256:3333333333333333333333333333333333333333333333333333333333333333",
           "containerID": "containerd://b1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccddeeff00", "started": false}
        ],
        "containerStatuses": [
          {"name": "app", "state": {"running": {"startedAt": "2026-08-01T09:12:50Z"}}, "lastState": {}, "ready": true, "restartCount": 0,
           "image": "registry.example/shop/web:1.4.2",
           "imageID": "registry.example/shop/web@sha256:1111111111111111111111111111111111111111111111111111111111111111",
           "containerID": "containerd://a3f0c1e2d4b5968778695a4b3c2d1e0f11223344556677889900aabbccddeeff", "started": true},
          {"name": "envoy", "state": {"running": {"startedAt": "2026-08-01T09:12:50Z"}}, "lastState": {}, "ready": true, "restartCount": 0,
           "image": "docker.io/envoyproxy/envoy:v1.31.0",
           "imageID": "docker.io/envoyproxy/envoy@sha256:2222222222222222222222222222222222222222222222222222222222222222",
           "containerID": "containerd://f00dbabe112233445566778899aabbccddeeff00112233445566778899aabbcc", "started": true}
        ],
        "ephemeralContainerStatuses": [
          {"name": "debugger-x7k2p", "state": {"running": {"startedAt": "2026-08-01T10:02:11Z"}}, "ready": false, "restartCount": 0,
           "image": "docker.io/library/busybox:1.36",
           "imageID": "docker.io/library/busybox:1.36",
           "containerID": "containerd://c0ffee00112233445566778899aabbccddeeff00112233445566778899aabbcc"}
        ],
        "qosClass": "Burstable"
      }
    },
    {
      "metadata": {
        "name": "etcd-kind-worker",
        "namespace": "kube-system",
        "uid": "6f1a3c7d9e2b4f5a8c0d1e2f3a4b5c6d",
        "annotations": {"kubernetes.io/config.hash": "6f1a3c7d9e2b4f5a8c0d1e2f3a4b5c6d", "kubernetes.io/config.source": "file"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "kind-worker", "uid": "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d", "controller": true}]
      },
      "spec": {
        "containers": [{"name": "etcd", "image": "registry.k8s.io/etcd:3.5.15-0", "command": ["etcd"]}],
        "nodeName": "kind-worker",
        "hostNetwork": true,
        "priorityClassName": "system-node-critical"
      },
      "status": {
        "phase": "Running",
        "containerStatuses": [
          {"name": "etcd", "state": {"running": {"startedAt": "2026-08-01T09:00:02Z"}}, "ready": true, "restartCount": 0,
           "image": "registry.k8s.io/etcd:3.5.15-0",
           "imageID": "sha256:4444444444444444444444444444444444444444444444444444444444444444",
           "containerID": "containerd://d00dfeed112233445566778899aabbccddeeff00112233445566778899aabbcc", "started": true}
        ]
      }
    },
    {
      "metadata": {"name": "pending", "namespace": "default", "uid": "9c8b7a6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", "labels": {"run": "pending"}},
      "spec": {"containers": [{"name": "main", "image": "busybox"}], "serviceAccountName": "default", "nodeName": "kind-worker"},
      "status": {
        "phase": "Pending",
        "containerStatuses": [
          {"name": "main", "state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {}, "ready": false,
           "restartCount": 0, "image": "busybox", "imageID": "", "started": false}
        ]
      }
    }
  ]
}"#;

    const WEB_UID: &str = "5d1b2a9e-3c4f-4e6a-9b7c-1a2b3c4d5e6f";
    const WEB_APP: &str = "a3f0c1e2d4b5968778695a4b3c2d1e0f11223344556677889900aabbccddeeff";
    const WEB_INIT: &str = "b1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccddeeff00";
    const WEB_DEBUG: &str = "c0ffee00112233445566778899aabbccddeeff00112233445566778899aabbcc";
    const STATIC_APP: &str = "d00dfeed112233445566778899aabbccddeeff00112233445566778899aabbcc";

    fn info(pod: Option<&str>, cid: &str) -> ContainerInfo {
        ContainerInfo { pod_uid: pod.map(str::to_owned), container_id: cid.to_owned() }
    }

    fn found(l: Lookup) -> Vec<String> {
        match l {
            Lookup::Found(mut v) => {
                v.sort();
                v
            }
            Lookup::NotFound => panic!("not found"),
        }
    }

    fn sorted(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    const WEB_POD: &[&str] = &[
        "sa:web",
        "ns:shop",
        "node-name:kind-worker",
        "pod-uid:5d1b2a9e-3c4f-4e6a-9b7c-1a2b3c4d5e6f",
        "pod-name:web-7c9f8d6b5-x2x9q",
        "pod-image-count:2",
        "pod-init-image-count:1",
        "pod-image:registry.example/shop/web:1.4.2",
        "pod-image:registry.example/shop/web@sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "pod-image:docker.io/envoyproxy/envoy:v1.31.0",
        "pod-image:docker.io/envoyproxy/envoy@sha256:2222222222222222222222222222222222222222222222222222222222222222",
        "pod-init-image:registry.example/shop/migrate:1.4.2",
        "pod-init-image:registry.example/shop/migrate@sha256:3333333333333333333333333333333333333333333333333333333333333333",
        "pod-label:app:web",
        "pod-label:pod-template-hash:7c9f8d6b5",
        "pod-owner:ReplicaSet:web-7c9f8d6b5",
        "pod-owner-uid:ReplicaSet:0f9e8d7c-6b5a-4938-8271-605f4e3d2c1b",
    ];

    #[test]
    fn parses_fixture_compactly() {
        let list = PodList::parse(FIXTURE.as_bytes()).unwrap();
        assert_eq!(list.len(), 3);
        let web = list.pod_by_uid(WEB_UID).unwrap();
        assert_eq!(web.containers.len(), 2);
        assert_eq!(web.containers[0].container_id, WEB_APP);
        assert_eq!(web.ephemeral_containers[0].container_id, WEB_DEBUG);
        assert_eq!(web.labels, vec![("app".into(), "web".into()), ("pod-template-hash".into(), "7c9f8d6b5".into())]);
        assert!(list.has_container(WEB_INIT));
        // A waiting container without an ID is not indexed.
        let pending = list.pods().iter().find(|p| p.name == "pending").unwrap();
        assert_eq!(pending.containers[0].container_id, "");
        assert!(!list.has_container(""));
    }

    #[test]
    fn selectors_table() {
        let list = PodList::parse(FIXTURE.as_bytes()).unwrap();
        let with = |extra: &[&str]| {
            let mut v: Vec<&str> = WEB_POD.to_vec();
            v.extend_from_slice(extra);
            sorted(&v)
        };
        let app = with(&[
            "container-name:app",
            "container-image:registry.example/shop/web:1.4.2",
            "container-image:registry.example/shop/web@sha256:1111111111111111111111111111111111111111111111111111111111111111",
        ]);
        let cases: Vec<(ContainerInfo, bool, Option<Vec<String>>)> = vec![
            (info(Some(WEB_UID), WEB_APP), false, Some(app.clone())),
            // Without a pod UID the container index finds the pod.
            (info(None, WEB_APP), false, Some(app)),
            // Init containers are found (SPIRE searches them after containerStatuses).
            (
                info(Some(WEB_UID), WEB_INIT),
                false,
                Some(with(&[
                    "container-name:migrate",
                    "container-image:registry.example/shop/migrate:1.4.2",
                    "container-image:registry.example/shop/migrate@sha256:3333333333333333333333333333333333333333333333333333333333333333",
                ])),
            ),
            // Ephemeral (debug) containers are found at once (SPIRE does not search them, so `kubectl debug`
            // sessions time out there), with no selectors: they must not carry the pod's identity.
            (info(Some(WEB_UID), WEB_DEBUG), false, Some(vec![])),
            (info(None, WEB_DEBUG), false, Some(vec![])),
            // The container selectors can be turned off.
            (info(Some(WEB_UID), WEB_APP), true, Some(sorted(WEB_POD))),
            // Pod known, container not listed: pod selectors at once only with disable_container_selectors.
            (info(Some(WEB_UID), &"e".repeat(64)), true, Some(sorted(WEB_POD))),
            (info(Some(WEB_UID), &"e".repeat(64)), false, None),
            // Unknown pod, unknown container.
            (info(Some("00000000-0000-0000-0000-000000000000"), WEB_APP), true, None),
            (info(None, &"e".repeat(64)), false, None),
            // The container belongs to another pod than the cgroup says: not found there.
            (info(Some(WEB_UID), STATIC_APP), false, None),
        ];
        for (i, disable, want) in cases {
            let got = list.lookup(&i, disable).unwrap();
            match want {
                Some(w) => assert_eq!(found(got), w, "{i:?} {disable}"),
                None => assert_eq!(got, Lookup::NotFound, "{i:?} {disable}"),
            }
        }
    }

    #[test]
    fn static_pod_without_labels_or_owner_fields() {
        let list = PodList::parse(FIXTURE.as_bytes()).unwrap();
        let got = found(list.lookup(&info(None, STATIC_APP), false).unwrap());
        assert_eq!(
            got,
            sorted(&[
                "sa:",
                "ns:kube-system",
                "node-name:kind-worker",
                "pod-uid:6f1a3c7d9e2b4f5a8c0d1e2f3a4b5c6d",
                "pod-name:etcd-kind-worker",
                "pod-image-count:1",
                "pod-init-image-count:0",
                "pod-image:registry.k8s.io/etcd:3.5.15-0",
                "pod-image:sha256:4444444444444444444444444444444444444444444444444444444444444444",
                "pod-owner:Node:kind-worker",
                "pod-owner-uid:Node:7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d",
                "container-name:etcd",
                "container-image:registry.k8s.io/etcd:3.5.15-0",
                "container-image:sha256:4444444444444444444444444444444444444444444444444444444444444444",
            ])
        );
    }

    #[test]
    fn two_pods_with_one_container_is_an_error() {
        let c = Container { name: "a".into(), image: "i".into(), image_id: "i".into(), container_id: "x".into() };
        let pod = |uid: &str| Pod { uid: uid.into(), containers: vec![c.clone()], ..Pod::default() };
        let list = PodList::from_pods(vec![pod("u1"), pod("u2")]);
        let err = list.lookup(&info(None, "x"), false).unwrap_err();
        assert_eq!(err, PodError::TwoPods { container_id: "x".into(), first: "u1".into(), second: "u2".into() });
        // With the pod UID from the cgroup there is no ambiguity.
        assert!(matches!(list.lookup(&info(Some("u2"), "x"), false), Ok(Lookup::Found(_))));
    }

    #[test]
    fn wire_edge_cases() {
        let cases: &[(&str, Result<usize, ()>)] = &[
            (r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":null}"#, Ok(0)),
            (r#"{"kind":"PodList"}"#, Ok(0)),
            (r#"{"items":[]}"#, Ok(0)),
            (r#"{"items":[{}]}"#, Ok(1)),
            (r#"{"items":[{"metadata":null,"spec":null,"status":{"containerStatuses":null}}]}"#, Ok(1)),
            (r#"{"items":[{"metadata":{"labels":{"a":null}}}]}"#, Err(())),
            (r#"{"items":{}}"#, Err(())),
            (r#"<html>"#, Err(())),
            ("", Err(())),
            (r#"{"items":[{"metadata":{"uid":5}}]}"#, Err(())),
        ];
        for (body, want) in cases {
            let got = PodList::parse(body.as_bytes()).map(|l| l.len()).map_err(|_| ());
            assert_eq!(&got, want, "{body}");
        }
    }

    #[test]
    fn runtime_schemes() {
        let id = "a".repeat(64);
        for (input, want) in [
            (format!("containerd://{id}"), id.as_str()),
            (format!("cri-o://{id}"), id.as_str()),
            (format!("docker://{id}"), id.as_str()),
            (id.clone(), ""),
            (String::new(), ""),
            ("containerd://".to_owned(), ""),
        ] {
            assert_eq!(strip_runtime_scheme(&input), want, "{input}");
        }
    }
}
