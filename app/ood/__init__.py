"""Out-of-distribution scoring and evaluation."""
