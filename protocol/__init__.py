"""The p2ptls wire specification, its known-answer vectors and their (test-only) generator."""
