"""Calibration: fit, store, apply and export calibrators."""
