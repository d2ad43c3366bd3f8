"""Label states (first channel label, first audit label, the audit pair they make) against a
brute-force model, in the compiled table alone and in the join through expiry, checkpoints
and a reopened store.

The model is the rule written out plainly: a scenario's first label from each side (the
audit, any other channel) is remembered; the event that brings the second side's first label
carries the pair's code; any label after a scenario's first is a repeat; a scenario is
forgotten once every batch that recorded one of its first labels is a horizon of event time
old (to the millisecond: the latest of them, which a later batch may precede), at the next
expiry. Hypothesis draws few scenarios (ids with NUL
bytes, of 256 characters), both sides in any order, event times that step by zero to days or
back, and checkpoints, whole or as deltas, and reopens at any point.
"""
from __future__ import annotations

import math
import tempfile

import msgspec
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernels.label_states import LabelStates, unpack
from kernels.layout import PAIR_AGREE, PAIR_AUDIT_OVERRIDES, PAIR_CHANNEL_OVERRIDES
from streams.operators.join import FeedbackJoin
from tests.join_checkpoints import checkpoint_and_reload

T0 = 1_767_225_600.0
HORIZON_S = 300.0
IDS = ["a", "b", "a\x00b", "a\x00", "é" * 256, "x" * 256]
LIKE, OVERRIDE = 0, 1


def _ms(ts: float) -> int:
    return max(0, int(ts * 1000))


class Model:
    """One labelled event at a time."""

    def __init__(self) -> None:
        self.first: dict[tuple[str, bool], int] = {}  # (scenario, from the audit) -> its first label
        self.changed: dict[str, float] = {}  # scenario -> the latest event time of the batches that recorded one
        self.clock = -math.inf

    def labels(self, sids, audit, labels, ts) -> tuple[list[int], list[bool]]:
        codes, repeats, recorded = [], [], set()
        for sid, is_audit, label in zip(sids, audit, labels):
            repeats.append((sid, True) in self.first or (sid, False) in self.first)
            code = -1
            if (sid, is_audit) not in self.first:
                self.first[sid, is_audit] = label
                recorded.add(sid)
                other = self.first.get((sid, not is_audit))
                if other is not None:
                    audit_label, channel_label = (label, other) if is_audit else (other, label)
                    code = PAIR_AGREE if audit_label == channel_label else \
                        PAIR_AUDIT_OVERRIDES if audit_label == OVERRIDE else PAIR_CHANNEL_OVERRIDES
            codes.append(code)
        for sid in recorded:
            self.changed[sid] = max(self.changed.get(sid, -math.inf), *ts)
        if recorded:
            self.clock = max(self.clock, max(ts))
        return codes, repeats

    def expire(self, horizon_s: float) -> None:
        """The expiry passes the batches more than a horizon old, to the millisecond; a
        scenario all of whose recording batches it passed is forgotten."""
        if self.clock == -math.inf:
            return
        self.forget_older(_ms(self.clock - horizon_s))

    def forget(self, sid: str) -> None:
        del self.changed[sid]
        self.first.pop((sid, True), None)
        self.first.pop((sid, False), None)

    def forget_older(self, ms: int) -> set[str]:
        """Forget the scenarios whose latest change is before `ms` (the table's own rule)."""
        gone = {s for s, changed in self.changed.items() if _ms(changed) < ms}
        for sid in gone:
            self.forget(sid)
        return gone


@st.composite
def histories(draw):
    ops, ts = [], T0
    for _ in range(draw(st.integers(1, 30))):
        op = draw(st.sampled_from(["labels", "labels", "labels", "expire", "capture", "reopen"]))
        if op == "labels":
            batch = []
            for _ in range(draw(st.integers(1, 6))):
                # none, milliseconds back or ahead, microseconds, a horizon and a fraction of a
                # millisecond (a state last changed within the cutoff's millisecond), or days
                step = draw(st.one_of(st.just(0.0), st.integers(-600_000, 400_000).map(lambda ms: ms / 1000),
                                      st.integers(-3_000, 3_000).map(lambda us: us / 1e6),
                                      st.sampled_from([0.0, 0.0004, 0.0009, 0.001]).map(lambda f: HORIZON_S + f),
                                      st.integers(0, 3 * 86_400).map(float)))
                ts = max(T0, ts + step)
                batch.append((draw(st.sampled_from(IDS)), draw(st.booleans()), draw(st.sampled_from([LIKE, OVERRIDE])),
                              ts))
            ops.append(("labels", batch))
        elif op == "capture":
            ops.append(("capture", draw(st.booleans())))  # whole, or a delta when one is due
        else:
            ops.append((op, None))
    return ops


@settings(max_examples=80, deadline=None)
@given(histories())
@example([("labels", [("a", False, LIKE, T0)]), ("labels", [("a", True, LIKE, T0 + 1)]),  # changed twice, then
          ("labels", [("b", False, LIKE, T0 + 1 + HORIZON_S + 0.0005)]),  # a cutoff in its last change's ms
          ("expire", None), ("labels", [("a", False, OVERRIDE, T0 + 1 + HORIZON_S + 0.0005)])])
