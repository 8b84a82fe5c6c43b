"""Wharf's one format for state that leaves the process (changelog topics): data only, never code.

Why not pickle: a pickle names any importable callable and the reader calls it, so whoever can write to a
changelog topic (Kafka has no authentication here) runs code in every worker that restores it. This format
can only describe data, and objects of the classes a caller lists.

Layout: `MAGIC` (b"WST"), a format version byte, a flags byte (bit 0: zlib), then one msgpack value.
- native msgpack: None, bool, int, float, str, bytes, list, dict (keys of any type here);
- ext types (leaves): numpy arrays of numeric dtype (dtype string, order, shape, raw bytes), numpy scalars,
  ints beyond 64 bits, and back-references to an object or array met before (shared references and cycles survive, as in pickle);
- arrays headed by an ext marker: tuple, set, frozenset, deque, defaultdict (builtin factories only),
  enum members and objects. An object is `[marker(module:qualname), state]`; only classes on the
  allow-list (`StateTypes`) are rebuilt, by `cls.__new__(cls)` then the class's own `__setstate__`, a
  registered adapter, or its attributes (`__dict__` / `__slots__`). No module is imported and nothing the
  data names is called.

Anything else is refused with `StateFormatError`, naming what and where (the enclosing objects). Limits
(`Limits`) bound the input and decompressed bytes, the total container entries and the nesting of objects;
msgpack itself caps any nesting at 1,024 levels, so a crafted record can exhaust neither memory nor the stack.
Plain lists and dicts are not memoised: two references to one list come back as two lists.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgpack
import numpy as np

MAGIC = b"WST"
FORMAT_VERSION = 1
_ZLIB = 1
_HEADER = len(MAGIC) + 2

# ext codes: markers head an array, leaves stand alone
_OBJ, _TUPLE, _SET, _FROZENSET, _DEQUE, _DEFAULTDICT, _ENUM = 1, 2, 3, 4, 5, 6, 7
_NDARRAY, _NPSCALAR, _REF, _BIGINT = 10, 11, 12, 13

_FACTORIES: dict[str, Callable[[], Any] | None] = {"": None, "list": list, "dict": dict, "set": set, "int": int, "float": float}
_FACTORY_NAMES = {v: k for k, v in _FACTORIES.items()}
_DTYPE_KINDS = frozenset("biufc")
_MAX_NDIM = 32


class StateFormatError(ValueError):
    """Data that is not in this format, or that it refuses; `where` is the path of enclosing objects."""

    def __init__(self, what: str, where: str = "") -> None:
        super().__init__(f"{what} (at {where})" if where else what)
        self.what, self.where = what, where


@dataclass(frozen=True)
class Limits:
    """What one record may cost to decode. Every entry takes at least one byte, so bytes bound entries too;
    `max_items` bounds the Python objects built (an empty list is 56 bytes from one input byte)."""

    max_bytes: int = 256 << 20  # input, and decompressed payload
    max_items: int = 5_000_000  # container entries, all containers together
    max_depth: int = 64  # objects nested in objects


@dataclass(frozen=True)
class StateType:
    """One allowed class, with optional adapters for state that is not plain data (e.g. a callable factory)."""

    cls: type
    getstate: Callable[[Any], Any] | None = None
    setstate: Callable[[Any, Any], None] | None = None
    upgrade: Callable[[dict], dict] | None = None  # a state written by an older version -> today's (defaults filled in)


def type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class _Entry:
    __slots__ = ("cls", "name", "marker", "is_enum", "getstate", "setstate", "upgrade", "slots", "slot_names", "get_slots", "has_dict",
                 "checked")

    def __init__(self, t: StateType) -> None:
        cls = t.cls
        self.cls, self.name = cls, type_name(cls)
        self.is_enum = isinstance(cls, type) and issubclass(cls, enum.Enum)
        self.marker = msgpack.ExtType(_ENUM if self.is_enum else _OBJ, self.name.encode())
        self.slot_names = tuple(dict.fromkeys(s for c in reversed(cls.__mro__) for s in _slots_of(c)
                                              if s not in ("__dict__", "__weakref__")))
        self.slots = frozenset(self.slot_names)
        self.get_slots = attrgetter(*self.slot_names) if len(self.slot_names) > 1 else None
        self.has_dict = any("__dict__" in _slots_of(c) or (c is not object and "__slots__" not in vars(c)) for c in cls.__mro__)
        custom_get = getattr(cls, "__getstate__", object.__getstate__) is not object.__getstate__
        self.getstate = t.getstate or (cls.__getstate__ if custom_get else None)
        self.setstate = t.setstate or getattr(cls, "__setstate__", None)
        self.upgrade = t.upgrade
        self.checked = set(self.slot_names)  # attribute names known to be fine (grows to _CHECKED_NAMES at most)


def _slots_of(c: type) -> tuple[str, ...]:
    s = vars(c).get("__slots__", ())
    return (s,) if isinstance(s, str) else tuple(s)


class StateTypes:
    """An allow-list of classes that state may hold; combine lists with `|`."""

    def __init__(self, *allowed: type | StateType | StateTypes) -> None:
        self.by_type: dict[type, _Entry] = {}
        self.by_name: dict[bytes, _Entry] = {}  # by the UTF-8 name, as the data has it
        for a in allowed:
            for entry in (a.by_type.values() if isinstance(a, StateTypes) else [_Entry(a if isinstance(a, StateType) else StateType(a))]):
                self.by_type[entry.cls] = entry
                self.by_name[entry.name.encode()] = entry

    def __or__(self, other: StateTypes) -> StateTypes:
        return StateTypes(self, other)

    def names(self) -> list[str]:
        return sorted(e.name for e in self.by_type.values())


class StateCodec:
    """Encode/decode state for one purpose: its allow-list and limits."""

    def __init__(self, types: StateTypes | None = None, limits: Limits = Limits()) -> None:
        self.types = types or StateTypes()
        self.limits = limits

    def dumps(self, obj: Any, compress: bool = False) -> bytes:
        enc = _Encoder(self.types)
        try:
            payload = msgpack.Packer(default=enc.default, strict_types=True, use_bin_type=True, datetime=False).pack(obj)
        except StateFormatError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise StateFormatError(f"cannot encode: {exc}") from None
        if compress:
            return MAGIC + bytes((FORMAT_VERSION, _ZLIB)) + zlib.compress(payload, 1)
        return MAGIC + bytes((FORMAT_VERSION, 0)) + payload

    def loads(self, blob: bytes | bytearray | memoryview) -> Any:
        limits = self.limits
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise StateFormatError(f"state must be bytes, not {type(blob).__name__}")
        if len(blob) > limits.max_bytes:
            raise StateFormatError(f"{len(blob)} bytes, over the limit of {limits.max_bytes}")
        head = bytes(blob[:_HEADER])
        if head[:len(MAGIC)] != MAGIC:
            raise StateFormatError(f"not Wharf's state format ({_guess(head)})")
        version, flags = head[len(MAGIC):] + b"\xff" * (_HEADER - len(head))
        if version != FORMAT_VERSION:
            raise StateFormatError(f"state format version {version}, expected {FORMAT_VERSION}")
        if flags & ~_ZLIB:
            raise StateFormatError(f"unknown format flags {flags:#x}")
        payload: Any = memoryview(blob)[_HEADER:]
        if flags & _ZLIB:
            payload = _inflate(payload, limits.max_bytes)
        dec = _Decoder(self.types, limits)
        try:
            out = msgpack.unpackb(payload, ext_hook=dec.ext_hook, list_hook=dec.list_hook, object_hook=dec.object_hook,
                                  strict_map_key=False, raw=False, use_list=True)
        except StateFormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the bytes make msgpack or a __setstate__ raise
            raise StateFormatError(f"not valid state data: {type(exc).__name__}: {exc}", dec.where()) from None
        if dec.open:
            raise StateFormatError(f"{dec.open} type marker(s) outside the head of an array")
        return out


def _guess(head: bytes) -> str:
    if head[:1] == b"\x80":
        return "a pickle: refused, pickles are never loaded"
    if head[:1] == b"x":
        return "zlib data, maybe a compressed pickle: refused"
    return f"starts with {head[:8]!r}"


def _inflate(data: memoryview, limit: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise StateFormatError(f"bad zlib payload: {exc}") from None
    if len(out) > limit:
        raise StateFormatError(f"decompresses to over {limit} bytes")
    if not d.eof or d.unused_data:
        raise StateFormatError("truncated or trailing zlib payload")
    return out


# --- encoding -----------------------------------------------------------------------------------------------

_M_TUPLE, _M_SET, _M_FROZENSET = (msgpack.ExtType(c, b"") for c in (_TUPLE, _SET, _FROZENSET))
_M_DEQUE = msgpack.ExtType(_DEQUE, b"")
_NDARRAY_HEAD = struct.Struct("<BBB")  # dtype length, flags (1: Fortran order), ndim
_DIM = struct.Struct("<Q")
_REF_INDEX = struct.Struct("<I")


class _Encoder:
    """msgpack's `default`: called, in stream order, for every value msgpack does not encode natively."""

    def __init__(self, types: StateTypes) -> None:
        self.by_type = types.by_type
        self.memo: dict[int, int] = {}  # id -> index, for objects and arrays
        self.keep: list[Any] = []  # keeps them alive, so an id is never reused during one encode

    def _seen(self, o: Any) -> msgpack.ExtType | None:
        i = self.memo.get(id(o))
        if i is not None:
            return msgpack.ExtType(_REF, _REF_INDEX.pack(i))
        self.memo[id(o)] = len(self.keep)
        self.keep.append(o)
        return None

    def default(self, o: Any) -> Any:
        t = type(o)
        if t is tuple:
            return [_M_TUPLE, *o]
        entry = self.by_type.get(t)
        if entry is not None:
            if entry.is_enum:
                return [entry.marker, o.value]
            return self._seen(o) or [entry.marker, self._state(entry, o)]
        if t is np.ndarray:
            return self._seen(o) or _encode_array(o)
        if isinstance(o, np.generic):
            return _encode_scalar(o)
        if t is set:
            return [_M_SET, *o]
        if t is frozenset:
            return [_M_FROZENSET, *o]
        if t is deque:
            return [_M_DEQUE, o.maxlen, list(o)]
        if t is defaultdict:
            name = _FACTORY_NAMES.get(o.default_factory)
            if name is None:
                raise StateFormatError(f"cannot encode a defaultdict with factory {o.default_factory!r}")
            return [msgpack.ExtType(_DEFAULTDICT, name.encode()), dict(o)]
        if t is int:  # beyond 64 bits
            return msgpack.ExtType(_BIGINT, o.to_bytes(o.bit_length() // 8 + 1, "little", signed=True))
        raise StateFormatError(f"cannot encode {type_name(t)}: not on this state's allow-list")

    @staticmethod
    def _state(entry: _Entry, o: Any) -> Any:
        if entry.getstate is not None:
            return entry.getstate(o)
        if not entry.slots:
            return o.__dict__
        try:
            state = dict(zip(entry.slot_names, entry.get_slots(o)))  # type: ignore[misc]
        except (AttributeError, TypeError):  # a slot not set (or only one slot)
            state = {n: getattr(o, n) for n in entry.slot_names if hasattr(o, n)}
        if entry.has_dict:
            state.update(o.__dict__)
        return state


def _encode_array(a: np.ndarray) -> msgpack.ExtType:
    dt = a.dtype
    if dt.kind not in _DTYPE_KINDS or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise StateFormatError(f"cannot encode an array of dtype {dt}: numbers only")
    fortran = a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous
    code = dt.str.encode()
    head = _NDARRAY_HEAD.pack(len(code), int(fortran), a.ndim) + code + b"".join(_DIM.pack(n) for n in a.shape)
    return msgpack.ExtType(_NDARRAY, head + a.tobytes(order="F" if fortran else "C"))


def _encode_scalar(s: np.generic) -> msgpack.ExtType:
    dt = s.dtype
    if dt.kind not in _DTYPE_KINDS:
        raise StateFormatError(f"cannot encode a numpy scalar of dtype {dt}: numbers only")
    code = dt.str.encode()
    return msgpack.ExtType(_NPSCALAR, bytes((len(code),)) + code + s.tobytes())


# --- decoding -----------------------------------------------------------------------------------------------


class _Marker:
    """What an ext marker decodes to until the array it heads is complete."""

    __slots__ = ("kind", "entry", "obj", "arg")
    __hash__ = None  # type: ignore[assignment] - never a dict key or set member

    def __init__(self, kind: int, entry: _Entry | None = None, obj: Any = None, arg: Any = None) -> None:
        self.kind, self.entry, self.obj, self.arg = kind, entry, obj, arg


class _Decoder:
    """msgpack's hooks: ext types as they are met (stream order), arrays and maps once complete."""

    def __init__(self, types: StateTypes, limits: Limits) -> None:
        self.by_name = types.by_name
        self.limits = limits
        self.memo: list[Any] = []
        self.stack: list[_Marker] = []  # objects being decoded, outermost first
        self.open = 0  # markers met and not yet closed
        self.items = 0
        self.max_items = limits.max_items
        self.max_depth = limits.max_depth

    def where(self) -> str:
        return " > ".join(m.entry.cls.__qualname__ for m in self.stack) or "top level"

    def refuse(self, what: str) -> StateFormatError:
        return StateFormatError(what, self.where())

    def _too_many(self) -> StateFormatError:
        return self.refuse(f"over {self.limits.max_items} entries")

    def object_hook(self, d: dict) -> dict:
        self.items += len(d) + 1
        if self.items > self.max_items:
            raise self._too_many()
        return d

    def list_hook(self, lst: list) -> Any:
        """Called for every array: kept short, tuples (the most frequent marker) first."""
        n = len(lst)
        self.items += n + 1
        if self.items > self.max_items:
            raise self._too_many()
        if n and type(lst[0]) is _Marker:
            if lst[0] is _TUPLE_MARKER:
                self.open -= 1
                del lst[0]
                return tuple(lst)
            return self._close(lst[0], lst)
        return lst

    def ext_hook(self, code: int, data: bytes) -> Any:
        if code == _TUPLE:
            self.open += 1
            return _TUPLE_MARKER
        if code == _OBJ and (entry := self.by_name.get(data)) is not None and not entry.is_enum \
                and len(self.stack) < self.max_depth:
            self.open += 1
            marker = _Marker(code, entry, entry.cls.__new__(entry.cls))
            self.memo.append(marker.obj)
            self.stack.append(marker)
            return marker
        if code == _NDARRAY:
            a = self._array(data)
            self.memo.append(a)
            return a
        if code == _NPSCALAR:
            return self._scalar(data)
        if code == _BIGINT:
            if len(data) > _BIGINT_BYTES:
                raise self.refuse(f"an int of over {_BIGINT_BYTES} bytes")
            return int.from_bytes(data, "little", signed=True)
        if code == _REF:
            if len(data) != _REF_INDEX.size or (i := _REF_INDEX.unpack(data)[0]) >= len(self.memo):
                raise self.refuse("a back-reference to nothing met before")
            return self.memo[i]
        self.open += 1
        if code in (_SET, _FROZENSET, _DEQUE):
            return _Marker(code)
        if code == _DEFAULTDICT:
            name = data.decode(errors="replace")
            if name not in _FACTORIES:
                raise self.refuse(f"defaultdict factory {name!r} refused (allowed: builtin list, dict, set, int, float)")
            return _Marker(code, arg=_FACTORIES[name])
        if code in (_OBJ, _ENUM):
            entry = self.by_name.get(data)
            if entry is None or entry.is_enum != (code == _ENUM):
                raise self.refuse(f"class {data.decode(errors='replace')!r} refused: not on this state's allow-list")
            if entry.is_enum:
                return _Marker(code, entry)
            if len(self.stack) >= self.limits.max_depth:
                raise self.refuse(f"objects nested over {self.limits.max_depth} deep")
            marker = _Marker(code, entry, entry.cls.__new__(entry.cls))
            self.memo.append(marker.obj)
            self.stack.append(marker)
            return marker
        raise self.refuse(f"unknown ext type {code}")

    def _close(self, marker: _Marker, lst: list) -> Any:
        kind = marker.kind
        self.open -= 1
        if kind == _SET:
            return set(lst[1:])
        if kind == _FROZENSET:
            return frozenset(lst[1:])
        if len(lst) != (3 if kind == _DEQUE else 2):
            raise self.refuse(f"a malformed {('deque', 'defaultdict', 'enum', 'object')[(_DEQUE, _DEFAULTDICT, _ENUM, _OBJ).index(kind)]}")
        if kind == _DEQUE:
            maxlen, items = lst[1], lst[2]
            if not (maxlen is None or type(maxlen) is int and maxlen >= 0) or type(items) is not list:
                raise self.refuse("a malformed deque")
            return deque(items, maxlen)
        if kind == _DEFAULTDICT:
            if type(lst[1]) is not dict:
                raise self.refuse("a malformed defaultdict")
            return defaultdict(marker.arg, lst[1])
        entry = marker.entry
        if kind == _ENUM:
            try:
                return entry.cls(lst[1])
            except ValueError:
                raise self.refuse(f"{lst[1]!r} is no member of {entry.name}") from None
        if not self.stack or self.stack[-1] is not marker:
            raise self.refuse(f"an object of {entry.name} out of place")
        obj, state = marker.obj, lst[1]
        try:
            if entry.upgrade is not None and type(state) is dict:
                state = entry.upgrade(state)
            if entry.setstate is not None:
                entry.setstate(obj, state)
            else:
                self._set_attributes(entry, obj, state)
        except StateFormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - the class's own __setstate__ refused it
            raise self.refuse(f"{entry.name} refused its state: {type(exc).__name__}: {exc}") from None
        self.stack.pop()
        return obj

    def _set_attributes(self, entry: _Entry, obj: Any, state: Any) -> None:
        if type(state) is not dict:
            raise self.refuse(f"the state of {entry.name} is a {type(state).__name__}, not a dict of attributes")
        if not state.keys() <= entry.checked:
            for name in state:
                if type(name) is not str or name.startswith("__") or (not entry.has_dict and name not in entry.slots):
                    raise self.refuse(f"attribute {name!r} of {entry.name} refused")
                if len(entry.checked) < _CHECKED_NAMES:
                    entry.checked.add(name)
        if not entry.slots:
            obj.__dict__.update(state)
            return
        for name, value in state.items():
            object.__setattr__(obj, name, value)

    def _array(self, data: bytes) -> np.ndarray:
        try:
            n, flags, ndim = _NDARRAY_HEAD.unpack_from(data)
            dt = _DTYPES.get(data[3:3 + n]) or _dtype(data[3:3 + n])
            start = 3 + n
            shape = struct.unpack_from(f"<{ndim}Q", data, start) if ndim <= _MAX_NDIM else None
        except (struct.error, ValueError, TypeError) as exc:
            raise self.refuse(f"a malformed array: {exc}") from None
        if shape is None or flags > 1:
            raise self.refuse("a malformed array header")
        start += 8 * ndim
        count = 1
        for dim in shape:
            count *= dim
        if count * dt.itemsize != len(data) - start:
            raise self.refuse(f"an array of shape {shape} and dtype {dt} with {len(data) - start} bytes")
        a = np.frombuffer(data, dt, offset=start)
        if ndim != 1:
            a = a.reshape(shape, order="F" if flags else "C")
        return a.copy(order="K")

    def _scalar(self, data: bytes) -> np.generic:
        if not data or len(data) < 1 + data[0]:
            raise self.refuse("a malformed numpy scalar")
        dt = _dtype(bytes(data[1:1 + data[0]]))
        raw = data[1 + data[0]:]
        if len(raw) != dt.itemsize:
            raise self.refuse(f"a numpy scalar of dtype {dt} with {len(raw)} bytes")
        return np.frombuffer(raw, dt)[0]


_TUPLE_MARKER = _Marker(_TUPLE)  # shared: a tuple's marker carries nothing
_CHECKED_NAMES = 512
_BIGINT_BYTES = 1024  # ints beyond 64 bits (a device's seq may be one), up to 8,192 bits


def _dtype(code: bytes) -> np.dtype:
    """Only plain numeric dtype strings (e.g. b'<f8', b'|b1'): numpy never parses anything richer from data."""
    if len(code) < 3 or len(code) > 4 or code[:1] not in b"<>|=" or code[1:2].decode(errors="replace") not in _DTYPE_KINDS \
            or not code[2:].isdigit():
        raise StateFormatError(f"array dtype {code!r} refused: numbers only")
    dt = np.dtype(code.decode())
    if dt.kind not in _DTYPE_KINDS or dt.hasobject:
        raise StateFormatError(f"array dtype {code!r} refused: numbers only")
    return dt


_DTYPES = {dt.str.encode(): dt for dt in map(np.dtype, ("<f8", "<f4", "<i8", "<i4", "|b1", "|u1", "<u8", "<c16"))}
