//! Go text/template subset: filled in by the template work.
