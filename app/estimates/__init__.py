"""Label-free accuracy estimates (api.md, "Guarantees"): compute, store, list."""
