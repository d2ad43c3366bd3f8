"""Events the worker publishes: window statistics (schema `window_stats`) and triggers."""
from __future__ import annotations

import math

import msgspec

from streams.events import WindowStats
from streams.operators.aggregate import WindowResult

_FIELDS = set(WindowStats.__struct_fields__)


def _integer_fields(struct) -> set[str]:
    """Fields the schema types as integers (counts): written as ints, since the kernels sum
    them as floats and a strict reader refuses 3.0 for an integer."""
    def integer(t) -> bool:
        return isinstance(t, msgspec.inspect.IntType) or (
            isinstance(t, msgspec.inspect.UnionType) and any(map(integer, t.types)))
    return {f.name for f in msgspec.inspect.type_info(struct).fields if integer(f.type)}


_COUNTS = _integer_fields(WindowStats)


def _value(name: str, v: float):
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        return None
    return int(round(v)) if name in _COUNTS else v


def window_stats_events(res: WindowResult, version: str, final: bool = True) -> list[tuple[bytes, dict]]:
    """(Kafka key, event) per key of a window result."""
    out = []
    for i, (policy_id, segment) in enumerate(res.keys):
        stats = {name: _value(name, col[i]) for name, col in res.stats.items() if name in _FIELDS}
        event = {"type": "window_stats", "v": 1, "policy_id": policy_id, "segment": segment,
                 "window": {"kind": res.kind if res.kind != "early" else "tumbling", "start": res.start,
                            "end": res.end},
                 "final": final, "stats": stats, "late_events": int(res.stats["late_events"][i]),
                 "config_version": version}
        out.append((stats_key(policy_id, segment), event))
    return out


def stats_key(policy_id: str, segment: str) -> bytes:
    return msgspec.json.encode([policy_id, segment])
