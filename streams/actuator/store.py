"""The actuator's state in Redis, and the transactions that make its effects happen once.

Keys (``ns`` is the settings' Redis namespace; ids percent-encoded as in
:mod:`streams.state.redis_store`):

- ``{ns}actuator:done`` (hash): trigger_id -> action_id of the decision taken on it. A trigger
  delivered again (a crash before its offset was committed) finds its decision here and is not
  decided again.
- ``{ns}actuator:key:{policy_id}:{segment}`` (string): the key's :class:`KeyState` as JSON
  (last change, probation), so probation survives a restart.
- ``{ns}actuator:windows:{policy_id}:{segment}`` (hash): window start -> the final tumbling
  window's loss statistics, the last ``2 × probation_s`` of them, for probation verdicts.
- ``{ns}actuator:outbox`` (list): messages decided but maybe not yet published (action events,
  rollback triggers); removed one by one once the producer has them acknowledged.
- ``{ns}actuator:effects`` (list): one entry per threshold the actuator wrote (its action_id,
  the key and tau), the audit trail of its effects, capped at the last ``EFFECTS_KEPT``.

A decision, its threshold write (``RedisStore.set_threshold`` on the same transaction), the key's
new state, its effect entry and its outgoing messages are written in one MULTI/EXEC, with WATCH
on everything the decision read: either all of it happened or none did, and a concurrent writer
(another actuator, ``npo threshold set``) makes it decide again on what is there now.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import orjson
import redis

from streams.actuator.decide import ActuatorConfig, Decision, KeyState, settle
from streams.events import ActionEvent, TriggerEvent
from streams.state.redis_store import RedisStore, key_part, threshold_key

EFFECTS_KEPT = 100_000


def _key(kind: str, policy_id: str, segment: str) -> str:
    return f"actuator:{kind}:{key_part(policy_id)}:{key_part(segment)}"


def outgoing(role: str, event: dict, struct: type) -> bytes:
    """An outbox entry: the topic role, the Kafka key, and the event checked against its Struct."""
    value = msgspec.json.encode(msgspec.convert(event, struct))
    return orjson.dumps({"role": role, "key": f"{event['policy_id']}\x1f{event['segment']}",
                         "value": orjson.loads(value)})


class ActuatorStore:
    """Transactions over the keys above, on one :class:`RedisStore`'s client."""

    def __init__(self, store: RedisStore) -> None:
        self.store, self.client, self.ns = store, store.client, store.ns

    def _k(self, key: str) -> str:
        return self.ns + key

    def _transact(self, watch: list[str], body: Callable):
        """Run ``body(pipe)`` under WATCH of ``watch`` until no watched key changed meanwhile."""
        with self.store.translated():
            while True:
                with self.client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(*watch)
                        return body(pipe)
                    except redis.WatchError:
                        continue

    def decide_trigger(self, trigger: TriggerEvent, decide: Callable[[KeyState, float | None], Decision],
                       now: float | None = None) -> dict | None:
        """Decide on ``trigger`` once: None if it was decided before, else the new action
        (already recorded, its threshold written and its message in the outbox)."""
        p, s = trigger.policy_id, trigger.segment
        done, state_key, tau_key = self._k("actuator:done"), self._k(_key("key", p, s)), self._k(threshold_key(p, s))

        def body(pipe):
            if pipe.hexists(done, trigger.trigger_id):
                return None
            state = KeyState.from_dict(orjson.loads(pipe.get(state_key) or b"null"))
            raw_tau = pipe.get(tau_key)
            decision = decide(state, None if raw_tau is None else float(raw_tau))
            action = {**decision.action, "emitted_at": time.time() if now is None else now}
            pipe.multi()
            pipe.hset(done, trigger.trigger_id, action["action_id"])
            pipe.set(state_key, orjson.dumps(decision.state.dump()))
            if decision.write_tau is not None:
                self._write_threshold(pipe, action, decision.write_tau)
            pipe.rpush(self._k("actuator:outbox"), outgoing("actions", action, ActionEvent))
            pipe.execute()
            return action

        return self._transact([done, state_key, tau_key], body)

    def _write_threshold(self, pipe, action: dict, tau: float) -> None:
        self.store.set_threshold(action["policy_id"], action["segment"], tau, pipe=pipe)
        effects = self._k("actuator:effects")
        pipe.rpush(effects, orjson.dumps({"action_id": action["action_id"], "policy_id": action["policy_id"],
                                          "segment": action["segment"], "tau": tau}))
        pipe.ltrim(effects, -EFFECTS_KEPT, -1)

    def add_window(self, policy_id: str, segment: str, start: float, stats: dict, keep_s: float) -> None:
        """Remember a final tumbling window's statistics (idempotent: keyed by its start), and
        forget those ending more than ``keep_s`` before the latest."""
        key = self._k(_key("windows", policy_id, segment))
        with self.store.translated():
            self.client.hset(key, repr(float(start)), orjson.dumps(stats))
            ends = {f: orjson.loads(v)["end"] for f, v in self.client.hgetall(key).items()}
            latest = max(ends.values())
            old = [f for f, end in ends.items() if end < latest - keep_s]
            if old:
                self.client.hdel(key, *old)

    def windows(self, policy_id: str, segment: str, pipe=None) -> dict[float, dict]:
        raw = (pipe or self.client).hgetall(self._k(_key("windows", policy_id, segment)))
        return {float(f): orjson.loads(v) for f, v in raw.items()}

    def key_state(self, policy_id: str, segment: str) -> KeyState:
        with self.store.translated():
            return KeyState.from_dict(orjson.loads(self.client.get(self._k(_key("key", policy_id, segment)))
                                                   or b"null"))

    def settle_probation(self, policy_id: str, segment: str, config: ActuatorConfig,
                         now: float | None = None) -> dict | None:
        """If the key's probation is over (a final window reached its end), decide kept or
        reverted once: None if there is nothing to decide, else the verdict's action."""
        state_key, tau_key = self._k(_key("key", policy_id, segment)), self._k(threshold_key(policy_id, segment))
        windows_key = self._k(_key("windows", policy_id, segment))

        def body(pipe):
            state = KeyState.from_dict(orjson.loads(pipe.get(state_key) or b"null"))
            if state.probation is None:
                return None
            raw_tau = pipe.get(tau_key)
            settled = settle(self.windows(policy_id, segment, pipe), state,
                             None if raw_tau is None else float(raw_tau), policy_id, segment, config)
            if settled is None:
                return None
            action = {**settled.action, "emitted_at": time.time() if now is None else now}
            pipe.multi()
            pipe.set(state_key, orjson.dumps(settled.state.dump()))
            if settled.write_tau is not None:
                self._write_threshold(pipe, action, settled.write_tau)
                trigger = {**settled.rollback, "emitted_at": action["emitted_at"]}
                pipe.rpush(self._k("actuator:outbox"), outgoing("triggers", trigger, TriggerEvent))
            pipe.rpush(self._k("actuator:outbox"), outgoing("actions", action, ActionEvent))
            pipe.execute()
            return action

        return self._transact([state_key, tau_key, windows_key], body)

    def outbox(self) -> list[bytes]:
        with self.store.translated():
            return self.client.lrange(self._k("actuator:outbox"), 0, -1)

    def published(self, entries: list[bytes]) -> None:
        """Drop entries the broker acknowledged (by value: entries are unique, and a concurrent
        actuator's new ones stay)."""
        with self.store.translated():
            pipe = self.client.pipeline(transaction=False)
            for entry in entries:
                pipe.lrem(self._k("actuator:outbox"), 1, entry)
            pipe.execute()

    def effects(self) -> list[dict]:
        with self.store.translated():
            return [orjson.loads(e) for e in self.client.lrange(self._k("actuator:effects"), 0, -1)]
