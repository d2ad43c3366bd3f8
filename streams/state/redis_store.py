"""The latest statistics, thresholds and cool-downs in Redis, for services that do not read Kafka.

Redis is never on the per-event path. The worker hands :class:`RedisSink` the latest value per
key; the sink keeps only that in memory and writes it in one pipeline every few seconds, from a
background thread, so a slow or absent Redis costs the worker nothing but a growing error count.
When Redis comes back, the next flush writes the latest values, which is all readers want. If it
came back empty (restarted without persistence, failed over to an empty replica: a ``written``
marker key tells), the sink also writes back the latest value of every key it has written and
the thresholds it last read, so nothing a reader could see before the outage is lost.

Keys (``ns`` is the namespace, ``"npo:"`` by default, prepended verbatim like the topic prefix):

- ``{ns}stats:{policy_id}:{segment}`` (hash): fields ``tumbling``, ``hopping`` and ``cumulative``,
  each the JSON ``{"window": {"kind", "start", "end"}, <statistics>}`` of the latest such window,
  and ``updated_at``, the unix time of the latest put.
- ``{ns}threshold:{policy_id}:{segment}`` (string): the tau in force, as decimal text, and
  ``{ns}thresholds`` (hash): ``"policy_id\\x1fsegment"`` -> tau, so all are read in one HGETALL.
- ``{ns}cooldown:{rule}:{policy_id}:{segment}`` (string): until when the rule cools down (the
  window end the worker passes), expiring after ``cooldown_ttl_s`` so quiet keys do not pile up.
- ``{ns}actuator:…``: the state of ``npo actuator`` (``streams/actuator/store.py`` lists its keys).

Ids are used verbatim except that ``%`` and ``:`` are percent-encoded (:func:`key_part`), so
``("a:b", "c")`` and ``("a", "b:c")`` name different keys. The ``thresholds`` hash joins the
ids verbatim with ``\\x1f``, so ``set_threshold`` rejects ids that contain it.

Every client error becomes a :class:`StateError` with a one-line message that never holds the
password: :class:`StateUnavailable` (nothing answered within ``timeout``; retry later) or
:class:`StateAuthError` (fix the configuration). redis-py's own retries are off, so errors come
within one ``timeout``; the sink retries on its own schedule instead.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager

import orjson
import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import AuthenticationWrongNumberOfArgsError, NoPermissionError
from redis.retry import Retry

log = logging.getLogger("npo.state")

VIEWS = ("tumbling", "hopping", "cumulative")
_SEP = "\x1f"
_MARKER = "written"


class StateError(RuntimeError):
    """Redis refused or failed a request."""


class StateUnavailable(StateError):
    """No Redis answered in time: retry later."""


class StateAuthError(StateError):
    """Redis rejected the credentials or the user's permissions: fix the configuration."""


def key_part(text: str) -> str:
    """``text`` with ``%`` and ``:`` percent-encoded, so ids cannot shift key boundaries."""
    return text.replace("%", "%25").replace(":", "%3A")


def stats_key(policy_id: str, segment: str) -> str:
    return f"stats:{key_part(policy_id)}:{key_part(segment)}"


def threshold_key(policy_id: str, segment: str) -> str:
    return f"threshold:{key_part(policy_id)}:{key_part(segment)}"


def cooldown_key(rule: str, policy_id: str, segment: str) -> str:
    return f"cooldown:{key_part(rule)}:{key_part(policy_id)}:{key_part(segment)}"


def _threshold_field(policy_id: str, segment: str) -> str:
    if _SEP in policy_id or _SEP in segment:
        raise ValueError("policy_id and segment must not contain the \\x1f separator")
    return policy_id + _SEP + segment


