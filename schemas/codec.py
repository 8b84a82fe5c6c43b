"""The one codec: orjson, everywhere (Kafka values, MQTT payloads, HTTP bodies, dead letters).

orjson is strict RFC 8259: it refuses NaN/Infinity literals on input, which is
what we want from devices.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json", exclude_none=False)
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).decode("utf-8", "backslashreplace")
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """Encode a model, dataclass or plain value as compact JSON bytes."""
    return orjson.dumps(obj, default=_default, option=_OPTS)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON; raises orjson.JSONDecodeError (a ValueError) with the position of the fault."""
    return orjson.loads(data)


JSONDecodeError = orjson.JSONDecodeError
