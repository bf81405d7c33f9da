//! CR statuses: what the controller writes back to each ClusterSPIFFEID, ClusterStaticEntry and
//! ClusterFederatedTrustDomain (counts and conditions), and Warning Events for render failures.

use std::collections::HashMap;
use std::fmt::Debug;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::Controller;
use crate::crd::{ClusterFederatedTrustDomain, ClusterSPIFFEID, ClusterStaticEntry};
use crate::federation::fetch_status;

/// Last status written per object, so unchanged statuses are not patched again.
#[derive(Debug, Default)]
pub(super) struct StatusCache {
    written: HashMap<(&'static str, String), Value>,
    /// Render-failure messages already announced as Events, per ClusterSPIFFEID.
    announced: HashMap<String, Vec<String>>,
}

impl StatusCache {
    pub(super) fn forget(&mut self, kind: &'static str, name: &str) {
        self.written.remove(&(kind, name.to_string()));
        if kind == "csid" {
            self.announced.remove(name);
        }
    }
}

impl Controller {
    async fn patch_status<K>(&mut self, short: &'static str, name: &str, status: Value)
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let key = (short, name.to_string());
        if self.status.written.get(&key) == Some(&status) {
            return;
        }
        let api: Api<K> = Api::all(self.kube.clone());
        let patch = json!({ "status": status });
        match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                self.status.written.insert(key, status);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                self.metrics.error("status");
                tracing::debug!(%name, error = %e, "status patch failed; will retry");
            }
        }
    }

    pub(super) async fn write_statuses(&mut self) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut failures_total = 0u64;
        let names: Vec<String> = self.policies.keys().cloned().collect();
        for name in names {
            let Some(cr) = self.policies.get(&name) else { continue };
            // Another operator (another className) owns this one's status.
            if !self.world.settings().owns_class(cr.spec.class_name.as_deref()) {
                continue;
            }
            let generation = cr.metadata.generation;
            let previous = cr.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
            let (stats, ready) = match self.invalid.get(&("csid", name.clone())) {
                Some(reason) => (
                    self.world.policy_stats(&name),
                    Err(("InvalidSpec", format!("{reason} (the last valid spec, if any, stays in effect)"))),
                ),
                None => {
                    let st = self.world.policy_stats(&name);
                    let ready = if st.pod_entry_render_failures > 0 {
                        Err((
                            "RenderFailed",
                            format!(
                                "{} pod entries failed to render, e.g. {}",
                                st.pod_entry_render_failures,
                                st.render_failure_samples.first().cloned().unwrap_or_default()
                            ),
                        ))
                    } else if st.entry_failures > 0 {
                        Err(("EntryWriteFailed", format!("{} entries were refused by the server", st.entry_failures)))
                    } else {
                        Ok(format!("{} entries set, {} masked", st.entries_to_set, st.entries_masked))
                    };
                    (st, ready)
                }
            };
            failures_total += stats.pod_entry_render_failures;
            self.announce_failures(&name, &stats.render_failure_samples, cr.object_ref(&())).await;
            let status = json!({
                "stats": {
                    "namespacesSelected": stats.namespaces_selected,
                    "namespacesIgnored": stats.namespaces_ignored,
                    "podsSelected": stats.pods_selected,
                    "podEntryRenderFailures": stats.pod_entry_render_failures,
                    "entriesMasked": stats.entries_masked,
                    "entriesToSet": stats.entries_to_set,
                    "entryFailures": stats.entry_failures,
                },
                "conditions": [ready_condition(&previous, generation, ready, now)],
            });
            self.patch_status::<ClusterSPIFFEID>("csid", &name, status).await;
        }
        self.metrics.render_failures.set(failures_total as i64);
        let names: Vec<String> = self.statics.keys().cloned().collect();
        for name in names {
            let Some(cr) = self.statics.get(&name) else { continue };
            if !self.world.settings().owns_class(cr.spec.class_name.as_deref()) {
                continue;
            }
            let generation = cr.metadata.generation;
            let previous = cr.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
            let (st, ready) = match self.invalid.get(&("cse", name.clone())) {
                Some(reason) => (
                    self.world.static_stats(&name),
                    Err(("InvalidSpec", format!("{reason} (the last valid spec, if any, stays in effect)"))),
                ),
                None => {
                    let st = self.world.static_stats(&name);
                    let ready = if let Some(f) = &st.failure {
                        Err(("EntryWriteFailed", f.clone()))
                    } else if st.masked {
                        Err(("Masked", "an older object declares the same entry".to_string()))
                    } else if !st.rendered {
                        Err(("Pending", "not reconciled yet".to_string()))
                    } else {
                        Ok("entry set".to_string())
                    };
                    (st, ready)
                }
            };
            let status = json!({
                "rendered": st.rendered,
                "masked": st.masked,
                "set": st.set,
                "conditions": [ready_condition(&previous, generation, ready, now)],
            });
            self.patch_status::<ClusterStaticEntry>("cse", &name, status).await;
        }
        for s in self.federation.statuses() {
            let federated = s.ready.is_ok();
            let report = s.fetch.as_ref().map(Option::as_ref).map_err(String::as_str);
            let fetched = fetch_status::fetched(&s.trust_domain, federated, report);
            // The bundle of a relationship that isn't this CR's (masked, hand-made) is not its to show.
            let bundle = match (&s.fetch, federated) {
                (Ok(Some(r)), true) if r.trust_domain == s.trust_domain => fetch_status::bundle_patch(r),
                _ => Value::Null,
            };
            let status = json!({
                "conditions": [
                    ready_condition(&s.conditions, s.generation, s.ready, now),
                    fetch_status::condition(fetch_status::CONDITION, &s.conditions, s.generation, fetched, now),
                ],
                // A merge patch with null removes a stale bundle.
                "bundle": bundle,
            });
            self.patch_status::<ClusterFederatedTrustDomain>("cftd", &s.name, status).await;
        }
    }

    /// A Warning Event when the set of render failures of a ClusterSPIFFEID changes (not on every pass).
    async fn announce_failures(&mut self, name: &str, samples: &[String], reference: ObjectReference) {
        let before = self.status.announced.get(name).cloned().unwrap_or_default();
        if before == samples {
            return;
        }
        self.status.announced.insert(name.to_string(), samples.to_vec());
        if samples.is_empty() {
            return;
        }
        let ev = KubeEvent {
            type_: EventType::Warning,
            reason: "RenderFailed".into(),
            note: Some(samples.join("; ").chars().take(1000).collect()),
            action: "Render".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %e, "cannot publish event");
        }
    }
}

/// The `Ready` condition, keeping lastTransitionTime when the status did not change.
pub fn ready_condition(
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    generation: Option<i64>,
    ready: Result<String, (&'static str, String)>,
    now: k8s_openapi::jiff::Timestamp,
) -> Value {
    let (status, reason, message) = match ready {
        Ok(m) => ("True", "Reconciled", m),
        Err((reason, m)) => ("False", reason, m),
    };
    let last = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map(|c| c.last_transition_time.0)
        .unwrap_or(now);
    // metav1.Time has second precision; a finer value would make every comparison with our cache differ.
    let last = last.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message.chars().take(32_000).collect::<String>(),
        "observedGeneration": generation.unwrap_or(0),
        "lastTransitionTime": last,
    })
}
