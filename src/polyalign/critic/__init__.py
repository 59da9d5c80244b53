"""The critic: a bucket-conditioned estimate of how far a response lies from its bucket's human support."""
