"""Audit pairs: decisions labelled both by an audit and by another feedback channel.

Audits are a random sample of decisions reviewed to a gold standard. On the
decisions both have labelled, a channel whose loss agrees with the audits'
reverses as many audit labels one way as the other: among discordant pairs,
"audit override, channel like" and "audit like, channel override" are equally
likely (McNemar's null). Counting pairs, not comparing two loss estimates,
keeps the comparison on the same decisions, so drift and the audits' delay
cannot fake a disagreement.
"""
from __future__ import annotations

from kernels.layout import PAIR_AUDIT_OVERRIDES, PAIR_CHANNEL_OVERRIDES


class AuditPairs:
    """Counts of completed audit pairs by outcome.

    >>> p = AuditPairs()
    >>> for code in [0, 1, 1, 2, -1]:
    ...     p.update(code)
    >>> p.get()
    {'audit_pairs': 4, 'audit_pairs_b': 2, 'audit_pairs_c': 1}
    """

    def __init__(self) -> None:
        self.n = self.b = self.c = 0

    def update(self, pair: int) -> None:
        """Add the pair code a feedback event completed (-1: none)."""
        if pair < 0:
            return
        self.n += 1
        self.b += pair == PAIR_AUDIT_OVERRIDES
        self.c += pair == PAIR_CHANNEL_OVERRIDES

    def merge(self, other: "AuditPairs") -> None:
        self.n += other.n
        self.b += other.b
        self.c += other.c

    def get(self) -> dict[str, int]:
        return {"audit_pairs": self.n, "audit_pairs_b": self.b, "audit_pairs_c": self.c}
