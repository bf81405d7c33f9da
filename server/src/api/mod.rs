//! gRPC services: the admin API (Unix socket) and the agent API (TLS).

pub mod admin;
pub mod agent;
pub mod convert;
pub mod trustdomain;
