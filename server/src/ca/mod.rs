//! Certificate authority: filled in by the CA work.
