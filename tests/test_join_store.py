"""The join's score store against a brute-force model: batches of scores in arrival order,
each batch forgotten whole once the event-time clock has passed its latest score by the
horizon (checked at most once every `expire_every_s` of event time, to the millisecond).

Hypothesis draws what makes a store of scores hard to keep: few scenarios, re-scored within a
batch and across batches, in batches of one score to over two pages of them (256 a page),
with ids that hold NUL bytes, share prefixes, or run to the schema's 256 characters; event times that jump by zero to days, out of order, so a scenario's newer
score can expire before its older one; and checkpoints at any point, whole or as a chain of
deltas, that a new store is loaded from.
"""
from __future__ import annotations

import math
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.layout import PAIR_AUDIT_OVERRIDES
from streams.operators.dedup import digests
from streams.operators.join import Contexts, FeedbackJoin
from tests.join_checkpoints import checkpoint_and_reload

T0 = 1_767_225_600.0
HORIZON_S = 300.0
STEP_MS = st.integers(-2 * int(HORIZON_S) * 1000, 3_000_000)
DAYS_S = st.integers(0, 3 * 86_400).map(float)
IDS = ["a", "b", "a\x00b", "a\x00", "\x00", "ab", "é" * 256, "x" * 256, "x" * 255]


class Model:
    """What the store must answer, one score at a time."""

    def __init__(self, expire_every_s: float) -> None:
        self.batches: list[tuple[float, list[tuple[str, tuple]]]] = []  # arrival order, live only
        self.clock = self.last_expiry = -math.inf
        self.expire_every_s = expire_every_s
        self.expired = 0

    def add(self, sids: list[str], contexts: list[tuple]) -> None:
        max_ts = max(c[5] for c in contexts)
        self.batches.append((max_ts, list(zip(sids, contexts))))
        self.clock = max(self.clock, max_ts)

    def expire(self) -> None:
        if self.clock == -math.inf or self.clock - self.last_expiry < self.expire_every_s:
            return
        self.last_expiry = self.clock
        cutoff = _ms(self.clock - HORIZON_S)
        gone = [b for b in self.batches if _ms(b[0]) < cutoff]
        self.expired += sum(len(b[1]) for b in gone)
        self.batches = [b for b in self.batches if _ms(b[0]) >= cutoff]

    def pending(self) -> int:
        return sum(len(scores) for _, scores in self.batches)

    def scores_of(self, sids) -> dict[str, list[tuple]]:
        out: dict[str, list[tuple]] = {}
        for _, scores in self.batches:
            for sid, ctx in scores:
                if sid in sids:
                    out.setdefault(sid, []).append(ctx)
        return out


def _ms(ts: float) -> int:
    return max(0, int(ts * 1000))


@st.composite
def histories(draw):
    ops = []
    ts = T0
    for _ in range(draw(st.integers(1, 40))):
        op = draw(st.sampled_from(["scores", "scores", "scores", "expire", "query", "capture"]))
        if op == "scores":
            batch = []
            for _ in range(draw(st.integers(1, 5))):
                # none, milliseconds back by up to two horizons (late scores) or ahead, or days ahead
                step = draw(st.one_of(st.just(0.0), STEP_MS.map(lambda ms: ms / 1000), DAYS_S))
                ts = max(T0, ts + step)
                batch.append((draw(st.sampled_from(IDS)), ("p", draw(st.sampled_from(["s", ""])),
                                                           draw(st.sampled_from([0.1, 0.5, 0.9])), 0.5,
                                                           draw(st.sampled_from(["act", "hold"])), ts)))
            # now and then a batch over a page of scores (256) or two, cut anywhere
            ops.append(("scores", batch * draw(st.sampled_from([1, 1, 1, 1, 52, 103, 256]))))
        elif op == "query":
            ops.append(("query", draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=4))))
        elif op == "capture":
            ops.append(("capture", draw(st.booleans())))  # whole, or a delta when one is due
        else:
            ops.append((op, None))
    return ops


