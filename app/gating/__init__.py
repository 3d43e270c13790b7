"""Model gating for CI: rules over two stored evaluations, with bootstrap significance."""
