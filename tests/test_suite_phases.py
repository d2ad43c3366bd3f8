"""tests/run.sh runs the suite in two phases (`--phase shared` over pytest-xdist, then
`--phase serial` alone): every test lands in exactly one, and the tests that stop or restart
the shared broker or Redis land in the serial one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ["tests/integration/test_services.py", "tests/integration/test_broker_restart.py"]


def _collected(phase: str) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "--phase", phase, *FILES], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 5), out.stdout + out.stderr
    return {line for line in out.stdout.splitlines() if "::" in line}


def test_each_test_runs_in_one_phase_and_service_restarts_run_alone():
    every, shared, serial = _collected("all"), _collected("shared"), _collected("serial")
    assert serial == {"tests/integration/test_services.py::test_redis_set_get_and_restart",
                      "tests/integration/test_broker_restart.py::test_a_broker_restart_mid_run_loses_and_doubles_nothing"}
    assert shared and not shared & serial and shared | serial == every
