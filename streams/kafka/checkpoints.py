"""Checkpoints on Kafka: state bytes in the compacted `checkpoints` topic, found through the
metadata of the very offset commit that covers them.

A checkpoint is zstd-compressed and cut into chunks of at most `CHUNK_BYTES`, each
keyed `<name>/<id>/<index>` (a fresh id per checkpoint, so no writer ever overwrites
another's chunks). The consumer group's offset commit carries a pointer to it in its
metadata: state and the offsets it covers are committed in one request, so a
restart finds either both or neither. Once a newer checkpoint is committed, the
older one's chunks are deleted with tombstones; a checkpoint written but never
committed (the writer died in between, or the broker refused part of it) is simply
never read. One whose commit was refused after a rebalance may still have landed, so
the worker deletes it only once a later commit supersedes it or the group is found
pointing elsewhere.

A checkpoint may be a chain: a whole state followed by up to `MAX_PIECES - 1` deltas,
each holding what changed since the piece before it. The pointer lists every piece, so
a reader finds them all and a deletion spares the pieces a newer chain still uses.
"""
from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import cramjam
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.kafka.producer import partition_for

CHUNK_BYTES = 512 * 1024
"""Chunk size: under the 1 MB message limit brokers and clients use by default."""
IN_FLIGHT_CHUNKS = 8
"""Chunks handed to the producer before the first of them must be acknowledged: the
producer then holds a few megabytes of a checkpoint, not a copy of all of it."""
MAX_CHECKPOINT_BYTES = 4 << 30
"""A pointer declaring a larger checkpoint is refused rather than read."""
MAX_PIECES = 24
"""Pieces of a chain at most: its pointer then stays under the 4,096 bytes of commit metadata
brokers accept by default (`offset.metadata.max.bytes`), at most about 150 bytes a piece."""
_FIELDS = ("id", "partition", "first", "last", "chunks", "bytes", "sha256")
"""A piece's fields, in the order a pointer lists them."""


class CheckpointError(RuntimeError):
    """A committed checkpoint that cannot be read back whole."""


async def committed(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, tuple[int, str]]:
    """The group's committed (offset, metadata) of `tps`. aiokafka's public `committed()`
    drops the metadata, so this asks its coordinator, as `committed()` itself does."""
    found = await consumer._coordinator.fetch_committed_offsets(tps)
    return {tp: (om.offset, om.metadata or "") for tp, om in found.items() if om.offset >= 0}


class Packed(NamedTuple):
    """A checkpoint ready to write: zstd frames (bytes, or views of the compressor's buffers)
    whose concatenation is its compressed form, and its uncompressed size."""

    frames: list
    size: int


FRAME_BYTES = 1 << 20
"""`pack_pieces` compresses pieces at least this large as frames of their own and gathers
smaller ones into frames of about this size."""


def pack_pieces(pieces: Iterable[bytes | memoryview]) -> Packed:
    """Compress a checkpoint given as the pieces of its encoding (`snapshot.encode_pieces`):
    the whole uncompressed checkpoint is never in one buffer (a zstd stream of frames
    decompresses to the concatenation of what each held). The frames stay in the compressor's
    buffers; chunks are copied out of them as they are sent."""
    frames, size, small = [], 0, bytearray()

    def frame(data) -> None:
        frames.append(memoryview(cramjam.zstd.compress(data)))

    for piece in pieces:
        size += len(piece)
        alone = len(piece) >= FRAME_BYTES
        if not alone:
            small += piece
        if small and (alone or len(small) >= FRAME_BYTES):
            frame(small)
            small.clear()
        if alone:
            frame(piece)
    if small or not frames:
        frame(small)
    return Packed(frames, size)


def pack(blob: bytes) -> Packed:
    """Compress a checkpoint encoded in one blob (a monitor's, which is small). Call it on the
    encoded blob directly (``pack(encode(...))``): the blob is then freed before the write,
    instead of living as long as it."""
    return pack_pieces([blob])


