//! The fetchers: one task per relationship the server federates with ([`super::relationships::effective`]
//! of the config file's and the admin API's), started, restarted and stopped as the set changes.
//!
//! The set is re-read when the state announces `Change::FederationRelationships` (every admin API write
//! does), so a relationship made by the CLI or the operator is fetched at once and a deleted one stops at
//! once; SPIRE re-reads every 10 s. A stored bundle (`bundle set`, or a relationship written with one)
//! announces `Change::FederatedBundles`, which wakes fetchers that wait for the local bundle https_spiffe
//! needs.
//!
//! Each fetch: authenticate as the profile says ([`super::verify`]), GET with bounds ([`super::fetch`]),
//! parse and check ([`sigil_core::federation::accept`]), store when different
//! ([`ServerState::store_fetched_bundle`], which announces it to the agents' sync streams as `bundle set`
//! does), then sleep as [`sigil_core::federation::refresh`] says. A failure never touches the stored bundle.
//!
//! Tasks are stopped by a cancel signal checked around the fetch and the sleep, never in the middle of a
//! store, so the datastore and the in-memory copy of a bundle cannot part.

use std::collections::BTreeMap;
use std::sync::Arc;

use sigil_core::TrustDomain;
use sigil_core::bundle::Bundle;
use sigil_core::federation::{BundleEndpointProfile, refresh};
use tokio::sync::{broadcast, watch};

use super::fetch::{self, EndpointAuth, FetchError};
use super::relationships::{Target, effective};
use super::verify;
use crate::state::{Change, ServerState, now_unix};

