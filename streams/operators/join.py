"""Join feedback that carries only a scenario_id to its score event, in either order.

Scores wait for their feedback, and feedback waits for its score, for a
horizon of event time (default 7 days), on disk in RocksDB (rocksdict in
raw mode: bytes only, nothing stored is ever unpickled). Writes go in one
atomic batch per call; the expiry index has one entry per batch, not per
event. What outlives the horizon is counted: expired scores and unmatched
feedback (returned, so the caller can dead-letter it).

Scores are numbered in arrival order (serials) and kept in pages of up to 256, a batch's
own, under keys that follow that order (:mod:`streams.operators.score_pages`), so RocksDB
appends them to its memtable rather than inserting each at a random place, and a batch of
4,000 scores is a few entries to write, expire, log and dump instead of 4,000. A scenario's
scores are found through a compiled index from the scenario to its latest score's serial
(:mod:`kernels.scenario_index`, rebuilt from the store after a load). A scenario scored more
than once (rare, but some ids are scored again and again) also keeps a key per score,
`r:<sid>\\0<serial>`, so all of its scores are found and feedback can take the one its event
time asks for (:func:`pick`). The same store remembers, per labelled scenario, whether it was
labelled before and the first labels of its audit pair (:meth:`FeedbackJoin.labels`): the
states a batch changed are kept in that batch's expiry entry, a byte a scenario beside its id,
and a compiled table (:mod:`kernels.label_states`) holds the latest, merged from the entries
after a load; a state is forgotten with the last of its entries, to the millisecond, as
scores are. A key a labelled scenario, as the earlier layouts kept them, cost a put in no
order (about 2 µs in RocksDB's memtable) for each first label.

What each write batch since the last checkpoint put or deleted is logged in order, its keys
and their values as one LZ4-compressed msgpack array pair, so a checkpoint can hold just that
(:meth:`FeedbackJoin.changes_lazily`) without reading the store back, and a load can take it
on top of the earlier ones (:meth:`FeedbackJoin.apply`). The log costs about 20 bytes a score
(half its size uncompressed: the batch's scenario ids and the pages' rows), in one buffer a
batch, which a malloc trim can hand back: it grows between a partition's checkpoints. Expired
scores are not in it: the deletion of their batch's expiry entry implies theirs.
"""
from __future__ import annotations

import logging
import math
import tempfile
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from itertools import islice
from operator import itemgetter
from typing import NamedTuple

import cramjam
import msgspec
import numpy as np
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteBufferManager, WriteOptions

from kernels.label_states import LabelStates
from kernels.scenario_index import ScenarioIndex
from streams.operators.dedup import digests_of_bytes
from streams.operators.score_pages import (
    PAGE_ROWS,
    PREFIX as _PAGE,
    Columns,
    batch_page_keys,
    columns_at,
    first_serial,
    numbered_keys,
    page_rows,
    RecentPages,
    encode_page,
    page_tables,
    rows_at,
)

log = logging.getLogger(__name__)
_SCORE, _FEEDBACK, _EXPIRY = b"s:", b"f:", b"x:"  # s: a score each, in states of layouts 1 and 2
_RESCORED = b"r:"  # per score of a scenario scored more than once: r:<sid>\0<serial>, empty value
_LABELS = b"l:"  # in states of layouts 1 to 3, per labelled scenario: (channel label, audit state, event time)
_SERIAL = b"m:serial"  # last serial given to a score
_MAX_SERIAL = 1 << 62  # the scenario index holds a serial shifted by a bit in an int64
_LAYOUT = 4
"""Of the stored keys, in a state's counters: 4 keeps the label states a batch changed in its
expiry entry, where the layouts before it kept a key a labelled scenario (`l:`); 3 and 4 keep
scores in pages (`p:`), where 2 kept a key a score (`s:<serial>`), and 1, without a layout,
`s:<sid>\\0<n>`. States of the earlier layouts are converted as they are taken
(:meth:`FeedbackJoin._take`)."""
_encode, _decode = msgspec.msgpack.encode, msgspec.msgpack.decode


class Context(NamedTuple):
    """What a feedback event needs from its decision."""

    policy_id: str
    segment: str
    score: float
    tau: float
    decision: str
    ts: float


class Contexts:
    """Decisions' contexts as columns (policy_id, segment, score, tau, decision, ts; the
    numbers as lists or float64 arrays), read as rows of Python values like a list of
    6-tuples: a row is built when asked for (`contexts[i]`), or handed out one at a time by
    iterating. A tuple a score cost its allocation and freeing for every score of a batch,
    where only the few that feedback joins are ever read as rows; and the store takes the
    numbers' arrays as they are (:mod:`streams.operators.score_pages`)."""

    __slots__ = ("columns",)

    def __init__(self, policy_id: list[str], segment: list[str], score, tau, decision: list[str], ts) -> None:
        self.columns = (policy_id, segment, score, tau, decision, ts)

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, i: int) -> tuple:
        if not isinstance(i, int):
            raise TypeError(f"Contexts are indexed by row number, not {type(i).__name__}")
        policy_id, segment, score, tau, decision, ts = self.columns
        return policy_id[i], segment[i], float(score[i]), float(tau[i]), decision[i], float(ts[i])

    def __iter__(self) -> Iterator[tuple]:
        policy_id, segment, score, tau, decision, ts = self.columns
        return zip(policy_id, segment, *map(_floats, (score, tau)), decision, _floats(ts))


def _floats(values) -> list[float]:
    return values.tolist() if isinstance(values, np.ndarray) else values


class Pending(NamedTuple):
    """A feedback event waiting for its score."""

    scenario_id: str
    event_id: str
    ts: float
    kind: str
    source: str
    preferred: str
    weight: float
    pair: int = -1  # audit-pair code this feedback completed on arrival (kernels.layout.PAIR_*)
    repeat: bool = False  # its scenario was labelled before (FeedbackJoin.labels)


