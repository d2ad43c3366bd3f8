"""A partition stage's or a monitor's state as bytes, and back: the body of a checkpoint.

msgpack (msgspec) of the plain values the operators' `dump` methods return;
numpy arrays travel as a msgpack extension holding dtype, shape and raw
little-endian bytes, checked on the way back. Nothing is unpickled or
evaluated, and a blob that does not decode to the expected shape is refused.

A piece is one msgpack document ({"format", "kind", "state"}), or, streamed, a sequence of
msgpack bins: the document, whose "tail" names a list in its state that it holds empty, then
that list's items, each encoded in a bin of its own. A streamed piece is written while its
tail is still being taken (`stream_pieces`), so a large join never waits whole in memory for
its write; a reader finds the items' ends from the bins' headers.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import cramjam
import msgspec
import numpy as np

from kernels.held_ids import HeldColumn

FORMAT = 4
"""Of a whole piece. 4: the join keeps its scores in pages, which code that read format 3 would
not find, so it refuses these; 3: the join's score keys are numbered in arrival order; 2:
coverage by decision time, label states, partials numbered per partition. Formats 2 and 3 are
still read (their join is converted as it loads)."""
DELTA_FORMAT = 5
"""Of a delta piece. 5: scores in pages, as in format 4; 4: score keys as in format 3; 3: its
join entries are the write batches in order, where a score's expiry is its batch's expiry
entry's deletion (which the same delta may have put): code that read format 2 would keep
such scores. Formats 2 to 4 are still read."""
_READS = {False: {2, 3, FORMAT}, True: {2, 3, 4, DELTA_FORMAT}}  # formats read, by whether the piece is a delta
_ARRAY_EXT = 1
_DTYPES = {"<f8": np.float64, "<i8": np.int64, "<u8": np.uint64}


class SnapshotError(ValueError):
    """A checkpoint that cannot be taken back."""


def _array_bytes(obj: np.ndarray) -> tuple[str, list[int], memoryview]:
    """(dtype, shape, bytes) of an array as a checkpoint holds it: little-endian, in C order,
    the bytes a view of the array's own unless its byte order or layout must change."""
    a = np.ascontiguousarray(obj)
    dtype = a.dtype.newbyteorder("<").str
    if dtype not in _DTYPES:
        raise TypeError(f"arrays of {a.dtype} are not checkpointed")
    return dtype, list(a.shape), memoryview(a.astype(dtype, copy=False).reshape(-1).view(np.uint8))


def _enc_hook(obj):
    if isinstance(obj, HeldColumn):
        obj = obj.array()
    if isinstance(obj, np.ndarray):
        return msgspec.msgpack.Ext(_ARRAY_EXT, msgspec.msgpack.encode(_array_bytes(obj)))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"cannot checkpoint {type(obj).__name__}")


