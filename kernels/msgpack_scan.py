"""Where the values of a msgpack map or array lie, and how deeply each nests, without decoding them.

Why: a columnar envelope that fails its typed decode is taken apart cell by cell so that one
bad row costs only itself. Decoding it whole would recurse into any nesting (a cell nested a
few thousand levels deep fails the whole message) and build every container a hostile message
holds (an 8 MB message of empty maps makes 600 MB of dicts). These loops only walk the bytes,
with an explicit stack, so depth costs nothing and memory is what the caller asks for.

Depth counts containers: a scalar is 0, ``[]`` is 1, ``[[1]]`` is 2.

>>> import msgspec
>>> data = np.frombuffer(msgspec.msgpack.encode({"a": [[1]], "zz": 2, "b": "x"}), np.uint8)
>>> status, start, end, depth = map_fields(data, 0, *names([b"a", b"b", b"c"]))
>>> int(status), depth.tolist(), bytes(data[start[1]:end[1]]), int(start[2])
(0, [2, 0, -1], b'\\xa1x', -1)
>>> status, count, start, end, depth = array_items(data, int(start[0]), 10)
>>> int(status), int(count), depth.tolist()
(0, 1, [1])
"""
from __future__ import annotations

import numba
import numpy as np

OK, NOT_THIS_KIND, MALFORMED, TOO_MANY = 0, 1, 2, 3
"""Statuses: the value was taken apart; it is not a map (an array); the bytes are not msgpack
(a reserved byte, or the value runs past the end); the array holds more items than allowed."""


def warm_up() -> None:
    """Run every kernel once: Numba loads (or compiles) each on first use, half a second or
    more that would otherwise fall in the first batch with a columnar envelope that fails its
    typed decode."""
    data = np.frombuffer(b"\x81\xa1a\x92\x01\x91\x02", np.uint8)  # {"a": [1, [2]]}
    value_end(data, 0)
    _, start, _, _ = map_fields(data, 0, *names([b"a"]))
    array_items(data, int(start[0]), 2)


