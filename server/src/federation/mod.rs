//! Federation: relationships with foreign trust domains and fetching their bundles (issue 12 item 2).
//!
//! The validated relationship model lives in `sigil_core::federation` (pure, shared with the operator,
//! which checks CRs by the same rules), with the refresh policy and the fetched-bundle rules; it is
//! re-exported here so server paths stay as they were. This module adds the I/O:
//! - [`relationships`]: which relationships run (config file over admin API), pure;
//! - `verify`: https_spiffe and https_web authentication of the endpoint (rustls verifiers, roots);
//! - `fetch`: one bounded HTTPS GET and its answer turned into a checked bundle;
//! - [`status`]: what each fetcher reports ([`Board`], in `ServerState`) and `federation refresh`;
//! - [`manager`]: the fetcher tasks, following the relationship set.

pub use sigil_core::federation::*;

mod fetch;
pub mod manager;
pub mod relationships;
pub mod status;
mod verify;

pub use fetch::{FETCH_TIMEOUT, FetchError, MAX_BODY, MAX_REDIRECTS};
pub use relationships::{Source, Target};
pub use status::{Board, FetchStatus, RefreshError};

/// Checks that a `ca_file_path` holds usable PEM CA certificates (at start; fetches read it again).
pub fn check_ca_file(path: &std::path::Path) -> Result<(), String> {
    verify::roots_from_file(path).map(drop)
}
