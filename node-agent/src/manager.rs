//! The SVID manager: holds the authorized entries pushed by the server, keeps one current X509-SVID per
//! entry (key generated locally, P-256), gets missing and due SVIDs signed in batches of up to
//! [`BATCH_SIZE`], rotates each at about half its lifetime (+-10% jitter) and publishes every change as a
//! new [`Snapshot`] on a `watch` channel. When the server is unreachable the cached SVIDs keep being
//! served until they expire; signing is retried with exponential backoff (at most [`MAX_BACKOFF`]).
//!
//! JWT-SVIDs are cached per (entry, audience set) until about half their lifetime.
//!
//! A change costs O(entries changed), not O(entries): synced entries go to a `dirty` set that the next
//! signing pass checks, rotation and retry times and SVID expiries are kept in [`Schedule`]s, and the
//! snapshot's maps are persistent, so publishing one is O(1). Only a full snapshot from the server (at
//! (re)connect) looks at every entry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use sigil_core::RegistrationEntry;
use sigil_core::bundle::Bundle;
use sigil_proto::agent as pb;
use sigil_proto::convert;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::metrics::Metrics;
use crate::schedule::Schedule;
use crate::state::{CachedSvid, EntryId, Snapshot};

/// Most CSRs sent in one BatchNewX509Svid call.
pub const BATCH_SIZE: usize = 100;
/// Longest wait between retries after the server failed.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Wait before retrying an entry the server refused to sign.
const ENTRY_RETRY: i64 = 10;

/// Errors of the manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("generating a key or CSR: {0}")]
    Key(String),
    #[error("the server returned an unusable SVID for entry {entry_id}: {reason}")]
    BadSvid { entry_id: String, reason: String },
}

/// One signing result: the entry id and the DER chain (leaf first) or the server's reason.
pub type SignResult = (String, Result<Vec<Vec<u8>>, String>);

/// The server-side operations the manager needs (the agent API client implements it; tests fake it).
#[async_trait::async_trait]
pub trait SvidSigner: Send + Sync {
    /// Signs one CSR per entry id.
    async fn batch_new_x509_svid(&self, params: Vec<(String, Vec<u8>)>) -> Result<Vec<SignResult>, Status>;
    /// A JWT-SVID for an entry: the token and its expiry (unix seconds).
    async fn new_jwt_svid(&self, entry_id: &str, audience: &[String]) -> Result<(String, i64), Status>;
}

/// What the sync client feeds the manager.
#[derive(Debug)]
pub enum Command {
    Sync(Box<pb::SyncEntriesUpdate>),
    /// Try signing now (the connection to the server was re-established).
    Retry,
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// When to replace an SVID valid from `not_before` to `not_after`: after half its lifetime, scaled by
/// `1 + jitter` (`jitter` in -0.1..=0.1), never before `not_before` and never at or after `not_after`.
pub fn rotation_time(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    let half = lifetime as f64 / 2.0 * (1.0 + jitter.clamp(-0.1, 0.1));
    let at = not_before + half.round() as i64;
    at.clamp(not_before, (not_after - 1).max(not_before))
}

fn random_jitter() -> f64 {
    rand::rng().random_range(-0.1..=0.1)
}

/// A fresh P-256 key (PKCS#8 DER) and a CSR (DER) for it.
pub fn new_key_and_csr() -> Result<(Vec<u8>, Vec<u8>), ManagerError> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| ManagerError::Key(e.to_string()))?;
    let params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| ManagerError::Key(e.to_string()))?;
    let csr = params.serialize_request(&key).map_err(|e| ManagerError::Key(e.to_string()))?;
    Ok((key.serialize_der(), csr.der().to_vec()))
}

