//! ClusterFederatedTrustDomain -> federation relationships on the server.
//!
//! Relationships the operator creates carry `managed_by = sigil-operator/<cluster>`; only those are ever
//! updated or deleted, so a relationship made with the CLI is never touched (a CR naming the same trust
//! domain reports a `Conflict` condition instead). Several CRs naming one trust domain: the oldest wins,
//! the others report `Masked`.
//!
//! The server's fetching of each relationship's bundle is polled ([`FederationState::poll_fetch_status`])
//! and shown in the CR's status by [`fetch_status`].

pub mod fetch_status;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use sigil_core::bundle::Bundle;
use sigil_core::{SpiffeId, TrustDomain};
use sigil_proto::admin as apb;
use sigil_proto::admin::trust_domains_client::TrustDomainsClient;
use sigil_proto::convert::bundle_to_pb;
use sigil_proto::types as tpb;

use crate::compile::rank;
use crate::crd::ClusterFederatedTrustDomain;
use crate::server_client::{AdminClient, ClientError};
use crate::world::{Rank, Settings};

/// A relationship as one CR declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub trust_domain: TrustDomain,
    pub bundle_endpoint_url: String,
    /// `None` = https_web.
    pub endpoint_spiffe_id: Option<SpiffeId>,
    pub bundle: Option<tpb::Bundle>,
}

/// Checks what the schema can't: a valid trust domain other than ours, an https URL with a host and no
/// user info, the endpoint ID for https_spiffe, a bundle that parses.
pub fn compile(cr: &ClusterFederatedTrustDomain, own: &TrustDomain) -> Result<Desired, String> {
    let s = &cr.spec;
    let trust_domain = s.trust_domain().map_err(|e| e.to_string())?;
    if &trust_domain == own {
        return Err(format!("trustDomain: {trust_domain} is this server's own trust domain"));
    }
    // The server's own rule (SPIRE's), so a CR is refused here exactly when the server would refuse it.
    sigil_core::federation::check_bundle_endpoint_url(&s.bundle_endpoint_url)
        .map_err(|e| format!("bundleEndpointURL: {e}"))?;
    let endpoint_spiffe_id = s.endpoint_spiffe_id().map_err(|e| e.to_string())?;
    let bundle = match s.trust_domain_bundle.as_deref().filter(|b| !b.trim().is_empty()) {
        None => None,
        Some(text) => {
            let b = Bundle::from_jwks_json(trust_domain.clone(), text.as_bytes())
                .map_err(|e| format!("trustDomainBundle: {e}"))?;
            Some(bundle_to_pb(&b))
        }
    };
    Ok(Desired { trust_domain, bundle_endpoint_url: s.bundle_endpoint_url.clone(), endpoint_spiffe_id, bundle })
}

fn to_pb(d: &Desired, marker: &str) -> apb::FederationRelationship {
    apb::FederationRelationship {
        trust_domain: d.trust_domain.name().to_owned(),
        bundle_endpoint_url: d.bundle_endpoint_url.clone(),
        profile: Some(match &d.endpoint_spiffe_id {
            None => apb::federation_relationship::Profile::HttpsWeb(apb::HttpsWebProfile {}),
            Some(id) => apb::federation_relationship::Profile::HttpsSpiffe(apb::HttpsSpiffeProfile {
                endpoint_spiffe_id: id.to_string(),
            }),
        }),
        trust_domain_bundle: d.bundle.clone(),
        managed_by: marker.to_owned(),
    }
}

fn same_authorities(a: Option<&tpb::Bundle>, b: Option<&tpb::Bundle>) -> bool {
    let key = |b: &tpb::Bundle| {
        let mut x = b.x509_authorities.clone();
        x.sort();
        let mut j: Vec<(String, Vec<u8>)> =
            b.jwt_authorities.iter().map(|k| (k.key_id.clone(), k.public_key.clone())).collect();
        j.sort();
        (x, j)
    };
    match (a, b) {
        (Some(a), Some(b)) => key(a) == key(b),
        (None, None) => true,
        _ => false,
    }
}

/// Whether the bundle a CR states (`trustDomainBundle`) is to be written over what the server holds: when the
/// server has none (the bootstrap), or when the stated one is newer (a higher `spiffe_sequence`) and differs.
/// Never otherwise: the server refreshes the bundle from the endpoint on its own, and a CR still carrying its
/// bootstrap bundle must not roll a peer's CA rotation back (the next https_spiffe fetch would then fail
/// against the old keys). spire-controller-manager writes it only at create.
pub fn stated_bundle_applies(current: Option<&tpb::Bundle>, stated: Option<&tpb::Bundle>) -> bool {
    match (current, stated) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(c), Some(s)) => s.sequence_number > c.sequence_number && !same_authorities(Some(c), Some(s)),
    }
}

