"""Wire format of the internal `partials` topic: one partition's closed panes for some keys.

msgpack through msgspec's typed decoder (never pickle); rows travel as raw
little-endian float64 and are checked against the declared shape.
"""
from __future__ import annotations

import msgspec
import numpy as np

from streams.operators.windows import Partials

MAX_ROWS = 1_000_000
"""A message holding more rows is refused as malformed."""
ROWS_PER_MESSAGE = 1_000
"""Rows of one message at most (83 float64 each: about 660 KB), under the 1 MB that Kafka
clients and brokers accept by default, however many keys close a pane together."""


class PartialMessage(msgspec.Struct, array_like=True, gc=False):
    input_partition: int
    seq: int  # 1, 2, ... per (input partition, partials partition); replays repeat it. 0: an idleness note
    closed_through: int
    early: bool
    keys: list[tuple[str, str]]
    panes: list[int]
    width: int
    rows: bytes
    idle: bool = False


_decoder = msgspec.msgpack.Decoder(PartialMessage)
_encoder = msgspec.msgpack.Encoder()


def chunks(p: Partials, select: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """(rows, closed_through) of each message that carries rows `select` of `p`, at most
    ROWS_PER_MESSAGE rows each. Only the last reports `p`'s progress: the others of a closed
    pane report that pane as still open, so it is not taken for final before all its rows
    have arrived (late rows and early snapshots report no progress of their own)."""
    parts = [select[i:i + ROWS_PER_MESSAGE] for i in range(0, len(select), ROWS_PER_MESSAGE)] or [select]
    on_time = not p.early and len(p.panes) and int(p.panes.min()) >= 0
    before = int(p.panes.min()) if on_time else p.closed_through
    return [(part, p.closed_through if i == len(parts) - 1 else before) for i, part in enumerate(parts)]


def encode(p: Partials, input_partition: int, seq: int, select: np.ndarray | None = None,
           closed_through: int | None = None) -> bytes:
    """One message with the rows `select` (all by default) of `p`, reporting `closed_through`
    (by default `p`'s)."""
    idx = np.arange(len(p.keys)) if select is None else select
    rows = np.ascontiguousarray(p.rows[idx], dtype="<f8")
    progress = p.closed_through if closed_through is None else closed_through
    return _encoder.encode(PartialMessage(input_partition, seq, progress, p.early,
                                          [p.keys[i] for i in idx], p.panes[idx].tolist(),
                                          p.rows.shape[1], rows.tobytes(), p.idle))


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
    if m.idle and (n or m.seq != 0):
        raise ValueError("partials message: an idleness note carries no rows and no number")
    return m.input_partition, m.seq, Partials(keys, np.array(m.panes, dtype=np.int64), rows, early=m.early,
                                              closed_through=m.closed_through, idle=m.idle)
