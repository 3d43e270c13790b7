"""SDM uncertainty: fit, store and score the similarity-distance-magnitude estimator (sdm.md)."""
