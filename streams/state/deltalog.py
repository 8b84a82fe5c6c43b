"""Checkpoints of a large in-memory state as a log of chunked deltas in a Faust table.

Writing one table key per changed user or item cost the recommender most of its time: each key is a
rocksdict put plus a changelog record through Faust's and aiokafka's per-message Python path
(about 4,000 keys per 5,000 clicks in `wharf bench commerce`). Here a checkpoint is one encoded
delta (the changed entries), cut into chunks of at most `CHUNK_BYTES`, followed by a commit record
that names the chunk count and carries the metadata (e.g. the input offsets the state includes):
a handful of records per checkpoint, whatever the number of changed entries.

A *generation* starts with a full image (sequence 0) and goes on with deltas (1, 2, ...). When the
deltas of a generation outgrow `compact_factor` times its image, the next checkpoint writes a full
image as a new generation and, once that generation's commit is written, deletes the keys of the
older ones (tombstones: the compacted changelog forgets them). Restore takes the newest generation
whose image is committed and applies its committed deltas in order, stopping at the first one that
is incomplete (a crash between chunks and commit): what the log holds is always a state that some
checkpoint committed, never half of one.

A write is encoded in *pieces* of at most `PIECE_ENTRIES` entries, and `steps` yields after each
piece, so a writer on an event loop can serve requests between pieces: encoding a whole shard image
at once held the recommender worker's loop for 50-190 ms. The commit names the chunk count of each
piece.

Records are in Wharf's state format (`schemas.state`, with the caller's allow-list), never pickles:
anyone who can write to the changelog topic could otherwise run code in the worker. A record that is
not in that format, or that it refuses, ends its generation's replay there, as an incomplete delta
would (an image refused: the generation is skipped), and is listed in `DeltaLog.refused` for the
caller to log; logs written by versions that pickled are refused that way.

A delta also carries the keys deleted since the previous checkpoint (e.g. evicted users/items), as
pieces `{DELETED: {name: [keys]}}` written before its entries; restore applies them in that order, so a
deleted key stays deleted and one deleted and written again comes back where the writer's dict has it
(at the end). An image needs none: it replaces everything.

Keys: `{prefix}/{p}/{gen:06d}/{seq:09d}/{chunk}` and `.../c` for the commit; all of partition p's
records go to changelog partition p (write them under an event of p), so Kafka keeps their order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from schemas.state import StateCodec, StateFormatError

CHUNK_BYTES = 512 * 1024  # below Kafka's default 1 MB message limit, with room for the key and headers
PIECE_ENTRIES = 50  # entries encoded at once: ~0.8 ms for 50 of the recommender's items, ~1.8 ms for 50 users here

Parts = dict[str, dict[Any, Any]]  # e.g. {"users": {...}, "items": {...}}: merged entry by entry, delta over image
PLAIN = StateCodec()  # plain data only: no class on the allow-list
DELETED = "-"  # the part name of deletion pieces (not a name callers may use)
DELETE_KEYS = 2_000  # deleted keys per piece (ids: a few dozen bytes each)


@dataclass
class Restored:
    parts: Parts
    meta: Any  # the newest applied commit's metadata; None when nothing was committed
    generation: int
    deltas: int  # deltas applied after the image


@dataclass
class DeltaLog:
    """The checkpoint log of one partition's state."""

    prefix: str
    partition: int
    compact_factor: float = 2.0
    piece_entries: int = PIECE_ENTRIES  # more for small entries (the review model's n-gram counts): fewer records
    generation: int = -1
    seq: int = 0
    image_bytes: int = 0
    delta_bytes: int = 0
    keys: list[bytes] = field(default_factory=list)  # of the current generation
    stale: set[bytes] = field(default_factory=set)  # older generations, incomplete writes, legacy keys: deleted after the next image
    codec: StateCodec = PLAIN  # the state format with the allow-list of what the entries and metadata hold
    refused: list[str] = field(default_factory=list)  # records the last restore refused, one line each (for the log)

    def _key(self, gen: int, seq: int, tail: str) -> bytes:
        return f"{self.prefix}/{self.partition}/{gen:06d}/{seq:09d}/{tail}".encode()

    def needs_image(self) -> bool:
        return self.generation < 0 or self.seq == 0 or self.delta_bytes > self.compact_factor * max(self.image_bytes, 1)

    def write(self, table: MutableMapping[bytes, bytes], parts: Parts, meta: Any, image: bool,
              deleted: dict[str, list[Any]] | None = None) -> int:
        """Write an image (all entries; starts a new generation) or a delta (changed entries, and the keys `deleted`
        from each part since the last write); returns records written."""
        return finish(self.steps(table, parts, meta, image, deleted))

    def steps(self, table: MutableMapping[bytes, bytes], parts: Parts, meta: Any, image: bool,
              deleted: dict[str, list[Any]] | None = None) -> Iterator[int]:
        """`write` one piece at a time, yielding the records written so far after each piece and at the end.

        The entries must not change until it ends. Left unfinished, it leaves chunks without a
        commit, which restore ignores; the next write is then an image."""
        if image:
            self.stale.update(self.keys)
            self.keys = []
            self.generation += 1
            self.seq = 0
        if DELETED in parts:
            raise ValueError(f"part name {DELETED!r} is reserved for deletions")
        counts: list[int] = []
        size = written = 0
        for piece in [*(() if image else _deletions(deleted or {})), *_pieces(parts, self.piece_entries)]:
            blob = self.codec.dumps(piece)
            size += len(blob)
            chunks = [blob[i:i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)]
            for chunk in chunks:
                key = self._key(self.generation, self.seq, str(written))
                table[key] = chunk
                self.keys.append(key)
                written += 1
            counts.append(len(chunks))
            yield written
        commit = self._key(self.generation, self.seq, "c")
        table[commit] = self.codec.dumps((counts, meta))
        self.keys.append(commit)
        written += 1
        if image:
            self.image_bytes, self.delta_bytes = size, 0
            for key in self.stale:  # only now: until this commit the older generation was the valid one
                table.pop(key, None)
            written += len(self.stale)
            self.stale.clear()
        else:
            self.delta_bytes += size
        self.seq += 1
        yield written

    @classmethod
    def restore(cls, prefix: str, partition: int, entries: Iterable[tuple[bytes, bytes]],
                compact_factor: float = 2.0, piece_entries: int = PIECE_ENTRIES,
                codec: StateCodec = PLAIN) -> tuple[DeltaLog, Restored | None]:
        """Rebuild from the table's entries of this partition (other keys are ignored).

        The log that comes back writes an image next: it starts a clean generation and deletes
        everything found here once that image is committed. Records refused are in its `refused`."""
        head = f"{prefix}/{partition}/".encode()
        log = cls(prefix, partition, compact_factor, piece_entries, codec=codec)
        found: dict[int, dict[int, dict[str, bytes]]] = {}
        for key, value in entries:
            if not key.startswith(head):
                continue
            log.stale.add(key)
            try:
                gen_text, seq_text, tail = key[len(head):].decode().split("/")
                gen, seq = int(gen_text), int(seq_text)
            except ValueError:
                log.refused.append(f"{key!r}: not a key of a checkpoint log")
                continue
            found.setdefault(gen, {}).setdefault(seq, {})[tail] = value
        log.generation = max(found, default=-1)
        for gen in sorted(found, reverse=True):
            parts, meta, n = log._replay(gen, found[gen])
            if parts is not None:
                return log, Restored(parts, meta, gen, n)
        return log, None

    def _replay(self, gen: int, seqs: dict[int, dict[str, bytes]]) -> tuple[Parts | None, Any, int]:
        parts: Parts | None = None
        meta: Any = None
        seq = 0
        while seq in seqs and "c" in seqs[seq]:
            records = seqs[seq]
            try:
                counts, seq_meta = self._commit(records)
                if counts is None:
                    break  # chunks missing: a write that did not finish
                pieces = []
                first = 0
                for n in counts:
                    pieces.append(self._piece(b"".join(records[str(i)] for i in range(first, first + n))))
                    first += n
            except StateFormatError as exc:
                self.refused.append(f"{self._key(gen, seq, 'c')!r} (generation {gen}, checkpoint {seq}): {exc}")
                break
            merged: Parts = {} if parts is None else parts
            for piece in pieces:
                for name, entries in piece.items():
                    if name == DELETED:
                        for part, keys in entries.items():
                            target = merged.get(part, {})
                            for key in keys:
                                target.pop(key, None)
                    else:
                        merged.setdefault(name, {}).update(entries)
            parts = merged
            meta = seq_meta
            seq += 1
        return parts, meta, max(seq - 1, 0)

    def _commit(self, records: dict[str, bytes]) -> tuple[list[int] | None, Any]:
        """A commit's chunk counts (None if a chunk is missing) and metadata."""
        commit = self.codec.loads(records["c"])
        if type(commit) is not tuple or len(commit) != 2 or type(commit[0]) is not list or \
                not all(type(n) is int and n >= 0 for n in commit[0]) or sum(commit[0]) > len(records):
            raise StateFormatError("not a checkpoint commit (chunk counts, metadata)")
        counts, meta = commit
        if any(str(i) not in records for i in range(sum(counts))):
            return None, meta
        return counts, meta

    def _piece(self, blob: bytes) -> Parts:
        piece = self.codec.loads(blob)
        if type(piece) is not dict or not all(type(k) is str and type(v) is dict for k, v in piece.items()):
            raise StateFormatError("not a checkpoint piece (named dicts of entries)")
        gone = piece.get(DELETED)
        if gone is not None and not all(type(keys) is list and all(type(k) in (str, int, bytes) for k in keys)
                                        for keys in gone.values()):
            raise StateFormatError("not a checkpoint piece (deleted keys by part)")
        return piece


def finish(steps: Iterator[int]) -> int:
    """Run a `DeltaLog.steps` write to its end in one go; returns the records it wrote."""
    written = 0
    for written in steps:  # noqa: B007 - the last count is the total
        pass
    return written


def _deletions(deleted: dict[str, list[Any]]) -> Iterator[Parts]:
    """Deleted keys as pieces of at most `DELETE_KEYS`."""
    for name, keys in deleted.items():
        keys = list(keys)
        for i in range(0, len(keys), DELETE_KEYS):
            yield {DELETED: {name: keys[i:i + DELETE_KEYS]}}


def _pieces(parts: Parts, size: int = PIECE_ENTRIES) -> Iterator[Parts]:
    """`parts` as dicts of at most `size` entries; every name at least once, so restore sees it."""
    if not parts:
        yield {}
    for name, entries in parts.items():
        items = list(entries.items())
        for i in range(0, max(len(items), 1), size):
            yield {name: dict(items[i:i + size])}
