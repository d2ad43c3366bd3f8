"""Score pages: how the join stores a batch's scores, up to 256 to a RocksDB value.

Why: a key a score cost a Python call to encode its value and another to put it, and as many
entries to expire, to log for a delta and to dump in a whole checkpoint. A page is built from
the batch's columns by numpy, and scores are read back by cutting their rows out of their
pages where they lie and reading them with numpy: fixed-width rows (score, tau and event time
as float64, the decision's code, and the page's own codes for policy_id and segment) and the
page's strings, one msgpack pair.

Scores are numbered (serials) in arrival order, and a batch's first serial starts a page
(:func:`first_serial`), so the score with serial `s` is row `s % PAGE_ROWS` of page
`s // PAGE_ROWS`, and every page holds the scores of one batch: it is written once, with
its batch, and deleted with it.

>>> columns = (["p", "q"], ["seg", "seg"], [0.5, 1.0], [0.25, 0.5], ["hold", "act"], [10.0, 11.0])
>>> first = first_serial(0)
>>> pages = dict(zip(batch_page_keys(first, 2), map(encode_page, page_tables(columns))))
>>> rows_at(np.array([first + 1, first]), lambda keys: [pages.get(k) for k in keys])
[('q', 'seg', 1.0, 0.5, 'act', 11.0), ('p', 'seg', 0.5, 0.25, 'hold', 10.0)]
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from operator import getitem

import msgspec
import numpy as np

from kernels.layout import DECISIONS
from streams.operators.records import DECISION

PAGE_ROWS = 256
PREFIX = b"p:"
"""A page's key: the prefix and its number (serial // PAGE_ROWS) as 8 big-endian bytes, so
pages sort in arrival order."""
_ROW = np.dtype([("score", "<f8"), ("tau", "<f8"), ("ts", "<f8"), ("policy", "<u2"), ("segment", "<u2"),
                 ("decision", "u1")])  # packed: 29 bytes a score
_SHARED_STRINGS = 32
"""A batch with up to this many policy and segment names gives each page all of them."""

Columns = tuple[Sequence[str], Sequence[str], Sequence[float], Sequence[float], Sequence[str], Sequence[float]]
"""A batch's scores as columns: policy_id, segment, score, tau, decision, event time."""
Page = tuple[bytes, list[str]]
"""A page's rows (packed `_ROW`s) and the strings their codes name."""
_encode = msgspec.msgpack.Encoder().encode
_PAGE = msgspec.msgpack.Decoder(Page)
RECENT_PAGES = 256
"""Pages `RecentPages` holds by default: 65,536 scores, some 2 MB a partition."""