@settings(max_examples=200, deadline=None)
@given(histories(), st.sampled_from([0.0, 60.0]))
def test_the_store_answers_what_one_score_at_a_time_gives_through_expiry_and_checkpoints(ops, every):
    model, join = Model(every), FeedbackJoin(None, horizon_s=HORIZON_S, expire_every_s=every)
    chain: list[dict] = []
    try:
        for op, arg in ops:
            if op == "scores":
                sids, contexts = [s for s, _ in arg], [c for _, c in arg]
                join.add_scores(sids, contexts)
                model.add(sids, contexts)
            elif op == "expire":
                assert join.expire() == []
                model.expire()
                assert join.expired_scores == model.expired
            elif op == "query":
                assert {sid: [tuple(c) for c in found] for sid, found in join.scores_of(arg).items()} \
                    == model.scores_of(set(arg))
                assert join.pending_scores == model.pending()
            else:  # a checkpoint, and a new store loaded from its chain
                join, chain = checkpoint_and_reload(
                    join, chain, arg, lambda: FeedbackJoin(None, horizon_s=HORIZON_S, expire_every_s=every))
        assert {sid: [tuple(c) for c in found] for sid, found in join.scores_of(IDS).items()} \
            == model.scores_of(set(IDS))
        assert join.expired_scores == model.expired and join.pending_scores == model.pending()
    finally:
        join.close()


DATA = Path(__file__).parent / "data"
LEGACY_IDS = ["a", "b", "a\x00b", "a\x00", "c" * 256, "é"]


def _answers(join: FeedbackJoin) -> dict:
    return {"scores": {sid: [list(c) for c in found] for sid, found in join.scores_of(LEGACY_IDS).items()},
            "expired_scores": join.expired_scores, "waiting": join.waiting_feedback}


def _label_answers(chain: list[dict]) -> list:
    """What a store loaded from `chain` answers to a channel like, then an audit like, on every id
    (as the layout-3 fixture's writer asked it)."""
    join = FeedbackJoin(None, horizon_s=300.0, expire_every_s=0.0)
    try:
        join.load(chain[0])
        for delta in chain[1:]:
            join.apply(delta)
        n, now = len(LEGACY_IDS), [join._clock] * len(LEGACY_IDS)
        return [list(join.labels(LEGACY_IDS, [False] * n, [0] * n, now)),
                list(join.labels(LEGACY_IDS, [True] * n, [0] * n, now))]
    finally:
        join.close()


@pytest.mark.parametrize(("fixture", "layout"), [("join_legacy_layout.msgpack", None), ("join_layout2.msgpack", 2),
                                                   ("join_layout3.msgpack", 3)])
def test_a_state_of_an_earlier_key_layout_is_converted_as_it_is_taken_and_answers_as_before(fixture, layout):
    """Each fixture holds a whole state and a delta written by the join when it kept a key a
    score (`s:<scenario id>\\0<n>`, no "layout" in the state; then `s:<serial>`, layout 2,
    with `r:` keys of re-scored scenarios under those serials), with what that join answered
    after each and after a last batch and expiry: scores (a scenario scored twice in a batch,
    one re-scored in a later batch, a newer score that expires before an older one, ids with
    NUL bytes and of 256 characters), parked feedback and a label state; then a key a score in
    pages, layout 3, with label states still a key a scenario (`l:<sid>`), and what that join
    answered of every scenario's labels. Loaded now, each batch's scores are stored again in
    pages, the label states move into their batches' expiry entries, and the store answers
    the same."""
    doc = msgspec.msgpack.decode((DATA / fixture).read_bytes())
    assert doc["whole"].get("layout") == doc["delta"].get("layout") == layout
    ctx = lambda ts: ("p", "seg", 0.5, 0.5, "act", T0 + ts)  # noqa: E731
    join = FeedbackJoin(None, horizon_s=300.0, expire_every_s=0.0)
    try:
        join.load(doc["whole"])
        assert _answers(join) == doc["after_whole"]
        assert join.labels(["b"], [False], [0], [T0 + 9]) == ([PAIR_AUDIT_OVERRIDES], [True])
    finally:
        join.close()
    join = FeedbackJoin(None, horizon_s=300.0, expire_every_s=0.0)
    again = FeedbackJoin(None, horizon_s=300.0, expire_every_s=0.0)
    third = FeedbackJoin(None, horizon_s=300.0, expire_every_s=0.0)
    try:
        join.load(doc["whole"])
        join.apply(doc["delta"])
        assert _answers(join) == {k: doc["after_delta"][k] for k in ("scores", "expired_scores", "waiting")}
        assert not [k for k in join.db.keys() if k[:2] in (b"s:", b"l:")]  # every score in a page, no label keys
        if "labels_after_whole" in doc:
            assert _label_answers([doc["whole"]]) == doc["labels_after_whole"]
            assert _label_answers([doc["whole"], doc["delta"]]) == doc["labels_after_delta"]
        again.load(join.dump())  # and it is checkpointed in this layout
        join.take_changes()
        for store in (join, again):
            store.add_scores(["b", "a\x00"], [ctx(1300), ctx(1301)])
            unmatched = store.expire()
            assert {**_answers(store), "unmatched": [list(p) for p in unmatched]} == doc["after_more"]
        # a delta of this layout after the converted chain: a load converts the chain the same way
        counters, parts = join.changes_lazily(join.take_changes())
        third.load(doc["whole"])
        third.apply(doc["delta"])
        third.apply({**counters, "parts": list(parts)})
        assert _answers(third) == {k: v for k, v in doc["after_more"].items() if k != "unmatched"}
        assert third.dump() == join.dump()
    finally:
        join.close()
        again.close()
        third.close()


