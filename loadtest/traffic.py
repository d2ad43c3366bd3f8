"""Endless realistic NPO traffic, pre-encoded once so that producing it costs almost nothing.

Why: the simulator (`streams.simulate`) gives realistic events (drifting keys, every
feedback kind and source, late, out-of-order and duplicate events) at a few hundred
thousand events a second, and re-encoding dicts costs several microseconds an event:
both too slow to drive a broker flat out. So one *base block* is simulated and encoded
once; each *cycle* k replays it with every event time moved k * span later and a
fixed-width cycle tag in every event id and scenario id, patched into the bytes with
numpy. Partitions come from a Numba port of Kafka's murmur2 on the tagged scenario id,
so scores and feedback of a scenario stay co-partitioned, as the worker's join needs.

Feedback the simulator delivers after the block's span (long review delays, up to
7 days) is not dropped: it is carried into the cycle whose span it falls in, inserted
where that cycle's stream time reaches its event time. So a steady stream has the
simulator's full delay distribution, and the join sees realistic pending state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import orjson

from streams.simulate import SimConfig, simulate

TAG = "~000000"
"""Cycle tag appended to every event_id and scenario_id; its 6 digits are patched per cycle."""
TAG_DIGITS = 6
TS_DIGITS = 10  # integer part of an epoch-seconds event time (years 2001 to 2286)
SCORE, FEEDBACK = 0, 1
ROLES = ("scores", "feedback")
ENVELOPE_HEAD = b'{"type":"envelope","v":1,"events":['
ENVELOPE_TAIL = b"]}"


@numba.njit(cache=True, nogil=True)
def _murmur2_partitions(buf, starts, lengths, partitions):
    """Kafka's default partitioner, ``(murmur2(key) & 0x7fffffff) % partitions``, per key
    (64-bit arithmetic masked to 32 bits: Numba widens uint32 products)."""
    n = starts.shape[0]
    out = np.empty(n, np.int32)
    m = 0x5BD1E995
    u32 = 0xFFFFFFFF
    for i in range(n):
        s, ln = starts[i], lengths[i]
        h = (0x9747B28C ^ ln) & u32
        j = 0
        while j + 4 <= ln:
            k = np.int64(buf[s + j]) | (np.int64(buf[s + j + 1]) << 8) | (np.int64(buf[s + j + 2]) << 16) \
                | (np.int64(buf[s + j + 3]) << 24)
            k = (k * m) & u32
            k = ((k ^ (k >> 24)) * m) & u32
            h = ((h * m) & u32) ^ k
            j += 4
        rest = ln - j
        if rest == 3:
            h ^= np.int64(buf[s + j + 2]) << 16
        if rest >= 2:
            h ^= np.int64(buf[s + j + 1]) << 8
        if rest >= 1:
            h = ((h ^ np.int64(buf[s + j])) * m) & u32
        h ^= h >> 13
        h = (h * m) & u32
        h ^= h >> 15
        out[i] = (h & 0x7FFFFFFF) % partitions
    return out


def partitions_of(keys: list[bytes], partitions: int) -> np.ndarray:
    """Kafka default-partitioner partitions of ``keys`` (checked against the producer's murmur2)."""
    buf = np.frombuffer(b"".join(keys) or b"\0", np.uint8)
    lengths = np.array([len(k) for k in keys], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if keys else lengths
    return _murmur2_partitions(buf, starts, lengths, partitions)


@dataclass
class Chunk:
    """One cycle's events in send order: ``data[starts[i]:ends[i]]`` is event i's JSON."""

    data: bytes
    starts: np.ndarray
    ends: np.ndarray
    key_starts: np.ndarray
    key_ends: np.ndarray
    role: np.ndarray  # SCORE / FEEDBACK
    partition: np.ndarray
    ts: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def select(self, mask: np.ndarray) -> "Chunk":
        return Chunk(self.data, self.starts[mask], self.ends[mask], self.key_starts[mask], self.key_ends[mask],
                     self.role[mask], self.partition[mask], self.ts[mask])

    def value(self, i: int) -> bytes:
        return self.data[self.starts[i]:self.ends[i]]

    def key(self, i: int) -> bytes:
        return self.data[self.key_starts[i]:self.key_ends[i]]


class Traffic:
    """The base block and its replay plan. ``chunk(k, partitions)`` is cycle k, ready to send.

    ``key_spread`` multiplies the simulator's keys: segment ``s`` becomes ``s-0`` ..
    ``s-{key_spread-1}`` by scenario, so there are many (policy_id, segment) keys, each
    with the statistics of its scenario.
    """

    def __init__(self, seed: int = 7, n_windows: int = 48, decisions_per_window: int = 500,
                 key_spread: int = 8, window_s: float = 60.0) -> None:
        if key_spread < 1 or n_windows < 1:
            raise ValueError("key_spread and n_windows must be >= 1")
        cfg = SimConfig(seed=seed, n_windows=n_windows, decisions_per_window=decisions_per_window,
                        window_s=window_s)
        self.span = int(round(n_windows * window_s))
        self.start_ts = cfg.start_ts
        events = simulate(cfg).events
        self.keys = set()
        parts, offsets = [], []
        eid_at, sid_at, sid_len, ts_at, ts_int = [], [], [], [], []
        role, ts = [], []
        pos = 0
        for ev in events:
            ev = dict(ev)
            sid = ev["scenario_id"]
            if "segment" in ev:
                ev["segment"] = f"{ev['segment']}-{int(sid[-5:]) % key_spread}"
                self.keys.add((ev["policy_id"], ev["segment"]))
            ev["event_id"] += TAG
            ev["scenario_id"] = sid + TAG
            b = orjson.dumps(ev)
            e = b.index(b'"event_id":"') + 12 + len(ev["event_id"]) - TAG_DIGITS
            s0 = b.index(b'"scenario_id":"') + 15
            t = b.index(b'"ts":') + 5
            if not b[t:t + TS_DIGITS].isdigit() or b[t + TS_DIGITS:t + TS_DIGITS + 1] not in (b".", b",", b"}"):
                raise ValueError(f"event time {ev['ts']!r} is not a 10-digit epoch")
            offsets.append(pos)
            parts.append(b)
            eid_at.append(pos + e)
            sid_at.append(pos + s0)
            sid_len.append(len(ev["scenario_id"]))
            ts_at.append(pos + t)
            ts_int.append(int(b[t:t + TS_DIGITS]))
            role.append(SCORE if ev["type"] == "score" else FEEDBACK)
            ts.append(ev["ts"])
            pos += len(b)
        self.base = np.frombuffer(b"".join(parts), np.uint8)
        self.starts = np.array(offsets, np.int64)
        self.ends = np.append(self.starts[1:], pos)
        self.eid_tag = np.array(eid_at, np.int64)
        self.sid_start = np.array(sid_at, np.int64)
        self.sid_len = np.array(sid_len, np.int64)
        self.ts_at = np.array(ts_at, np.int64)
        self.ts_int = np.array(ts_int, np.int64)
        self.role = np.array(role, np.int8)
        self.ts = np.array(ts, np.float64)
        self._plan()

    def _plan(self) -> None:
        """Send order of one cycle: the block's own events up to its span, in arrival order,
        with the later-arriving feedback of earlier cycles (lag d) placed by event time."""
        rel = self.ts - self.start_ts
        lag = np.floor(rel / self.span).astype(np.int64)
        lag[lag < 0] = 0
        body = np.flatnonzero(lag == 0)
        tail = np.flatnonzero(lag > 0)
        # a carried event of lag d lands in the cycle at stream-time rel - d * span
        stream_time = np.maximum.accumulate(rel[body]) if body.size else rel[body]
        tail_rel = rel[tail] - lag[tail] * self.span
        tail = tail[np.argsort(tail_rel, kind="stable")]
        where = np.searchsorted(stream_time, np.sort(tail_rel, kind="stable"), side="right")
        order_pos = np.concatenate([np.arange(body.size) * 2.0 + 1.0, where * 2.0])
        order = np.concatenate([body, tail])[np.argsort(order_pos, kind="stable")]
        self.order = order
        self.lag = lag[order]
        self.max_lag = int(lag.max(initial=0))

    def __len__(self) -> int:
        return len(self.order)

    _ARRAYS = ("base", "starts", "ends", "eid_tag", "sid_start", "sid_len", "ts_at", "ts_int", "role", "ts")

    @classmethod
    def cached(cls, cache_dir: str | None = None, **params) -> "Traffic":
        """The same block, built once per parameter set and kept under ``cache_dir``
        (default ~/.cache/npo-stream/loadtest): building costs seconds, loading does not,
        and every generator process needs it."""
        import hashlib
        import os
        from pathlib import Path

        full = {"seed": 7, "n_windows": 48, "decisions_per_window": 500, "key_spread": 8, "window_s": 60.0,
                **params}
        root = Path(cache_dir or os.environ.get("NPO_LOADTEST_CACHE", Path.home() / ".cache/npo-stream/loadtest"))
        name = hashlib.sha256(repr(sorted(full.items())).encode()).hexdigest()[:16]
        path = root / f"traffic-v1-{name}.npz"
        if path.is_file():
            self = cls.__new__(cls)
            with np.load(path) as z:
                for a in cls._ARRAYS:
                    setattr(self, a, z[a])
                self.span, self.start_ts = int(z["span"]), float(z["start_ts"])
                self.keys = {tuple(k.split("\x1f")) for k in z["keys"].tolist()}
            self._plan()
            return self
        self = cls(**full)
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.npz")
        np.savez(tmp, span=self.span, start_ts=self.start_ts, keys=np.array(["\x1f".join(k) for k in self.keys]),
                 **{a: getattr(self, a) for a in cls._ARRAYS})
        os.replace(tmp, path)
        return self

    def events_per_cycle(self) -> int:
        return len(self.order)

    def chunk(self, k: int, partitions: int) -> Chunk:
        """Cycle k (0, 1, ...): event times moved k * span later, ids tagged with the
        cycle each event was simulated in (k minus its carry lag)."""
        keep = self.lag <= k
        idx = self.order[keep]
        cyc = k - self.lag[keep]
        if cyc.max(initial=0) >= 10 ** TAG_DIGITS:
            raise ValueError("more cycles than the id tag can number")
        buf = self.base.copy()
        digits = _digits(cyc, TAG_DIGITS)
        cols = np.arange(TAG_DIGITS)
        buf[self.eid_tag[idx][:, None] + cols] = digits
        buf[(self.sid_start[idx] + self.sid_len[idx] - TAG_DIGITS)[:, None] + cols] = digits
        buf[self.ts_at[idx][:, None] + np.arange(TS_DIGITS)] = _digits(self.ts_int[idx] + cyc * self.span, TS_DIGITS)
        key_starts, key_lens = self.sid_start[idx], self.sid_len[idx]
        part = _murmur2_partitions(buf, key_starts, key_lens, partitions)
        return Chunk(buf.tobytes(), self.starts[idx], self.ends[idx], key_starts, key_starts + key_lens,
                     self.role[idx], part, self.ts[idx] + cyc * self.span)


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """ASCII decimal digits of non-negative ints, zero-padded to ``width``: shape (n, width)."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] // powers) % 10 + 48).astype(np.uint8)


def envelopes(chunk: Chunk, lo: int, hi: int, max_events: int):
    """Events ``lo:hi`` of a chunk as envelope messages, one group per (role, partition) in
    send order, at most ``max_events`` each: yields (role, partition, value, n_events, max_ts)."""
    role, part = chunk.role[lo:hi], chunk.partition[lo:hi]
    group = role.astype(np.int64) * 65536 + part
    order = np.argsort(group, kind="stable") + lo
    sorted_groups = group[order - lo]
    cuts = np.flatnonzero(np.diff(sorted_groups)) + 1
    data, starts, ends, ts = chunk.data, chunk.starts, chunk.ends, chunk.ts
    for run in np.split(order, cuts):
        if not run.size:
            continue
        r, p = int(chunk.role[run[0]]), int(chunk.partition[run[0]])
        for a in range(0, run.size, max_events):
            ids = run[a:a + max_events]
            body = b",".join([data[s:e] for s, e in zip(starts[ids].tolist(), ends[ids].tolist())])
            yield r, p, ENVELOPE_HEAD + body + ENVELOPE_TAIL, ids.size, float(ts[ids].max())