def pick(contexts: list, ts: float):
    """The score feedback at event time `ts` joins, of its scenario's `contexts` (in arrival
    order, event time at index 5): the latest at or before `ts`, else the earliest; equal
    event times count in arrival order. Event time, not delivery order, so a re-scored
    scenario's feedback gets the same score however the scores were delivered."""
    if len(contexts) == 1:
        return contexts[0]
    before = [c for c in contexts if c[5] <= ts]
    if before:
        return max(reversed(before), key=itemgetter(5))  # max keeps the first: the last to arrive
    return min(contexts, key=itemgetter(5))


def _parked_key(key: bytes) -> tuple[bytes, int]:
    """(scenario id, number) of a parked feedback key `f:<sid>\\0<16 digits>`. The number is
    read from the end, as a scenario id may itself hold NUL bytes."""
    rest = key[2:]
    return rest[:-17], int(rest[-16:])


def _scores_batch(refs: bytes) -> tuple[int, list[bytes]]:
    """(serial of the first score, scenario ids in arrival order) of an "N" expiry entry's value:
    the batch's scores have the serials that follow."""
    return _decode(refs, type=tuple[int, list[bytes]])


def _checked_batch(refs: bytes, pages: dict[bytes, int], serial: int) -> int:
    """The number of scores an "N" expiry entry of a state lists, its pages taken out of
    `pages` (page key: rows): ValueError unless its first serial starts a page, its scores
    are numbered up to `serial` at most, and `pages` holds each of its pages with all of
    their rows (a page is listed once, so no expiry deletes another batch's page)."""
    try:
        first, ids = _scores_batch(refs)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ValueError(f"score expiry entry: {e}") from e
    if not ids or first % PAGE_ROWS or not 0 < first <= serial - len(ids) + 1:
        raise ValueError(f"score expiry entry of {len(ids)} scores from serial {first} (the last is {serial})")
    keys = batch_page_keys(first, len(ids))
    for i, key in enumerate(keys):
        rows = PAGE_ROWS if i < len(keys) - 1 else (len(ids) - 1) % PAGE_ROWS + 1
        if pages.pop(key, None) != rows:
            raise ValueError(f"score expiry entry from serial {first}: page {i} of {len(keys)} missing or not "
                             f"of {rows} rows")
    return len(ids)


def _check_expiry_key(key: bytes) -> None:
    """ValueError unless `key` is an expiry entry's: `x:`, 16 digits of event time in ms, 8 of
    its number and a kind (N, F or L). A label entry's states are stamped with that time."""
    if len(key) != 27 or not key[2:26].isdigit() or key[26:] not in (b"N", b"F", b"L"):
        raise ValueError(f"expiry entry key {key[:40]!r}")


_LABEL_FIELDS = np.zeros(256, np.bool_)
_LABEL_FIELDS[[1, 2, 4, 8, 13, 14]] = True
"""A label state's low four bits (`LabelStates`), as an "L" expiry entry holds them: a channel
label alone (1, 2), an audit label alone (4, 8), or a channel label and a complete pair (13, 14)."""


def _label_batch(refs: bytes) -> tuple[list[bytes], np.ndarray]:
    """(scenario ids, the label fields of their states as uint8) of an "L" expiry entry's value:
    the states its batch left them in. ValueError unless each id has one, and each is a state."""
    try:
        ids, fields = _decode(refs, type=tuple[list[bytes], bytes])
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ValueError(f"label expiry entry: {e}") from e
    states = np.frombuffer(fields, np.uint8)
    if len(states) != len(ids) or not _LABEL_FIELDS[states].all():
        raise ValueError(f"label expiry entry of {len(ids)} scenarios and {len(states)} states, not all labels")
    return ids, states


def _page_keys(batch: tuple[int, list[bytes]]) -> list[bytes]:
    """The keys of the pages of a batch of scores, as an "N" expiry entry lists it (`_scores_batch`)."""
    first, ids = batch
    return batch_page_keys(first, len(ids))


def _serial_keys(serials) -> list[bytes]:
    """The keys a state of layout 2 gave scores numbered `serials`: `s:` and the serial as 8
    big-endian bytes."""
    return numbered_keys(_SCORE, serials)


def _scenario_keys(ids: list[bytes]) -> np.ndarray:
    """What the scenario index knows a scenario by, (n, 2) uint64: half of its murmur3 digest,
    and Python's own hash of its bytes (SipHash under a secret drawn per process, unless
    PYTHONHASHSEED fixes it). murmur3 is not keyed, and ids that share a digest can be
    crafted for any seed; an index keyed by it alone would let one scenario's score be joined
    to another's feedback. The index is rebuilt from the ids a process holds, so the secret
    need not persist."""
    keys = np.empty((len(ids), 2), np.uint64)
    keys[:, 0] = digests_of_bytes(ids)[:, 0]
    keys[:, 1] = np.fromiter(map(hash, ids), np.int64, len(ids)).view(np.uint64)
    return keys


_CONTEXTS = msgspec.msgpack.Decoder(list[Context])


def _contexts(values: list[bytes]) -> list[Context]:
    """Score values of a state of layout 1 or 2 (msgpack arrays, a score each) as contexts,
    in one decode: a msgpack array of them is their concatenation after an array header."""
    return _CONTEXTS.decode(b"\xdd" + len(values).to_bytes(4, "big") + b"".join(values))


def _columns_of(contexts: Sequence[tuple]) -> tuple:
    """Contexts (a list of tuples, or `Contexts`) as their six columns."""
    if isinstance(contexts, Contexts):
        return contexts.columns
    return tuple(list(map(itemgetter(i), contexts)) for i in range(6))


def _rescored_keys(ids: list[bytes], serials) -> list[bytes]:
    """The `r:` keys of scores numbered `serials` of scenarios `ids`."""
    return [_RESCORED + i + b"\x00" + int(s).to_bytes(8, "big") for i, s in zip(ids, serials)]


def _legacy_score_keys(first: int, ids: list[bytes]) -> list[bytes]:
    """The keys a state without `_LAYOUT` gave a batch's scores: `s:<id>\\0<first + n>`, n
    the id's earlier occurrences in the batch."""
    seen: Counter = Counter()
    keys = []
    for i in ids:
        keys.append(_SCORE + i + b"\x00%016d" % (first + seen[i]))
        seen[i] += 1
    return keys


