//! Generated gRPC types.
