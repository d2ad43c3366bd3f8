"""Checkpoints on Kafka: state bytes in the compacted `checkpoints` topic, found through the
metadata of the very offset commit that covers them.

A checkpoint is zstd-compressed and cut into chunks of at most `CHUNK_BYTES`, each
keyed `<name>/<id>/<index>` (a fresh id per checkpoint, so no writer ever overwrites
another's chunks), sent as its bytes are made (`PieceWriter`): a large one is never held
whole. The consumer group's offset commit carries a pointer to it in its
metadata: state and the offsets it covers are committed in one request, so a
restart finds either both or neither. Once a newer checkpoint is committed, the
older one's chunks are deleted with tombstones, and so are those of a write given up
half-way (`PieceWriter.abandon`). A checkpoint written but never committed (the writer died
in between, or the broker refused part of it) is never read. One whose commit was refused after a
rebalance may still have landed, so the worker deletes it only once a later commit
supersedes it or the group is found pointing elsewhere.

A checkpoint may be a chain: a whole state followed by up to `MAX_PIECES - 1` deltas,
each holding what changed since the piece before it. The pointer lists every piece, so
a reader finds them all and a deletion spares the pieces a newer chain still uses.
"""
from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import deque
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
"""`Framer` gathers small pieces into frames of about this size and cuts large ones in slices
of it."""


class Framer:
    """Compresses a checkpoint given as the pieces of its encoding (`snapshot.stream_pieces`,
    or a single blob) as it is iterated: a zstd frame per step, of small pieces gathered to
    about `FRAME_BYTES` (or up to a None piece, which ends a frame early) or of a
    `FRAME_BYTES` slice of a large one (a zstd stream of frames decompresses to the
    concatenation of what each held). The whole uncompressed checkpoint is never in one
    buffer, and each step's work is bounded. `size`: the bytes compressed so far."""

    def __init__(self, pieces: Iterable[bytes | memoryview | None]) -> None:
        self._pieces, self.size = iter(pieces), 0

    def __iter__(self) -> Iterator[memoryview]:
        small, framed = bytearray(), False
        for piece in self._pieces:
            if piece is None or len(piece) < FRAME_BYTES:
                if piece is not None:
                    self.size += len(piece)
                    small += piece
                if small and (piece is None or len(small) >= FRAME_BYTES):
                    yield _frame(small)
                    small.clear()
                    framed = True
                continue
            self.size += len(piece)
            if small:
                yield _frame(small)
                small.clear()
            view = memoryview(piece).cast("B")
            del piece
            for at in range(0, len(view), FRAME_BYTES):
                yield _frame(view[at:at + FRAME_BYTES])
            framed = True
            del view
        if small or not framed:
            yield _frame(small)


def _frame(data) -> memoryview:
    return memoryview(cramjam.zstd.compress(data))


def pack_pieces(pieces: Iterable[bytes | memoryview]) -> Packed:
    """A checkpoint given as the pieces of its encoding, compressed whole (`Framer`). The frames
    stay in the compressor's buffers; chunks are copied out of them as they are sent."""
    framer = Framer(pieces)
    frames = list(framer)
    return Packed(frames, framer.size)


def pack(blob: bytes) -> Packed:
    """Compress a checkpoint encoded in one blob (a monitor's, which is small). Call it on the
    encoded blob directly (``pack(encode(...))``): the blob is then freed before the write,
    instead of living as long as it."""
    return pack_pieces([blob])


