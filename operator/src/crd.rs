//! CRD types: filled in by the CRD work.
