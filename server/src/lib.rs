//! The Sigil server library; `main.rs` is a thin binary over it.

pub mod api;
pub mod attestor;
pub mod bundle_endpoint;
pub mod ca;
pub mod cli;
pub mod config;
pub mod datastore;
pub mod federation;
pub mod health;
pub mod kube_client;
pub mod metrics;
pub mod notifier;
pub mod run;
pub mod state;
