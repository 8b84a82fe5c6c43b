"""One small interface to ClickHouse, two backends.

- `chdb://[path]`: ClickHouse in-process (chdb), current SQL; data in the state
  folder. One process owns the data folder, so with chdb the dashboards must be
  served from the worker process; use a server for several workers.
- `clickhouse://user:pass@host:port/db`: a ClickHouse server over the native
  protocol (clickhouse-driver), from 18.16 to current.

Both speak the same three verbs: `command` (DDL), `query` (rows of JSON-native
values: cast times to numbers in SQL), `insert_columns` (one list per column, one atomic INSERT: columnar, so
neither backend encodes a row at a time; `insert` takes rows as dicts and turns them into columns).
Calls are blocking and serialised per connection; async code runs them in a thread.
"""

from __future__ import annotations

import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse

from schemas import codec
from schemas.redact import redact


class ClickHouseError(RuntimeError):
    """A statement failed; `retryable` is True when the server could not be reached."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class ClickHouse(ABC):
    url: str
    database: str
    version: tuple[int, ...]

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def modern(self) -> bool:
        """DateTime64, LowCardinality and friends exist (ClickHouse ≥ 20.3)."""
        return self.version >= (20, 3)

    @abstractmethod
    def command(self, sql: str) -> None: ...

    @abstractmethod
    def query(self, sql: str) -> list[tuple[Any, ...]]: ...

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[dict[str, Any]], time_columns: Sequence[str] = ()) -> None:
        """Insert rows (dicts; a missing column is NULL) in one INSERT (one block, so all or nothing)."""
        if rows:
            self.insert_columns(table, columns, [[r.get(c) for r in rows] for c in columns], time_columns)

    @abstractmethod
    def insert_columns(self, table: str, columns: Sequence[str], data: list[list[Any]], time_columns: Sequence[str] = ()) -> None:
        """Insert `data[i]`, the values of `columns[i]` (times as epoch seconds), in one INSERT (one block, so all
        or nothing). The lists may be changed in place."""

    def close(self) -> None:  # noqa: B027 - optional for backends
        pass

    def table(self, name: str) -> str:
        return f"{self.database}.{name}"


def _parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.strip().strip('"').split(".")[:3] if p.isdigit())


class ChdbClickHouse(ClickHouse):
    """chdb: ClickHouse in this process. Inserts go as JSONColumns: one JSON array per column, encoded by orjson in
    one call (20,000 score rows: 92 ms, against 245 ms as JSONEachRow in the same run; JSONEachRow was measured
    faster than Python() scans, and chdb 4.4 has no Arrow insert call).

    chdb runs one embedded server per process, on one data folder: connections to
    other databases in that folder share its session (and its lock).
    """

    def __init__(self, path: Path, database: str = "wharf"):
        super().__init__()
        self.url = f"chdb://{path}?database={database}"
        self.database = database
        self.path = path
        self._session, self._lock = _chdb_session(path)
        self.version = _parse_version(self._raw("SELECT version()", "CSV"))
        self.command(f"CREATE DATABASE IF NOT EXISTS {database}")

    def _raw(self, sql: str, fmt: str = "CSV") -> str:
        with self._lock:
            try:
                res = self._session.query(sql, fmt)
            except Exception as exc:
                raise ClickHouseError(f"chdb: {exc}\n  in: {sql[:300]}") from None
        if res is None:
            return ""
        if hasattr(res, "has_error") and res.has_error():
            raise ClickHouseError(f"chdb: {res.error_message()}\n  in: {sql[:300]}")
        return res.bytes().decode() if hasattr(res, "bytes") else str(res)

    def command(self, sql: str) -> None:
        self._raw(sql)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        sql = sql.rstrip().rstrip(";")
        if " SETTINGS " not in sql.upper():
            sql += " SETTINGS output_format_json_quote_64bit_integers = 0, output_format_json_quote_denormals = 1"
        out = self._raw(sql, "JSONCompact")
        if not out.strip():
            return []
        return [tuple(row) for row in codec.loads(out)["data"]]

    def insert_columns(self, table: str, columns: Sequence[str], data: list[list[Any]], time_columns: Sequence[str] = ()) -> None:
        if not data or not data[0]:
            return
        body = codec.dumps(dict(zip(columns, data, strict=True)))
        self._raw(f"INSERT INTO {self.table(table)} ({', '.join(columns)}) FORMAT JSONColumns\n" + body.decode())

    def close(self) -> None:
        """The embedded server lives as long as the process; nothing to release per connection."""


class ServerClickHouse(ClickHouse):
    """A ClickHouse server over the native protocol; columnar inserts, times as integers (the driver's fast path:
    20,000 score rows on 18.16 took 60 ms, against 106 ms with a `datetime` per time value, in the same run)."""

    def __init__(self, url: str):
        super().__init__()
        from clickhouse_driver import Client

        _columns_without_cycles()
        parsed = urlparse(url)
        self.url = url
        self.database = (parsed.path or "/default").lstrip("/") or "default"
        self._client = Client(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 9000,
            user=unquote(parsed.username or "default"),
            password=unquote(parsed.password or ""),
            database="default",
            connect_timeout=3,
            send_receive_timeout=30,
            settings={"use_numpy": False},
        )
        self.version = _parse_version(self._call(lambda c: c.execute("SELECT version()"))[0][0])
        self.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")

    def _call(self, fn, sql: str = ""):  # noqa: ANN001, ANN202
        from clickhouse_driver import errors

        with self._lock:
            try:
                return fn(self._client)
            except (errors.NetworkError, errors.SocketTimeoutError, EOFError, ConnectionError, OSError) as exc:
                self._client.disconnect()
                raise ClickHouseError(f"ClickHouse server unreachable at {redact(self.url)}: {redact(exc)}", retryable=True) from None
            except errors.Error as exc:
                raise ClickHouseError(f"ClickHouse: {redact(exc)}\n  in: {sql[:300]}") from None

    def command(self, sql: str) -> None:
        self._call(lambda c: c.execute(sql), sql)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._call(lambda c: c.execute(sql), sql)]

    def insert_columns(self, table: str, columns: Sequence[str], data: list[list[Any]], time_columns: Sequence[str] = ()) -> None:
        if not data or not data[0]:
            return
        times = set(time_columns)
        per_unit = 1000 if self.modern else 1  # DateTime64(3) counts milliseconds, 18.16's DateTime seconds
        for i, col in enumerate(columns):
            if col in times:  # to whole microseconds first, as `datetime.fromtimestamp` rounds, then truncated
                data[i] = [None if v is None else int(round(v * 1e6)) * per_unit // 1_000_000 for v in data[i]]
        sql = f"INSERT INTO {self.table(table)} ({', '.join(columns)}) VALUES"
        self._call(lambda c: c.execute(sql, data, columnar=True, types_check=False), sql)

    def close(self) -> None:
        self._client.disconnect()


def _columns_without_cycles() -> None:
    """clickhouse-driver gives each column it builds a serialization object that points back at the column
    (`Column.__init__`: `self.serialization = CommonSerialization(self)`), so every column of every INSERT is a
    reference cycle, left for the cycle collector (two objects a column, about 250 a second in a busy worker).
    The worker's collector policy leaves cycles to its half-hourly sweep (`streams/runtime/heap.py`); with a weak
    reference back, the columns are freed as soon as the INSERT is done. The serialization reaches its column only
    while the column uses it (sparse reads). Idempotent; `tests/test_clickhouse.py` fails if the driver changes."""
    from clickhouse_driver.columns import base

    init = base.CommonSerialization.__init__
    if getattr(init, "wharf_weak_column", False):
        return

    def weak_column(self: Any, column: Any) -> None:
        init(self, weakref.proxy(column))

    weak_column.wharf_weak_column = True  # type: ignore[attr-defined]
    base.CommonSerialization.__init__ = weak_column


_SESSIONS: dict[Path, tuple[Any, threading.Lock]] = {}
_EMBEDDED: dict[tuple[Path, str], ChdbClickHouse] = {}
_EMBEDDED_LOCK = threading.Lock()


def _chdb_session(path: Path) -> tuple[Any, threading.Lock]:
    from chdb import session

    if path not in _SESSIONS:
        if _SESSIONS:
            other = next(iter(_SESSIONS))
            raise ValueError(f"chdb already runs on {other} in this process; one process can open one chdb data folder")
        path.mkdir(parents=True, exist_ok=True)
        _SESSIONS[path] = (session.Session(str(path)), threading.Lock())
    return _SESSIONS[path]


def connect(url: str, default_chdb_path: Path | None = None) -> ClickHouse:
    """Open ClickHouse by URL. chdb connections are shared per (data folder, database) within a process."""
    if url.startswith("chdb:"):
        parsed = urlparse(url)
        rest = (parsed.netloc + parsed.path).lstrip("/")
        path = Path("/" + rest) if rest else default_chdb_path
        if path is None:
            raise ValueError("chdb:// without a path needs a default data folder (settings.state_dir/chdb)")
        database = parse_qs(parsed.query).get("database", ["wharf"])[0]
        key = (path.absolute(), database)
        with _EMBEDDED_LOCK:
            if key not in _EMBEDDED:
                _EMBEDDED[key] = ChdbClickHouse(*key)
            return _EMBEDDED[key]
    if url.startswith("clickhouse://"):
        return ServerClickHouse(url)
    raise ValueError(f"WHARF_CLICKHOUSE_URL: {redact(url)!r} must start with chdb:// or clickhouse://")


def from_settings(settings: Any) -> ClickHouse:
    return connect(with_local_password(settings, settings.clickhouse_url), settings.chdb_path)


def with_local_password(settings: Any, url: str) -> str:
    """`url` with the local server's generated password when it names that server (`wharf infra up` manages its
    users) without one; any other URL as it is."""
    parsed = urlparse(url)
    if (parsed.scheme != "clickhouse" or parsed.password or parsed.hostname not in ("127.0.0.1", "localhost")
            or parsed.port != settings.clickhouse_server_tcp_port):
        return url
    from schemas.secrets import clickhouse_password

    password = clickhouse_password(settings)
    if not password:
        return url
    user = parsed.username or "default"
    return parsed._replace(netloc=f"{user}:{quote(password, safe='')}@{parsed.hostname}:{parsed.port}").geturl()