def chunks(frames: list, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The concatenation of `frames` cut into pieces of `size` bytes (the last may be shorter,
    and an empty checkpoint is one empty piece), each a copy made as it is asked for. `frames`
    is consumed: each is let go of (in that list) once copied out."""
    buf, cut = bytearray(), False
    for i, frame in enumerate(frames):
        view, frames[i] = memoryview(frame).cast("B"), None
        while len(view):
            take = size - len(buf)
            buf += view[:take]
            view = view[take:]
            if len(buf) == size:
                yield bytes(buf)
                buf.clear()
                cut = True
    if buf or not cut:
        yield bytes(buf)


class CheckpointStore:
    """Writes and reads checkpoints of one topic through the worker's producer and a reader."""

    def __init__(self, producer: AIOKafkaProducer, reader: AIOKafkaConsumer, topic: str, partitions: int) -> None:
        self.producer, self.reader, self.topic, self.partitions = producer, reader, topic, partitions

    async def write(self, name: str, packed: Packed, base: str = "") -> str:
        """Store a packed checkpoint under `name`; return the pointer to commit with the
        offsets it covers: `packed` alone, or (a delta) the chain of `base` followed by it.
        Chunks are cut as they are sent, at most IN_FLIGHT_CHUNKS unacknowledged, and each
        frame of `packed` is let go of once sent (`chunks`)."""
        ckid = uuid.uuid4().hex[:16]
        partition = partition_for(name.encode(), self.partitions)
        digest = hashlib.sha256()
        futures, offsets = [], []
        for i, piece in enumerate(chunks(packed.frames)):
            digest.update(piece)
            futures.append(await self.producer.send(self.topic, piece, key=f"{name}/{ckid}/{i}".encode(),
                                                    partition=partition))
            if len(futures) >= IN_FLIGHT_CHUNKS:
                offsets.append((await futures.pop(0)).offset)
        offsets += [(await f).offset for f in futures]
        piece = {"id": ckid, "partition": partition, "first": min(offsets), "last": max(offsets),
                 "chunks": len(offsets), "bytes": packed.size, "sha256": digest.hexdigest()}
        chain = pieces(base) + [piece] if base else [piece]
        if len(chain) > MAX_PIECES:
            raise ValueError(f"a chain holds at most {MAX_PIECES} pieces")
        return orjson.dumps({"v": 2, "chain": [[p[f] for f in _FIELDS] for p in chain]}).decode()

    async def read(self, name: str, pointer: str) -> list[bytes]:
        """The pieces of the checkpoint `pointer` names, the whole state first, each checked
        whole; CheckpointError otherwise."""
        return [await self._read_piece(name, p) for p in pieces(pointer)]

    async def _read_piece(self, name: str, p: dict) -> bytes:
        tp = TopicPartition(self.topic, p["partition"])
        prefix = f"{name}/{p['id']}/".encode()
        chunks: dict[int, bytes] = {}
        self.reader.assign([tp])
        self.reader.seek(tp, p["first"])
        position = p["first"]
        while position <= p["last"]:
            fetched = await self.reader.getmany(tp, timeout_ms=10_000)
            records = fetched.get(tp, [])
            if not records:
                raise CheckpointError(f"checkpoint {p['id']} of {name}: offsets {position}..{p['last']} unreadable")
            for r in records:
                if r.offset <= p["last"] and r.key and r.key.startswith(prefix) and r.value is not None:
                    chunks[int(r.key[len(prefix):])] = r.value
                position = r.offset + 1
        if sorted(chunks) != list(range(p["chunks"])):
            raise CheckpointError(f"checkpoint {p['id']} of {name}: {len(chunks)} of {p['chunks']} chunks found")
        data = b"".join(chunks[i] for i in range(p["chunks"]))
        if hashlib.sha256(data).hexdigest() != p["sha256"]:
            raise CheckpointError(f"checkpoint {p['id']} of {name}: checksum mismatch")
        out = bytearray(p["bytes"])
        try:
            got = cramjam.zstd.decompress_into(data, out)
        except cramjam.DecompressionError as e:
            raise CheckpointError(f"checkpoint {p['id']} of {name}: {e}") from e
        if got != p["bytes"]:
            raise CheckpointError(f"checkpoint {p['id']} of {name}: {got} bytes, not the {p['bytes']} it declares")
        return bytes(out)

    async def forget(self, name: str, pointer: str, keep: list[str] = ()) -> None:
        """Tombstones for the chunks of a superseded checkpoint's pieces, but those of a
        checkpoint in `keep` (compaction then drops them). Returns once the broker has
        acknowledged them all; raises the first error of those it refused."""
        kept = {p["id"] for k in keep if k for p in pieces(k)}
        acks = []
        for p in pieces(pointer):
            if p["id"] not in kept:
                for i in range(p["chunks"]):
                    acks.append(await self.producer.send(self.topic, None, key=f"{name}/{p['id']}/{i}".encode(),
                                                         partition=p["partition"]))
        for outcome in await asyncio.gather(*acks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome


def pieces(pointer: str) -> list[dict]:
    """The pieces a pointer names, the whole state first; CheckpointError if it is not a
    pointer `CheckpointStore.write` gave (version 1 named a single piece)."""
    try:
        doc = orjson.loads(pointer)
        chain = [doc] if doc["v"] == 1 else \
            [dict(zip(_FIELDS, p)) for p in doc["chain"] if isinstance(p, list) and len(p) == len(_FIELDS)] \
            if doc["v"] == 2 and isinstance(doc["chain"], list) else None
        ok = chain is not None and 0 < len(chain) == len(doc.get("chain", chain)) <= MAX_PIECES \
            and all(map(_is_piece, chain))
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"not a checkpoint pointer: {pointer[:80]!r}") from e
    if not ok:
        raise CheckpointError(f"not a checkpoint pointer: {pointer[:80]!r}")
    return chain


def extendable(pointer: str) -> bool:
    """Whether a delta may follow the checkpoint `pointer` names: its chain has room, and
    its deltas together are still smaller than its whole state (past that a load would read
    more than a whole checkpoint holds, so the next one is whole again)."""
    if not pointer:
        return False
    chain = pieces(pointer)
    return len(chain) < MAX_PIECES and sum(p["bytes"] for p in chain[1:]) < chain[0]["bytes"]


def _is_piece(p) -> bool:
    try:
        return (isinstance(p["id"], str) and p["id"].isalnum()
                and all(isinstance(p[k], int) and p[k] >= 0 for k in ("partition", "first", "last", "chunks", "bytes"))
                and p["first"] <= p["last"] and 0 < p["chunks"] <= p["last"] - p["first"] + 1
                and p["bytes"] <= MAX_CHECKPOINT_BYTES and isinstance(p["sha256"], str))
    except (KeyError, TypeError):
        return False
