"""Pure logic of the test-infrastructure scripts (the services themselves are exercised by
every integration test)."""
from __future__ import annotations

import runpy
import uuid
from pathlib import Path

SCRIPT = Path(__file__).parent / "infra" / "kraft_cluster_id.py"


def test_kraft_cluster_id_never_starts_with_a_dash(monkeypatch, capsys):
    # 0xF8 encodes to "-" as the first base64 character: the storage tool would take it for an option
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    runpy.run_path(str(SCRIPT))
    cid = capsys.readouterr().out.strip()
    assert cid == "AQEBAQEBAQEBAQEBAQEBAQ"
    assert next(draws, None) is None  # the dashed draw was refused, the second one taken

