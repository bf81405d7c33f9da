//! The Sigil server library; `main.rs` is a thin binary over it.

pub mod ca;
pub mod config;
pub mod datastore;
pub mod metrics;