class RedisStore:
    """Synchronous reads and writes of the keys above, for the CLI, the sink and tests."""

    def __init__(self, client: redis.Redis, namespace: str = "npo:", where: str = "Redis",
                 timeout: float = 2.0) -> None:
        self.client, self.ns, self.where, self.timeout = client, namespace, where, timeout

    @classmethod
    def from_url(cls, url: str, password: str | None = None, namespace: str = "npo:",
                 timeout: float = 2.0) -> RedisStore:
        """A store for ``url`` (``password``, when given, replaces one in the URL). Does not connect."""
        options = parse_url(url)
        if password is not None:
            options["password"] = password
        where = options.get("path") or f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"
        pool = redis.ConnectionPool(**options, socket_connect_timeout=timeout, socket_timeout=timeout,
                                    retry=Retry(NoBackoff(), 0))
        return cls(redis.Redis(connection_pool=pool), namespace, f"Redis at {where}", timeout)

    @contextmanager
    def translated(self):
        """Redis errors inside the block raised as this store's own: a wrong password or
        permission (StateAuthError) apart from an absent Redis (StateUnavailable)."""
        try:
            yield
        except (redis.AuthenticationError, AuthenticationWrongNumberOfArgsError) as exc:
            raise StateAuthError(f"{self.where}: Redis rejected the password (NOAUTH/WRONGPASS)") from exc
        except NoPermissionError as exc:
            raise StateAuthError(f"{self.where}: the Redis user may not run this command (NOPERM)") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StateUnavailable(f"{self.where} did not answer within {self.timeout:g} s: {exc}") from exc
        except redis.RedisError as exc:
            raise StateError(f"{self.where} failed the request: {exc}") from exc

    def get_stats(self, policy_id: str, segment: str) -> dict | None:
        """The latest views of a key and ``updated_at``, or None if the worker never wrote one."""
        with self.translated():
            raw = self.client.hgetall(self.ns + stats_key(policy_id, segment))
        if not raw:
            return None
        out = {name.decode(): orjson.loads(value) for name, value in raw.items() if name != b"updated_at"}
        if b"updated_at" in raw:
            out["updated_at"] = float(raw[b"updated_at"])
        return out

    def set_threshold(self, policy_id: str, segment: str, tau: float, pipe=None) -> None:
        """Put ``tau`` in force for the key (both the key's string and the listing hash, atomically).

        With ``pipe`` (a pipeline in MULTI), the two writes are only queued on it, so a caller
        can make them part of its own transaction (the actuator records its decision with them)."""
        tau = float(tau)
        if not (math.isfinite(tau) and 0.0 <= tau <= 1.0):
            raise ValueError(f"tau must be a finite number in [0, 1], got {tau!r}")
        field, text = _threshold_field(policy_id, segment), repr(tau)
        own = pipe is None
        with self.translated():
            if own:
                pipe = self.client.pipeline(transaction=True)
            pipe.set(self.ns + threshold_key(policy_id, segment), text)
            pipe.hset(self.ns + "thresholds", field, text)
            if own:
                pipe.execute()

    def get_threshold(self, policy_id: str, segment: str) -> float | None:
        with self.translated():
            raw = self.client.get(self.ns + threshold_key(policy_id, segment))
        return None if raw is None else float(raw)

    def thresholds(self) -> dict[tuple[str, str], float]:
        """Every threshold in force, in one HGETALL."""
        with self.translated():
            raw = self.client.hgetall(self.ns + "thresholds")
        return {tuple(field.decode().split(_SEP, 1)): float(value) for field, value in raw.items()}

    def write(self, updates: dict[str, dict]) -> bool:
        """Apply updates in one pipeline round trip (not a transaction: each key stands alone).

        ``updates`` maps a key (relative to the namespace) to ``{"fields": {name: value}}``
        (HSET those fields) or ``{"value": text, "ttl_s": seconds}`` (SET with expiry).
        Returns whether the namespace's ``written`` marker was there before: False means this
        Redis never saw a write, or lost its data since (a restart without persistence, a
        failover to an empty replica), and the caller should write everything it knows again."""
        with self.translated():
            pipe = self.client.pipeline(transaction=False)
            pipe.exists(self.ns + _MARKER)
            for key, update in updates.items():
                if "fields" in update:
                    pipe.hset(self.ns + key, mapping=update["fields"])
                else:
                    pipe.set(self.ns + key, update["value"], ex=update["ttl_s"])
            pipe.set(self.ns + _MARKER, "1")
            return bool(pipe.execute()[0])

    def restore_thresholds(self, thresholds: dict[tuple[str, str], float]) -> None:
        """Put back thresholds a worker last saw, where none has been set since (never overwrites)."""
        with self.translated():
            pipe = self.client.pipeline(transaction=False)
            for (policy_id, segment), tau in thresholds.items():
                pipe.set(self.ns + threshold_key(policy_id, segment), repr(tau), nx=True)
                pipe.hsetnx(self.ns + "thresholds", _threshold_field(policy_id, segment), repr(tau))
            pipe.execute()

    def close(self) -> None:
        self.client.close()


def _merge(older: dict | None, newer: dict) -> dict:
    """Latest wins: per field for hashes, whole value for strings."""
    if older is not None and "fields" in newer:
        return {"fields": {**older["fields"], **newer["fields"]}}
    return newer