def test_a_layout_3_chain_converts_to_what_its_whole_state_converts_to():
    """A layout-3 delta that forgets a scenario an entry of its chain's whole state still names
    (a batch with an earlier event time changed it after that entry's), then labels it anew:
    the entry converted with the whole state takes the scenario's new state, so the chain
    loads as the whole state written after the delta does, and answers as that join did."""
    doc = msgspec.msgpack.decode((DATA / "join_layout3.msgpack").read_bytes())["relabel"]
    assert doc["whole"]["layout"] == doc["delta"]["layout"] == doc["whole_after"]["layout"] == 3
    chained = FeedbackJoin(None, horizon_s=300.0, expire_every_s=0.0)
    whole = FeedbackJoin(None, horizon_s=300.0, expire_every_s=0.0)
    try:
        chained.load(doc["whole"])
        chained.apply(doc["delta"])
        whole.load(doc["whole_after"])
        assert chained.dump() == whole.dump()
        for store in (chained, whole):
            assert [list(store.labels(["x", "y"], [True, True], [0, 0], [T0 + 351] * 2))] == doc["labels_after"]
    finally:
        chained.close()
        whole.close()


def test_a_state_of_an_unknown_layout_is_refused():
    join = FeedbackJoin(None)
    try:
        with pytest.raises(ValueError, match="unknown layout 5"):
            join.load({**join.dump(), "layout": 5})
    finally:
        join.close()


def test_a_score_page_that_expiry_deleted_is_not_read_from_the_newest_pages_kept_in_memory():
    """The newest pages are kept as they were written, to join feedback without reading the
    store; expiry drops those it deletes, so a score past the horizon is gone there too."""
    join = FeedbackJoin(None, horizon_s=100.0, expire_every_s=0.0)
    try:
        join.add_scores(["a"], [("p", "seg", 0.5, 0.5, "act", T0)])
        old, _ = join.latest_of(["a"])
        assert join.contexts_at(old)[0] == ["p"]
        join.add_scores(["b"], [("q", "seg", 0.5, 0.5, "hold", T0 + 500)])
        new, _ = join.latest_of(["b"])
        assert join.expire() == [] and join.expired_scores == 1
        with pytest.raises(KeyError, match="not stored"):
            join.contexts_at(old)
        assert join.contexts_at(new)[0] == ["q"]
    finally:
        join.close()


def test_a_reopened_store_numbers_its_expiry_entries_after_the_ones_it_holds(tmp_path):
    """Numbered from 0 again, the reopened store's first batch in the same millisecond would
    overwrite the expiry entry of the batch before: those scores would never expire, and the
    scenario index, rebuilt from the entries, would not find them."""
    ctx = lambda ts: ("p", "s", 0.5, 0.5, "act", ts)  # noqa: E731
    path = str(tmp_path / "join")
    join = FeedbackJoin(path, horizon_s=100.0, expire_every_s=0.0)
    join.add_scores(["a"], [ctx(T0)])
    join.close()
    join = FeedbackJoin(path, horizon_s=100.0, expire_every_s=0.0)
    try:
        join.add_scores(["b"], [ctx(T0)])
        assert set(join.scores_of(["a", "b"])) == {"a", "b"}
        join.add_scores(["c"], [ctx(T0 + 500)])
        join.expire()
        assert join.expired_scores == 2 and set(join.scores_of(["a", "b", "c"])) == {"c"}
    finally:
        join.close()