/// NotBefore and NotAfter of a DER certificate, unix seconds.
pub fn validity(cert_der: &[u8]) -> Result<(i64, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| e.to_string())?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Checks a signed chain against the entry and bundle and turns it into a cache item.
fn cached_svid(
    entry: &RegistrationEntry,
    entry_id: EntryId,
    chain: Vec<Vec<u8>>,
    key_pkcs8: Vec<u8>,
    bundle: Option<&Bundle>,
    now: i64,
) -> Result<CachedSvid, ManagerError> {
    let bad = |reason: String| ManagerError::BadSvid { entry_id: entry.id.clone(), reason };
    let leaf = chain.first().ok_or_else(|| bad("empty chain".into()))?;
    let id = match bundle {
        Some(b) => sigil_core::x509::verify_x509_svid(&chain, b, now).map_err(|e| bad(e.to_string()))?,
        None => sigil_core::x509::leaf_spiffe_id(leaf).map_err(|e| bad(e.to_string()))?,
    };
    if id != entry.spiffe_id {
        return Err(bad(format!("SVID is for {id}, entry is for {}", entry.spiffe_id)));
    }
    let (not_before, not_after) = validity(leaf).map_err(bad)?;
    Ok(CachedSvid {
        entry_id,
        spiffe_id: id,
        chain_der: chain.into_iter().map(bytes::Bytes::from).collect(),
        key_pkcs8: key_pkcs8.into(),
        not_before,
        not_after,
        // Half of the lifetime left at receipt: the server backdates NotBefore, which must not make short
        // SVIDs due at once.
        rotate_at: rotation_time(not_before.max(now), not_after, random_jitter()),
        dns_names: entry.dns_names.clone(),
        x509_ttl: entry.x509_svid_ttl,
    })
}

/// Cached JWT-SVIDs: (entry id + SPIFFE ID, sorted audience) -> (token, exp, refresh at).
type JwtCache = HashMap<(String, Vec<String>), (String, i64, i64)>;

/// Handle on the running manager.
#[derive(Clone)]
pub struct ManagerHandle {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<Arc<Snapshot>>,
    signer: Arc<dyn SvidSigner>,
    jwt_cache: Arc<Mutex<JwtCache>>,
}

impl std::fmt::Debug for ManagerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerHandle").finish_non_exhaustive()
    }
}

impl ManagerHandle {
    pub fn send(&self, cmd: Command) {
        let _ = self.commands.send(cmd);
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.state.clone()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.borrow().clone()
    }

    /// A JWT-SVID for `entry_id` and `audience`, from the cache while it is younger than half its life.
    pub async fn jwt_svid(&self, entry_id: &str, audience: &[String]) -> Result<String, Status> {
        let mut aud = audience.to_vec();
        aud.sort();
        aud.dedup();
        // The entry's current SPIFFE ID is part of the key: a renamed entry never gets an old token.
        let current_id = self.state.borrow().entries.get(entry_id).map(|e| e.spiffe_id.to_string()).unwrap_or_default();
        let key = (format!("{entry_id}\n{current_id}"), aud);
        let now = now_unix();
        if let Ok(cache) = self.jwt_cache.lock()
            && let Some((token, _, refresh_at)) = cache.get(&key)
            && now < *refresh_at
        {
            return Ok(token.clone());
        }
        let (token, exp) = self.signer.new_jwt_svid(entry_id, &key.1).await?;
        if let Ok(mut cache) = self.jwt_cache.lock() {
            cache.retain(|_, (_, e, _)| *e > now);
            cache.insert(key, (token.clone(), exp, now + (exp - now) / 2));
        }
        Ok(token)
    }
}

/// Starts the manager task. `bundle_tx` (when given) receives every new own-trust-domain bundle (the TLS
/// verifier of the agent's server connection reads it).
pub fn spawn(
    signer: Arc<dyn SvidSigner>,
    bundle_tx: Option<watch::Sender<Arc<Bundle>>>,
    metrics: Arc<Metrics>,
) -> (ManagerHandle, tokio::task::JoinHandle<()>) {
    let (commands, rx) = mpsc::unbounded_channel();
    let (state_tx, state) = watch::channel(Arc::new(Snapshot::default()));
    let worker = Worker {
        signer: signer.clone(),
        state_tx,
        bundle_tx,
        metrics,
        snap: Snapshot::default(),
        entry_retry: HashMap::new(),
        dirty: BTreeSet::new(),
        wake: Schedule::default(),
        expiry: Schedule::default(),
        global_retry: 0,
        backoff: Duration::from_secs(1),
    };
    let task = tokio::spawn(worker.run(rx));
    (ManagerHandle { commands, state, signer, jwt_cache: Arc::default() }, task)
}

