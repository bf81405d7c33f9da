//! Federation relationships: the validated model lives in `sigil_core::federation` (pure, shared with the
//! operator, which checks CRs by the same rules); re-exported here so server paths stay as they were.

pub use sigil_core::federation::*;
