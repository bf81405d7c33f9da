//! sigil-operator: turns ClusterSPIFFEID, ClusterFederatedTrustDomain and ClusterStaticEntry objects into
//! registration entries and federation relationships on the Sigil server.
//!
//! Pure logic (CRD types, Go-template rendering, desired-state computation and diffs) lives in I/O-free
//! modules; the Kubernetes watches, the admin-socket client and leader election are thin layers at the edge.

pub mod crd;
pub mod template;
