//! The I/O edge: Kubernetes watches feed the [`World`], the leader writes the resulting entry changes to the
//! server and the CR statuses back to Kubernetes.
//!
//! One task owns the world. Watch tasks send it [`Update`]s; it applies whatever is queued, then (once every
//! watch has delivered its initial list, and only while it holds the lease) writes the plan for the dirty
//! entry IDs. A periodic full pass lists the server's entries under our prefix and repairs any drift.
//! Nothing is ever deleted before every initial list has arrived, so a restart never drops entries.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch};

use crate::compile;
use crate::config::OperatorConfig;
use crate::crd::{ClusterSPIFFEID, ClusterStaticEntry};
use crate::federation::FederationState;
use crate::metrics::{Health, Metrics, labels};
use crate::server_client::{AdminClient, WRITE_BATCH, WriteResult};
use crate::world::{self, Plan, ServerCopy, World};

mod status;
mod watches;

use status::StatusCache;
pub use status::ready_condition;
pub use watches::{Kind, Update, start_watches};

/// gRPC codes the reconciler reacts to.
const CODE_NOT_FOUND: i32 = 5;
const CODE_ALREADY_EXISTS: i32 = 6;
/// How often the server's bundle fetching is asked about: fresh enough for a human watching `kubectl get`,
/// one cheap call per period whatever the number of CRs.
const FETCH_STATUS_POLL: Duration = Duration::from_secs(5);
/// How many entry IDs a full pass plans and writes per turn of the loop: two write batches, so that a pod
/// change waits for one slice at most (a few ms to plan, tens of ms when it writes), never for a whole pass
/// over 100,000 pods, while the plan's copies of the entries stay small.
const FULL_PASS_SLICE: usize = 2 * WRITE_BATCH;

/// A full pass under way, after its listing: the IDs still to compare, a slice per turn of the loop.
#[derive(Debug)]
struct FullPass {
    ids: Vec<String>,
    next: usize,
    started: Instant,
    /// The first pass since start (its log line says "initial pass"; a later one's writes are drift).
    initial: bool,
    /// Creates, updates and deletes planned so far.
    planned: [usize; 3],
}

/// A listing of the server's entries for a full pass.
type ListResult = Result<HashMap<String, ServerCopy>, crate::server_client::ClientError>;

// ----- the reconciler -----

pub struct Controller {
    world: World,
    client: AdminClient,
    kube: Client,
    metrics: Metrics,
    health: Arc<Health>,
    recorder: Recorder,
    gc_interval: Duration,
    /// The server's entries under our prefix (what a comparison needs of them), as of the last list plus our
    /// own writes since.
    current: HashMap<String, ServerCopy>,
    /// A full pass is due (startup, new leadership, a failed write, the gc interval).
    full_due: bool,
    /// After a failed list, no new attempt before this.
    full_retry_at: Option<Instant>,
    first_full_done: bool,
    /// A listing for a full pass is running (since then).
    listing: Option<Instant>,
    /// Entry IDs written while it runs.
    written_during_listing: HashSet<String>,
    /// The comparison with the last listing, while it is under way.
    full_pass: Option<FullPass>,
    /// Leadership as last seen; writes stop between batches when it is lost.
    leader: watch::Receiver<bool>,
    /// Something that status depends on changed since the last status pass.
    status_dirty: bool,
    /// The server's bundle fetch status is to be polled.
    fetch_poll_due: bool,
    waiting_for: BTreeSet<Kind>,
    /// ClusterSPIFFEIDs and ClusterStaticEntries whose spec could not be compiled, with the reason.
    invalid: BTreeMap<(&'static str, String), String>,
    policies: BTreeMap<String, ClusterSPIFFEID>,
    statics: BTreeMap<String, ClusterStaticEntry>,
    federation: FederationState,
    status: StatusCache,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("entries", &self.current.len()).finish_non_exhaustive()
    }
}

/// What the controller learns from outside its own loop.
#[derive(Debug)]
pub struct Signals {
    /// The watches whose initial lists must arrive before anything is written.
    pub waiting_for: BTreeSet<Kind>,
    /// Whether this replica holds the lease.
    pub leader: watch::Receiver<bool>,
    /// This replica's name (Events' reporting instance).
    pub identity: String,
}

