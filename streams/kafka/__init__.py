"""Kafka plumbing: admin, producer client, consumers; the only place Kafka clients are imported."""
