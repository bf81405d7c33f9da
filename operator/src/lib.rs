//! sigil-operator: turns ClusterSPIFFEID, ClusterFederatedTrustDomain and ClusterStaticEntry objects into
//! registration entries and federation relationships on the Sigil server.
//!
//! Pure logic lives in I/O-free modules: [`crd`] (the CRD types), [`template`] (Go text/template),
//! [`labels`] (label selectors), [`objects`] (the compact form of watched pods), [`world`] (the cluster picture, desired entries and diffs), [`compile`]
//! (CR -> typed inputs), [`config`]. The Kubernetes watches, the admin-socket client, leader election and
//! metrics are thin layers at the edge ([`controller`], [`server_client`], [`metrics`]).

pub mod compile;
pub mod config;
pub mod controller;
pub mod crd;
pub mod federation;
pub mod labels;
pub mod metrics;
pub mod objects;
pub mod server_client;
pub mod template;
pub mod world;