impl Controller {
    pub fn new(
        config: OperatorConfig,
        client: AdminClient,
        kube: Client,
        metrics: Metrics,
        health: Arc<Health>,
        Signals { waiting_for, leader, identity }: Signals,
    ) -> Self {
        let recorder =
            Recorder::new(kube.clone(), Reporter { controller: "sigil-operator".into(), instance: Some(identity) });
        let federation = FederationState::new(
            config.settings.trust_domain.clone(),
            crate::federation::managed_by_marker(&config.settings.cluster_name, config.settings.class_name.as_deref()),
            config.reconcile.cluster_federated_trust_domains,
        );
        Self {
            world: World::new(config.settings),
            client,
            kube,
            metrics,
            health,
            recorder,
            gc_interval: config.gc_interval,
            current: HashMap::new(),
            full_due: true,
            full_retry_at: None,
            first_full_done: false,
            listing: None,
            written_during_listing: HashSet::new(),
            full_pass: None,
            leader,
            status_dirty: true,
            fetch_poll_due: true,
            waiting_for,
            invalid: BTreeMap::new(),
            policies: BTreeMap::new(),
            statics: BTreeMap::new(),
            federation,
            status: StatusCache::default(),
        }
    }

    fn apply(&mut self, u: Update) {
        self.status_dirty = true;
        let invalid_key = |kind: &'static str, name: &str| (kind, name.to_string());
        match u {
            Update::Namespace(n) => self.world.upsert_namespace(n),
            Update::NamespaceGone(n) => self.world.delete_namespace(&n),
            Update::Node(n) => self.world.upsert_node(n),
            Update::NodeGone(n) => self.world.delete_node(&n),
            Update::Pod(p) => self.world.upsert_pod(*p),
            Update::PodGone(uid) => self.world.delete_pod(&uid),
            Update::Slice { key, namespace, service, pod_uids } => {
                self.world.upsert_endpoint_slice(&key, &namespace, &service, pod_uids)
            }
            Update::SliceGone(key) => self.world.delete_endpoint_slice(&key),
            Update::Policy(cr) => {
                let name = cr.name_any();
                // Our own status writes come back as events: only a spec or ownership change re-renders.
                if self
                    .policies
                    .get(&name)
                    .is_some_and(|old| same_declaration(&old.metadata, &old.spec, &cr.metadata, &cr.spec))
                {
                    self.policies.insert(name, *cr);
                    return;
                }
                match compile::policy(&cr) {
                    Ok(p) => {
                        self.invalid.remove(&invalid_key("csid", &name));
                        self.world.upsert_policy(p);
                    }
                    Err(e) => {
                        // The last valid spec (if any) stays in effect: a typo must not delete live identities.
                        tracing::warn!(clusterspiffeid = %name, error = %e, "invalid ClusterSPIFFEID; keeping the last valid spec");
                        self.invalid.insert(invalid_key("csid", &name), e.to_string());
                    }
                }
                self.policies.insert(name, *cr);
            }
            Update::PolicyGone(name) => {
                self.invalid.remove(&invalid_key("csid", &name));
                self.status.forget("csid", &name);
                self.policies.remove(&name);
                self.world.delete_policy(&name);
            }
            Update::Static(cr) => {
                let name = cr.name_any();
                if self
                    .statics
                    .get(&name)
                    .is_some_and(|old| same_declaration(&old.metadata, &old.spec, &cr.metadata, &cr.spec))
                {
                    self.statics.insert(name, *cr);
                    return;
                }
                match compile::static_entry(&cr, &self.world.settings().trust_domain) {
                    Ok(s) => {
                        self.invalid.remove(&invalid_key("cse", &name));
                        self.world.upsert_static(s);
                    }
                    Err(e) => {
                        tracing::warn!(clusterstaticentry = %name, error = %e, "invalid ClusterStaticEntry; keeping the last valid spec");
                        self.invalid.insert(invalid_key("cse", &name), e.to_string());
                    }
                }
                self.statics.insert(name, *cr);
            }
            Update::StaticGone(name) => {
                self.invalid.remove(&invalid_key("cse", &name));
                self.status.forget("cse", &name);
                self.statics.remove(&name);
                self.world.delete_static(&name);
            }
            Update::Federation(cr) => self.federation.upsert(*cr, self.world.settings()),
            Update::FederationGone(name) => {
                self.status.forget("cftd", &name);
                self.federation.delete(&name);
            }
            Update::Synced(kind) => {
                self.waiting_for.remove(&kind);
                if self.waiting_for.is_empty() {
                    tracing::info!(pods = self.world.pod_count(), "all initial lists received");
                    self.health.synced.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// The main loop; returns when `shutdown` fires.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Update>, mut shutdown: watch::Receiver<bool>) {
        let mut leader = self.leader.clone();
        let mut gc = tokio::time::interval(self.gc_interval);
        gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status_tick = tokio::time::interval(Duration::from_secs(1));
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The server's bundle fetching is polled (it has no watch); a status is written only when it changed.
        let mut fetch_tick = tokio::time::interval(FETCH_STATUS_POLL);
        fetch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut is_leader = *leader.borrow();
        let mut status_due = false;
        let (listed_tx, mut listed_rx) = mpsc::channel::<ListResult>(1);
        loop {
            tokio::select! {
                Some(listed) = listed_rx.recv() => {
                    if is_leader {
                        self.finish_full_pass(listed).await;
                    } else {
                        // A new leader starts with a full pass of its own.
                        self.listing = None;
                    }
                }
                u = rx.recv() => {
                    let Some(u) = u else { break };
                    self.apply(u);
                    self.apply_queued(&mut rx);
                }
                // The next slice of a full pass; what the watches queued meanwhile goes first. Yielding (not an
                // always-ready future) lets the runtime poll its sockets between slices: a slice that writes
                // nothing never awaits, and the watch that delivers a pod change waited ~0.4 s behind a pass.
                () = tokio::task::yield_now(), if is_leader && self.full_pass.is_some() => self.apply_queued(&mut rx),
                _ = gc.tick() => self.full_due = true,
                _ = status_tick.tick() => status_due = true,
                _ = fetch_tick.tick() => self.fetch_poll_due = true,
                r = leader.changed() => {
                    if r.is_err() { break; }
                    let now = *leader.borrow();
                    if now && !is_leader {
                        tracing::info!("became leader; running a full pass");
                        self.full_due = true;
                        // Another leader may have written statuses since: compare against nothing.
                        self.status = StatusCache::default();
                        self.status_dirty = true;
                    } else if !now && is_leader {
                        tracing::warn!("lost leadership; no more writes");
                    }
                    is_leader = now;
                    self.metrics.leader.set(i64::from(is_leader));
                }
                _ = shutdown.changed() => break,
            }
            self.metrics.pods.set(self.world.pod_count() as i64);
            if !self.waiting_for.is_empty() {
                continue;
            }
            if !is_leader {
                // The follower keeps its picture current but writes nothing; a new leader starts with a full pass.
                self.world.take_dirty();
                self.full_pass = None;
                continue;
            }
            if self.full_due {
                self.start_full_pass(&listed_tx);
            }
            // Until the first full pass, nothing is known of the server's entries: every write waits for it.
            if self.first_full_done {
                self.incremental_pass().await;
                self.full_pass_step().await;
            }
            if self.fetch_poll_due && self.federation.enabled() && self.federation.has_crs() {
                self.fetch_poll_due = false;
                self.status_dirty |= self.federation.poll_fetch_status(&self.client).await;
            }
            if status_due && self.status_dirty {
                status_due = false;
                self.status_dirty = false;
                self.write_statuses().await;
            }
        }
    }

    /// Applies whatever else the watches queued, so one pass covers a burst.
    fn apply_queued(&mut self, rx: &mut mpsc::Receiver<Update>) {
        for _ in 0..20_000 {
            match rx.try_recv() {
                Ok(u) => self.apply(u),
                Err(_) => break,
            }
        }
    }

    async fn incremental_pass(&mut self) {
        let dirty = self.world.take_dirty();
        if dirty.is_empty() {
            self.federation_pass(false).await;
            return;
        }
        let started = Instant::now();
        let plan = world::plan(&self.world, &dirty, &self.current);
        self.execute(plan).await;
        self.federation_pass(false).await;
        self.observe("incremental", started);
    }

    /// Starts listing the server's entries for a full pass, beside the loop: at 100,000 entries the listing
    /// takes seconds, and pod changes must not wait for it. The result comes back on `done`.
    fn start_full_pass(&mut self, done: &mpsc::Sender<ListResult>) {
        if self.listing.is_some() || self.full_pass.is_some() || self.full_retry_at.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        self.full_due = false;
        self.listing = Some(Instant::now());
        self.written_during_listing.clear();
        let client = self.client.clone();
        let prefix = self.world.settings().entry_id_prefix.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let _ = done.send(client.list_server_copies(&prefix).await).await;
        });
    }

    /// The listing is in: from now on `current` is known, and every ID is compared with it, a slice per turn
    /// of the loop ([`Self::full_pass_step`]).
    async fn finish_full_pass(&mut self, listed: ListResult) {
        let started = self.listing.take().unwrap_or_else(Instant::now);
        match listed {
            Ok(mut current) => {
                // What was written while the listing ran is as this loop last wrote it, whichever way the
                // listing and the write crossed.
                for id in std::mem::take(&mut self.written_during_listing) {
                    match self.current.get(&id) {
                        Some(c) => current.insert(id, *c),
                        None => current.remove(&id),
                    };
                }
                self.current = current;
                self.full_retry_at = None;
                // Every ID is compared by the pass, the dirty ones included.
                self.world.take_dirty();
                let ids = world::full_plan_ids(&self.world, &self.current).into_iter().cloned().collect();
                self.full_pass =
                    Some(FullPass { ids, next: 0, started, initial: !self.first_full_done, planned: [0; 3] });
                self.first_full_done = true;
            }
            Err(e) => {
                self.metrics.error("list");
                self.full_due = true;
                self.full_retry_at = Some(Instant::now() + Duration::from_secs(2));
                tracing::warn!(error = %e, "cannot list the server's entries; retrying in 2 s");
                self.federation_pass(true).await;
                self.observe("full", started);
            }
        }
    }

    /// Plans and writes the next slice of the full pass under way; ends it after the last one. Changes seen
    /// between slices were written by the incremental pass and are in `current`, so a slice never undoes them.
    async fn full_pass_step(&mut self) {
        let Some(mut pass) = self.full_pass.take() else { return };
        let end = (pass.next + FULL_PASS_SLICE).min(pass.ids.len());
        let plan = world::plan(&self.world, &pass.ids[pass.next..end], &self.current);
        for (n, planned) in [plan.create.len(), plan.update.len(), plan.delete.len()].into_iter().zip(&mut pass.planned)
        {
            *planned += n;
        }
        pass.next = end;
        self.execute(plan).await;
        if pass.next < pass.ids.len() {
            self.full_pass = Some(pass);
            return;
        }
        let [create, update, delete] = pass.planned;
        let total = create + update + delete;
        if total > 0 {
            let what = if pass.initial { "initial pass" } else { "full pass repaired drift" };
            tracing::info!(create, update, delete, "{what}");
            if !pass.initial {
                self.metrics.drift_repaired.inc_by(total as u64);
            }
        }
        self.federation_pass(true).await;
        tracing::debug!(ids = pass.ids.len(), seconds = pass.started.elapsed().as_secs_f64(), "full pass done");
        self.observe("full", pass.started);
    }

    /// An entry write while a listing runs: its state is this loop's, not the listing's.
    fn note_written(&mut self, id: &str) {
        if self.listing.is_some() {
            self.written_during_listing.insert(id.to_string());
        }
    }

    fn observe(&self, kind: &str, started: Instant) {
        self.metrics
            .reconcile_seconds
            .get_or_create(&labels(&[("kind", kind)]))
            .observe(started.elapsed().as_secs_f64());
        self.metrics.entries.set(self.current.len() as i64);
    }

    fn count_write(&self, op: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.metrics.entry_writes.get_or_create(&labels(&[("op", op), ("result", result)])).inc();
    }

    async fn execute(&mut self, plan: Plan) {
        self.status_dirty |= !plan.is_empty();
        for chunk in plan.delete.chunks(WRITE_BATCH) {
            if !*self.leader.borrow() {
                tracing::warn!("lost leadership during a pass; the rest is left to the new leader");
                return;
            }
            match self.client.delete(chunk).await {
                Ok(results) => {
                    for (id, r) in chunk.iter().zip(results) {
                        match r {
                            WriteResult::Failed { code, message } if code != CODE_NOT_FOUND => {
                                self.count_write("delete", false);
                                self.world.record_write(id, Some(message));
                            }
                            _ => {
                                self.count_write("delete", true);
                                self.current.remove(id);
                                self.note_written(id);
                                self.world.record_write(id, None);
                            }
                        }
                    }
                }
                Err(e) => self.write_failed("delete", &e),
            }
        }
        for chunk in plan.create.chunks(WRITE_BATCH) {
            if !*self.leader.borrow() {
                tracing::warn!("lost leadership during a pass; the rest is left to the new leader");
                return;
            }
            match self.client.create(chunk).await {
                Ok(results) => {
                    for (e, r) in chunk.iter().zip(results) {
                        match r {
                            WriteResult::Ok(stored) => {
                                self.count_write("create", true);
                                self.world.record_write(&e.id, None);
                                self.current.insert(e.id.clone(), ServerCopy::of(stored.as_deref().unwrap_or(e)));
                                self.note_written(&e.id);
                            }
                            WriteResult::Failed { code, message } => {
                                self.count_write("create", false);
                                if code == CODE_ALREADY_EXISTS && message.contains(&e.id) {
                                    // Someone (an earlier leader) made it already: relist and compare.
                                    self.full_due = true;
                                } else {
                                    tracing::warn!(entry = %e.id, spiffe_id = %e.spiffe_id, error = %message, "create refused");
                                    self.world.record_write(&e.id, Some(message));
                                }
                            }
                        }
                    }
                }
                Err(e) => self.write_failed("create", &e),
            }
        }
        for chunk in plan.update.chunks(WRITE_BATCH) {
            if !*self.leader.borrow() {
                tracing::warn!("lost leadership during a pass; the rest is left to the new leader");
                return;
            }
            match self.client.update(chunk).await {
                Ok(results) => {
                    for (e, r) in chunk.iter().zip(results) {
                        match r {
                            WriteResult::Ok(stored) => {
                                self.count_write("update", true);
                                self.world.record_write(&e.id, None);
                                self.current.insert(e.id.clone(), ServerCopy::of(stored.as_deref().unwrap_or(e)));
                                self.note_written(&e.id);
                            }
                            WriteResult::Failed { code, message } => {
                                self.count_write("update", false);
                                if code == CODE_NOT_FOUND {
                                    self.full_due = true;
                                } else {
                                    tracing::warn!(entry = %e.id, error = %message, "update refused");
                                    self.world.record_write(&e.id, Some(message));
                                }
                            }
                        }
                    }
                }
                Err(e) => self.write_failed("update", &e),
            }
        }
    }

    fn write_failed(&mut self, op: &str, e: &dyn std::fmt::Display) {
        self.metrics.error("write");
        self.count_write(op, false);
        tracing::warn!(op, error = %e, "admin API write failed; a full pass will retry");
        self.full_due = true;
    }

    async fn federation_pass(&mut self, full: bool) {
        if !self.federation.enabled() || !(full || self.federation.is_dirty()) {
            return;
        }
        self.status_dirty = true;
        if let Err(e) = self.federation.reconcile(&self.client, full).await {
            self.metrics.error("federation");
            tracing::warn!(error = %e, "federation relationships: will retry");
        }
        // A relationship just written is fetched by the server at once: show that without waiting a period.
        self.fetch_poll_due = true;
    }
}

/// Whether two versions of a CR declare the same thing (same spec, same ownership rank).
fn same_declaration<S: serde::Serialize>(
    a: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    a_spec: &S,
    b: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    b_spec: &S,
) -> bool {
    compile::rank(a) == compile::rank(b) && serde_json::to_value(a_spec).ok() == serde_json::to_value(b_spec).ok()
}
