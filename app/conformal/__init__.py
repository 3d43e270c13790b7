"""Split conformal prediction sets (api.md, "Guarantees"): fit, store, predict, export."""
