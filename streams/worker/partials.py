"""Wire format of the internal `partials` topic: one partition's closed panes for some keys.

msgpack through msgspec's typed decoder (never pickle); rows travel as raw
little-endian float64 and are checked against the declared shape.
"""
from __future__ import annotations

import msgspec
import numpy as np

from streams.operators.windows import Partials

MAX_ROWS = 1_000_000


class PartialMessage(msgspec.Struct, array_like=True, gc=False):
    input_partition: int
    seq: int  # increases with every message a partition sends; replays repeat it
    closed_through: int
    early: bool
    keys: list[tuple[str, str]]
    panes: list[int]
    width: int
    rows: bytes


_decoder = msgspec.msgpack.Decoder(PartialMessage)
_encoder = msgspec.msgpack.Encoder()


def encode(p: Partials, input_partition: int, seq: int, select: np.ndarray | None = None) -> bytes:
    """One message with the rows `select` (all by default) of `p`."""
    idx = np.arange(len(p.keys)) if select is None else select
    rows = np.ascontiguousarray(p.rows[idx], dtype="<f8")
    return _encoder.encode(PartialMessage(input_partition, seq, p.closed_through, p.early,
                                          [p.keys[i] for i in idx], p.panes[idx].tolist(),
                                          p.rows.shape[1], rows.tobytes()))


def decode(data: bytes, width: int) -> tuple[int, int, Partials]:
    """(input partition, seq, partials); ValueError if the message is malformed."""
    try:
        m = _decoder.decode(data)
    except msgspec.DecodeError as e:
        raise ValueError(f"undecodable partials message: {e}") from e
    n = len(m.keys)
    if m.width != width or len(m.panes) != n or len(m.rows) != 8 * n * width or n > MAX_ROWS:
        raise ValueError(f"partials message shape mismatch: {n} keys, width {m.width} (expected {width})")
    rows = np.frombuffer(m.rows, dtype="<f8").reshape(n, width).astype(np.float64)
    keys = [tuple(k) for k in m.keys]
    return m.input_partition, m.seq, Partials(keys, np.array(m.panes, dtype=np.int64), rows, early=m.early,
                                              closed_through=m.closed_through)
