"""Static checks of docker-compose.yml and the files it mounts (no Docker needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
#: The Compose Specification's JSON schema (Apache-2.0), schema/compose-spec.json of
#: github.com/compose-spec/compose-spec at 170098ba07d9f53c383a41bfd4c5166b0a4529a6.
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"

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
    assert {"kafka", "redis", "topics", "worker", "loadgen", "prometheus", "grafana"} <= set(compose["services"])


def test_valid_against_the_compose_specification(compose):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    broken = {"services": {"worker": {"image": "npo-stream:0.1.0", "restrat": "always"}}}
    assert not validator.is_valid(broken)  # the schema does reject a misspelt key


def test_the_image_is_built_once(compose):
    """One service builds the project's image; the others run that tag and never pull or build
    it, so parallel builds of the same tag cannot collide."""
    builders = [name for name, svc in compose["services"].items() if "build" in svc]
    assert builders == ["topics"]
    image = compose["services"]["topics"]["image"]
    users = [name for name, svc in compose["services"].items() if svc.get("image") == image]
    assert set(users) == {"topics", "worker", "loadgen"}
    for name in set(users) - {"topics"}:
        assert compose["services"][name].get("pull_policy") == "never", name
    # the worker starts only after the builder ran, loadgen after the worker
    assert "topics" in compose["services"]["worker"]["depends_on"]
    assert "worker" in compose["services"]["loadgen"]["depends_on"]


def test_healthcheck_only_where_there_is_a_worker(compose):
    """The image's HEALTHCHECK asks /healthz; one-off commands in the same image turn it off."""
    for name in ("topics", "loadgen"):
        assert compose["services"][name]["healthcheck"] == {"disable": True}
    assert "healthcheck" not in compose["services"]["worker"]  # the image's own
    assert compose["services"]["worker"]["stop_grace_period"] == "90s"
    assert "NPO_STATE_DIR" not in compose["services"]["worker"]["environment"]  # the image's default


def test_prometheus_scrapes_the_worker(compose):
    svc = compose["services"]["prometheus"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in svc["volumes"])
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert "--config.file=/etc/prometheus/prometheus.yml" in svc["command"]
    (job,) = config["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    port = int(compose["services"]["worker"]["environment"]["NPO_METRICS_PORT"])
    assert sd["names"] == ["worker"] and sd["port"] == port
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_grafana_provisions_the_datasource_and_dashboard(compose):
    svc = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in svc["volumes"])
    for host in mounts:
        assert (ROOT / host).exists(), host
    provisioning = ROOT / "deploy/grafana/provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards/npo.yml").read_text())["providers"]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/npo.json").read_text())
    assert svc["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == provider["options"]["path"] + "/npo.json"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])


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
    assert published == {9092, 6379, 9090, 3000}
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
