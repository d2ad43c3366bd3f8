"""RedisSink's in-memory logic without Redis: latest-wins coalescing, the pending-key bound,
keeping values across failed flushes, the flush interval, and the background thread.

The fake store stands in for Redis only to observe what the sink hands to ``write``; the
real round trips are in tests/integration/test_redis_state.py."""
from __future__ import annotations

import time

import orjson
import pytest

from streams.state.redis_store import RedisSink, StateUnavailable, cooldown_key, key_part, stats_key


class FakeStore:
    def __init__(self) -> None:
        self.down = False
        self.writes: list[dict] = []
        self.table: dict[str, object] = {}
        self.threshold_map = {("p", "s"): 0.5}

    def write(self, updates: dict) -> bool:
        if self.down:
            raise StateUnavailable("Redis at fake did not answer")
        intact = bool(self.table)
        self.writes.append(dict(updates))
        for key, update in updates.items():
            if "fields" in update:
                self.table.setdefault(key, {}).update(update["fields"])
            else:
                self.table[key] = update["value"]
        return intact

    def restore_thresholds(self, thresholds: dict) -> None:
        for key, tau in thresholds.items():
            self.threshold_map.setdefault(key, tau)

    def thresholds(self) -> dict:
        if self.down:
            raise StateUnavailable("Redis at fake did not answer")
        return dict(self.threshold_map)

    def close(self) -> None:
        pass


def _view(store: FakeStore, policy_id: str, segment: str, kind: str) -> dict:
    return orjson.loads(store.table[stats_key(policy_id, segment)][kind])


def test_key_part_makes_keys_unambiguous():
    assert key_part("a:b%c") == "a%3Ab%25c"
    assert stats_key("a:b", "c") != stats_key("a", "b:c")
    assert stats_key("a%3Ab", "c") != stats_key("a:b", "c")
    assert cooldown_key("retrain", "p:1", "s") == "cooldown:retrain:p%3A1:s"


def test_latest_value_wins_per_view_and_key():
    store = FakeStore()
    sink = RedisSink(lambda: store)
    for i in range(100):
        sink.put_stats("p", "s", "tumbling", {"window": {"end": i}})
    sink.put_stats("p", "s", "hopping", {"window": {"end": 7}})
    sink.put_cooldown("retrain", "p", "s", 10)
    sink.put_cooldown("retrain", "p", "s", 20)
    assert sink.pending == 2
    assert sink.flush(force=True)
    assert len(store.writes) == 1 and sink.pending == 0 and sink.written == 2
    assert _view(store, "p", "s", "tumbling") == {"window": {"end": 99}}
    assert _view(store, "p", "s", "hopping") == {"window": {"end": 7}}
    assert store.table[cooldown_key("retrain", "p", "s")] == "20.0"


def test_unknown_window_kind_is_rejected():
    with pytest.raises(ValueError):
        RedisSink(FakeStore).put_stats("p", "s", "early", {})


def test_bound_drops_the_least_recently_put_key():
    store = FakeStore()
    sink = RedisSink(lambda: store, max_pending_keys=3)
    for name in ("a", "b", "c"):
        sink.put_stats(name, "s", "tumbling", {"v": 1})
    sink.put_stats("a", "s", "tumbling", {"v": 2})  # "a" is now the most recent; "b" the oldest
    sink.put_stats("d", "s", "tumbling", {"v": 1})
    assert sink.pending == 3 and sink.dropped == 1
    sink.flush(force=True)
    assert {k.split(":")[1] for k in store.table} == {"a", "c", "d"}
    assert _view(store, "a", "s", "tumbling") == {"v": 2}


def test_failed_flush_keeps_values_and_newer_puts_win():
    store = FakeStore()
    sink = RedisSink(lambda: store)
    sink.put_stats("p", "s", "tumbling", {"v": 1})
    sink.put_stats("p", "s", "hopping", {"v": 1})
    store.down = True
    assert sink.flush(force=True) is False
    assert (sink.errors, sink.consecutive_errors, sink.pending) == (1, 1, 1)
    assert "did not answer" in sink.last_error
    sink.put_stats("p", "s", "tumbling", {"v": 2})
    sink.put_stats("q", "s", "cumulative", {"v": 1})
    assert sink.flush(force=True) is False
    assert (sink.errors, sink.consecutive_errors, sink.pending) == (2, 2, 2)
    store.down = False
    assert sink.flush(force=True) is True
    assert (sink.errors, sink.consecutive_errors, sink.pending) == (2, 0, 0)
    assert _view(store, "p", "s", "tumbling") == {"v": 2}
    assert _view(store, "p", "s", "hopping") == {"v": 1}
    assert _view(store, "q", "s", "cumulative") == {"v": 1}


