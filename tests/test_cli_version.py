"""`npo --version` prints the installed distribution's version, for bug reports."""
from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_npo_version_prints_the_package_version():
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "--version"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"npo {version('npo-stream')}"
