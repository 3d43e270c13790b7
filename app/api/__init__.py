"""HTTP layer: decode, call the domain services, answer; errors as RFC 9457 problem+json."""
