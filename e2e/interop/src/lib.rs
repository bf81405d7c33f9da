//! Test-only crate: see `tests/`. The Go (go-spiffe) and Python (py-spiffe) clients live beside it.