struct Worker {
    signer: Arc<dyn SvidSigner>,
    state_tx: watch::Sender<Arc<Snapshot>>,
    bundle_tx: Option<watch::Sender<Arc<Bundle>>>,
    metrics: Arc<Metrics>,
    snap: Snapshot,
    /// Entries the server refused to sign, and until when not to ask again.
    entry_retry: HashMap<EntryId, i64>,
    /// Entries to check at the next signing pass (synced, or their wake-up came).
    dirty: BTreeSet<EntryId>,
    /// When to look at an entry again: its SVID's rotation time, or the end of its retry wait.
    wake: Schedule,
    /// Each cached SVID's `not_after`.
    expiry: Schedule,
    global_retry: i64,
    backoff: Duration,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let wake = self.next_wake(now_unix());
            let sleep = async {
                match wake {
                    Some(at) => {
                        let secs = u64::try_from(at - now_unix()).unwrap_or(0);
                        tokio::time::sleep(Duration::from_secs(secs)).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.apply(cmd);
                    while let Ok(cmd) = rx.try_recv() {
                        self.apply(cmd);
                    }
                }
                () = sleep => {}
            }
            self.publish();
            if self.snap.synced {
                self.sign_due().await;
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Retry => {
                self.global_retry = 0;
                self.backoff = Duration::from_secs(1);
                for id in self.entry_retry.drain().map(|(id, _)| id) {
                    self.dirty.insert(id);
                }
            }
            Command::Sync(u) => self.apply_sync(*u),
        }
    }

    /// The shared ID of an entry the agent holds (or had an SVID for), a new one otherwise (signing takes the
    /// IDs from the entries map itself, see [`Self::due`]).
    fn intern(&self, id: &str) -> EntryId {
        let held = self.snap.entries.get_key_value(id).map(|(k, _)| k);
        match held.or_else(|| self.snap.svids.get_key_value(id).map(|(k, _)| k)) {
            Some(k) => k.clone(),
            None => id.into(),
        }
    }

    /// Forgets everything held for an entry that is no longer authorized.
    fn forget(&mut self, id: &str) {
        self.snap.entries.remove(id);
        self.snap.svids.remove(id);
        self.entry_retry.remove(id);
        self.dirty.remove(id);
        self.wake.remove(id);
        self.expiry.remove(id);
    }

    fn apply_sync(&mut self, u: pb::SyncEntriesUpdate) {
        if u.full_snapshot {
            self.snap.entries.clear();
        }
        for id in &u.removed_entry_ids {
            self.forget(id);
        }
        for e in &u.upserted {
            match convert::entry_from_pb(e) {
                // Node aliases (parent = the server) group agents; they are not workload identities.
                Ok(entry) if entry.is_node_alias() => self.forget(&entry.id),
                Ok(entry) => {
                    let id = self.intern(&entry.id);
                    self.dirty.insert(id.clone());
                    self.snap.entries.insert(id, Arc::new(entry));
                }
                Err(err) => tracing::warn!(entry_id = %e.id, error = %err, "ignoring invalid entry from server"),
            }
        }
        if u.full_snapshot {
            // Drop everything that belongs to entries no longer authorized, and look at every entry.
            let entries = &self.snap.entries;
            let gone: Vec<EntryId> = self.snap.svids.keys().filter(|id| !entries.contains_key(*id)).cloned().collect();
            for id in &gone {
                self.snap.svids.remove(id);
            }
            self.entry_retry.retain(|id, _| entries.contains_key(id));
            self.wake.retain(|id| entries.contains_key(id));
            self.expiry.retain(|id| entries.contains_key(id));
            self.dirty = entries.keys().cloned().collect();
        }
        if let Some(b) = &u.bundle {
            match convert::bundle_from_pb(b) {
                Ok(bundle) => {
                    let bundle = Arc::new(bundle);
                    if let Some(tx) = &self.bundle_tx {
                        tx.send_replace(bundle.clone());
                    }
                    self.snap.bundle = Some(bundle);
                }
                Err(err) => tracing::warn!(error = %err, "ignoring invalid bundle from server"),
            }
        }
        if u.federated_bundles_changed {
            self.snap.federated_bundles = u
                .federated_bundles
                .iter()
                .filter_map(|b| match convert::bundle_from_pb(b) {
                    Ok(b) => Some((b.trust_domain.clone(), Arc::new(b))),
                    Err(err) => {
                        tracing::warn!(error = %err, "ignoring invalid federated bundle from server");
                        None
                    }
                })
                .collect::<BTreeMap<_, _>>();
        }
        if u.full_snapshot && !self.snap.synced {
            tracing::info!(entries = self.snap.entries.len(), "received the first entry snapshot");
        }
        self.snap.synced |= u.full_snapshot;
        self.metrics.synced.set(i64::from(self.snap.synced));
    }