@example([("labels", [("a", False, LIKE, T0 + 100)]), ("labels", [("a", True, OVERRIDE, T0 + 50)]),  # out of order:
          ("labels", [("b", False, LIKE, T0 + 51 + HORIZON_S)]), ("expire", None),  # passes only the second batch
          ("capture", False), ("labels", [("a", True, LIKE, T0 + 51 + HORIZON_S)]),  # a is kept, paired, as loaded
          ("labels", [("b", True, LIKE, T0 + 101 + HORIZON_S)]), ("expire", None), ("reopen", None)])
def test_the_join_labels_as_the_model_does_through_expiry_checkpoints_and_reopens(ops):
    model = Model()
    with tempfile.TemporaryDirectory(prefix="npo-labels-") as root:
        stores = iter(f"{root}/{n}" for n in range(len(ops) + 1))  # a directory for each store loaded
        path = next(stores)
        join, chain = FeedbackJoin(path, horizon_s=HORIZON_S, expire_every_s=0.0), []
        try:
            for op, arg in ops:
                if op == "labels":
                    sids, audit, labels, ts = map(list, zip(*arg))
                    assert join.labels(sids, audit, labels, ts) == model.labels(sids, audit, labels, ts)
                elif op == "expire":
                    join.expire()
                    model.expire(HORIZON_S)
                elif op == "reopen":  # the store's own files; the event-time clock starts again
                    join.close()
                    join = FeedbackJoin(path, horizon_s=HORIZON_S, expire_every_s=0.0)
                    model.clock, chain = -math.inf, []  # its next checkpoint is whole
                else:
                    path = next(stores)
                    join, chain = checkpoint_and_reload(
                        join, chain, arg, lambda: FeedbackJoin(path, horizon_s=HORIZON_S, expire_every_s=0.0))
            # what each scenario remembers now: a label from each side tells it all
            for sid in IDS:
                expected = model.labels([sid, sid], [True, False], [LIKE, LIKE], [model_now(model)] * 2)
                assert join.labels([sid, sid], [True, False], [LIKE, LIKE], [model_now(model)] * 2) == expected
        finally:
            join.close()


def model_now(model: Model) -> float:
    return T0 if model.clock == -math.inf else model.clock


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.sampled_from([LIKE, OVERRIDE])), max_size=60),
       st.lists(st.integers(0, 60), max_size=4), st.sampled_from([2, 1000, 1024]))
def test_the_table_alone_matches_the_model_with_growth_and_forgetting(events, cuts, slots):
    """The kernel on tiny tables (every batch grows or rebuilds it) against the model; each
    batch's states stamped with its index, and those older than two batches forgotten."""
    states, model = LabelStates(slots), Model()
    digests = np.array([[k + 1, 7 * k] for k in range(6)], np.uint64)
    bounds = [0, *sorted(cuts), len(events)]
    for b, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        batch = events[lo:hi]
        if not batch:
            continue
        sids = [str(k) for k, _, _ in batch]
        expected = model.labels(sids, [a for _, a, _ in batch], [label for _, _, label in batch], [b / 1000] * len(batch))
        codes, repeats, _ = states.label(digests[[k for k, _, _ in batch]], np.array([a for _, a, _ in batch]),
                                         np.array([label for _, _, label in batch]), b)
        assert (codes.tolist(), repeats.tolist()) == expected
        for k in range(6):
            channel, audit, ms = (x[0] for x in unpack(states.get(digests[k:k + 1])))
            if str(k) in model.changed:
                assert (channel, ms) == (model.first.get((str(k), False), -1), _ms(model.changed[str(k)]))
                assert audit == (2 if channel >= 0 and (str(k), True) in model.first else model.first.get((str(k), True), -1))
            else:
                assert (channel, audit, ms) == (-1, -1, 0) and states.get(digests[k:k + 1])[0] == 0
        forgotten = states.forget_older(digests, b - 1)
        assert {str(k) for k in np.flatnonzero(forgotten)} == model.forget_older(b - 1)
    assert len(states) == len(model.changed)


