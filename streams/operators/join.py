"""Join feedback that carries only a scenario_id to its score event, in either order.

Scores wait for their feedback, and feedback waits for its score, for a
horizon of event time (default 7 days), on disk in RocksDB (rocksdict in
raw mode: bytes only, nothing stored is ever unpickled). Writes go in one
atomic batch per call; the expiry index has one entry per batch, not per
event. What outlives the horizon is counted: expired scores (never
labelled) and unmatched feedback (returned, so the caller can dead-letter it).
"""
from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Iterator
from itertools import islice
from operator import itemgetter
from typing import NamedTuple

import msgspec
from rocksdict import Options, Rdict, WriteBatch, WriteBufferManager, WriteOptions

_SCORE, _FEEDBACK, _EXPIRY = b"s:", b"f:", b"x:"
_encode, _decode = msgspec.msgpack.encode, msgspec.msgpack.decode


class Context(NamedTuple):
    """What a feedback event needs from its decision."""

    policy_id: str
    segment: str
    score: float
    tau: float
    decision: str
    ts: float


class Pending(NamedTuple):
    """A feedback event waiting for its score."""

    scenario_id: str
    event_id: str
    ts: float
    kind: str
    source: str
    preferred: str
    weight: float


def _parked_key(key: bytes) -> tuple[bytes, int | None]:
    """(scenario id, number) of a parked feedback key `f:<sid>\\0<16 digits>`. The number is
    read from the end, as a scenario id may itself hold NUL bytes; keys written before
    parked feedback was numbered end in `\\0<event id>` and give (up to the first NUL, None)."""
    rest = key[2:]
    if len(rest) >= 17 and rest[-17] == 0 and rest[-16:].isdigit():
        return rest[:-17], int(rest[-16:])
    return rest.partition(b"\x00")[0], None


def _ms(ts: float) -> bytes:
    return b"%016d" % max(0, int(ts * 1000))


