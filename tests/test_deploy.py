"""Static checks of the Dockerfile and deploy/kubernetes/ (no Docker, no cluster): the
manifests are valid Kubernetes objects and agree with each other, the settings and the image."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from streams.settings import Settings, env_names, load  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
#: The oldest Kubernetes release the manifests are checked against (strict: unknown fields fail).
KUBERNETES_VERSION = "1.30.0"


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text().replace("\\\n", " ")


@pytest.fixture(scope="module")
def objects() -> dict[str, dict]:
    out = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def pod(objects) -> dict:
    return objects["Deployment"]["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    (c,) = pod["containers"]
    return c


def test_manifests_are_valid_kubernetes(objects):
    assert set(objects) == {"Deployment", "ConfigMap", "Secret", "PodDisruptionBudget", "Service"}
    for obj in objects.values():
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    broken = {**objects["Deployment"], "spec": {**objects["Deployment"]["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_probes_ask_the_health_endpoints_on_the_metrics_port(objects, container):
    config = objects["ConfigMap"]["data"]
    (port,) = container["ports"]
    assert port["containerPort"] == int(config["NPO_METRICS_PORT"]) == Settings().metrics_port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    # a liveness failure needs the loop stalled for the whole --liveness-timeout-s first
    assert container["args"][:2] == ["npo", "worker"] and "--liveness-timeout-s" in container["args"]


def test_settings_come_from_the_configmap_and_the_password_from_the_secret(objects, container):
    config, secret = objects["ConfigMap"]["data"], objects["Secret"]["stringData"]
    assert container["envFrom"] == [{"configMapRef": {"name": objects["ConfigMap"]["metadata"]["name"]}}]
    assert set(config) <= set(env_names()), set(config) - set(env_names())
    assert all(isinstance(v, str) for v in config.values())  # a ConfigMap holds strings only
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= set(env_names())
    for name, entry in env.items():  # only secrets are set one by one, each from the Secret
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] == objects["Secret"]["metadata"]["name"] and ref["key"] in secret
        assert "value" not in entry and name not in config
    assert "NPO_KAFKA_SASL_PASSWORD" in env
    assert not any("PASSWORD" in k for k in config)
    # the example's settings are a valid configuration once the secret is there
    settings = load(env={**config, "NPO_KAFKA_SASL_PASSWORD": secret["kafka-sasl-password"]})
    assert settings.kafka_security_protocol.startswith("SASL") and settings.state_dir.startswith("/")


def test_runs_as_the_image_user_with_a_writable_state_dir(objects, pod, container):
    dockerfile = _dockerfile()
    uid = re.search(r"^USER\s+(\d+)", dockerfile, re.M).group(1)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == uid == "10001"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    state_dir = objects["ConfigMap"]["data"]["NPO_STATE_DIR"]
    numba_cache = re.search(r"\bNUMBA_CACHE_DIR=(\S+)", dockerfile).group(1)
    for path in (state_dir, numba_cache):  # written at run time: under a mounted volume
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), path


def test_grace_period_covers_the_stop_checkpoint(pod):
    """A SIGTERM checkpoints every partition that moved, whole, then leaves the groups:
    seconds for large join stores, well inside the grace period (Kubernetes' default, 30 s,
    is raised)."""
    assert pod["terminationGracePeriodSeconds"] >= 60


def test_disruption_budget_and_service_select_the_workers(objects):
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in objects["Service"]["spec"]["ports"]] == ["metrics"]


def test_the_image_has_a_writable_state_dir_by_default():
    """`docker run IMAGE` with no variable: STATE_DIR is an absolute directory the image
    creates and gives to its non-root user."""
    dockerfile = _dockerfile()
    state_dir = re.search(r"\bNPO_STATE_DIR=(\S+)", dockerfile).group(1)
    assert state_dir.startswith("/")
    assert re.search(r"^USER\s+10001(:10001)?\s*$", dockerfile, re.M)
    run = " ".join(re.findall(r"^RUN\s+(.*)$", dockerfile, re.M))
    assert f"mkdir -p {state_dir}" in run or re.search(rf"mkdir -p [^&]*\b{re.escape(state_dir)}\b", run)
    owned = re.search(r"chown -R 10001:10001 (\S+)", run).group(1)
    assert state_dir.startswith(owned.rstrip("/") + "/")
    assert re.search(r"^HEALTHCHECK\s.*?/healthz", dockerfile, re.M)