SLICE_BYTES = 4 << 20
"""A slice of a checkpoint's join entries ends once its keys and values reach this size, if
its rows have not ended it before: an expiry entry lists its whole batch's scenario ids (some
40 KB), so the few thousand of a large store, a row each, made one slice of 150 MB that took
a round over a second and as many megabytes again to encode."""


def _slices(entries: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    """`entries` in lists of about `size` rows or `SLICE_BYTES` bytes, whichever comes first, a
    score page counted as the `PAGE_ROWS` scores it may hold (else a slice of pages would hold
    256 times the scores of one of other keys, and a round that takes it would pause the
    stream as long)."""
    chunk: list[tuple] = []
    rows = nbytes = 0
    for entry in entries:
        chunk.append(entry)
        rows += PAGE_ROWS if entry[0][:2] == _PAGE else 1
        nbytes += len(entry[0]) + len(entry[1] or b"")
        if rows >= size or nbytes >= SLICE_BYTES:
            yield chunk
            chunk, rows, nbytes = [], 0, 0
    if chunk:
        yield chunk


_TRACK_MIN = 100_000
"""Rows always logged for the next delta; beyond it, at most half the store's rows (an entry
is a row, a score page as many as it holds scores)."""


class _Going(NamedTuple):
    """Scores about to be deleted, with what the scenario index says of their scenarios."""

    ids: list[bytes]
    digests: np.ndarray
    serials: np.ndarray
    latest: np.ndarray
    rescored: np.ndarray

    def rescored_keys(self) -> list[bytes]:
        """The `r:` keys of those of re-scored scenarios."""
        at = np.flatnonzero(self.rescored).tolist()
        return _rescored_keys([self.ids[i] for i in at], self.serials[at])


class Changes(NamedTuple):
    """What `FeedbackJoin.take_changes` took: the write batches since the take before, each as
    an LZ4 block of the msgpack pair (keys, their values, None where deleted), in the order
    they were written (:func:`_batch_entries`), None when more changed than is tracked (half
    the store's rows); and how many rows they hold (an entry each, a score page its scores)."""

    log: list[bytes] | None
    rows: int


def _logged_batch(keys: list[bytes], values: list[bytes | None]) -> bytes:
    return bytes(cramjam.lz4.compress_block(_encode((keys, values))))


def _batch_entries(logged: bytes) -> Iterator[tuple[bytes, bytes | None]]:
    """The (key, value) entries of a batch `_logged_batch` gave, in order."""
    keys, values = _decode(cramjam.lz4.decompress_block(logged))
    return zip(keys, values)


_WHOLE, _CHANGES = list[tuple[bytes, bytes]], list[tuple[bytes, bytes | None]]  # a state's entries


def _entries(part: bytes, entries_type) -> list:
    """The (key, value) entries of one part of a state; ValueError if it holds anything else."""
    try:
        return _decode(part, type=entries_type)
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as e:
        raise ValueError(f"join state: {e}") from e


def _millis(ts: float) -> int:
    """Event time in whole milliseconds, as expiry keys and label states hold it."""
    return max(0, int(ts * 1000))


def _noting_labels(entries: Iterator[tuple], relabelled: set[bytes]) -> Iterator[tuple]:
    """`entries` as they are, noting in `relabelled` the scenario of each `l:` key among them."""
    for entry in entries:
        if entry[0][:2] == _LABELS:
            relabelled.add(entry[0][2:])
        yield entry


def _legacy_label_fields(value: bytes | int) -> int:
    """The label fields (a byte) of a label state as an `l:` key of layouts 1 to 3 held it,
    `(channel label, audit state, event time)`; a byte of fields is taken as it is."""
    if isinstance(value, int):
        return value
    try:
        channel, audit, _ = _decode(value, type=tuple[int, int, float])
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ValueError(f"join state: label state: {e}") from e
    fields = ((audit + 1) << 2 | (channel + 1)) if -1 <= channel <= 1 and -1 <= audit <= 2 else 0
    if not _LABEL_FIELDS[fields]:
        raise ValueError(f"join state: label state ({channel}, {audit}) holds no label")
    return fields


class FeedbackJoin:
    """Disk-backed two-way join with an event-time horizon, batch at a time."""

    def __init__(self, path: str | None = None, horizon_s: float = 7 * 86_400.0, expire_every_s: float = 60.0,
                 write_buffers: WriteBufferManager | None = None, block_cache: Cache | None = None):
        """`write_buffers`, `block_cache`: a memtable budget and a cache of read blocks shared
        with other stores (a worker's partitions); without them each store may hold two 64 MB
        memtables and a 32 MB cache of its own, so RAM would grow with partitions."""
        if horizon_s <= 0:
            raise ValueError("horizon_s must be > 0")
        self.horizon_s, self.expire_every_s = horizon_s, expire_every_s
        self.write_buffers, self.block_cache = write_buffers, block_cache  # outlive the store
        self._tmp = None if path else tempfile.TemporaryDirectory(prefix="npo-join-")
        options = Options(raw_mode=True)
        if write_buffers is not None:  # memtables a quarter of the budget: four stores fit it
            options.set_write_buffer_manager(write_buffers)
            options.set_write_buffer_size(min(64 << 20, max(1 << 20, write_buffers.get_buffer_size() // 4)))
        if block_cache is not None:
            tables = BlockBasedOptions()
            tables.set_block_cache(block_cache)
            options.set_block_based_table_factory(tables)
        self.db = Rdict(path or self._tmp.name, options=options)
        # no write-ahead log: this store lives as long as its stage; a restarted worker loads
        # the stage from its checkpoint on Kafka, never from this directory
        self._write = WriteOptions()
        self._write.disable_wal = True
        self._waiting: dict[str, int] = {}  # scenario_id -> parked feedback count (small: the rare case)
        self._parked = 0  # feedback parked so far: numbers their keys, so release keeps arrival order
        self._serial = 0  # the last serial given to a score (kept in the store: `_SERIAL`)
        self._by_scenario: ScenarioIndex | None = None  # built from the store when first asked
        self._recent = RecentPages()  # the newest score pages, as the store holds them
        self._labelled: LabelStates | None = None  # likewise
        self._clock = float("-inf")
        self._last_expiry = float("-inf")
        self.expired_scores = 0
        self.unmatched_feedback = 0
        # the write batches since the last checkpoint (see `Changes`); None until a checkpoint is
        # taken or loaded (a store never checkpointed keeps no log)
        self._log: list[bytes] | None = None
        self._logged = 0  # rows in the log
        # past this many logged rows the log is dropped and the next checkpoint is whole
        self._track_limit = _TRACK_MIN
        self._changed_all = False
        self._note_stored()
        # a reopened store's expiry keys go on numbering after its own, so none is overwritten
        # (a load takes the numbering from its state instead)
        self._seq = max([0, *(int(key[18:26]) for key in self._keys(_EXPIRY))])
        # the scores stored (the rows of the score pages), of a reopened store too
        self._scores = sum(len(_scores_batch(refs)[1]) for key, refs in self._items(_EXPIRY) if key[-1:] == b"N")

    def _note_stored(self) -> None:
        """Take the parked-feedback counts and the key serial from the store's entries."""
        self._waiting = {}
        for key in self._keys(_FEEDBACK):
            self._note_parked(key)
        self._serial = int(self.db.get(_SERIAL) or 0)

    def _scenarios(self) -> ScenarioIndex:
        """The index of every stored score's scenario: each score expiry entry lists a batch's
        scenarios, which hold the serials after its first; a scenario with `r:` keys is
        marked as scored more than once (it may have one score left)."""
        if self._by_scenario is None:
            index = ScenarioIndex()
            for key, value in self._items(_EXPIRY):  # a batch at a time: RAM stays the index's
                if key[-1:] == b"N":
                    first, ids = _scores_batch(value)
                    index.merge(_scenario_keys(ids), np.arange(first, first + len(ids)))
            rescored = _scenario_keys(list({key[2:-9] for key in self._keys(_RESCORED)}))
            latest, _ = index.get(rescored)
            index.replace(rescored, latest, latest, np.ones(len(latest), np.bool_))
            self._by_scenario = index  # kept only once whole: a build that fails is tried again
        return self._by_scenario

    def _expiry_slices(self, kind: bytes) -> Iterator[list[tuple[bytes, bytes]]]:
        """The expiry entries of one kind, (key, value), in slices of 10,000: keys are walked
        and only this kind's values read (a score entry's lists a batch's ids). A RocksDB
        iterator is a fixed view, so the store may be written between slices."""
        keys = (key for key in self._keys(_EXPIRY) if key[-1:] == kind)
        while chunk := list(islice(keys, 10_000)):
            yield list(zip(chunk, self.db[chunk]))

    def _label_states(self) -> LabelStates:
        """The label state of every scenario its "L" expiry entries name, merged from them a
        slice of entries at a time (each state stamped with its entry's event time)."""
        if self._labelled is None:
            states = LabelStates()
            for entries in self._expiry_slices(b"L"):
                ids, values = [], []
                for key, refs in entries:
                    batch, fields = _label_batch(refs)
                    ids += batch
                    values.append((int(key[2:18]) << 4) | fields.astype(np.int64))
                states.merge(_scenario_keys(ids), np.concatenate(values))
            self._labelled = states  # kept only once whole
        return self._labelled

    def _note_parked(self, key: bytes) -> None:
        """Count a parked feedback entry found in the store, and number new ones after it."""
        sid, number = _parked_key(key)
        self._waiting[sid.decode()] = self._waiting.get(sid.decode(), 0) + 1
        self._parked = max(self._parked, number)

    def _keys(self, prefix: bytes):
        for key in self.db.keys(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key

    def _items(self, prefix: bytes):
        for key, value in self.db.items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key, value

    def _index(self, wb: WriteBatch, ms: int, kind: bytes, refs: list) -> tuple[bytes, bytes]:
        """One expiry entry for a batch: its kind (N scores, F parked feedback, L label states)
        and what it lists, as msgpack (ids may hold any character): for N, [serial of the first
        score, scenario ids]; for F, the parked keys without their prefix; for L, [scenario ids,
        the label fields of their states, a byte each]. It is keyed by `ms`, the batch's latest
        event time in milliseconds (a label entry's, its states'). Its key and value."""
        self._seq += 1
        key, value = _EXPIRY + b"%016d" % ms + b"%08d" % (self._seq % 10**8) + kind, _encode(refs)
        wb.put(key, value)
        return key, value

    def _commit(self, wb: WriteBatch, keys: list[bytes], values: list[bytes | None], scores: int = 0) -> None:
        """Write a batch that gives `keys` their `values` (None: deleted), of which score pages
        holding `scores` scores; expired scores it deletes are left out of `keys` (their expiry
        entry's deletion implies them)."""
        self.db.write(wb, self._write)
        if keys and self._log is not None and not self._changed_all:
            self._log.append(_logged_batch(keys, values))
            self._logged += len(keys) + scores
            if self._logged > self._track_limit:  # a delta would not pay: stop paying for the log
                self._log, self._logged, self._changed_all = [], 0, True

    def add_scores(self, scenario_ids: list[str], contexts: Sequence[tuple]) -> None:
        """Remember a batch of decisions: (policy_id, segment, score, tau, decision, ts) each
        (a list of tuples, or `Contexts`)."""
        if scenario_ids:
            self._store_scores(list(map(str.encode, scenario_ids)), contexts)

    def _store_scores(self, ids: list[bytes], contexts: Sequence[tuple], expiry_key: bytes | None = None,
                      logged: bool = True) -> None:
        """Write a batch of scores in pages under the next serials, with their expiry entry: a
        new one, or under `expiry_key` (the entry of their batch in a state of an earlier layout)."""
        first = first_serial(self._serial)
        serials = np.arange(first, first + len(ids))
        columns = _columns_of(contexts)
        tables = page_tables(columns)
        keys, values = batch_page_keys(first, len(ids)), list(map(encode_page, tables))
        pages = len(keys)  # a row each in the log, where they hold len(ids)
        max_ts = float(np.max(columns[5]))
        wb = WriteBatch(raw_mode=True)
        if expiry_key is None:
            index = self._index(wb, _millis(max_ts), b"N", [first, ids])
        else:
            index = expiry_key, _encode([first, ids])
            wb.put(*index)
        before, rescored = self._scenarios().put(_scenario_keys(ids), serials)
        try:
            if before.any():  # re-scored: this score, and the one before if it was the first, get an r: key
                at = np.flatnonzero(before).tolist()
                first_time = [i for i in at if not rescored[i]]
                more = _rescored_keys([ids[i] for i in at + first_time], [*serials[at], *before[first_time]])
                keys, values = keys + more, values + [b""] * len(more)
            deque(map(wb.put, keys, values), maxlen=0)  # C-level loop
            serial = b"%d" % serials[-1]
            wb.put(_SERIAL, serial)
            if logged:
                self._commit(wb, [*keys, _SERIAL, index[0]], [*values, serial, index[1]], len(ids) - pages)
            else:
                self.db.write(wb, self._write)
        except BaseException:
            self._by_scenario = None  # it took scores the store did not: built again from the store
            raise
        self._recent.add(first // PAGE_ROWS, tables)
        self._scores += len(ids)
        self._serial = int(serials[-1])
        self._clock = max(self._clock, max_ts)

    def scores_of(self, scenario_ids) -> dict[str, list[tuple]]:
        """Every stored score of these scenarios, in arrival order, as (policy_id, segment,
        score, tau, decision, ts) (scenarios without one left out)."""
        if not scenario_ids:
            return {}
        sids = list(set(scenario_ids))
        ids = list(map(str.encode, sids))
        latest, rescored = self._scenarios().get(_scenario_keys(ids))
        found = np.flatnonzero(latest)
        if not rescored[found].any():  # one score each (the usual case): no Python loop
            contexts = rows_at(latest[found], self.db.__getitem__, self._recent)
            return dict(zip(map(sids.__getitem__, found.tolist()), map(list, zip(contexts))))
        serials: dict[str, list[int]] = {}
        for i in found.tolist():
            serials[sids[i]] = self._rescored_serials(ids[i]) if rescored[i] else [int(latest[i])]
        listed = [s for found in serials.values() for s in found]
        contexts = iter(rows_at(listed, self.db.__getitem__, self._recent))
        return {sid: list(islice(contexts, len(found))) for sid, found in serials.items()}

    def latest_of(self, scenario_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(serial of the latest stored score, 0 for none; whether the scenario was scored more
        than once, so it may have more stored) of each scenario."""
        return self._scenarios().get(_scenario_keys(list(map(str.encode, scenario_ids))))

    def contexts_at(self, serials: np.ndarray) -> Columns:
        """The stored scores numbered `serials` (from `latest_of`) as columns: policy_id,
        segment, score, tau, decision, event time."""
        return columns_at(serials, self.db.__getitem__, self._recent)

    def _rescored_serials(self, sid: bytes) -> list[int]:
        """The serials of a re-scored scenario's stored scores, in arrival order (its `r:` keys;
        those of scenarios whose ids continue after a NUL are longer)."""
        own = _RESCORED + sid + b"\x00"
        return [int.from_bytes(k[-8:], "big") for k in self._keys(own) if len(k) == len(own) + 8]

    def lookup(self, scenario_ids: list[str], at: list[float] | None = None) -> list[tuple | None]:
        """The stored score feedback at event times `at` (default: any time after every score)
        joins, per scenario (:func:`pick`; None where no score is known)."""
        stored = self.scores_of(scenario_ids)
        at = at or [float("inf")] * len(scenario_ids)
        return [pick(stored[sid], ts) if sid in stored else None for sid, ts in zip(scenario_ids, at)]

    def park(self, pending: list[Pending]) -> None:
        """Store feedback until its score arrives."""
        if not pending:
            return
        wb = WriteBatch(raw_mode=True)
        refs, keys, values = [], [], []
        for p in pending:
            self._parked += 1
            ref = p.scenario_id.encode() + b"\x00%016d" % self._parked
            refs.append(ref)
            keys.append(_FEEDBACK + ref)
            values.append(_encode(p[1:]))
            wb.put(keys[-1], values[-1])
            self._waiting[p.scenario_id] = self._waiting.get(p.scenario_id, 0) + 1
        max_ts = max(p.ts for p in pending)
        index = self._index(wb, _millis(max_ts), b"F", refs)
        self._commit(wb, [*keys, index[0]], [*values, index[1]])
        self._clock = max(self._clock, max_ts)

    @property
    def has_waiting(self) -> bool:
        return bool(self._waiting)

    def waiting_among(self, scenario_ids) -> set[str]:
        """Those of `scenario_ids` (a set or dict keys) with feedback parked."""
        return self._waiting.keys() & scenario_ids

    def release(self, scenario_id: str) -> list[Pending]:
        """Remove and return the feedback parked for a scenario whose score just arrived, in the
        order it was parked."""
        if self._waiting.pop(scenario_id, None) is None:
            return []
        sid = scenario_id.encode()
        keys = [k for k in self._keys(_FEEDBACK + sid + b"\x00") if _parked_key(k)[0] == sid]
        out = [Pending(scenario_id, *_decode(v)) for v in self.db[keys]]
        wb = WriteBatch(raw_mode=True)
        for k in keys:
            wb.delete(k)
        self._commit(wb, keys, [None] * len(keys))
        return out

    def labels(self, scenario_ids: list[str], audit: list[bool], labels: list[int],
               ts: list[float]) -> tuple[list[int], list[bool]]:
        """(pair codes, repeats) of labelled feedback in log order: scenario, whether from an
        audit, label (LIKE 0 / OVERRIDE 1), event time each.

        Pair code (kernels.layout.PAIR_*, -1 for none): a scenario pairs its first audit label
        with its first label from any other channel; the feedback that brings the second of the
        two gets the code, and a scenario pairs once. Repeat: the scenario was labelled before,
        so this label is a second look at the same decision (the sequential rules count one
        label a decision). Both within the horizon: a scenario's label state is forgotten by
        the expiry that passes the last, in event time, of the batches that changed it. The
        states are kept in a compiled table (:mod:`kernels.label_states`); those the call
        changes are written to the store in its expiry entries (`_store_labels`)."""
        if not len(scenario_ids) == len(audit) == len(labels) == len(ts):
            raise ValueError("scenario_ids, audit, labels and ts differ in length")
        if not scenario_ids:
            return [], []
        ids = list(map(str.encode, scenario_ids))
        digests, max_ts = _scenario_keys(ids), max(ts)
        states = self._label_states()
        codes, repeats, changed = states.label(digests, audit, labels, _millis(max_ts))
        if changed.any():
            at = np.flatnonzero(changed).tolist()
            rows = list(dict(zip(map(ids.__getitem__, at), at)).values())  # a changed row of each scenario
            try:
                self._store_labels([ids[i] for i in rows], states.get(digests[rows]), max_ts)
            except BaseException:
                self._labelled = None  # it took states the store did not: built again from the store
                raise
        return codes.tolist(), repeats.tolist()

    def _store_labels(self, refs: list[bytes], states: np.ndarray, max_ts: float) -> None:
        """Write the label states of scenarios `refs` (as the table holds them) in expiry
        entries, one for each event time they are stamped with: the batch's own, and, of a
        scenario changed before by a batch with a later event time, that one's. So the entry
        that holds a scenario's latest state is the last of its entries to expire, and the
        scenario is forgotten with it, not before (as an entry of its earlier state that
        survived it would bring it back in a rebuild)."""
        wb = WriteBatch(raw_mode=True)
        keys, values = [], []
        fields, stamps = (states & 15).astype(np.uint8), states >> 4
        for stamp in np.unique(stamps).tolist():
            at = np.flatnonzero(stamps == stamp)
            key, value = self._index(wb, stamp, b"L", [[refs[i] for i in at.tolist()], fields[at].tobytes()])
            keys.append(key)
            values.append(value)
        self._commit(wb, keys, values)
        self._clock = max(self._clock, max_ts)

    def expire(self) -> list[Pending]:
        """Forget what is older than the horizon; return feedback that never met its score."""
        if self._clock == float("-inf") or self._clock - self._last_expiry < self.expire_every_s:
            return []  # no event time yet (only feedback that carried its context), or expired lately
        self._last_expiry = self._clock
        cutoff_ms = _millis(self._clock - self.horizon_s)
        cutoff = _EXPIRY + b"%016d" % cutoff_ms
        unmatched: list[Pending] = []
        wb = WriteBatch(raw_mode=True)
        deleted = []
        expired_scores: list[tuple[int, list[bytes]]] = []
        labelled: list[bytes] = []  # scenarios of expiring label-state entries
        released: list[str] = []  # scenarios of unmatched feedback, one each
        for key, refs in self._items(_EXPIRY):
            if key >= cutoff:
                break
            wb.delete(key)
            deleted.append(key)
            kind = key[-1:]
            if kind == b"N":
                # a score page is written once, with this entry, and deleted only here: it is
                # not read back (old pages lie in files on disk; most of what expires is scores),
                # and a delta names only this entry's deletion, which implies theirs (`_take`)
                batch = _scores_batch(refs)
                deque(map(wb.delete, _page_keys(batch)), maxlen=0)
                expired_scores.append(batch)
                continue
            if kind == b"L":
                labelled += _decode(refs, type=tuple[list[bytes], bytes])[0]
                continue
            keys = [_FEEDBACK + r for r in _decode(refs, type=list[bytes])]
            for k, v in zip(keys, self.db[keys]):
                if v is None:
                    continue
                wb.delete(k)
                deleted.append(k)
                sid = _parked_key(k)[0].decode()
                unmatched.append(Pending(sid, *_decode(v)))
                released.append(sid)
        going = self._scores_going(expired_scores) if expired_scores else None
        expired = sum(len(ids) for _, ids in expired_scores)
        if going is not None:
            rescored = going.rescored_keys()
            deque(map(wb.delete, rescored), maxlen=0)
            deleted += rescored
        for first, ids in expired_scores:  # first: pages kept in memory may go early, never late
            self._recent.forget(range(first // PAGE_ROWS, (first + len(ids) - 1) // PAGE_ROWS + 1))
        self._commit(wb, deleted, [None] * len(deleted))
        # what is kept beside the store follows it only now that the batch is written
        self.expired_scores += expired
        self._scores -= expired
        for sid in released:
            left = self._waiting.pop(sid, 1) - 1
            if left > 0:
                self._waiting[sid] = left
        if going is not None:
            self._forgot(going)
        if labelled:  # those all of whose batches are past the horizon: this expiry deleted their entries
            self._label_states().forget_older(_scenario_keys(labelled), cutoff_ms)
        self.unmatched_feedback += len(unmatched)
        return unmatched

    def _scores_going(self, batches: list[tuple[int, list[bytes]]]) -> "_Going":
        """The scores of `batches` ([first serial, scenario ids] each), about to be deleted."""
        ids = [i for _, batch in batches for i in batch]
        d = _scenario_keys(ids)
        latest, rescored = self._scenarios().get(d)
        serials = np.concatenate([np.arange(first, first + len(batch)) for first, batch in batches])
        return _Going(ids, d, serials, latest, rescored)

    def _forgot(self, going: "_Going") -> None:
        """After the scores `going` were deleted (with their `r:` keys): a scenario whose latest
        score went takes its latest score still stored, if it has one, else is forgotten."""
        at = np.flatnonzero(going.latest == going.serials)
        new = np.zeros(len(at), np.int64)
        for j, i in enumerate(at.tolist()):
            if going.rescored[i]:
                left = self._rescored_serials(going.ids[i])
                new[j] = left[-1] if left else 0
        self._scenarios().replace(going.digests[at], going.serials[at], new, new > 0)

    def dump_lazily(self, slice_size: int = 50_000) -> tuple[dict, Iterator[bytes]]:
        """(counters, parts): the entries as of this call, as msgpack-encoded lists of (key,
        value) of about `slice_size` rows or `SLICE_BYTES` each (`_slices`), produced one per
        `next` (a RocksDB iterator is a point-in-time view, so writes after this call are not
        seen). A large store is then written out a slice at a time, between batches, instead of
        in one long pause."""
        entries = iter(self.db.items())  # the view is fixed here, not at the first `next`
        return self._counters(), map(_encode, _slices(entries, slice_size))

    def _counters(self) -> dict:
        return {"layout": _LAYOUT, "seq": self._seq, "parked": self._parked, "clock": self._clock,
                "last_expiry": self._last_expiry, "expired_scores": self.expired_scores,
                "unmatched_feedback": self.unmatched_feedback}

    def take_changes(self) -> Changes:
        """The write batches since the last call (a checkpoint's capture); from now on changes
        are logged afresh."""
        taken = Changes(None if self._changed_all else self._log or [], self._logged)
        self._log, self._logged, self._changed_all = [], 0, False
        self._track_limit = max(_TRACK_MIN, self._row_count() // 2)
        return taken

    def _row_count(self) -> int:
        """The store's rows: its keys (RocksDB's estimate), a score page counted as its scores."""
        return int(self.db.property_int_value("rocksdb.estimate-num-keys") or 0) + self._scores

    @property
    def pending_scores(self) -> int:
        """Scores stored: those that have not expired."""
        return self._scores

    def changed_share(self) -> float:
        """Rows logged since changes were last taken, over the rows stored (`_row_count`): past
        about a half, a delta would hold about as much as the whole store."""
        if self._changed_all:
            return math.inf
        return self._logged / max(1, self._row_count()) if self._logged else 0.0

    def keep_changes(self, taken: Changes) -> None:
        """Log what `take_changes` gave again, before what was logged since: the checkpoint that
        took it did not come into force, so the next one must hold it."""
        if taken.log is None or self._changed_all:
            self._log, self._logged, self._changed_all = [], 0, True
        else:
            self._log, self._logged = [*taken.log, *(self._log or ())], taken.rows + self._logged

    def changes_lazily(self, taken: Changes, slice_size: int = 50_000) -> tuple[dict, Iterator[bytes]]:
        """(counters, parts) as `dump_lazily` gives them, but of what `take_changes` gave just
        before (its log must not be None): the entries written since the take before, in
        order, None where deleted (for `apply`, which lets a later one win). Nothing is read
        from the store, so a delta costs what changed, not what is stored."""
        def entries() -> Iterator[tuple[bytes, bytes | None]]:
            for logged in taken.log:  # the taken log is not written to again
                yield from _batch_entries(logged)

        return self._counters(), map(_encode, _slices(entries(), slice_size))

    def dump(self) -> dict:
        """Plain values (for a checkpoint): the counters and every entry (in `parts`)."""
        counters, parts = self.dump_lazily()
        return {**counters, "parts": list(parts)}

    def load(self, state: dict) -> None:
        """Take the state `dump` gave, on an empty store."""
        self._take(state, _WHOLE)

    def apply(self, state: dict) -> None:
        """Take the changes `changes_lazily` gave, on top of the state they were taken against
        (a load, then the changes in order)."""
        self._take(state, _CHANGES)

    def _take(self, state: dict, entries_type) -> None:
        self._recent.clear()  # the store's pages become those of the state
        self._log = self._log if self._log is not None else []
        layout = state.get("layout", 1)
        if layout not in (1, 2, 3, _LAYOUT):
            raise ValueError(f"join state: unknown layout {layout!r}")
        entries = (e for part in state["parts"] for e in _entries(part, entries_type))
        relabelled: set[bytes] = set()  # scenarios whose `l:` key entries of an earlier layout put or delete
        if layout < _LAYOUT:
            entries = _noting_labels(entries, relabelled)
        if layout >= 3:
            self._put_entries(entries, labels_of=layout)
            self._note_stored()
            self._by_scenario = None  # built from the store when next asked for
        else:
            self._convert(entries, whole=entries_type is _WHOLE, layout=layout)
        if layout < _LAYOUT:
            self._convert_labels(relabelled)
        self._labelled = None  # built from the store when next asked for
        self._track_limit = max(_TRACK_MIN, self._row_count() // 2)
        self._seq, self._parked = int(state["seq"]), max(self._parked, int(state["parked"]))
        self._clock, self._last_expiry = float(state["clock"]), float(state["last_expiry"])
        self.expired_scores, self.unmatched_feedback = int(state["expired_scores"]), int(state["unmatched_feedback"])

    def _put_entries(self, entries, labels_of: int = _LAYOUT) -> None:
        """Write (key, value) entries of this layout in order (None: delete), in one batch; the
        deletion of a score expiry entry deletes the score pages it lists. ValueError, before
        anything is written, unless every score page put is one and is listed by a score
        expiry entry put after it (as a whole state's keys sort and a delta's batches come), in
        full, under serials up to the store's last (see `_checked_batch`), and none was stored
        before; and every label expiry entry put holds states (`_label_batch`), unless the
        entries keep label states as layout `labels_of` < 4 did (`_convert_labels`)."""
        wb = WriteBatch(raw_mode=True)
        expiries: dict[bytes, bytes] = {}  # score expiry entries put by these entries, not yet in the store
        pages: dict[bytes, int] = {}  # score pages put and not yet listed: their rows
        serial, scores = int(self.db.get(_SERIAL) or 0), self._scores
        try:
            for key, value in entries:
                if key.startswith(_EXPIRY):
                    _check_expiry_key(key)
                is_scores_expiry = key[-1:] == b"N" and key.startswith(_EXPIRY)
                if value is None:
                    if is_scores_expiry:  # its scores expired with it
                        refs = expiries.pop(key, None) or self.db.get(key)
                        if refs is not None:
                            batch = _scores_batch(refs)
                            deque(map(wb.delete, _page_keys(batch)), maxlen=0)
                            scores -= len(batch[1])
                    wb.delete(key)
                    continue
                if is_scores_expiry:
                    scores += _checked_batch(value, pages, serial)
                    expiries[key] = value
                elif key.startswith(_PAGE):
                    if self.db.get(key) is not None:  # serials only grow: a page is never written twice
                        raise ValueError("a score page the store holds is written again")
                    pages[key] = page_rows(value)
                elif key == _SERIAL:
                    serial = int(value)
                    if not 0 <= serial < _MAX_SERIAL:
                        raise ValueError(f"score serial {serial} out of range")
                elif labels_of == _LAYOUT and key[-1:] == b"L" and key.startswith(_EXPIRY):
                    _label_batch(value)
                wb.put(key, value)
        except ValueError as e:
            raise ValueError(f"join state: {e}") from e
        if pages:
            raise ValueError(f"join state: {len(pages)} score pages that no expiry entry lists")
        self.db.write(wb, self._write)
        self._scores = scores

    def _convert_labels(self, relabelled: set[bytes]) -> None:
        """Move the label states a state of layouts 1 to 3 kept a key a scenario (`l:<sid>`)
        into the "L" expiry entries that list the scenarios, so the store holds what a whole
        state of that layout, converted, would: each entry that lists ids alone gets their
        states, of those that have one (a scenario forgotten since lost its key, so an entry
        of a batch before that names it no more); an entry converted with an earlier part of
        the chain takes the states of the scenarios `relabelled` (whose keys this part put or
        deleted) afresh, or drops those forgotten; then the keys go. A slice of entries at a
        time, so RAM holds a slice, not the store's states.

        What the rule of `labels` then does differently from those layouts: a scenario changed
        by a batch with an earlier event time than one before it is kept until the later batch
        is past the horizon, where they forgot it with the earlier one; and a state is
        forgotten to the millisecond, where they compared its event time within the cutoff's
        own millisecond."""
        legacy = msgspec.msgpack.Decoder(list[bytes])
        for entries in self._expiry_slices(b"L"):
            wb = WriteBatch(raw_mode=True)
            for key, refs in entries:
                try:
                    ids, fields = legacy.decode(refs), None
                except msgspec.ValidationError:  # holds states: converted with an earlier part of its chain
                    ids, fields = _label_batch(refs)
                    if not relabelled.intersection(ids):
                        continue
                except msgspec.DecodeError as e:
                    raise ValueError(f"join state: label expiry entry: {e}") from e
                states = self.db[[_LABELS + i for i in ids]]
                if fields is not None:  # the states of scenarios not relabelled stay as they are
                    states = [v if i in relabelled else int(f) for i, v, f in zip(ids, states, fields.tolist())]
                held = [(i, v) for i, v in zip(ids, states) if v is not None]
                if held:
                    wb.put(key, _encode([[i for i, _ in held], bytes(map(_legacy_label_fields, (v for _, v in held)))]))
                else:
                    wb.delete(key)
            self.db.write(wb, self._write)
        self.db.delete_range(_LABELS, b"l;")  # every `l:` key (";" follows ":")

    def _convert(self, entries, whole: bool, layout: int) -> None:
        """Take entries of a state of an earlier layout, a key a score (1: `s:<id>\\0<n>`, 2:
        `s:<serial>`): each batch of scores is stored again in pages (in the order the batches
        came, so a whole state's are numbered as they came), keeping its expiry entry's key; the
        rest as it is. Score deletions are left out: the deletion of their batch's expiry entry
        implies them; so are the `r:` keys of layout 2, which name its serials: storing the
        batches again makes them anew."""
        self._note_stored()
        scores: dict[bytes, bytes] = {}  # the batches' scores, until their expiry entry comes
        batches: list[tuple[int, bytes, list[bytes]]] = []  # (its first number, expiry key, ids)
        kept: list[tuple[bytes, bytes | None]] = []
        for key, value in entries:
            if key.startswith(_SCORE):
                if value is not None:
                    scores[key] = value
            elif key == _SERIAL or key.startswith(_RESCORED):
                continue  # numbered the old keys; serials go on from this store's own
            elif key[-1:] == b"N" and key.startswith(_EXPIRY):
                if value is not None:
                    first, ids = _scores_batch(value)
                    batches.append((first, key, ids))
                    if whole:
                        continue
                    self._put_entries(kept, labels_of=layout)
                    self._convert_batch(*batches.pop(), scores, layout)
                    kept = []
                    continue
                self._put_entries(kept, labels_of=layout)
                kept = []
                refs = self.db.get(key)
                wb = WriteBatch(raw_mode=True)
                wb.delete(key)
                going = None
                if refs is not None:
                    batch = _scores_batch(refs)
                    going = self._scores_going([batch])
                    deque(map(wb.delete, [*_page_keys(batch), *going.rescored_keys()]), maxlen=0)
                self.db.write(wb, self._write)
                if going is not None:
                    self._forgot(going)
                    self._scores -= len(going.ids)
            else:
                kept.append((key, value))
        self._put_entries(kept, labels_of=layout)
        for batch in sorted(batches):
            self._convert_batch(*batch, scores, layout)
        if scores:  # a store reopened by that code could overwrite a batch's entry: its scores never expired
            log.warning("join state: scores without their batch's expiry entry left out",
                        extra={"scores": len(scores)})
        self._note_stored()

    def _convert_batch(self, first: int, expiry_key: bytes, ids: list[bytes], scores: dict[bytes, bytes],
                       layout: int) -> None:
        """Store again, in pages, the scores an expiry entry of an earlier `layout` lists."""
        keys = _legacy_score_keys(first, ids) if layout == 1 else _serial_keys(np.arange(first, first + len(ids)))
        try:
            contexts = _contexts([scores.pop(key) for key in keys])
        except KeyError as e:
            raise ValueError(f"join state: a score its expiry entry lists is missing: {e.args[0]!r}") from e
        clock = self._clock
        self._store_scores(ids, contexts, expiry_key, logged=False)
        self._clock = clock

    @property
    def waiting_feedback(self) -> int:
        return sum(self._waiting.values())

    def close(self) -> None:
        self.db.close()
        if self._tmp is not None:
            self._tmp.cleanup()
