"""Rows of consecutive Kafka records as columns: what the ClickHouse writer queues and inserts.

An agent that makes a row per record for thousands of records (readings, scores) hands them over as one `Block`
of columns, so no row is built as a dict and split into columns again; a record's rows as dicts
(`Block.of_record`) become a one-record block. The Kafka coordinates are kept per record, not per row: the writer
fills in `kafka_partition` and `kafka_offset` when it inserts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

Ack = Callable[[], Any]
COORDINATES = ("kafka_partition", "kafka_offset")


@dataclass
class Block:
    """`columns[c][j]`: column c of row j; record i is (`partitions[i]`, `offsets[i]`), acked by `acks[i]` once its
    rows are stored, and owns `counts[i]` consecutive rows (`counts` None: one row each). A column a block lacks
    is NULL. `after`: acks that run once every record of the block is stored (a batch's acks, one per partition:
    `OrderedAcker.track_batch`); the writer never splits a block between two inserts, so they run with the
    records' own."""

    columns: dict[str, list[Any]]
    partitions: list[int]
    offsets: list[int]
    acks: list[Ack | None]
    counts: list[int] | None = None
    after: list[Ack] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.offsets)
        if len(self.partitions) != n or len(self.acks) != n or (self.counts is not None and len(self.counts) != n):
            raise ValueError(f"block: {n} offsets, {len(self.partitions)} partitions, {len(self.acks)} acks"
                             + (f", {len(self.counts)} row counts" if self.counts is not None else "") + ": one each per record")
        self.n_rows = n if self.counts is None else sum(self.counts)
        for name, values in self.columns.items():
            if len(values) != self.n_rows:
                raise ValueError(f"block: column {name!r} has {len(values)} values for {self.n_rows} rows")

    @classmethod
    def of_record(cls, partition: int, offset: int, rows: Sequence[dict[str, Any]], ack: Ack | None,
                  columns: Sequence[str]) -> Block:
        """One record's rows (dicts; a missing key is NULL) as a block of the table's `columns`."""
        return cls({c: [r.get(c) for r in rows] for c in columns if c not in COORDINATES}, [partition], [offset], [ack], [len(rows)])

    def __len__(self) -> int:
        """Records (not rows)."""
        return len(self.offsets)

    def check(self, columns: Sequence[str]) -> None:
        """Raise ValueError for a column the table does not have: its values would never be stored."""
        if unknown := self.columns.keys() - set(columns):
            raise ValueError(f"block: columns {sorted(unknown)} are not in the table (it has {list(columns)})")

    def select(self, records: Sequence[int]) -> Block:
        """The block of the records at these indices (in this order)."""
        if self.counts is None:
            rows = list(records)
            counts = None
        else:
            starts = [0, *accumulate(self.counts)]
            rows = [j for i in records for j in range(starts[i], starts[i + 1])]
            counts = [self.counts[i] for i in records]
        return Block({c: [v[j] for j in rows] for c, v in self.columns.items()}, [self.partitions[i] for i in records],
                     [self.offsets[i] for i in records], [self.acks[i] for i in records], counts)

    def record_rows(self) -> list[dict[str, Any]]:
        """The rows as dicts (a refused record's dead letter keeps them whole)."""
        return [{c: v[j] for c, v in self.columns.items()} for j in range(self.n_rows)]

    def coordinate(self, name: str) -> list[int]:
        """`kafka_partition` or `kafka_offset` per row."""
        per_record = self.partitions if name == "kafka_partition" else self.offsets
        if self.counts is None:
            return per_record
        return [v for v, n in zip(per_record, self.counts, strict=True) for _ in range(n)]


def columns_of(blocks: Sequence[Block], columns: Sequence[str]) -> list[list[Any]]:
    """The blocks' rows as one list per table column, in block order (new lists: the caller may change them)."""
    data = []
    for col in columns:
        values: list[Any] = []
        for b in blocks:
            if col in COORDINATES:
                values += b.coordinate(col)
            elif (v := b.columns.get(col)) is not None:
                values += v
            else:
                values += [None] * b.n_rows
        data.append(values)
    return data
