//! Datastore: filled in by the datastore work.
