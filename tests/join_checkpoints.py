"""A checkpoint of a join store, and a new store loaded from its chain, as a restarted worker does."""
from __future__ import annotations

from collections.abc import Callable

from streams.operators.join import FeedbackJoin


def checkpoint_and_reload(join: FeedbackJoin, chain: list[dict], whole: bool,
                          new_join: Callable[[], FeedbackJoin]) -> tuple[FeedbackJoin, list[dict]]:
    """Checkpoint `join` onto `chain`: whole when asked, when the chain is empty, or when too
    much changed for a delta; else a delta. Load `new_join()` from the chain, close `join`,
    and return the new store and the chain."""
    taken = join.take_changes()
    if whole or not chain or taken.log is None:
        chain = [join.dump()]
    else:
        counters, parts = join.changes_lazily(taken)
        chain = [*chain, {**counters, "parts": list(parts)}]
    again = new_join()
    again.load(chain[0])
    for delta in chain[1:]:
        again.apply(delta)
    again.take_changes()  # the loaded store's next delta is against this chain
    join.close()
    return again, chain
