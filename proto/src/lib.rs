//! Generated gRPC types and services.
//!
//! - [`workload`]: the SPIFFE Workload API, wire-exact (no proto package: `/SpiffeWorkloadAPI/<Method>`).
//! - [`types`], [`admin`], [`agent`]: Sigil's own APIs (`sigil.*.v1`).
//! - [`convert`]: the wire <-> `sigil-core` conversions every crate uses.
//! - [`csi::v1`], [`pluginregistration`]: CSI v1 and the kubelet plugin registration API (wire-exact).
#![allow(missing_debug_implementations, clippy::all)]

/// The SPIFFE Workload API (`workload.proto` has no package, so prost names the file `_`).
pub mod workload {
    tonic::include_proto!("_");
}

pub mod convert;

/// Module tree mirroring the proto packages, so generated cross-package paths resolve.
pub mod sigil {
    pub mod types {
        pub mod v1 {
            tonic::include_proto!("sigil.types.v1");
        }
    }
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("sigil.admin.v1");
        }
    }
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("sigil.agent.v1");
        }
    }
}

/// Container Storage Interface v1 (`csi.v1`, wire-exact): Identity, Node, Controller capability query.
pub mod csi {
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

/// Kubelet plugin registration API v1 (proto package `pluginregistration`, wire-exact).
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

pub use sigil::admin::v1 as admin;
pub use sigil::agent::v1 as agent;
pub use sigil::types::v1 as types;

/// Encoded `FileDescriptorSet` of every file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