class FeedbackJoin:
    """Disk-backed two-way join with an event-time horizon, batch at a time."""

    def __init__(self, path: str | None = None, horizon_s: float = 7 * 86_400.0, expire_every_s: float = 60.0,
                 write_buffers: WriteBufferManager | None = None):
        """`write_buffers`: a memtable budget shared with other stores (a worker's partitions);
        without one each store may hold two 64 MB memtables, so RAM would grow with partitions."""
        if horizon_s <= 0:
            raise ValueError("horizon_s must be > 0")
        self.horizon_s, self.expire_every_s = horizon_s, expire_every_s
        self.write_buffers = write_buffers
        self._tmp = None if path else tempfile.TemporaryDirectory(prefix="npo-join-")
        options = Options(raw_mode=True)
        if write_buffers is not None:  # memtables a quarter of the budget: four stores fit it
            options.set_write_buffer_manager(write_buffers)
            options.set_write_buffer_size(min(64 << 20, max(1 << 20, write_buffers.get_buffer_size() // 4)))
        self.db = Rdict(path or self._tmp.name, options=options)
        # no write-ahead log: this store lives as long as its stage; a restarted worker loads
        # the stage from its checkpoint on Kafka, never from this directory
        self._write = WriteOptions()
        self._write.disable_wal = True
        self._waiting: dict[str, int] = {}  # scenario_id -> parked feedback count (small: the rare case)
        self._seq = 0
        self._parked = 0  # feedback parked so far: numbers their keys, so release keeps arrival order
        self._clock = float("-inf")
        self._last_expiry = float("-inf")
        self.expired_scores = 0
        self.unmatched_feedback = 0
        for key in self._keys(_FEEDBACK):
            self._note_parked(key)

    def _note_parked(self, key: bytes) -> None:
        """Count a parked feedback entry found in the store, and number new ones after it."""
        sid, number = _parked_key(key)
        self._waiting[sid.decode()] = self._waiting.get(sid.decode(), 0) + 1
        if number is not None:
            self._parked = max(self._parked, number)

    def _keys(self, prefix: bytes):
        for key in self.db.keys(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key

    def _index(self, wb: WriteBatch, max_ts: float, kind: bytes, refs: list[bytes]) -> None:
        """One expiry entry for a batch's keys: kind S (scores) or F (feedback), the keys as a
        msgpack list (ids may hold any character; entries of kind s/f from older stores are
        newline-joined)."""
        self._seq += 1
        wb.put(_EXPIRY + _ms(max_ts) + b"%08d" % (self._seq % 10**8) + kind, _encode(refs))

    def add_scores(self, scenario_ids: list[str], contexts: list[tuple]) -> None:
        """Remember a batch of decisions: (policy_id, segment, score, tau, decision, ts) each."""
        if not scenario_ids:
            return
        wb = WriteBatch(raw_mode=True)
        refs = list(map(str.encode, scenario_ids))
        deque(map(wb.put, map(_SCORE.__add__, refs), map(_encode, contexts)), maxlen=0)  # C-level loop
        max_ts = max(map(itemgetter(5), contexts))
        self._index(wb, max_ts, b"S", refs)
        self.db.write(wb, self._write)
        self._clock = max(self._clock, max_ts)

    def lookup(self, scenario_ids: list[str]) -> list[Context | None]:
        """Stored contexts for these scenarios (None where no score is known)."""
        if not scenario_ids:
            return []
        raw = self.db[[_SCORE + sid.encode() for sid in scenario_ids]]
        return [None if r is None else Context(*_decode(r)) for r in raw]

    def park(self, pending: list[Pending]) -> None:
        """Store feedback until its score arrives."""
        if not pending:
            return
        wb = WriteBatch(raw_mode=True)
        refs = []
        for p in pending:
            self._parked += 1
            ref = p.scenario_id.encode() + b"\x00%016d" % self._parked
            refs.append(ref)
            wb.put(_FEEDBACK + ref, _encode((p.event_id, p.ts, p.kind, p.source, p.preferred, p.weight)))
            self._waiting[p.scenario_id] = self._waiting.get(p.scenario_id, 0) + 1
        max_ts = max(p.ts for p in pending)
        self._index(wb, max_ts, b"F", refs)
        self.db.write(wb, self._write)
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
        self.db.write(wb, self._write)
        return out

    def expire(self) -> list[Pending]:
        """Forget what is older than the horizon; return feedback that never met its score."""
        if self._clock == float("-inf") or self._clock - self._last_expiry < self.expire_every_s:
            return []  # no event time yet (only feedback that carried its context), or expired lately
        self._last_expiry = self._clock
        cutoff = _EXPIRY + _ms(self._clock - self.horizon_s)
        unmatched: list[Pending] = []
        wb = WriteBatch(raw_mode=True)
        for key, refs in self.db.items(from_key=_EXPIRY):
            if key >= cutoff or not key.startswith(_EXPIRY):
                break
            wb.delete(key)
            prefix = _SCORE if key[-1:] in (b"S", b"s") else _FEEDBACK
            listed = _decode(refs, type=list[bytes]) if key[-1:] in (b"S", b"F") else refs.split(b"\n")
            keys = [prefix + r for r in listed]
            for k, v in zip(keys, self.db[keys]):
                if v is None:
                    continue
                if prefix == _SCORE:
                    if _decode(v)[5] >= self._clock - self.horizon_s:
                        continue  # re-scored since: the newer score's own entry expires it
                    wb.delete(k)
                    self.expired_scores += 1
                    continue
                wb.delete(k)
                sid = _parked_key(k)[0].decode()
                unmatched.append(Pending(sid, *_decode(v)))
                left = self._waiting.pop(sid, 1) - 1
                if left > 0:
                    self._waiting[sid] = left
        self.db.write(wb, self._write)
        self.unmatched_feedback += len(unmatched)
        return unmatched

    def dump_lazily(self, slice_size: int = 50_000) -> tuple[dict, Iterator[bytes]]:
        """(counters, parts): the entries as of this call, as msgpack-encoded lists of (key,
        value) of `slice_size` entries each, produced one per `next` (a RocksDB iterator is a
        point-in-time view, so writes after this call are not seen). A large store is then
        written out a slice at a time, between batches, instead of in one long pause."""
        entries = iter(self.db.items())  # the view is fixed here, not at the first `next`

        def parts() -> Iterator[bytes]:
            while chunk := list(islice(entries, slice_size)):
                yield _encode(chunk)

        counters = {"seq": self._seq, "parked": self._parked, "clock": self._clock, "last_expiry": self._last_expiry,
                    "expired_scores": self.expired_scores, "unmatched_feedback": self.unmatched_feedback}
        return counters, parts()

    def dump(self) -> dict:
        """Plain values (for a checkpoint): the counters and every entry (in `parts`)."""
        counters, parts = self.dump_lazily()
        return {**counters, "parts": list(parts)}

    def load(self, state: dict) -> None:
        """Take the state `dump` gave, on an empty store."""
        wb = WriteBatch(raw_mode=True)
        for part in state["parts"]:
            try:
                entries = _decode(part, type=list[tuple[bytes, bytes]])
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as e:
                raise ValueError(f"join state: {e}") from e
            for key, value in entries:
                wb.put(key, value)
                if key.startswith(_FEEDBACK):
                    self._note_parked(key)
        self.db.write(wb, self._write)
        # checkpoints from before parked feedback was numbered have no "parked"
        self._seq, self._parked = int(state["seq"]), max(self._parked, int(state.get("parked", 0)))
        self._clock, self._last_expiry = float(state["clock"]), float(state["last_expiry"])
        self.expired_scores, self.unmatched_feedback = int(state["expired_scores"]), int(state["unmatched_feedback"])

    @property
    def waiting_feedback(self) -> int:
        return sum(self._waiting.values())

    def close(self) -> None:
        self.db.close()
        if self._tmp is not None:
            self._tmp.cleanup()
