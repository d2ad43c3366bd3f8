"""Shared fixtures: the real Kafka broker and Redis (tests/services.py), and the split of
the suite into the tests that can share those services and the ones that stop them."""
import pytest

pytest_plugins = ["tests.services"]

SERVICE_CONTROLS = {"kafka_service", "redis_service"}


def pytest_addoption(parser):
    parser.addoption("--phase", choices=("all", "shared", "serial"), default="all",
                     help="shared: only the tests that leave the broker and Redis running (safe to run in "
                          "parallel with pytest-xdist); serial: only the tests that stop or restart them; "
                          "all (default): every test")


def pytest_collection_modifyitems(config, items):
    """A test that stops or restarts a shared service is marked `serial`: run beside others,
    it would take their broker or Redis away mid-test."""
    phase = config.getoption("--phase")
    keep, drop = [], []
    for item in items:
        serial = bool(SERVICE_CONTROLS & set(getattr(item, "fixturenames", ())))
        if serial:
            item.add_marker(pytest.mark.serial)
        (keep if phase == "all" or serial == (phase == "serial") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
