//! Filled in by the spec-rules work; see lib.rs.
