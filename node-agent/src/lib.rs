//! Sigil node agent: attests its node to the Sigil server (join token or Kubernetes projected
//! service-account token), receives its authorized entries over
//! the server's push stream, keeps workload X509-SVIDs signed and rotated, and serves the SPIFFE Workload
//! API on a Unix socket.
//!
//! Entry points: [`run::start`] (returns a [`run::RunningAgent`] with the bound addresses and
//! `shutdown()`), and the CLI in [`cli`].

pub mod admin;
pub mod attest;
pub mod attestation;
pub mod cli;
pub mod client;
pub mod config;
pub mod health;
pub mod k8s;
pub mod lean_stream;
pub mod manager;
pub mod metrics;
pub mod node;
pub mod pacing;
pub mod run;
pub mod schedule;
pub mod state;
pub mod testing;
pub mod trim;
pub mod workload;