class PieceWriter:
    """One checkpoint piece being written: compressed bytes go in as they are made (`write`),
    chunks of `CHUNK_BYTES` go out as they fill, keyed `<name>/<id>/<index>`, at most
    `IN_FLIGHT_CHUNKS` unacknowledged; `close` sends the rest and gives the pointer. A piece
    abandoned before its close leaves chunks nobody reads: `abandon` deletes them."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, name: str, partition: int) -> None:
        self.producer, self.topic, self.name, self.partition = producer, topic, name, partition
        self.id = uuid.uuid4().hex[:16]
        self.chunks = 0  # sent so far
        self._buf = bytearray()
        self._digest = hashlib.sha256()
        self._futures: deque = deque()
        self._offsets: list[int] = []

    async def write(self, data) -> None:
        """Append compressed bytes; a chunk is sent each time one fills."""
        self._buf += data
        while len(self._buf) >= CHUNK_BYTES:
            chunk = bytes(self._buf[:CHUNK_BYTES])
            del self._buf[:CHUNK_BYTES]
            await self._send(chunk)

    async def _send(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        key = f"{self.name}/{self.id}/{self.chunks}".encode()
        self._futures.append(await self.producer.send(self.topic, chunk, key=key, partition=self.partition))
        self.chunks += 1
        if len(self._futures) >= IN_FLIGHT_CHUNKS:
            self._offsets.append((await self._futures.popleft()).offset)

    async def close(self, size: int, base: str = "") -> str:
        """Send what is left (an empty piece is one empty chunk, so it still has a record to
        point at) and wait for every chunk; the pointer to commit with the offsets the piece
        covers: the piece alone, or (a delta) the chain of `base` followed by it. `size`: its
        uncompressed bytes."""
        if self._buf or not self.chunks:
            chunk = bytes(self._buf)
            self._buf.clear()
            await self._send(chunk)
        while self._futures:
            self._offsets.append((await self._futures.popleft()).offset)
        piece = {"id": self.id, "partition": self.partition, "first": min(self._offsets),
                 "last": max(self._offsets), "chunks": self.chunks, "bytes": size,
                 "sha256": self._digest.hexdigest()}
        chain = pieces(base) + [piece] if base else [piece]
        if len(chain) > MAX_PIECES:
            raise ValueError(f"a chain holds at most {MAX_PIECES} pieces")
        return orjson.dumps({"v": 2, "chain": [[p[f] for f in _FIELDS] for p in chain]}).decode()

    async def abandon(self) -> None:
        """Tombstones for the chunks sent, once those not yet acknowledged are answered (the
        ones refused are deleted too: a refusal may have landed); raises the first error of
        the tombstones the broker refused."""
        self._buf.clear()
        futures, self._futures = list(self._futures), deque()
        await asyncio.gather(*futures, return_exceptions=True)
        await _deleted(await _tombstones(self.producer, self.topic, self.name, self.id, self.partition, self.chunks))


async def _tombstones(producer, topic: str, name: str, ckid: str, partition: int, chunks: int) -> list:
    """Send a tombstone for each chunk of a piece (compaction then drops them); their futures."""
    return [await producer.send(topic, None, key=f"{name}/{ckid}/{i}".encode(), partition=partition)
            for i in range(chunks)]


async def _deleted(acks: list) -> None:
    """Wait for tombstones' acknowledgements; raise the first error of those refused."""
    for outcome in await asyncio.gather(*acks, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


class CheckpointStore:
    """Writes and reads checkpoints of one topic through the worker's producer and a reader."""

    def __init__(self, producer: AIOKafkaProducer, reader: AIOKafkaConsumer, topic: str, partitions: int) -> None:
        self.producer, self.reader, self.topic, self.partitions = producer, reader, topic, partitions

    def writer(self, name: str) -> PieceWriter:
        """A piece of `name` to write as its bytes are made, on the partition `name` hashes to."""
        return PieceWriter(self.producer, self.topic, name, partition_for(name.encode(), self.partitions))

    async def write(self, name: str, packed: Packed, base: str = "") -> str:
        """Store a packed checkpoint under `name`; return the pointer to commit with the offsets
        it covers (`PieceWriter.close`). Each frame of `packed` is let go of once sent."""
        writer = self.writer(name)
        for i, frame in enumerate(packed.frames):
            packed.frames[i] = None
            await writer.write(frame)
            del frame
        return await writer.close(packed.size, base)

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
                acks += await _tombstones(self.producer, self.topic, name, p["id"], p["partition"], p["chunks"])
        await _deleted(acks)


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
