"""Static checks of docker-compose.yml (no Docker needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"

from streams.settings import Settings, env_names

KNOWN_NPO_VARS = set(env_names())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _published_host_ports(service: dict) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):  # long syntax
            ports.add(int(entry["published"]))
        else:  # "[ip:]host:container[/proto]" or "container"
            parts = str(entry).split("/")[0].split(":")
            ports.add(int(parts[-2] if len(parts) >= 2 else parts[-1]))
    return ports


def _env_names(service: dict) -> set[str]:
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return set(env)
    return {str(item).split("=", 1)[0] for item in env}


def test_services_exist(compose):
    assert {"kafka", "redis", "topics", "worker", "loadgen"} <= set(compose["services"])


def test_commands_are_npo_subcommands(compose):
    from streams.cli import build_parser

    parser = build_parser()
    for name, svc in compose["services"].items():
        command = svc.get("command") or []
        if command[:1] == ["npo"]:
            args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown command
            assert callable(args.run), name


def test_worker_waits_for_its_topics(compose):
    assert compose["services"]["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert compose["services"]["topics"]["command"] == ["npo", "topics", "create"]


def test_ports_agree_with_the_defaults(compose):
    defaults = Settings()
    assert defaults.kafka_bootstrap_servers.endswith(":9092") and defaults.redis_url.startswith("redis://127.0.0.1:6379")
    assert compose["services"]["worker"]["environment"]["NPO_METRICS_PORT"] == str(defaults.metrics_port)
    assert compose["services"]["worker"]["expose"] == [str(defaults.metrics_port)]


def test_images_are_pinned(compose):
    for name, svc in compose["services"].items():
        image = svc.get("image")
        if image is None:
            assert "build" in svc, f"{name}: neither image nor build"
            continue
        repo, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} uses 'latest'"


def test_kafka_image_is_major_4(compose):
    image = compose["services"]["kafka"]["image"]
    tag = image.rpartition(":")[2]
    assert int(tag.split(".")[0]) == 4, image


def test_published_ports(compose):
    published = set()
    for svc in compose["services"].values():
        published |= _published_host_ports(svc)
    assert published == {9092, 6379}
    assert _published_host_ports(compose["services"]["kafka"]) == {9092}
    assert _published_host_ports(compose["services"]["redis"]) == {6379}


def test_worker_wiring(compose):
    env = compose["services"]["worker"]["environment"]
    assert env["NPO_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["NPO_REDIS_URL"] == "redis://redis:6379/0"
    assert compose["services"]["loadgen"].get("profiles") == ["loadtest"]


def test_only_known_npo_variables(compose):
    used = set(re.findall(r"\bNPO_[A-Z0-9_]+", COMPOSE.read_text()))
    for svc in compose["services"].values():
        used |= {n for n in _env_names(svc) if n.startswith("NPO_")}
    assert used, "compose file sets no NPO_* variables"
    unknown = used - KNOWN_NPO_VARS
    assert not unknown, f"unknown NPO_* variables in docker-compose.yml: {sorted(unknown)}"