def test_an_expiry_or_a_rebuild_that_fails_leaves_the_labels_as_the_store_holds_them(tmp_path, monkeypatch):
    """The table follows the store only once a write is done: an expiry whose batch fails to
    be written forgets nothing, and a table whose build from the store fails is built again."""
    join = FeedbackJoin(str(tmp_path), horizon_s=HORIZON_S, expire_every_s=0.0)
    assert join.labels(["a"], [False], [LIKE], [T0]) == ([-1], [False])
    join.labels(["b"], [False], [LIKE], [T0 + 2 * HORIZON_S])  # a's batch is now past the horizon

    def failing(*_):
        raise OSError("disk full")
    with monkeypatch.context() as m:
        m.setattr(FeedbackJoin, "_commit", failing)
        with pytest.raises(OSError):
            join.expire()
    assert join.labels(["a"], [True], [OVERRIDE], [T0 + 2 * HORIZON_S]) == ([PAIR_AUDIT_OVERRIDES], [True])
    join.close()

    join = FeedbackJoin(str(tmp_path), horizon_s=HORIZON_S, expire_every_s=0.0)  # reopened: built from its entries
    with monkeypatch.context() as m:
        m.setattr(LabelStates, "merge", failing)
        with pytest.raises(OSError):
            join.labels(["a"], [False], [OVERRIDE], [T0 + 2 * HORIZON_S])
    assert join.labels(["a", "c"], [False, True], [OVERRIDE, LIKE], [T0 + 2 * HORIZON_S] * 2) == ([-1, -1], [True, False])
    with pytest.raises(ValueError, match="differ in length"):
        join.labels(["a", "c"], [False], [OVERRIDE], [T0])
    join.close()


@pytest.mark.parametrize(("fields", "ids"), [(b"\x00", [b"a"]), (b"\x03", [b"a"]), (b"\x05", [b"a"]),
                                             (b"\x01\x01", [b"a"]), (b"", [b"a"]), (b"\x10", [b"a"])])
def test_a_state_whose_label_entry_holds_no_state_is_refused_before_anything_is_written(fields, ids):
    """A label expiry entry lists its scenarios and a byte of label fields each: a count that
    differs, or a byte no state can hold (none, a channel field of 3, an audit label beside a
    channel label, bits above the four), is refused as the state loads, and the store is left
    empty."""
    join = FeedbackJoin(None, horizon_s=HORIZON_S, expire_every_s=0.0)
    join.labels(["a"], [False], [LIKE], [T0])
    state = join.dump()
    join.close()
    entries = msgspec.msgpack.decode(state["parts"][0])
    at = next(i for i, (key, _) in enumerate(entries) if key.startswith(b"x:") and key.endswith(b"L"))
    entries[at][1] = msgspec.msgpack.encode([ids, fields])
    again = FeedbackJoin(None, horizon_s=HORIZON_S, expire_every_s=0.0)
    try:
        with pytest.raises(ValueError, match="label expiry entry"):
            again.load({**state, "parts": [msgspec.msgpack.encode(entries)]})
        assert list(again.db.keys()) == []
    finally:
        again.close()


_LEGACY_KEY = b"x:%016d%08dL" % (_ms(T0), 1)


@pytest.mark.parametrize(("label_value", "refs", "match"), [
    *(([*fields, T0], [b"a"], "label state") for fields in ([2, -1], [-1, -1], [0, 1], ["x", 0], [2**63, 0],
                                                               [0, -2**63])),
    *(([0, -1, T0], refs, "label expiry entry") for refs in (5, [1, 2], [[b"a"], b"\x07"]))])
def test_a_legacy_label_key_that_holds_no_state_is_refused(label_value, refs, match):
    """A state of layout 3 kept a label state a key, `(channel, audit, event time)`: one whose
    fields are out of range is refused as it converts, not taken as some other state; so is a
    label expiry entry that lists neither ids alone nor ids and their states."""
    state = {"layout": 3, "seq": 1, "parked": 0, "clock": T0, "last_expiry": -math.inf, "expired_scores": 0,
             "unmatched_feedback": 0}
    entries = [[b"l:a", msgspec.msgpack.encode(label_value)], [_LEGACY_KEY, msgspec.msgpack.encode(refs)]]
    join = FeedbackJoin(None, horizon_s=HORIZON_S, expire_every_s=0.0)
    try:
        with pytest.raises(ValueError, match=match):
            join.load({**state, "parts": [msgspec.msgpack.encode(entries)]})
    finally:
        join.close()


@pytest.mark.parametrize("key", [b"x:abcdefghijklmnop00000001L", b"x:L", b"x:-000000000000001000000001L",
                                 b"x:000176722560000000000001LL", b"x:000176722560000000000001Q"])
def test_an_expiry_entry_whose_key_holds_no_time_is_refused(key):
    """A label entry's states are stamped with the event time its key holds, and expiry reads
    it there: a key of any other shape is refused as the state loads."""
    join = FeedbackJoin(None, horizon_s=HORIZON_S, expire_every_s=0.0)
    join.labels(["a"], [False], [LIKE], [T0])
    state = join.dump()
    join.close()
    entries = [[key if k.startswith(b"x:") else k, v] for k, v in msgspec.msgpack.decode(state["parts"][0])]
    again = FeedbackJoin(None, horizon_s=HORIZON_S, expire_every_s=0.0)
    try:
        with pytest.raises(ValueError, match="expiry entry key"):
            again.load({**state, "parts": [msgspec.msgpack.encode(entries)]})
    finally:
        again.close()
