"""ClickHouse for one worker: one connection, migrations applied once, one writer per table, and rows ClickHouse
refused sent to the dead letters of their source record."""

from __future__ import annotations

import asyncio
from typing import Any

from schemas import codec
from schemas.clickhouse import TABLES, migrate
from schemas.settings import Settings
from schemas.validation import processing_error
from streams.sinks.clickhouse import ClickHouse, from_settings
from streams.sinks.ingest import send_dead_letter
from streams.sinks.writer import ClickHouseWriter, Refused


class Storage:
    """ClickHouse for this worker: one connection, migrations applied once, one writer per table."""

    def __init__(self, settings: Settings, dead_letter_topic: Any, dead_letter_keep_bytes: int):
        self.settings = settings
        self.dead_letter_topic = dead_letter_topic  # faust.Topic: where rows ClickHouse refused go
        self.dead_letter_keep_bytes = dead_letter_keep_bytes
        self._ch: ClickHouse | None = None
        self._writers: dict[str, ClickHouseWriter] = {}

    @property
    def ch(self) -> ClickHouse:
        if self._ch is None:
            self._ch = from_settings(self.settings)
            migrate(self._ch)
        return self._ch

    def writer(self, table: str, source_topic: str) -> ClickHouseWriter:
        if table not in self._writers:
            w = ClickHouseWriter.from_settings(self.ch, TABLES[table], self.settings)
            w.source_topic = source_topic
            if table != "dead_letters":  # the dead letters' own writer cannot dead-letter: it logs the rows
                w.on_refused = self._dead_letter_of(table, source_topic)
            self._writers[table] = w
        return self._writers[table]

    def _dead_letter_of(self, table: str, source_topic: str) -> Refused:
        """Rows ClickHouse refused become a dead letter of their source record (the rows as JSON: nothing is lost)."""

        async def refused(partition: int, offset: int, rows: list[dict[str, Any]], exc: BaseException) -> None:
            error = processing_error(f"{table} row", "the ClickHouse insert", exc)
            await send_dead_letter(self.dead_letter_topic, error, codec.dumps(rows), "kafka", keep_bytes=self.dead_letter_keep_bytes,
                                   kafka_topic=source_topic, kafka_partition=partition, kafka_offset=offset)

        return refused

    @property
    def writers(self) -> dict[str, ClickHouseWriter]:
        return self._writers

    async def flush_all(self) -> None:
        await asyncio.gather(*(w.flush() for w in self._writers.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self._writers.values()))
