"""The bridge's MQTT 3.1.1 subscriber session, on asyncio: CONNECT, SUBSCRIBE, PUBLISH in, PUBACK out, PING.

Why not paho here: paho reads every packet with two or three `recv` calls (type byte, length bytes, body) and
writes every PUBACK with its own `send`, and builds a message object with a lock per message. That was most of
the bridge's time (issue 21: ~7,000 messages/s against Mosquitto's ~35,000). This protocol parses every packet
of a received chunk in one pass and writes the PUBACKs released together in one write. It speaks only what a
persistent QoS 1 subscriber needs; publishing (alerts, devices, benchmarks) stays with paho.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass

CONNACK, PUBLISH, SUBACK, PINGRESP = 2, 3, 9, 13
_PUBACK = 0x4002 << 16  # a PUBACK packet as a big-endian 32-bit int: type, remaining length 2, packet id
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"
CONNACK_REASONS = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
                   4: "bad user name or password", 5: "not authorised"}


class MqttError(ConnectionError):
    """The broker refused or broke the session (CONNACK refusal, SUBACK failure, malformed packet, timeout)."""


@dataclass(slots=True)
class Publish:
    """One delivered message. `mid` is its packet id, 0 at QoS 0 (nothing to acknowledge)."""

    topic: bytes
    payload: bytes
    mid: int


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def connect_packet(client_id: str, user: str, password: str, clean: bool, keepalive: int) -> bytes:
    flags = 0x80 | 0x40 | (0x02 if clean else 0)
    body = _text("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive) + _text(client_id) + _text(user) + _text(password)
    return b"\x10" + _length(len(body)) + body


def subscribe_packet(mid: int, topics: list[tuple[str, int]]) -> bytes:
    body = struct.pack(">H", mid) + b"".join(_text(t) + bytes([q]) for t, q in topics)
    return b"\x82" + _length(len(body)) + body


def pubacks(mids: list[int]) -> bytes:
    """The PUBACK packets of `mids`, in that order, as one buffer (one `struct.pack` for all of them)."""
    return struct.pack(f">{len(mids)}I", *[_PUBACK | m for m in mids])


class Session(asyncio.Protocol):
    """One connection. `on_messages` gets each received chunk's messages as a list, in arrival order; `on_lost` is
    called once when the connection ends (None: we closed it). `message` builds each message from (topic, payload,
    mid): a subclass of `Publish` lets the caller keep its own state in the one object a message costs."""

    def __init__(self, on_messages: Callable[[list[Publish]], None], on_lost: Callable[[BaseException | None], None],
                 message: type[Publish] = Publish):
        self._on_messages, self._on_lost, self._message = on_messages, on_lost, message
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._replies: dict[int, asyncio.Future[bytes]] = {}
        self._pinger: asyncio.Task | None = None
        self._pong = True
        self._error: BaseException | None = None
        self.closed = False

    # --- asyncio.Protocol ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        n, pos, out, message = len(buf), 0, [], self._message
        try:
            while n - pos >= 2:
                head = buf[pos]
                i, length, shift, complete = pos + 1, 0, 0, False
                while i < n:  # remaining length: 1 to 4 bytes, 7 bits each
                    digit = buf[i]
                    i += 1
                    length |= (digit & 0x7F) << shift
                    if digit < 0x80:
                        complete = True
                        break
                    shift += 7
                    if shift > 21:
                        raise MqttError("malformed remaining length")
                if not complete or i + length > n:
                    break  # the rest of the packet is still on its way
                end = i + length
                kind = head >> 4
                if kind == PUBLISH:
                    t_end = i + 2 + (buf[i] << 8 | buf[i + 1])
                    qos = (head >> 1) & 3
                    if t_end + (2 if qos else 0) > end:
                        raise MqttError("PUBLISH topic longer than its packet")
                    if qos == 0:
                        out.append(message(buf[i + 2:t_end], buf[t_end:end], 0))
                    elif qos == 1:
                        out.append(message(buf[i + 2:t_end], buf[t_end + 2:end], buf[t_end] << 8 | buf[t_end + 1]))
                    else:  # we subscribe at QoS 1: the broker never grants 2
                        raise MqttError("QoS 2 delivery on a QoS 1 subscription")
                elif kind == PINGRESP:
                    self._pong = True
                elif kind in (CONNACK, SUBACK):
                    waiter = self._replies.pop(kind, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(bytes(buf[i:end]))
                else:
                    raise MqttError(f"unexpected packet type {kind}")
                pos = end
        except (MqttError, IndexError) as exc:
            self._buf = b""
            self._fail(exc if isinstance(exc, MqttError) else MqttError(f"malformed packet: {exc!r}"))
            return
        self._buf = buf[pos:] if pos < n else b""
        if out:
            self._on_messages(out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._pinger is not None:
            self._pinger.cancel()
        for waiter in self._replies.values():
            if not waiter.done():
                waiter.set_exception(exc or MqttError("connection closed"))
        self._replies.clear()
        self._on_lost(exc or self._error)

    # --- what the bridge calls ----------------------------------------------------------------------------------
    async def _request(self, packet: bytes, reply: int, timeout: float) -> bytes:
        waiter = asyncio.get_running_loop().create_future()
        self._replies[reply] = waiter
        self._transport.write(packet)
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            self._fail(MqttError(f"no reply (packet type {reply}) within {timeout:.0f} s"))
            raise MqttError(f"no reply (packet type {reply}) within {timeout:.0f} s") from None

    async def handshake(self, client_id: str, user: str, password: str, *, clean: bool, keepalive: int,
                        timeout: float = 10.0) -> bool:
        """CONNECT; returns the broker's session-present flag, or raises MqttError with its refusal."""
        ack = await self._request(connect_packet(client_id, user, password, clean, keepalive), CONNACK, timeout)
        if len(ack) != 2 or ack[1] != 0:
            code = ack[1] if len(ack) == 2 else -1
            self._fail(None)
            raise MqttError(f"connection refused: {CONNACK_REASONS.get(code, f'code {code}')}")
        self._pinger = asyncio.get_running_loop().create_task(self._ping(keepalive))
        return bool(ack[0] & 1)

    async def subscribe(self, topics: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        """SUBSCRIBE; returns the granted QoS per topic, or raises MqttError if the broker refused any."""
        ack = await self._request(subscribe_packet(1, topics), SUBACK, timeout)
        granted = list(ack[2:])
        if len(granted) != len(topics) or any(g == 0x80 for g in granted):
            raise MqttError(f"subscription refused: {dict(zip((t for t, _ in topics), granted, strict=False))}")
        return granted

    def ack(self, mids: list[int]) -> None:
        """PUBACK these packet ids, in this order, in one write."""
        if mids and not self.closed:
            self._transport.write(pubacks(mids))

    def pause(self) -> None:
        if not self.closed:
            self._transport.pause_reading()

    def resume(self) -> None:
        if not self.closed:
            self._transport.resume_reading()

    def disconnect(self) -> None:
        if not self.closed:
            self._transport.write(_DISCONNECT)
            self._transport.close()

    def _fail(self, exc: BaseException | None) -> None:
        self._error = self._error or exc
        if self._transport is not None and not self.closed:
            self._transport.abort()

    async def _ping(self, keepalive: int) -> None:
        """PINGREQ every half keepalive; a broker that has not answered the last one by then is gone."""
        while not self.closed:
            await asyncio.sleep(keepalive / 2)
            if not self._pong:
                self._fail(MqttError("no PINGRESP"))
                return
            self._pong = False
            self._transport.write(_PINGREQ)


async def open_session(host: str, port: int, ssl_context: ssl.SSLContext | None,
                       on_messages: Callable[[list[Publish]], None],
                       on_lost: Callable[[BaseException | None], None], timeout: float = 10.0,
                       message: type[Publish] = Publish) -> Session:
    """A TCP (or TLS) connection to the broker with a `Session` on it, not yet CONNECTed."""
    loop = asyncio.get_running_loop()
    _transport, session = await asyncio.wait_for(
        loop.create_connection(lambda: Session(on_messages, on_lost, message), host, port, ssl=ssl_context,
                               server_hostname=host if ssl_context else None), timeout)
    return session
