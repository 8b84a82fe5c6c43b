"""The one redaction helper: what Wharf prints, logs or serves never shows a secret.

Two kinds of secret reach text: passwords inside URLs (`clickhouse://user:pass@host`)
and known secret values (MQTT passwords, ClickHouse password, API keys, operator
token) that an exception message or a log argument may carry. `redact` removes
both; `RedactingFilter` applies it to every log record of a process.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

MASK = "***"
# scheme://user:password@  (also user-less `scheme://:password@`)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<pw>[^\s@/]+)(?P<at>@)")
_MIN_KNOWN = 6  # shorter values would mask ordinary words; generated secrets are 32+ characters

_known: set[str] = set()
_lock = threading.Lock()


def register(values: Iterable[str | None]) -> None:
    """Remember secret values so that `redact` masks them wherever they appear."""
    with _lock:
        _known.update(v for v in values if v and len(v) >= _MIN_KNOWN)


def redact(text: object) -> str:
    """`text` with URL passwords and every registered secret replaced by ***."""
    out = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], str(text))
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in out:
            out = out.replace(value, MASK)
    return out


class RedactingFilter(logging.Filter):
    """Formats a record's message once and redacts it (and its exception text) before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if (cleaned_text := redact(text)) != text:
                record.exc_text = cleaned_text
        return True


def install_log_redaction() -> None:
    """Redact every log record of this process as it is made: Faust, aiokafka and paho add their own handlers,
    so a filter on today's handlers would miss tomorrow's; the record factory sees them all."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        record = previous(*args, **kwargs)
        _FILTER.filter(record)
        return record

    logging.setLogRecordFactory(factory)


_installed = False
_FILTER = RedactingFilter()
