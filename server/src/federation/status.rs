//! What the fetchers report, and how the admin API reaches them: the [`Board`] lives in `ServerState`
//! (so the admin API has it), the fetcher tasks of [`super::manager`] register on it and write their
//! status, and `federation refresh` sends a request through it to the task of that trust domain.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sigil_core::TrustDomain;
use tokio::sync::{Notify, mpsc, oneshot};

use super::relationships::Target;

/// How fetching one trust domain's bundle goes. Times are unix seconds, 0 = never.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchStatus {
    pub last_attempt_at: i64,
    pub last_success_at: i64,
    /// When a fetched bundle last differed from the stored one.
    pub last_change_at: i64,
    /// The most recent failure; kept after later successes (`consecutive_failures` says if it is current).
    pub last_error: String,
    pub last_error_at: i64,
    pub consecutive_failures: u32,
    pub next_refresh_at: i64,
    /// The last failure was the missing local bundle of the endpoint's trust domain: storing a bundle
    /// (`bundle set`) wakes the fetcher at once instead of at its next retry.
    pub waiting_for_local_bundle: bool,
}

/// What a `federation refresh` got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshError {
    /// No relationship with that trust domain runs.
    NotFound,
    /// The fetch failed (the text of the failure).
    Failed(String),
    /// The fetcher did not answer (it is restarting, or the server is stopping).
    Unavailable(String),
}

/// A refresh request to a fetcher task, answered with whether the bundle changed.
pub(crate) type RefreshReply = oneshot::Sender<Result<bool, String>>;

#[derive(Debug)]
struct Entry {
    target: Target,
    status: FetchStatus,
    /// Which registration this is; a fetcher replaced by a newer one (same trust domain) must not write.
    generation: u64,
    refresh: mpsc::Sender<RefreshReply>,
    wake: Arc<Notify>,
}

/// The fetchers' shared status, by trust domain.
#[derive(Debug, Default)]
pub struct Board {
    entries: Mutex<BTreeMap<TrustDomain, Entry>>,
    generations: std::sync::atomic::AtomicU64,
}

/// How long `refresh` waits for the fetcher: one fetch is bounded by its own timeout, plus the store.
const REFRESH_WAIT: Duration = Duration::from_secs(30);

impl Board {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<TrustDomain, Entry>> {
        // A poisoned lock means a panic while updating a status; the data is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every running relationship with its status, in trust domain order.
    pub fn statuses(&self) -> Vec<(Target, FetchStatus)> {
        self.lock().values().map(|e| (e.target.clone(), e.status.clone())).collect()
    }

    pub fn status(&self, td: &TrustDomain) -> Option<(Target, FetchStatus)> {
        self.lock().get(td).map(|e| (e.target.clone(), e.status.clone()))
    }

    /// Asks the fetcher of `td` to fetch now and waits for the outcome: `Ok(changed)`.
    pub async fn refresh(&self, td: &TrustDomain) -> Result<bool, RefreshError> {
        let sender = self.lock().get(td).map(|e| e.refresh.clone()).ok_or(RefreshError::NotFound)?;
        let (tx, rx) = oneshot::channel();
        let gone = || {
            RefreshError::Unavailable(format!("the fetcher of {td} stopped (relationship changed or server stopping)"))
        };
        sender.send(tx).await.map_err(|_| gone())?;
        match tokio::time::timeout(REFRESH_WAIT, rx).await {
            Ok(Ok(outcome)) => outcome.map_err(RefreshError::Failed),
            Ok(Err(_)) => Err(gone()),
            Err(_) => {
                Err(RefreshError::Unavailable(format!("the fetcher of {td} did not answer within {REFRESH_WAIT:?}")))
            }
        }
    }

    /// Registers a fetcher; returns its generation and the receiving ends it listens on.
    pub(crate) fn register(&self, target: Target) -> (u64, mpsc::Receiver<RefreshReply>, Arc<Notify>) {
        let generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let (refresh, rx) = mpsc::channel(4);
        let wake = Arc::new(Notify::new());
        let td = target.trust_domain().clone();
        let entry = Entry { target, status: FetchStatus::default(), generation, refresh, wake: wake.clone() };
        self.lock().insert(td, entry);
        (generation, rx, wake)
    }

    /// Removes the fetcher of `td` registered as `generation` (a newer one stays).
    pub(crate) fn unregister(&self, td: &TrustDomain, generation: u64) {
        let mut entries = self.lock();
        if entries.get(td).is_some_and(|e| e.generation == generation) {
            entries.remove(td);
        }
    }

    /// Updates what is shown about a running fetcher's relationship (e.g. its override flag).
    pub(crate) fn set_target(&self, target: Target) {
        if let Some(e) = self.lock().get_mut(target.trust_domain()) {
            e.target = target;
        }
    }

    /// Applies `f` to the status of `td` if `generation` is still the registered fetcher.
    pub(crate) fn update(&self, td: &TrustDomain, generation: u64, f: impl FnOnce(&mut FetchStatus)) {
        if let Some(e) = self.lock().get_mut(td).filter(|e| e.generation == generation) {
            f(&mut e.status);
        }
    }

    /// Wakes the fetchers that wait for a local bundle (one was just stored).
    pub(crate) fn wake_waiting(&self) {
        for e in self.lock().values().filter(|e| e.status.waiting_for_local_bundle) {
            e.wake.notify_one();
        }
    }
}