def _ext_hook(code: int, data: memoryview):
    if code != _ARRAY_EXT:
        raise SnapshotError(f"unknown extension type {code}")
    dtype, shape, raw = msgspec.msgpack.decode(data, type=tuple[str, list[int], bytes])
    if dtype not in _DTYPES or any(n < 0 for n in shape) or len(raw) != math.prod(shape) * 8:
        raise SnapshotError(f"array of {dtype} {shape} does not match its {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype).astype(_DTYPES[dtype]).reshape(shape)


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def encode(kind: str, state: dict) -> bytes:
    """`state` (a stage's or monitor's dump plus the worker's own fields) as bytes."""
    return _encoder.encode(_document(kind, state))


def _document(kind: str, state: dict) -> dict:
    """What a checkpoint piece encodes: `state` under its format and kind."""
    return {"format": DELTA_FORMAT if kind.endswith(".delta") else FORMAT, "kind": kind, "state": state}


BIG_ARRAY_BYTES = 1 << 20
"""Arrays this large are encoded as views of their bytes by `stream_pieces`, not copied; a
`HeldColumn` is read in slices of this size."""


def stream_pieces(kind: str, state: dict, tail: tuple[str, ...],
                  items: Iterator) -> Iterator[bytes | memoryview | None]:
    """A streamed piece of `state` (see the module's docstring) in pieces whose concatenation
    is its bytes: the document first (the list at `tail`, nested keys of `state`, must be
    empty), its arrays of `BIG_ARRAY_BYTES` or more as views of their own bytes (not copied,
    and let go of once given); then each of `items`, taken as it is needed, followed by None,
    which marks where a compressor may end a frame (`checkpoints.Framer`)."""
    doc = {**_document(kind, state), "tail": list(tail)}
    del state
    head = list(_pieces(doc))
    del doc
    yield _bin_header(sum(p.nbytes if isinstance(p, HeldColumn) else len(p) for p in head))
    head.reverse()
    while head:
        piece = head.pop()
        if isinstance(piece, HeldColumn):
            yield from _held_bytes(piece)
        else:
            yield piece
    for item in items:
        data = _encoder.encode(item)
        yield _bin_header(len(data))
        yield data
        yield None


def _pieces(value) -> Iterator[bytes | memoryview | HeldColumn]:
    """`_encoder.encode(value)` in pieces: maps' headers written here, large arrays as views,
    held columns as themselves (their bytes are read as they are written)."""
    if isinstance(value, dict):
        yield _header(len(value), 0x80, b"\xde", b"\xdf")
        for key, item in value.items():
            yield _encoder.encode(key)
            yield from _pieces(item)
    elif isinstance(value, np.ndarray) and value.nbytes >= BIG_ARRAY_BYTES:
        dtype, shape, raw = _array_bytes(value)
        yield _array_header(dtype, shape, len(raw))
        yield raw
    elif isinstance(value, HeldColumn):  # its bytes read only as they are given (`_held_bytes`)
        yield _array_header(np.dtype(value.dtype).newbyteorder("<").str, list(value.shape), value.nbytes)
        yield value
    else:
        yield _encoder.encode(value)


def _held_bytes(column: HeldColumn) -> Iterator[memoryview]:
    """A held column's bytes as an array's are encoded, read from its table a slice at a time."""
    given = 0
    for piece in column.slices(BIG_ARRAY_BYTES):
        raw = _array_bytes(piece)[2]
        given += len(raw)
        yield raw
    if given != column.nbytes:
        raise RuntimeError(f"held ids gave {given} bytes of {column.nbytes}")


def _array_header(dtype: str, shape: list[int], nbytes: int) -> bytes:
    """What `_enc_hook` encodes of an array before its `nbytes` bytes: the ext's header, then
    [dtype, shape, bin] up to the bin's contents."""
    inner = _encoder.encode([dtype, shape, b""])[:-2] + _bin_header(nbytes)
    size = len(inner) + nbytes
    fixed = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}.get(size)
    return (fixed or _sized(size, b"\xc7", b"\xc8", b"\xc9")) + bytes([_ARRAY_EXT]) + inner


_BIN_WIDTHS = {0xC4: 1, 0xC5: 2, 0xC6: 4}
"""msgpack's bin marks (8-, 16- and 32-bit forms) and the bytes of the length after each."""


def _bin_header(n: int) -> bytes:
    """msgpack's header of a bin of `n` bytes."""
    return _sized(n, b"\xc4", b"\xc5", b"\xc6")


def _header(n: int, fix: int, two: bytes, four: bytes) -> bytes:
    """msgpack's header of a map or an array of `n` items (the fix form's first byte, then
    the marks of the 16-bit and the 32-bit forms)."""
    return bytes([fix | n]) if n < 16 else _sized(n, None, two, four)


def _sized(n: int, one: bytes | None, two: bytes, four: bytes) -> bytes:
    """A msgpack mark followed by `n` in the fewest bytes its forms allow (8-bit, with `one`;
    16-bit; 32-bit)."""
    if one is not None and n < 1 << 8:
        return one + bytes([n])
    return two + n.to_bytes(2, "big") if n < 1 << 16 else four + n.to_bytes(4, "big")


