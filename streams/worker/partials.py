"""Wire format of the internal `partials` topic: closed panes, late rows and early snapshots of
one input partition, for the keys of one partials partition.

An input partition numbers the parts it sends to each partials partition 1, 2, 3, ... (a
`Partials`, or a chunk of one with many keys: see `chunks`), the same way on every replay.
A message carries consecutive parts and the number of its first:

- version 2 (written by default): msgpack array ``[2, input_partition, first, width, parts]``,
  each part ``[closed_through, early, keys, panes, rows, idle]``; a round's parts for one
  partials partition travel together, up to about `MESSAGE_BYTES`;
- version 1: one part a message, ``[input_partition, seq, closed_through, early, keys, panes,
  width, rows, idle]``, written with ``NPO_PARTIALS_FORMAT=1`` for workers that read no other.

Both are read. An idleness note is number 0: one part with `idle` set and no rows. Decoding is
msgspec's typed msgpack (never pickle); rows travel as raw little-endian float64 and are
checked against the declared shape.
"""
from __future__ import annotations

from typing import Literal

import msgspec
import numpy as np

from streams.operators.windows import Partials

VERSIONS = (1, 2)
MAX_ROWS = 1_000_000
"""A message holding more rows is refused as malformed."""
ROWS_PER_PART = 1_000
"""Rows of one part at most (83 float64 each: about 660 KB), under the 1 MB that Kafka clients
and brokers accept by default, however many keys close a pane together. Part of the
numbering: a replay must cut its `Partials` into the same parts."""
MESSAGE_BYTES = 900_000
"""What `batches` puts in one message at most, by its estimate (a larger part goes alone)."""

Unit = tuple[Partials, np.ndarray, int]
"""A part to send: rows `select` of a `Partials`, reporting `closed_through`."""


class MessageV1(msgspec.Struct, array_like=True, gc=False):
    """A version 1 message: one part."""

    input_partition: int
    seq: int
    closed_through: int
    early: bool
    keys: list[tuple[str, str]]
    panes: list[int]
    width: int
    rows: bytes
    idle: bool = False


class WirePart(msgspec.Struct, array_like=True, gc=False):
    """A part of a version 2 message."""

    closed_through: int
    early: bool
    keys: list[tuple[str, str]]
    panes: list[int]
    rows: bytes
    idle: bool = False


class MessageV2(msgspec.Struct, array_like=True, gc=False):
    """A version 2 message: parts first, first + 1, ... of one input partition."""

    version: Literal[2]
    input_partition: int
    first: int
    width: int
    parts: list[WirePart]


_V2 = b"\x95"  # a msgpack array of five: version 1 arrays have eight or nine
_decode_v1 = msgspec.msgpack.Decoder(MessageV1).decode
_decode_v2 = msgspec.msgpack.Decoder(MessageV2).decode
_encoder = msgspec.msgpack.Encoder()


def chunks(p: Partials, select: np.ndarray) -> list[Unit]:
    """The units that carry rows `select` of `p`, at most ROWS_PER_PART rows each. Only the
    last reports `p`'s progress: the others of a closed pane report that pane as still open, so
    it is not taken for final before all its rows have arrived (late rows and early snapshots
    report no progress of their own)."""
    pieces = [select[i:i + ROWS_PER_PART] for i in range(0, len(select), ROWS_PER_PART)] or [select]
    on_time = not p.early and len(p.panes) and int(p.panes.min()) >= 0
    before = int(p.panes.min()) if on_time else p.closed_through
    return [(p, piece, p.closed_through if i == len(pieces) - 1 else before) for i, piece in enumerate(pieces)]


def batches(units: list[Unit], width: int, version: int = 2) -> list[list[Unit]]:
    """`units` in order, cut into messages: of at most MESSAGE_BYTES by a generous estimate
    (every character of a key taken as four bytes of UTF-8), a unit larger than that alone;
    in version 1, one a message."""
    if version == 1:
        return [[unit] for unit in units]
    out: list[list[Unit]] = []
    size = MESSAGE_BYTES + 1
    for unit in units:
        p, select, _ = unit
        keys = p.keys
        grow = 64 + (8 * width + 24) * len(select) + 4 * sum(len(keys[i][0]) + len(keys[i][1]) for i in select)
        if size + grow > MESSAGE_BYTES:
            out.append([])
            size = 0
        out[-1].append(unit)
        size += grow
    return out


def _part(p: Partials, select: np.ndarray, closed_through: int) -> WirePart:
    rows = np.ascontiguousarray(p.rows[select], dtype="<f8")
    return WirePart(closed_through, p.early, [p.keys[i] for i in select], p.panes[select].tolist(), rows.tobytes(),
                    p.idle)


def encode(units: list[Unit], input_partition: int, first: int, width: int, version: int = 2) -> bytes:
    """A message of `units`, numbered from `first` (0: an idleness note); version 1 holds one."""
    parts = [_part(*unit) for unit in units]
    if version == 2:
        return _encoder.encode(MessageV2(2, input_partition, first, width, parts))
    (part,) = parts
    return _encoder.encode(MessageV1(input_partition, first, part.closed_through, part.early, part.keys, part.panes,
                                     width, part.rows, part.idle))


def idleness_note(input_partition: int, width: int, version: int = 2) -> bytes:
    """The unnumbered note that `input_partition` is idle."""
    return encode([(Partials.empty(width, 0, idle=True), np.empty(0, np.int64), 0)], input_partition, 0, width, version)


def decode(data: bytes, width: int) -> tuple[int, int, list[Partials]]:
    """(input partition, number of the first part, the parts) of a message of either version;
    ValueError if it is malformed."""
    if not isinstance(data, bytes):
        raise ValueError(f"a partials message is bytes, not {type(data).__name__}")
    try:
        if data[:1] == _V2:
            m = _decode_v2(data)
            inp, first, got_width, parts = m.input_partition, m.first, m.width, m.parts
        else:
            m = _decode_v1(data)
            inp, first, got_width = m.input_partition, m.seq, m.width
            parts = [WirePart(m.closed_through, m.early, m.keys, m.panes, m.rows, m.idle)]
    except msgspec.DecodeError as e:
        raise ValueError(f"undecodable partials message: {e}") from e
    if got_width != width:
        raise ValueError(f"partials message of width {got_width} (expected {width})")
    if first < 0 or not parts:
        raise ValueError(f"partials message numbered {first} with {len(parts)} parts")
    if sum(len(part.keys) for part in parts) > MAX_ROWS:
        raise ValueError(f"partials message of more than {MAX_ROWS} rows")
    if (first == 0 or any(part.idle for part in parts)) and not (
            first == 0 and len(parts) == 1 and parts[0].idle and not parts[0].keys):
        raise ValueError("partials message: an idleness note is one part, with no rows and no number")
    return inp, first, [_partials(part, width) for part in parts]


def _partials(part: WirePart, width: int) -> Partials:
    n = len(part.keys)
    if part.idle and part.early:
        raise ValueError("partials message: an idleness note is no early snapshot")
    if len(part.panes) != n or len(part.rows) != 8 * n * width:
        raise ValueError(f"partials message shape mismatch: {n} keys, {len(part.panes)} panes, "
                         f"{len(part.rows)} bytes of rows of width {width}")
    rows = np.frombuffer(part.rows, dtype="<f8").reshape(n, width).astype(np.float64)
    return Partials([tuple(k) for k in part.keys], np.array(part.panes, dtype=np.int64), rows, early=part.early,
                    closed_through=part.closed_through, idle=part.idle)
