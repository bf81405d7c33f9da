//! Gives freed heap back to the system after a burst of cache changes (entries created or deleted, a pod
//! churn).
//!
//! glibc's malloc keeps what a burst allocated: measured with the workload_api bench, the agent's RSS sat
//! +30% over its start after 6 cycles of 200 entry creates and deletes (MALLOC_ARENA_MAX=2 did not help,
//! mimalloc raised the baseline from 14 to 24 MiB). Growth leaves garbage too: every Workload API message
//! of the burst was built and freed among the new SVIDs. `malloc_trim(0)` returns the free pages of every
//! arena; once per burst, after it settled.

use std::time::Duration;

use tokio::sync::watch;

use crate::state::Snapshot;

/// How long the snapshots must have stayed unchanged after the SVID count changed before trimming (one
/// trim per burst, not one per change).
const SETTLE: Duration = Duration::from_secs(1);

/// Watches the snapshots until the channel closes: trims once the number of cached SVIDs changed and the
/// snapshots then held still for [`SETTLE`].
pub async fn trim_after_burst(mut rx: watch::Receiver<std::sync::Arc<Snapshot>>) {
    let mut count = rx.borrow().svids.len();
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        if rx.borrow_and_update().svids.len() == count {
            continue;
        }
        // Changed: wait for the burst to settle (more changes restart the wait).
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = tokio::time::sleep(SETTLE) => break,
            }
        }
        count = rx.borrow_and_update().svids.len();
        release_free_memory();
    }
}

/// Serves every allocation of 128 KiB or more from a mapping of its own, given back to the kernel when it is
/// freed. glibc otherwise raises that threshold to the largest block freed so far (up to 32 MiB), and the
/// agent's largest blocks are Workload API messages (1 MB with 1,000 SVIDs), built and freed per message:
/// from the heap, each left a hole among the SVIDs allocated meanwhile (side-by-side bench, RSS per cached
/// SVID: 4.0 and 5.0 KiB in two runs with it, 4.5-5.1 KiB without). Setting the threshold also fixes it.
#[allow(unsafe_code)]
pub fn map_large_allocations() {
    // SAFETY: mallopt takes no pointers and only changes malloc's tuning; glibc serialises it internally.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// How many times [`release_free_memory`] ran.
pub static TRIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `malloc_trim(0)`: hands the free pages of every malloc arena back to the kernel.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    TRIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: malloc_trim takes no pointers, is thread-safe (it locks each arena) and only releases memory
    // that is free; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::state::CachedSvid;

    fn with_svids(n: usize) -> Arc<Snapshot> {
        let mut s = Snapshot::default();
        for i in 0..n {
            s.svids.insert(
                format!("e{i}").into(),
                Arc::new(CachedSvid {
                    entry_id: format!("e{i}").into(),
                    spiffe_id: sigil_core::SpiffeId::new("spiffe://example.org/w").unwrap(),
                    chain_der: vec![],
                    key_pkcs8: bytes::Bytes::new(),
                    not_before: 0,
                    not_after: 0,
                    rotate_at: 0,
                    dns_names: vec![],
                    x509_ttl: 0,
                }),
            );
        }
        Arc::new(s)
    }

    /// A change of the SVID count trims once, after the snapshots held still for SETTLE (another change
    /// within it restarts the wait); a change that keeps the count (a rotation) does not; the task ends with
    /// the channel.
    #[tokio::test]
    async fn trims_once_after_a_burst_settles_and_ends_with_the_channel() {
        use std::sync::atomic::Ordering::Relaxed;
        let (tx, rx) = watch::channel(with_svids(10));
        let task = tokio::spawn(trim_after_burst(rx));
        let start = TRIMS.load(Relaxed);
        tx.send_replace(with_svids(10));
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(TRIMS.load(Relaxed), start, "the same count does not trim");
        tx.send_replace(with_svids(20));
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.send_replace(with_svids(3));
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(TRIMS.load(Relaxed), start, "not before the burst held for SETTLE");
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(TRIMS.load(Relaxed), start + 1, "one trim for the burst");
        tx.send_replace(with_svids(30));
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(TRIMS.load(Relaxed), start + 2, "growth trims too");
        assert!(!task.is_finished());
        drop(tx);
        tokio::time::timeout(Duration::from_secs(1), task).await.unwrap().unwrap();
    }
}