def decode(kind: str, blob: bytes) -> dict:
    """The state `encode` or `stream_pieces` was given (a streamed piece's tail put back in its
    place); SnapshotError if `blob` is not a `kind` checkpoint."""
    streamed = bool(blob) and blob[0] in _BIN_WIDTHS
    bins = _bins(blob) if streamed else [blob]
    try:
        doc = _decoder.decode(bins[0])
        items = [_decoder.decode(b) for b in bins[1:]]
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise SnapshotError(f"undecodable checkpoint: {e}") from e
    formats = _READS[kind.endswith(".delta")]
    if not isinstance(doc, dict) or doc.get("format") not in formats or doc.get("kind") != kind:
        raise SnapshotError(f"not a format-{'/'.join(map(str, sorted(formats)))} {kind} checkpoint")
    if streamed:
        _tail_list(doc, kind).extend(items)
    return doc["state"]


def _bins(blob: bytes) -> list[memoryview]:
    """The contents of the msgpack bins `blob` is a sequence of; SnapshotError unless it is one."""
    view, at, out = memoryview(blob), 0, []
    while at < len(view):
        width = _BIN_WIDTHS.get(view[at])
        start = at + 1 + (width or 0)
        if width is None or start > len(view):
            raise SnapshotError(f"undecodable checkpoint: no bin at byte {at} of a streamed piece")
        end = start + int.from_bytes(view[at + 1:start], "big")
        if end > len(view):
            raise SnapshotError(f"undecodable checkpoint: a bin at byte {at} runs past the piece's end")
        out.append(view[start:end])
        at = end
    return out


def _tail_list(doc: dict, kind: str) -> list:
    """The empty list a streamed piece's document names as its tail."""
    tail, at = doc.get("tail"), doc.get("state")
    if not isinstance(tail, list) or not tail:
        raise SnapshotError(f"a streamed {kind} checkpoint without a tail")
    for key in tail:
        at = at.get(key) if isinstance(at, dict) and isinstance(key, str) else None
    if type(at) is not list or at:
        raise SnapshotError(f"a streamed {kind} checkpoint's tail {tail!r} is not an empty list of its state")
    return at


def decode_chain(kind: str, blobs: list[bytes]) -> dict:
    """The state of a chain of checkpoint pieces (`kind` whole, then `kind`.delta ones): the
    last piece's state, with the whole piece's "stage" and the deltas' ones, in order, under
    "deltas" (none for a single piece). SnapshotError as `decode` raises it."""
    first = decode(kind, blobs[0])
    if len(blobs) == 1:
        return first
    deltas = [decode(f"{kind}.delta", blob) for blob in blobs[1:]]
    return {**deltas[-1], "stage": first["stage"], "deltas": [d["stage"] for d in deltas]}


MAX_PART_BYTES = 256 << 20
"""A join part declaring a larger size is refused."""


def pack_part(raw: bytes) -> list:
    """One slice of a checkpoint's join entries, zstd-compressed as it is taken (so the whole
    checkpoint's compression costs little: what is left is small or already compressed)."""
    return [len(raw), bytes(cramjam.zstd.compress(raw))]


def unpack_part(part) -> bytes:
    """The slice `pack_part` packed; SnapshotError if it does not decompress to its size."""
    try:
        size, data = part
        if not (isinstance(size, int) and 0 <= size <= MAX_PART_BYTES and isinstance(data, bytes)):
            raise ValueError(f"bad part header {size!r}")
        out = bytearray(size)
        if cramjam.zstd.decompress_into(data, out) != size:
            raise ValueError(f"shorter than its declared {size} bytes")
    except (ValueError, TypeError, cramjam.DecompressionError) as e:
        raise SnapshotError(f"join part of a checkpoint: {e}") from e
    return bytes(out)