/// Runs the fetchers until `shutdown`.
pub async fn run(state: Arc<ServerState>, mut shutdown: watch::Receiver<bool>) {
    // Subscribed before the first read, so no change between the two is missed.
    let mut changes = state.subscribe();
    let mut running: BTreeMap<TrustDomain, Running> = BTreeMap::new();
    reconcile(&state, &mut running);
    loop {
        tokio::select! {
            c = changes.recv() => match c {
                Ok(Change::FederationRelationships(_)) => reconcile(&state, &mut running),
                Ok(Change::FederatedBundles) => state.federation.wake_waiting(),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    reconcile(&state, &mut running);
                    state.federation.wake_waiting();
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = until_true(&mut shutdown) => break,
        }
    }
    for (td, r) in running {
        r.stop(&state, &td);
    }
}

/// A fetcher task.
#[derive(Debug)]
struct Running {
    target: Target,
    generation: u64,
    cancel: watch::Sender<bool>,
}

impl Running {
    fn stop(self, state: &ServerState, td: &TrustDomain) {
        let _ = self.cancel.send(true);
        state.federation.unregister(td, self.generation);
        state.metrics.federation_forget(td.name());
    }
}

/// Brings the running fetchers in line with the relationships: stops those whose relationship is gone or
/// fetches differently now, starts the missing ones.
fn reconcile(state: &Arc<ServerState>, running: &mut BTreeMap<TrustDomain, Running>) {
    let wanted = effective(&state.config.federates_with, &state.federation_relationships());
    let stale: Vec<TrustDomain> = running
        .iter()
        .filter(|(td, r)| wanted.get(*td).is_none_or(|t| !t.fetches_like(&r.target)))
        .map(|(td, _)| td.clone())
        .collect();
    for td in stale {
        if let Some(r) = running.remove(&td) {
            tracing::info!(trust_domain = %td, url = %r.target.relationship.bundle_endpoint_url, "federation relationship gone or changed: its bundle fetcher stops");
            r.stop(state, &td);
        }
    }
    for (td, target) in wanted {
        if let Some(r) = running.get_mut(&td) {
            // Same fetch, other details (override flag, managed_by): shown, nothing restarted.
            if r.target != target {
                state.federation.set_target(target.clone());
                r.target = target;
            }
            continue;
        }
        if target.overrides_api_relationship {
            tracing::warn!(trust_domain = %td, "the config file's federation relationship overrides the admin API's with the same trust domain");
        }
        let (generation, refresh_rx, wake) = state.federation.register(target.clone());
        let (cancel, cancel_rx) = watch::channel(false);
        tracing::info!(
            trust_domain = %td,
            url = %target.relationship.bundle_endpoint_url,
            profile = target.relationship.profile.name(),
            source = target.source.name(),
            "bundle fetcher started"
        );
        let task =
            Fetcher { state: state.clone(), target: target.clone(), generation, refresh_rx, wake, cancel: cancel_rx };
        tokio::spawn(task.run());
        running.insert(td, Running { target, generation, cancel });
    }
}

/// One relationship's fetch loop.
struct Fetcher {
    state: Arc<ServerState>,
    target: Target,
    generation: u64,
    refresh_rx: tokio::sync::mpsc::Receiver<super::status::RefreshReply>,
    wake: Arc<tokio::sync::Notify>,
    cancel: watch::Receiver<bool>,
}

impl Fetcher {
    async fn run(mut self) {
        let td = self.target.trust_domain().clone();
        let mut failures: u32 = 0;
        // The first fetch at once: a new relationship should not wait a hint for its first bundle.
        let mut delay = std::time::Duration::ZERO;
        loop {
            let reply = tokio::select! {
                _ = tokio::time::sleep(delay) => None,
                r = self.refresh_rx.recv() => r,
                _ = self.wake.notified() => None,
                _ = until_true(&mut self.cancel) => return,
            };
            let started = now_unix();
            self.state.federation.update(&td, self.generation, |s| s.last_attempt_at = started);
            let fetched = tokio::select! {
                r = fetch_once(&self.state, &self.target) => r,
                _ = until_true(&mut self.cancel) => return,
            };
            // Stopped while fetching: the relationship is gone or changed, so nothing is stored.
            if *self.cancel.borrow() {
                return;
            }
            // Err: the failure's text, and whether it is the missing local bundle (a `bundle set` wakes us).
            let outcome: Result<(bool, Option<u64>), (String, bool)> = match fetched {
                Ok(bundle) => self.store(bundle).await.map_err(|text| (text, false)),
                Err(e) => Err((e.to_string(), matches!(e, FetchError::NoLocalBundle { .. }))),
            };
            let now = now_unix();
            delay = match &outcome {
                Ok((changed, hint)) => {
                    if failures > 0 {
                        tracing::info!(trust_domain = %td, failures, "bundle endpoint fetched again after failures");
                    }
                    failures = 0;
                    let delay = refresh::after_success(*hint);
                    self.state.federation.update(&td, self.generation, |s| {
                        s.last_success_at = now;
                        if *changed {
                            s.last_change_at = now;
                        }
                        s.consecutive_failures = 0;
                        s.waiting_for_local_bundle = false;
                        s.next_refresh_at = now + ceil_secs(delay);
                    });
                    self.state.metrics.federation_fetch(td.name(), true, *changed, now, 0);
                    delay
                }
                Err((text, waiting)) => {
                    failures = failures.saturating_add(1);
                    let hint = self.state.federated_bundle(&td).and_then(|b| b.refresh_hint_secs);
                    let delay = refresh::after_failure(failures, hint, rand::random::<f64>());
                    let mut previous = String::new();
                    self.state.federation.update(&td, self.generation, |s| {
                        previous = std::mem::replace(&mut s.last_error, text.clone());
                        s.last_error_at = now;
                        s.consecutive_failures = failures;
                        s.waiting_for_local_bundle = *waiting;
                        s.next_refresh_at = now + ceil_secs(delay);
                    });
                    self.state.metrics.federation_fetch(td.name(), false, false, now, failures);
                    // Logged when it starts or changes; a peer down for hours is one line, not thousands.
                    if failures == 1 || previous != *text {
                        tracing::warn!(trust_domain = %td, failures, retry_in = ?delay, error = %text, "Error updating bundle: the last good bundle stays in use");
                    } else {
                        tracing::debug!(trust_domain = %td, failures, retry_in = ?delay, error = %text, "bundle fetch failed again");
                    }
                    delay
                }
            };
            if let Some(reply) = reply {
                let _ = reply.send(outcome.map(|(changed, _)| changed).map_err(|(text, _)| text));
            }
        }
    }

    /// Stores a fetched bundle when it differs; `(changed, hint)`.
    async fn store(&self, bundle: Bundle) -> Result<(bool, Option<u64>), String> {
        let td = bundle.trust_domain.clone();
        let hint = bundle.refresh_hint_secs;
        let served_sequence = bundle.sequence;
        match self.state.store_fetched_bundle(bundle).await {
            Ok(None) => Ok((false, hint)),
            Ok(Some((stored, went_back))) => {
                if went_back {
                    tracing::warn!(trust_domain = %td, sequence = served_sequence, "the served spiffe_sequence is lower than the stored one (peer reset, or another replica?); storing the served bundle");
                }
                tracing::info!(
                    trust_domain = %td,
                    sequence = stored.sequence,
                    x509_authorities = stored.x509_authorities.len(),
                    jwt_authorities = stored.jwt_authorities.len(),
                    "federated bundle updated from its bundle endpoint"
                );
                Ok((true, hint))
            }
            Err(e) => Err(format!("storing the fetched bundle failed: {e}")),
        }
    }
}

/// Resolves once `rx` holds `true` (or its sender is gone). The watch guard is dropped here, so callers'
/// futures stay `Send`.
async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn ceil_secs(d: std::time::Duration) -> i64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// How the endpoint of `target` must authenticate itself, from what is stored now.
fn endpoint_auth(state: &ServerState, target: &Target) -> Result<EndpointAuth, FetchError> {
    match &target.relationship.profile {
        BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
            let td = endpoint_spiffe_id.trust_domain();
            // The bundle of the endpoint ID's trust domain: the fetched one's own trust domain normally
            // (self-serving: bootstrapped once, then the latest fetched), or this server's own.
            let bundle =
                if td == state.trust_domain { Some((*state.bundle()).clone()) } else { state.federated_bundle(&td) };
            let bundle = bundle.ok_or_else(|| FetchError::NoLocalBundle {
                trust_domain: td.to_string(),
                endpoint: endpoint_spiffe_id.to_string(),
            })?;
            Ok(EndpointAuth::Spiffe { expected: endpoint_spiffe_id.clone(), bundle })
        }
        BundleEndpointProfile::HttpsWeb => {
            let roots = match &target.ca_file_path {
                Some(path) => verify::roots_from_file(path),
                None => verify::system_roots(),
            }
            .map_err(FetchError::Roots)?;
            Ok(EndpointAuth::Web { roots })
        }
    }
}

/// One fetch of `target`'s bundle, checked, not stored.
async fn fetch_once(state: &ServerState, target: &Target) -> Result<Bundle, FetchError> {
    let auth = endpoint_auth(state, target)?;
    let answer = fetch::get(&target.relationship.bundle_endpoint_url, &auth).await?;
    fetch::bundle_of(target.trust_domain(), &answer)
}