def first_serial(last: int) -> int:
    """The serial of the next batch's first score, after serials up to `last`: the first of
    the next page."""
    return (last // PAGE_ROWS + 1) * PAGE_ROWS


def batch_page_keys(first: int, n: int) -> list[bytes]:
    """The keys of the pages of a batch of `n` scores numbered from `first`."""
    return page_keys(np.arange(first // PAGE_ROWS, (first + n - 1) // PAGE_ROWS + 1))


def page_keys(pages) -> list[bytes]:
    """The keys of pages numbered `pages`."""
    return numbered_keys(PREFIX, pages)


def numbered_keys(prefix: bytes, numbers) -> list[bytes]:
    """Keys of a two-byte `prefix` and each number as 8 big-endian bytes, so they sort in the
    numbers' order (built as one array: a Python format a key costs nine times as much)."""
    numbers = np.asarray(numbers, ">u8")
    keys = np.empty((len(numbers), 10), np.uint8)
    keys[:, :2] = np.frombuffer(prefix, np.uint8)
    keys[:, 2:] = numbers.view(np.uint8).reshape(-1, 8)
    return keys.view("V10").ravel().tolist()


def page_tables(columns: Columns) -> list[Page]:
    """A batch's pages, in order, as (rows, strings): rows `PAGE_ROWS` at a time. Strings are
    coded once for the batch; a batch with many is coded again per page, so a page holds only
    those it uses."""
    policy, segment, score, tau, decision, ts = columns
    n = len(policy)
    rows = np.empty(n, _ROW)
    rows["score"], rows["tau"], rows["ts"] = score, tau, ts
    rows["decision"] = np.fromiter(map(DECISION.__getitem__, decision), np.uint8, n)
    strings = list(dict.fromkeys(chain(policy, segment)))
    code = dict(zip(strings, range(len(strings))))
    codes = np.fromiter(map(code.__getitem__, chain(policy, segment)), np.int64, 2 * n)
    pages = []
    for lo in range(0, n, PAGE_ROWS):
        hi = min(n, lo + PAGE_ROWS)
        page, names = rows[lo:hi], strings
        if len(strings) <= _SHARED_STRINGS:
            page["policy"], page["segment"] = codes[lo:hi], codes[n + lo:n + hi]
        else:
            used, own = np.unique(np.concatenate((codes[lo:hi], codes[n + lo:n + hi])), return_inverse=True)
            page["policy"], page["segment"] = own[:hi - lo], own[hi - lo:]
            names = [strings[u] for u in used.tolist()]
        pages.append((page.tobytes(), names))
    return pages


def encode_page(page: Page) -> bytes:
    """A page as the store holds it: one msgpack pair of its rows and its strings."""
    return _encode(page)


class RecentPages:
    """The newest pages written, up to `size`, as (rows, strings) by page number: feedback
    mostly comes soon after its score, and reading its page back from the store and decoding
    it was most of what joining it cost. Whoever writes and deletes the pages keeps this in
    step (:meth:`add`, :meth:`forget`, :meth:`clear`)."""

    def __init__(self, size: int = RECENT_PAGES) -> None:
        self.size = size
        self._pages: dict[int, Page] = {}  # in page order: each batch's pages come after the last

    def __len__(self) -> int:
        return len(self._pages)

    def get(self, page: int) -> Page | None:
        return self._pages.get(page)

    def add(self, first: int, pages: list[Page]) -> None:
        """Pages numbered from `first` on, newer than any held; the oldest go past `size`."""
        self._pages.update(zip(range(first, first + len(pages)), pages))
        while len(self._pages) > self.size:
            del self._pages[next(iter(self._pages))]

    def forget(self, pages: Iterable[int]) -> None:
        """Drop pages numbered `pages` (deleted from the store), those held."""
        for page in pages:
            self._pages.pop(page, None)

    def clear(self) -> None:
        self._pages.clear()


def page_rows(value: bytes) -> int:
    """How many scores page `value` holds; ValueError if it is not a page (a state's entries
    are checked as they are taken)."""
    return len(_table(value)[0])


def _decode_page(value: bytes) -> Page:
    try:
        return _PAGE.decode(value)
    except msgspec.DecodeError as e:
        raise ValueError(f"score page: {e}") from e


def _table(value: bytes) -> tuple[np.ndarray, list[str]]:
    """A page's rows and strings; ValueError if `value` is not a page."""
    raw, strings = _decode_page(value)
    if not 0 < len(raw) <= PAGE_ROWS * _ROW.itemsize or len(raw) % _ROW.itemsize:
        raise ValueError(f"score page: {len(raw)} bytes of rows")
    rows = np.frombuffer(raw, _ROW)
    if max(rows["policy"].max(), rows["segment"].max()) >= len(strings) or rows["decision"].max() >= len(DECISIONS):
        raise ValueError("score page: a code with no string or decision")
    return rows, strings


def rows_at(serials, fetch: Callable[[list[bytes]], list[bytes | None]], recent: RecentPages | None = None
            ) -> list[tuple]:
    """The scores numbered `serials` as rows (policy_id, segment, score, tau, decision, event
    time), in that order (:func:`columns_at`, read across)."""
    policy, segment, score, tau, decision, ts = columns_at(serials, fetch, recent)
    return list(zip(policy, segment, score.tolist(), tau.tolist(), decision, ts.tolist()))


def columns_at(serials, fetch: Callable[[list[bytes]], list[bytes | None]], recent: RecentPages | None = None
               ) -> Columns:
    """The scores numbered `serials` as columns (policy_id, segment and decision as lists, the
    numbers as float64 arrays), in that order; their pages taken from `recent` where it holds
    them, else read with `fetch` (keys to values, None where there is none), once each, and
    their rows cut out of them and read by numpy (a page is 256 rows: joining the pages whole
    would copy tens of times what is read). KeyError for a score not stored."""
    serials = np.asarray(serials, np.int64)
    if not len(serials):
        return [], [], np.zeros(0), np.zeros(0), [], np.zeros(0)
    pages, which = np.unique(serials // PAGE_ROWS, return_inverse=True)
    tables = list(map(recent.get, pages.tolist())) if recent is not None else [None] * len(pages)
    missing = [i for i, table in enumerate(tables) if table is None]
    for i, value in zip(missing, fetch(page_keys(pages[missing])) if missing else ()):
        if value is None:
            raise KeyError(f"score page {int(pages[i])} is not stored")
        tables[i] = _decode_page(value)
    raws, names = [raw for raw, _ in tables], [strings for _, strings in tables]
    size = np.fromiter(map(len, raws), np.int64, len(raws))
    held = size // _ROW.itemsize  # rows of each page
    row = serials % PAGE_ROWS
    if (size % _ROW.itemsize).any():
        raise ValueError("score page: its rows are not whole")
    if (row >= held[which]).any():
        raise KeyError("a score beyond its page's rows is not stored")
    at = row * _ROW.itemsize
    rows = np.frombuffer(b"".join(map(getitem, map(raws.__getitem__, which.tolist()),
                                      map(slice, at.tolist(), (at + _ROW.itemsize).tolist()))), _ROW)
    n_names = np.fromiter(map(len, names), np.int64, len(names))
    if (np.maximum(rows["policy"], rows["segment"]) >= n_names[which]).any():
        raise ValueError("score page: a code with no string")
    first_name = (np.cumsum(n_names) - n_names)[which]  # where each row's page's strings start in `strings`
    strings = list(chain.from_iterable(names))
    return (list(map(strings.__getitem__, (first_name + rows["policy"]).tolist())),
            list(map(strings.__getitem__, (first_name + rows["segment"]).tolist())),
            rows["score"].copy(), rows["tau"].copy(), list(map(DECISIONS.__getitem__, rows["decision"].tolist())),
            rows["ts"].copy())
