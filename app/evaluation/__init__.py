"""Evaluations: losses and metrics of given predictions, stored with their per-row arrays."""
