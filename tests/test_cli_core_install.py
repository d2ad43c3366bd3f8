"""`pip install .` without the `kafka` extra must be enough for the quick start: the CLI
builds and `npo demo --help` works with the Kafka, Redis and metrics libraries absent."""
from __future__ import annotations

import subprocess
import sys

EXTRAS = ["aiokafka", "confluent_kafka", "redis", "prometheus_client", "cramjam", "faust"]

PROBE = f"""
import sys
for name in {EXTRAS!r}:
    sys.modules[name] = None  # any import of it now raises ImportError
from streams.cli import build_parser
parser = build_parser()
for argv in (["demo", "--help"], ["replay", "--help"], ["bench", "kernels", "--help"], ["validate", "--help"]):
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        assert e.code == 0, argv
print("ok")
"""


def test_the_cli_builds_without_the_kafka_extra():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
