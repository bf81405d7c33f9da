//! `spiffe-demo`: SPIFFE as an application developer meets it, with the `spiffe` crate and rustls.
//!
//! - [`exchange`]: two services fetch their X509-SVIDs and validate each other's certificate.
//! - [`serve`]: an HTTP service showing each flow (X509-SVID, JWT-SVID, bundle, validation, mTLS, JWT auth,
//!   rotation), and an mTLS listener for the other instance to call.
//!
//! Pure rules (certificate validation, rotation bookkeeping, JSON shapes) are in [`validate`], [`svid`],
//! [`bundle`] and [`serve::state`], without I/O.

pub mod bundle;
pub mod exchange;
pub mod serve;
pub mod svid;
pub mod validate;

/// The Workload API endpoint from `SPIFFE_ENDPOINT_SOCKET`, as the `spiffe` crate reads it.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";