    /// Entries that need an SVID now: the dirty ones and those whose wake-up came, when they have no SVID,
    /// their SVID is due for rotation or no longer fits the entry. Entries waiting out a refusal are left to
    /// their wake-up. Each with its ID as the entries map holds it (the one allocation every map shares).
    fn due(&mut self, now: i64) -> Vec<(EntryId, Arc<RegistrationEntry>)> {
        if now < self.global_retry {
            return vec![];
        }
        for id in self.wake.take_due(now) {
            self.dirty.insert(id);
        }
        let mut due = vec![];
        for id in std::mem::take(&mut self.dirty) {
            let Some((key, e)) = self.snap.entries.get_key_value(&id) else { continue };
            if self.entry_retry.get(&id).is_some_and(|t| now < *t) {
                continue;
            }
            self.entry_retry.remove(&id);
            let needs = match self.snap.svids.get(&id) {
                None => true,
                Some(s) => now >= s.rotate_at || !s.fits(e),
            };
            if needs {
                due.push((key.clone(), e.clone()));
            }
        }
        due
    }

    /// When the loop must run next: at once while entries are dirty (not before a global retry), at the
    /// earliest wake-up, and at the earliest SVID expiry (to publish without it).
    fn next_wake(&self, now: i64) -> Option<i64> {
        if !self.snap.synced {
            return None;
        }
        let sign = if self.dirty.is_empty() { self.wake.first() } else { Some(now) };
        let sign = sign.map(|t| t.max(self.global_retry));
        [sign, self.expiry.first()].into_iter().flatten().min().map(|t| t.max(now))
    }

    /// An entry the server would not sign: not asked again before `until`.
    fn retry_later(&mut self, id: EntryId, until: i64) {
        self.wake.set(&id, until);
        self.entry_retry.insert(id, until);
    }

    fn publish(&mut self) {
        for id in self.expiry.take_due(now_unix()) {
            self.snap.svids.remove(&id);
        }
        self.snap.next_expiry = self.expiry.first();
        self.metrics.cached_svids.set(i64::try_from(self.snap.svids.len()).unwrap_or(i64::MAX));
        let snap = Arc::new(self.snap.clone());
        self.state_tx.send_replace(snap);
    }