def test_restored_batch_respects_the_bound():
    store = FakeStore()
    sink = RedisSink(lambda: store, max_pending_keys=2)
    sink.put_stats("a", "s", "tumbling", {})
    sink.put_stats("b", "s", "tumbling", {})
    store.down = True
    sink.flush(force=True)
    sink.put_stats("c", "s", "tumbling", {})  # newer than the failed batch: "a" goes
    assert sink.pending == 2 and sink.dropped == 1
    store.down = False
    sink.flush(force=True)
    assert {k.split(":")[1] for k in store.table} == {"b", "c"}


def test_flush_waits_for_the_interval_unless_forced():
    store = FakeStore()
    sink = RedisSink(lambda: store, flush_every_s=2.0)
    sink.put_stats("p", "s", "tumbling", {})
    assert sink.flush(now=100.0) and len(store.writes) == 1
    sink.put_stats("p", "s", "tumbling", {})
    assert sink.flush(now=101.0) and len(store.writes) == 1 and sink.pending == 1
    assert sink.flush(now=102.0) and len(store.writes) == 2
    sink.put_stats("p", "s", "tumbling", {})
    assert sink.flush(now=102.5, force=True) and len(store.writes) == 3


def test_a_failing_factory_is_counted_not_raised():
    def factory():
        raise ValueError("bad URL")

    sink = RedisSink(factory)
    sink.put_stats("p", "s", "tumbling", {})
    assert sink.flush(force=True) is False and sink.poll_thresholds() is None
    assert sink.errors == 2 and sink.pending == 1 and sink.last_error == "bad URL"


def test_poll_thresholds_counts_errors_and_keeps_the_last_good_result():
    store = FakeStore()
    sink = RedisSink(lambda: store)
    assert sink.latest_thresholds() is None
    assert sink.poll_thresholds() == {("p", "s"): 0.5}
    store.down = True
    assert sink.poll_thresholds() is None and sink.errors == 1
    assert sink.latest_thresholds() == {("p", "s"): 0.5}


def test_background_thread_flushes_polls_and_stop_flushes_the_rest():
    store = FakeStore()
    sink = RedisSink(lambda: store)
    sink.put_stats("p", "s", "tumbling", {"v": 1})
    sink.start_background(0.02)
    deadline = time.monotonic() + 5
    while not store.writes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.writes and sink.latest_thresholds() == {("p", "s"): 0.5}
    sink.put_stats("p", "s", "tumbling", {"v": 2})
    sink.stop()
    assert sink.pending == 0 and _view(store, "p", "s", "tumbling") == {"v": 2}


def test_a_redis_that_lost_its_data_gets_everything_back():
    store = FakeStore()
    sink = RedisSink(lambda: store)
    for k in range(5):
        sink.put_stats(f"p{k}", "s", "tumbling", {"window": {"end": k}})
    sink.put_cooldown("retrain", "p0", "s", 99)
    assert sink.flush(force=True) and sink.poll_thresholds() == {("p", "s"): 0.5}
    assert sink.restores == 0

    store.table.clear()  # restarted without persistence
    store.threshold_map = {("q", "s"): 0.7}  # an operator set one after the restart: kept
    sink.put_stats("p1", "s", "tumbling", {"window": {"end": 100}})
    assert sink.flush(force=True)
    assert sink.restores == 1
    assert {k: _view(store, f"p{k}", "s", "tumbling")["window"]["end"] for k in range(5)} == \
        {0: 0, 1: 100, 2: 2, 3: 3, 4: 4}
    assert store.table[cooldown_key("retrain", "p0", "s")] == "99.0"
    assert store.threshold_map == {("q", "s"): 0.7, ("p", "s"): 0.5}
    assert sink.flush(force=True) and sink.restores == 1  # intact now: nothing restored again
