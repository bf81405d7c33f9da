//! Pure SPIFFE rules shared by every Sigil component. No I/O lives here.
//!
//! - [`id`]: SPIFFE IDs and trust domains (checklist A)
//! - [`selector`]: selectors and the AND matching rule
//! - [`entry`]: registration entries and agent authorization
//! - [`x509`]: X509-SVID and CA certificate checks (checklist B)
//! - [`jwt`]: JWT-SVID encoding and validation (checklist C)
//! - [`bundle`]: trust bundles as SPIFFE JWKS (checklist B9/B10, C10, F)
//! - [`cli`]: SPIRE-style single-dash flags, shared by every binary
//! - [`duration`]: Go duration strings (SPIRE's and spire-controller-manager's configs)

pub mod bundle;
pub mod cli;
pub mod duration;
pub mod entry;
pub mod federation;
pub mod id;
pub mod jwt;
pub mod selector;
pub mod x509;

pub use entry::{EntryChanges, EntryIndex, RegistrationEntry};
pub use id::{IdError, SpiffeId, TrustDomain};
pub use selector::{Selector, SelectorError};