/// Whether the server's relationship must be rewritten to match the desired one.
pub fn differs(current: &apb::FederationRelationship, desired: &apb::FederationRelationship) -> bool {
    current.bundle_endpoint_url != desired.bundle_endpoint_url
        || current.profile != desired.profile
        || stated_bundle_applies(current.trust_domain_bundle.as_ref(), desired.trust_domain_bundle.as_ref())
}

/// What to write, and what each CR's condition says.
#[derive(Debug, Default, PartialEq)]
pub struct FederationPlan {
    pub create: Vec<apb::FederationRelationship>,
    pub update: Vec<apb::FederationRelationship>,
    pub delete: Vec<String>,
    /// CR name -> Ok(message) or Err((reason, message)); `Ok` is provisional until the write succeeds.
    pub outcome: BTreeMap<String, Result<String, (&'static str, String)>>,
    /// Trust domain -> the CR that won it (write failures are reported on that one).
    pub owners: BTreeMap<String, String>,
}

/// One CR as the plan sees it.
#[derive(Debug, Clone)]
pub struct Declared {
    pub name: String,
    pub rank: Rank,
    pub desired: Result<Desired, String>,
}

/// Pure: the declared relationships against everything the server holds.
pub fn plan(declared: &[Declared], server: &[apb::FederationRelationship], marker: &str) -> FederationPlan {
    let mut out = FederationPlan::default();
    let mut winners: BTreeMap<String, &Declared> = BTreeMap::new();
    for d in declared {
        match &d.desired {
            Err(e) => {
                out.outcome.insert(d.name.clone(), Err(("InvalidSpec", e.clone())));
            }
            Ok(desired) => {
                let td = desired.trust_domain.name().to_owned();
                match winners.get(&td) {
                    Some(w) if (&w.rank, &w.name) <= (&d.rank, &d.name) => {
                        out.outcome.insert(
                            d.name.clone(),
                            Err(("Masked", format!("{} declares trust domain {td} too and is older", w.name))),
                        );
                    }
                    prev => {
                        if let Some(loser) = prev {
                            out.outcome.insert(
                                loser.name.clone(),
                                Err(("Masked", format!("{} declares trust domain {td} too and is older", d.name))),
                            );
                        }
                        winners.insert(td, d);
                    }
                }
            }
        }
    }
    let by_td: BTreeMap<&str, &apb::FederationRelationship> =
        server.iter().map(|r| (r.trust_domain.as_str(), r)).collect();
    for (td, d) in &winners {
        out.owners.insert(td.clone(), d.name.clone());
        let Ok(desired) = &d.desired else { continue };
        let want = to_pb(desired, marker);
        match by_td.get(td.as_str()) {
            None => {
                out.create.push(want);
                out.outcome.insert(d.name.clone(), Ok(format!("federation relationship with {td} created")));
            }
            Some(cur) if cur.managed_by != marker => {
                out.outcome.insert(
                    d.name.clone(),
                    Err((
                        "Conflict",
                        format!("the server already has a relationship with {td} that this operator did not create; it is left alone"),
                    )),
                );
            }
            Some(cur) => {
                let mut want = want;
                // An update (for the URL or profile) carries the stated bundle only when it applies.
                if !stated_bundle_applies(cur.trust_domain_bundle.as_ref(), want.trust_domain_bundle.as_ref()) {
                    want.trust_domain_bundle = None;
                }
                if differs(cur, &want) {
                    out.update.push(want);
                }
                out.outcome.insert(d.name.clone(), Ok(format!("federation relationship with {td} set")));
            }
        }
    }
    for r in server {
        if r.managed_by == marker && !winners.contains_key(&r.trust_domain) {
            out.delete.push(r.trust_domain.clone());
        }
    }
    out
}

/// The `managed_by` value of an operator: cluster and className, so neither two clusters nor two classes
/// sharing a server ever delete each other's relationships.
pub fn managed_by_marker(cluster_name: &str, class_name: Option<&str>) -> String {
    match class_name {
        None => format!("sigil-operator/{cluster_name}"),
        Some(class) => format!("sigil-operator/{cluster_name}/{class}"),
    }
}

/// What a ClusterFederatedTrustDomain's status should say.
#[derive(Debug, Clone)]
pub struct CrStatus {
    pub name: String,
    /// The conditions it has now (to keep lastTransitionTime).
    pub conditions: Vec<Condition>,
    pub generation: Option<i64>,
    /// Ok(message) or Err((reason, message)).
    pub ready: Result<String, (&'static str, String)>,
    /// The CR's trust domain as it declares it (empty when its spec is invalid).
    pub trust_domain: String,
    /// The server's fetch report for the trust domain: `Err` when it could not be had; `Ok(None)` when the
    /// server has none.
    pub fetch: Result<Option<apb::FederationStatus>, String>,
}

/// The controller's federation side: CRs, last outcome per CR, and whether anything changed.
#[derive(Debug)]
pub struct FederationState {
    own: TrustDomain,
    marker: String,
    enabled: bool,
    crs: BTreeMap<String, (Declared, Option<i64>, Vec<Condition>)>,
    outcome: BTreeMap<String, Result<String, (&'static str, String)>>,
    dirty: bool,
    /// The server's last `ListFederationStatus` answer by trust domain, or why there is none.
    fetch: Result<BTreeMap<String, apb::FederationStatus>, String>,
}

impl FederationState {
    /// `marker` is what this operator writes into `managed_by` (see [`managed_by_marker`]).
    pub fn new(own: TrustDomain, marker: String, enabled: bool) -> Self {
        Self {
            own,
            marker,
            enabled,
            crs: BTreeMap::new(),
            outcome: BTreeMap::new(),
            dirty: true,
            fetch: Err("not polled yet".to_string()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn upsert(&mut self, cr: ClusterFederatedTrustDomain, settings: &Settings) {
        let name = cr.name_any();
        if !settings.owns_class(cr.spec.class_name.as_deref()) {
            if self.crs.remove(&name).is_some() {
                self.dirty = true;
            }
            self.outcome.remove(&name);
            return;
        }
        let declared = Declared { name: name.clone(), rank: rank(&cr.metadata), desired: compile(&cr, &self.own) };
        let conditions = cr.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let changed =
            self.crs.get(&name).is_none_or(|(old, _, _)| old.rank != declared.rank || old.desired != declared.desired);
        self.crs.insert(name, (declared, cr.metadata.generation, conditions));
        self.dirty |= changed;
    }

    pub fn delete(&mut self, name: &str) {
        if self.crs.remove(name).is_some() {
            self.dirty = true;
        }
        self.outcome.remove(name);
    }

    /// The status of every CR we own.
    pub fn statuses(&self) -> Vec<CrStatus> {
        self.crs
            .iter()
            .map(|(name, (declared, generation, conditions))| {
                let trust_domain =
                    declared.desired.as_ref().map(|d| d.trust_domain.name().to_owned()).unwrap_or_default();
                CrStatus {
                    name: name.clone(),
                    conditions: conditions.clone(),
                    generation: *generation,
                    ready: self
                        .outcome
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| Err(("Pending", "not reconciled yet".to_string()))),
                    fetch: self.fetch.as_ref().map(|m| m.get(&trust_domain).cloned()).map_err(Clone::clone),
                    trust_domain,
                }
            })
            .collect()
    }

    /// Whether there is anything to poll the server's fetch status for.
    pub fn has_crs(&self) -> bool {
        !self.crs.is_empty()
    }

    /// Asks the server how fetching goes for every relationship; true when the answer differs from the last.
    /// A server without the call (older, or not Sigil) is remembered as the reason, not an error to retry loudly.
    pub async fn poll_fetch_status(&mut self, client: &AdminClient) -> bool {
        let mut api = TrustDomainsClient::new(client.channel());
        let now = match api.list_federation_status(apb::ListFederationStatusRequest::default()).await {
            Ok(r) => Ok(r.into_inner().statuses.into_iter().map(|s| (s.trust_domain.clone(), s)).collect()),
            Err(s) => {
                tracing::debug!(error = %s.message(), code = ?s.code(), "ListFederationStatus failed");
                Err(format!("{:?}: {}", s.code(), s.message()))
            }
        };
        let changed = now != self.fetch;
        self.fetch = now;
        changed
    }

    pub async fn reconcile(&mut self, client: &AdminClient, _full: bool) -> Result<(), ClientError> {
        let mut api = TrustDomainsClient::new(client.channel());
        let rpc =
            |call: &'static str| move |s: tonic::Status| ClientError::Rpc { call, status: s.message().to_string() };
        let mut server = vec![];
        let mut token = String::new();
        loop {
            let resp = api
                .list_federation_relationships(apb::ListFederationRelationshipsRequest {
                    page_size: 0,
                    page_token: token,
                })
                .await
                .map_err(rpc("ListFederationRelationships"))?
                .into_inner();
            server.extend(resp.federation_relationships);
            if resp.next_page_token.is_empty() {
                break;
            }
            token = resp.next_page_token;
        }
        let declared: Vec<Declared> = self.crs.values().map(|(d, _, _)| d.clone()).collect();
        let mut p = plan(&declared, &server, &self.marker);
        if !p.delete.is_empty() {
            api.batch_delete_federation_relationship(apb::BatchDeleteFederationRelationshipRequest {
                trust_domains: p.delete.clone(),
            })
            .await
            .map_err(rpc("BatchDeleteFederationRelationship"))?;
        }
        // (status, trust domain) of every create and update, checked together below.
        let mut written: Vec<(Option<apb::Status>, String)> = vec![];
        if !p.create.is_empty() {
            let results = api
                .batch_create_federation_relationship(apb::BatchCreateFederationRelationshipRequest {
                    federation_relationships: p.create.clone(),
                })
                .await
                .map_err(rpc("BatchCreateFederationRelationship"))?
                .into_inner()
                .results;
            written.extend(results.into_iter().map(|r| r.status).zip(p.create.iter().map(|w| w.trust_domain.clone())));
        }
        if !p.update.is_empty() {
            let results = api
                .batch_update_federation_relationship(apb::BatchUpdateFederationRelationshipRequest {
                    federation_relationships: p.update.clone(),
                })
                .await
                .map_err(rpc("BatchUpdateFederationRelationship"))?
                .into_inner()
                .results;
            written.extend(results.into_iter().map(|r| r.status).zip(p.update.iter().map(|w| w.trust_domain.clone())));
        }
        for (status, td) in written {
            if let Some(s) = status.filter(|s| s.code != 0)
                && let Some(name) = p.owners.get(&td)
            {
                p.outcome.insert(name.clone(), Err(("WriteFailed", s.message)));
            }
        }
        self.outcome = p.outcome;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKER: &str = "sigil-operator/test";

    fn desired(td: &str, url: &str, endpoint: Option<&str>) -> Desired {
        Desired {
            trust_domain: TrustDomain::new(td).unwrap(),
            bundle_endpoint_url: url.into(),
            endpoint_spiffe_id: endpoint.map(|e| SpiffeId::new(e).unwrap()),
            bundle: None,
        }
    }

    fn declared(name: &str, created: i64, d: Result<Desired, String>) -> Declared {
        Declared { name: name.into(), rank: Rank { created, deleting: false, uid: format!("uid-{name}") }, desired: d }
    }

    fn server(td: &str, url: &str, managed_by: &str) -> apb::FederationRelationship {
        apb::FederationRelationship { managed_by: managed_by.into(), ..to_pb(&desired(td, url, None), MARKER) }
    }

    #[test]
    fn creates_updates_and_deletes_only_its_own() {
        let decl = vec![
            declared("new", 1, Ok(desired("new.org", "https://new.org/b", None))),
            declared("moved", 1, Ok(desired("moved.org", "https://moved.org/v2", None))),
            declared("same", 1, Ok(desired("same.org", "https://same.org/b", None))),
        ];
        let srv = vec![
            server("moved.org", "https://moved.org/v1", MARKER),
            server("same.org", "https://same.org/b", MARKER),
            server("stale.org", "https://stale.org/b", MARKER),
            server("hand.org", "https://hand.org/b", ""),
            server("other.org", "https://other.org/b", "sigil-operator/other-cluster"),
        ];
        let p = plan(&decl, &srv, MARKER);
        assert_eq!(p.create.iter().map(|r| r.trust_domain.as_str()).collect::<Vec<_>>(), vec!["new.org"]);
        assert_eq!(p.create[0].managed_by, MARKER);
        assert_eq!(
            p.update.iter().map(|r| r.bundle_endpoint_url.as_str()).collect::<Vec<_>>(),
            vec!["https://moved.org/v2"]
        );
        assert_eq!(p.delete, vec!["stale.org".to_string()], "hand-made and other clusters' relationships stay");
        assert!(p.outcome.values().all(Result::is_ok), "{:?}", p.outcome);
    }

    #[test]
    fn markers_name_cluster_and_class() {
        assert_eq!(managed_by_marker("prod", None), "sigil-operator/prod");
        assert_eq!(managed_by_marker("prod", Some("a")), "sigil-operator/prod/a");
        assert_ne!(managed_by_marker("prod", Some("a")), managed_by_marker("prod", Some("b")));
    }

    #[test]
    fn failures_are_reported_on_the_winning_cr() {
        let decl = vec![
            declared("young", 5, Ok(desired("p.org", "https://young/b", None))),
            declared("old", 1, Ok(desired("p.org", "https://old/b", None))),
        ];
        let p = plan(&decl, &[], MARKER);
        assert_eq!(p.owners.get("p.org").map(String::as_str), Some("old"));
    }

    #[test]
    fn hand_made_relationship_is_a_conflict_not_a_takeover() {
        let decl = vec![declared("mine", 1, Ok(desired("hand.org", "https://elsewhere/b", None)))];
        let p = plan(&decl, &[server("hand.org", "https://hand.org/b", "")], MARKER);
        assert!(p.create.is_empty() && p.update.is_empty() && p.delete.is_empty());
        assert!(matches!(&p.outcome["mine"], Err(("Conflict", m)) if m.contains("did not create")));
    }

    #[test]
    fn oldest_declaration_wins_and_others_are_masked() {
        let decl = vec![
            declared("young", 5, Ok(desired("p.org", "https://young/b", None))),
            declared("old", 1, Ok(desired("p.org", "https://old/b", None))),
            declared("broken", 1, Err("bundleEndpointURL: scheme must be https".into())),
        ];
        let p = plan(&decl, &[], MARKER);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].bundle_endpoint_url, "https://old/b");
        assert!(matches!(&p.outcome["young"], Err(("Masked", m)) if m.contains("old")));
        assert!(matches!(&p.outcome["broken"], Err(("InvalidSpec", _))));
    }

    #[test]
    fn profile_and_stated_bundle_changes_are_differences() {
        let base = to_pb(&desired("p.org", "https://p.org/b", None), MARKER);
        let spiffe = to_pb(&desired("p.org", "https://p.org/b", Some("spiffe://p.org/spire/server")), MARKER);
        assert!(differs(&base, &spiffe));
        assert!(!differs(&base, &base.clone()));
        let mut with_bundle = base.clone();
        with_bundle.trust_domain_bundle =
            Some(tpb::Bundle { trust_domain: "p.org".into(), x509_authorities: vec![vec![1]], ..Default::default() });
        assert!(differs(&base, &with_bundle), "a stated bundle is written when the server has none");
        let mut refreshed = with_bundle.clone();
        refreshed.trust_domain_bundle.as_mut().unwrap().sequence_number = 9;
        assert!(!differs(&refreshed, &with_bundle), "sequence numbers alone don't matter");
        assert!(!differs(&with_bundle, &base), "without a stated bundle the server's own is kept");
    }

    /// The server fetched the peer's rotated bundle (new keys, higher sequence); the CR still states its
    /// bootstrap bundle. The operator must not write it back, not even with an update for a new URL; a stated
    /// bundle newer than the server's is written.
    #[test]
    fn a_stale_stated_bundle_never_rolls_back_a_fetched_one() {
        let bundle = |seq: u64, key: u8| tpb::Bundle {
            trust_domain: "p.org".into(),
            x509_authorities: vec![vec![key]],
            sequence_number: seq,
            ..Default::default()
        };
        let mut stated = to_pb(&desired("p.org", "https://p.org/b", None), MARKER);
        stated.trust_domain_bundle = Some(bundle(1, 1));
        let mut fetched = stated.clone();
        fetched.trust_domain_bundle = Some(bundle(5, 2));
        assert!(!stated_bundle_applies(fetched.trust_domain_bundle.as_ref(), stated.trust_domain_bundle.as_ref()));
        assert!(!differs(&fetched, &stated), "the fetched bundle stays");
        let mut d_stated = declared("p", 1, Ok(desired("p.org", "https://p.org/new", None)));
        if let Ok(x) = &mut d_stated.desired {
            x.bundle = Some(bundle(1, 1));
        }
        let p = plan(&[d_stated.clone()], &[fetched.clone()], MARKER);
        assert_eq!(p.update.len(), 1, "the URL changed");
        assert_eq!(p.update[0].bundle_endpoint_url, "https://p.org/new");
        assert_eq!(p.update[0].trust_domain_bundle, None, "the update must not carry the stale bundle");
        // A newer stated bundle (the user pasted the peer's current one) is written.
        if let Ok(x) = &mut d_stated.desired {
            x.bundle = Some(bundle(7, 3));
        }
        let p = plan(&[d_stated], &[fetched], MARKER);
        assert_eq!(p.update[0].trust_domain_bundle.as_ref().map(|b| b.sequence_number), Some(7));
    }
}
