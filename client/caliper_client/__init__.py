"""caliper-client: talk to a Caliper service from Python (`CaliperClient`) or from CI (`caliper gate --url`)."""

from caliper_client.client import CaliperClient, CaliperError, RetryAfterTransport

__all__ = ["CaliperClient", "CaliperError", "RetryAfterTransport"]