class RedisSink:
    """The worker's non-blocking path to Redis: latest value per key in memory, written by :meth:`flush`.

    ``put_*`` only update an in-memory ordered dict (never the network), so they are safe on the
    worker's event loop. At most ``max_pending_keys`` distinct keys are pending; beyond that the
    key least recently put is dropped and counted in ``dropped`` (its next put re-queues it), so a
    long outage costs bounded memory. The same bound holds the latest value of every key written,
    kept to restore a Redis that lost its data (``restores`` counts those). ``flush`` and ``poll_thresholds`` block on Redis for up to
    the store's timeout; run them with :meth:`start_background`, or call them where blocking is fine.
    """

    def __init__(self, store_factory: Callable[[], RedisStore], flush_every_s: float = 2.0,
                 max_pending_keys: int = 100_000, cooldown_ttl_s: float = 86_400.0) -> None:
        if max_pending_keys < 1:
            raise ValueError("max_pending_keys must be >= 1")
        self._factory, self._store = store_factory, None
        self.flush_every_s, self.max_pending_keys = flush_every_s, max_pending_keys
        self.cooldown_ttl_s = int(cooldown_ttl_s)
        self._pending: OrderedDict[str, dict] = OrderedDict()
        self._latest: OrderedDict[str, dict] = OrderedDict()  # everything written, to restore a wiped Redis
        self._lock = threading.Lock()  # guards _pending: puts come from the worker, flushes from a thread
        self._io = threading.Lock()  # one flush or poll at a time, so an older batch never lands last
        self._last_flush = -math.inf
        self._thresholds: dict[tuple[str, str], float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = self.consecutive_errors = self.dropped = self.written = self.restores = 0
        self.last_error: str | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def put_stats(self, policy_id: str, segment: str, window_kind: str, payload: dict) -> None:
        """Remember the latest ``payload`` ({"window": ..., statistics}) of one window view of a key."""
        if window_kind not in VIEWS:
            raise ValueError(f"window_kind must be one of {VIEWS}, got {window_kind!r}")
        fields = {window_kind: orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                  "updated_at": repr(time.time())}
        self._put(stats_key(policy_id, segment), {"fields": fields})

    def put_cooldown(self, rule: str, policy_id: str, segment: str, until: float) -> None:
        """Remember until when ``rule`` cools down for the key."""
        self._put(cooldown_key(rule, policy_id, segment), {"value": repr(float(until)), "ttl_s": self.cooldown_ttl_s})

    def _put(self, key: str, update: dict) -> None:
        with self._lock:
            self._put_locked(key, update)

    def _put_locked(self, key: str, update: dict, mirror: bool = True) -> None:
        self._pending[key] = _merge(self._pending.pop(key, None), update)  # re-put keys move to the end
        while len(self._pending) > self.max_pending_keys:
            self._pending.popitem(last=False)
            self.dropped += 1
        if mirror:
            self._latest[key] = _merge(self._latest.pop(key, None), update)
            while len(self._latest) > self.max_pending_keys:
                self._latest.popitem(last=False)

    def flush(self, now: float | None = None, force: bool = False) -> bool:
        """Write everything pending if ``flush_every_s`` has passed (or ``force``).

        Returns False only when Redis failed; the values stay pending (newer puts win) for the
        next flush. Never raises."""
        now = time.monotonic() if now is None else now
        if not force and now - self._last_flush < self.flush_every_s:
            return True
        with self._io:
            self._last_flush = now
            with self._lock:
                batch, self._pending = self._pending, OrderedDict()
            if not batch:
                return True
            try:
                store = self._get_store()
                if not store.write(batch) and self.written:  # lost its data since our last write
                    self._restore(store)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any Redis failure
                with self._lock:
                    newer, self._pending = self._pending, OrderedDict()
                    for key, update in (*batch.items(), *newer.items()):
                        self._put_locked(key, update, mirror=False)
                self._failed("flush", exc)
                return False
            self.written += len(batch)
            self._succeeded()
            return True

    def _restore(self, store: RedisStore) -> None:
        """Redis lost its data (or is new): write back the latest value of every key and the
        thresholds last polled, so readers see what they would have without the loss."""
        with self._lock:
            everything = dict(self._latest)
        if everything:
            store.write(everything)
        if self._thresholds:
            store.restore_thresholds(self._thresholds)
        self.restores += 1
        log.warning("Redis held none of this worker's keys; restored %d keys and %d thresholds",
                    len(everything), len(self._thresholds or ()))

    def poll_thresholds(self) -> dict[tuple[str, str], float] | None:
        """All thresholds in force (one HGETALL), or None if Redis failed (counted)."""
        with self._io:
            try:
                latest = self._get_store().thresholds()
            except Exception as exc:  # noqa: BLE001 - as in flush
                self._failed("threshold poll", exc)
                return None
            self._thresholds = latest
            self._succeeded()
            return latest

    def latest_thresholds(self) -> dict[tuple[str, str], float] | None:
        """The result of the last successful poll (None before one), without touching Redis."""
        return self._thresholds

    def _get_store(self) -> RedisStore:
        if self._store is None:
            self._store = self._factory()
        return self._store

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        self.consecutive_errors += 1
        self.last_error = str(exc)
        if self.consecutive_errors == 1:
            log.warning("Redis %s failed; keeping %d pending keys and retrying: %s", what, self.pending, exc)

    def _succeeded(self) -> None:
        if self.consecutive_errors:
            log.info("Redis is back after %d failed attempts", self.consecutive_errors)
        self.consecutive_errors = 0

    def start_background(self, interval_s: float) -> None:
        """Flush and poll thresholds every ``interval_s`` seconds in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("background thread already running")
        self._stop.clear()

        def loop() -> None:
            while True:
                self.flush(force=True)
                self.poll_thresholds()
                if self._stop.wait(interval_s):
                    return

        self._thread = threading.Thread(target=loop, name="npo-redis-sink", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread, then flush once more so Redis ends with the latest values."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush(force=True)
        if self._store is not None:
            self._store.close()
            self._store = None