def test_ids_crafted_to_share_a_murmur3_digest_are_two_scenarios():
    """murmur3 is not keyed: these two ids share their 128-bit digest under every seed. The
    scenario index also keys by Python's own per-process secret hash, so the one's feedback
    never joins the other's score."""
    victim, attacker = 'w\x1el@\x08akI#*~/e-\x13U\\r*V\x01\ri\x7fscenario', \
        '\x17~n\x1ejRy{b\x1d\x07\x02(Fq\x0c\\r*V~Z7\x02scenario'
    assert digests([victim]).tolist() == digests([attacker]).tolist()
    join = FeedbackJoin(None)
    try:
        join.add_scores([victim], [("victim-policy", "s", 0.5, 0.5, "act", T0)])
        join.add_scores([attacker], [("attacker-policy", "s", 0.5, 0.5, "act", T0 + 1)])
        assert [c[0] for c in join.scores_of([victim])[victim]] == ["victim-policy"]
        joined = join.lookup([attacker, victim], [T0 + 5] * 2)
        assert [c[0] for c in joined] == ["attacker-policy", "victim-policy"]
    finally:
        join.close()


def test_a_batch_that_cannot_be_written_leaves_the_store_and_its_index_as_they_were():
    join = FeedbackJoin(None)
    try:
        join.add_scores(["a"], [("p", "s", 0.5, 0.5, "act", T0)])
        with pytest.raises(ValueError):  # an event time with no millisecond: no expiry key
            join.add_scores(["b", "a"], [("p", "s", 0.5, 0.5, "act", math.nan), ("p", "s", 0.5, 0.5, "act", T0)])
        assert {sid: [c[5] for c in found] for sid, found in join.scores_of(["a", "b"]).items()} == {"a": [T0]}
        join.add_scores(["a"], [("p", "s", 0.5, 0.5, "act", T0 + 1)])
        assert [c[5] for c in join.scores_of(["a"])["a"]] == [T0, T0 + 1]
    finally:
        join.close()


@given(st.lists(st.tuples(st.sampled_from(IDS), st.sampled_from(["p", "q" * 300]), st.sampled_from(["s", ""]),
                          st.floats(0, 1), st.floats(0, 1), st.sampled_from(["act", "hold", "abstain"]),
                          st.floats(0, 3 * 86_400)), min_size=1, max_size=30))
@settings(max_examples=40, deadline=None)
def test_contexts_as_columns_store_exactly_what_the_rows_as_tuples_store(rows):
    """`Contexts` reads like the list of rows it holds as columns, and a store given it holds
    the same bytes as one given the rows as tuples."""
    sids = [r[0] for r in rows]
    tuples = [(*r[1:6], T0 + r[6]) for r in rows]
    policy, segment, score, tau, decision, ts = map(list, zip(*tuples))
    contexts = Contexts(policy, segment, score, tau, decision, ts)
    as_arrays = Contexts(policy, segment, np.array(score), np.array(tau), decision, np.array(ts))
    for each in (contexts, as_arrays):
        assert len(each) == len(tuples) and list(each) == tuples
        assert [each[i] for i in range(len(tuples))] == tuples
        assert all(type(x) is float for row in [*each, each[0]] for x in row[2:4] + row[5:])
        with pytest.raises(TypeError):
            each[0:2]
    stores = [FeedbackJoin(None), FeedbackJoin(None), FeedbackJoin(None)]
    try:
        stores[0].add_scores(sids, tuples)
        stores[1].add_scores(sids, contexts)
        stores[2].add_scores(sids, as_arrays)
        assert list(stores[0].db.items()) == list(stores[1].db.items()) == list(stores[2].db.items())
    finally:
        for store in stores:
            store.close()
