"""Kafka plumbing: client set-up, authentication, codecs and envelopes, trace headers, lag."""
