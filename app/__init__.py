"""Caliper: how far to trust a classifier — losses, calibration, OOD and SDM scores as a service."""

__version__ = "0.1.0"