    async fn sign_due(&mut self) {
        let now = now_unix();
        let due = self.due(now);
        if due.is_empty() {
            return;
        }
        // Entries without any SVID first: they block workloads; rotations can wait a moment.
        let (mut missing, rotating): (Vec<_>, Vec<_>) =
            due.into_iter().partition(|(id, _)| !self.snap.svids.contains_key(id));
        missing.extend(rotating);
        self.snap.pending =
            missing.iter().filter(|(id, _)| !self.snap.svids.contains_key(id)).map(|(id, _)| id.clone()).collect();
        self.publish();
        for (n, batch) in missing.chunks(BATCH_SIZE).enumerate() {
            let mut keys: HashMap<EntryId, Vec<u8>> = HashMap::new();
            let mut params = Vec::with_capacity(batch.len());
            for (id, e) in batch {
                match new_key_and_csr() {
                    Ok((key, csr)) => {
                        keys.insert(id.clone(), key);
                        params.push((e.id.clone(), csr));
                    }
                    Err(err) => {
                        tracing::error!(entry_id = %e.id, error = %err, "cannot create a CSR");
                        self.retry_later(id.clone(), now + ENTRY_RETRY);
                    }
                }
            }
            match self.signer.batch_new_x509_svid(params).await {
                Ok(results) => {
                    self.backoff = Duration::from_secs(1);
                    self.global_retry = 0;
                    let now = now_unix();
                    for (entry_id, result) in results {
                        self.snap.pending.remove(entry_id.as_str());
                        let (Some((id, entry)), Some(key)) = (
                            self.snap.entries.get_key_value(entry_id.as_str()).map(|(k, v)| (k.clone(), v.clone())),
                            keys.remove(entry_id.as_str()),
                        ) else {
                            continue;
                        };
                        let outcome = result
                            .map_err(|reason| ManagerError::BadSvid { entry_id: entry_id.clone(), reason })
                            .and_then(|chain| {
                                cached_svid(&entry, id.clone(), chain, key, self.snap.bundle.as_deref(), now)
                            });
                        match outcome {
                            Ok(svid) => {
                                tracing::debug!(entry_id = %entry_id, spiffe_id = %svid.spiffe_id, not_after = svid.not_after, "SVID signed");
                                self.metrics.svids_signed.inc();
                                self.entry_retry.remove(&id);
                                self.wake.set(&id, svid.rotate_at);
                                self.expiry.set(&id, svid.not_after);
                                self.snap.svids.insert(id, Arc::new(svid));
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "signing failed; retrying later");
                                self.metrics.sign_failures.inc();
                                self.retry_later(id, now + ENTRY_RETRY);
                            }
                        }
                    }
                    // Entries the server did not answer for are retried later too.
                    for id in keys.into_keys() {
                        self.snap.pending.remove(&id);
                        self.retry_later(id, now + ENTRY_RETRY);
                    }
                    self.publish();
                }
                Err(status) => {
                    self.metrics.sign_failures.inc();
                    tracing::warn!(code = ?status.code(), message = status.message(), backoff_secs = self.backoff.as_secs(), "BatchNewX509Svid failed; serving cached SVIDs and retrying");
                    self.global_retry = now_unix() + i64::try_from(self.backoff.as_secs()).unwrap_or(30);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    // This batch and the ones not sent are looked at again after the global retry wait.
                    for (id, _) in missing.iter().skip(n * BATCH_SIZE) {
                        self.dirty.insert(id.clone());
                    }
                    break;
                }
            }
        }
        self.snap.pending.clear();
        self.publish();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn rotation_time_table() {
        let cases: &[(i64, i64, f64, i64)] = &[
            (0, 100, 0.0, 50),
            (0, 100, 0.1, 55),
            (0, 100, -0.1, 45),
            (0, 100, 5.0, 55),
            (1000, 1040, 0.0, 1020),
            (0, 1, 0.0, 0),
            (10, 10, 0.0, 10),
            (10, 5, 0.0, 10),
        ];
        for (nb, na, j, want) in cases {
            assert_eq!(rotation_time(*nb, *na, *j), *want, "{nb} {na} {j}");
        }
    }

    #[test]
    fn jittered_rotation_stays_in_band() {
        for _ in 0..200 {
            let at = rotation_time(0, 3600, random_jitter());
            assert!((1620..=1980).contains(&at), "{at}");
        }
    }

    #[test]
    fn key_and_csr_are_p256() {
        let (key, csr) = new_key_and_csr().unwrap();
        let kp = rcgen::KeyPair::try_from(key.as_slice()).unwrap();
        assert!(kp.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
        use x509_parser::prelude::FromDer;
        let parsed = x509_parser::certification_request::X509CertificationRequest::from_der(&csr).unwrap().1;
        use rcgen::PublicKeyData;
        assert_eq!(parsed.certification_request_info.subject_pki.raw, kp.subject_public_key_info().as_slice());
    }
}
