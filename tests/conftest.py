"""Shared fixtures: the real Kafka broker and Redis (tests/services.py)."""

pytest_plugins = ["tests.services"]