def names(wanted: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Key names for :func:`map_fields`: their UTF-8 bytes joined, and where each ends."""
    return np.frombuffer(b"".join(wanted) or b"\0", np.uint8), np.cumsum([len(w) for w in wanted]).astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _be(buf, at, size):
    """The unsigned big-endian integer of `size` bytes at `at`."""
    value = 0
    for i in range(size):
        value = (value << 8) | np.int64(buf[at + i])
    return value


@numba.njit(cache=True, nogil=True)
def _head(buf, at):
    """(header size, payload bytes, items, is a container) of the value at `at`: a container
    holds `items` values after its header (a map two an entry, key and value), anything else
    `payload` bytes after it. Header size -1 if the header runs past the end or is the
    reserved byte 0xc1."""
    n = buf.shape[0]
    if at >= n:
        return -1, 0, 0, False
    b = np.int64(buf[at])
    if b <= 0x7F or b >= 0xE0 or b == 0xC0 or b == 0xC2 or b == 0xC3:
        return 1, 0, 0, False
    if b <= 0x8F:
        return 1, 0, 2 * (b & 0x0F), True
    if b <= 0x9F:
        return 1, 0, b & 0x0F, True
    if b <= 0xBF:
        return 1, b & 0x1F, 0, False
    if b == 0xC1:
        return -1, 0, 0, False
    if b == 0xCA or b == 0xCE or b == 0xD2:
        return 1, 4, 0, False
    if b == 0xCB or b == 0xCF or b == 0xD3:
        return 1, 8, 0, False
    if b == 0xCC or b == 0xD0:
        return 1, 1, 0, False
    if b == 0xCD or b == 0xD1:
        return 1, 2, 0, False
    if 0xD4 <= b <= 0xD8:  # fixext 1, 2, 4, 8, 16: a type byte and the data
        return 1, 1 + (1 << (b - 0xD4)), 0, False
    # a length of 1, 2 or 4 bytes follows: str, bin, ext (then a type byte), array, map
    size = 1 if b in (0xC4, 0xC7, 0xD9) else 2 if b in (0xC5, 0xC8, 0xDA, 0xDC, 0xDE) else 4
    if at + 1 + size > n:
        return -1, 0, 0, False
    length = _be(buf, at + 1, size)
    if b == 0xC7 or b == 0xC8 or b == 0xC9:
        return 2 + size, length, 0, False
    if b == 0xDC or b == 0xDD:
        return 1 + size, 0, length, True
    if b == 0xDE or b == 0xDF:
        return 1 + size, 0, 2 * length, True
    return 1 + size, length, 0, False


@numba.njit(cache=True, nogil=True)
def _skip(buf, at):
    """(end, depth) of the value at `at`; end -1 if it is malformed."""
    stack = np.empty(64, np.int64)  # items still to come in each open container
    top, depth = 0, 0
    n = buf.shape[0]
    while True:
        header, payload, items, container = _head(buf, at)
        if header < 0 or at + header + payload > n:
            return -1, 0
        at += header + payload
        if container:
            depth = max(depth, top + 1)
            if items > 0:
                if top == stack.shape[0]:
                    grown = np.empty(2 * top, np.int64)
                    grown[:top] = stack
                    stack = grown
                stack[top] = items
                top += 1
                continue
        while top > 0:  # a value ended: it may end the containers around it
            stack[top - 1] -= 1
            if stack[top - 1] > 0:
                break
            top -= 1
        if top == 0:
            return at, depth


@numba.njit(cache=True, nogil=True)
def value_end(buf, at):
    """Where the value at `at` ends; -1 if it is malformed."""
    return _skip(buf, at)[0]


@numba.njit(cache=True, nogil=True)
def map_fields(buf, at, wanted, wanted_ends):
    """(status, start, end, depth) of the values the map at `at` holds under each wanted key
    (a str key whose bytes are `wanted[wanted_ends[k-1]:wanted_ends[k]]`); start -1 for a
    key it lacks; the last of repeated keys wins. Other keys and their values are skipped."""
    k = wanted_ends.shape[0]
    start, end, depth = np.full(k, -1, np.int64), np.full(k, -1, np.int64), np.full(k, -1, np.int64)
    header, _, items, _ = _head(buf, at)
    if header < 0:
        return MALFORMED, start, end, depth
    b = buf[at]
    if not (0x80 <= b <= 0x8F or b == 0xDE or b == 0xDF):
        return NOT_THIS_KIND, start, end, depth
    at += header
    for _ in range(items // 2):
        key_header, key_payload, _, _ = _head(buf, at)
        key_end, _ = _skip(buf, at)
        if key_end < 0:
            return MALFORMED, start, end, depth
        value_end, value_depth = _skip(buf, key_end)
        if value_end < 0:
            return MALFORMED, start, end, depth
        kb = buf[at]
        if 0xA0 <= kb <= 0xBF or 0xD9 <= kb <= 0xDB:  # a str key: is it one of the wanted?
            name_at = at + key_header
            lo = 0
            for j in range(k):
                hi = wanted_ends[j]
                if hi - lo == key_payload:
                    same = True
                    for i in range(key_payload):
                        if buf[name_at + i] != wanted[lo + i]:
                            same = False
                            break
                    if same:
                        start[j], end[j], depth[j] = key_end, value_end, value_depth
                lo = hi
        at = value_end
    return OK, start, end, depth


@numba.njit(cache=True, nogil=True)
def array_items(buf, at, most):
    """(status, count, start, end, depth) of the items of the array at `at`; TOO_MANY, with
    nothing taken apart, if it holds more than `most`."""
    header, _, items, _ = _head(buf, at)
    none = np.zeros(0, np.int64)
    if header < 0:
        return MALFORMED, 0, none, none, none
    b = buf[at]
    if not (0x90 <= b <= 0x9F or b == 0xDC or b == 0xDD):
        return NOT_THIS_KIND, 0, none, none, none
    if items > most:
        return TOO_MANY, items, none, none, none
    if items > buf.shape[0] - at - header:  # each item takes a byte at least: the count is a lie
        return MALFORMED, items, none, none, none
    start, end, depth = np.empty(items, np.int64), np.empty(items, np.int64), np.empty(items, np.int64)
    at += header
    for i in range(items):
        value_end, value_depth = _skip(buf, at)
        if value_end < 0:
            return MALFORMED, items, none, none, none
        start[i], end[i], depth[i] = at, value_end, value_depth
        at = value_end
    return OK, items, start, end, depth
