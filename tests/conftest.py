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
    for item in items:
        if SERVICE_CONTROLS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.serial)
    phase = config.getoption("--phase")
    if phase == "all":
        return
    serial = phase == "serial"
    keep = [i for i in items if (i.get_closest_marker("serial") is not None) == serial]
    config.hook.pytest_deselected(items=[i for i in items if (i.get_closest_marker("serial") is not None) != serial])
    items[:] = keep
