"""The worker's HTTP credentials: service API keys, operator tokens, signed login sessions (plain code, no web stack).

Keys come from a setting (comma separated) and an optional file (one per line), and the file is
re-read whenever it changes, so deleting a line revokes a key on the next request, without a
restart. A presented secret is compared with every known one by `hmac.compare_digest`, all of
them each time, so the answer's timing does not tell how much of a key was right.

A login session is a cookie `v1.<expiry>.<token fingerprint>.<HMAC>`: it holds no token, only a
fingerprint of the one it was made with, so removing that token ends its sessions too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from schemas.settings import Settings

log = logging.getLogger(__name__)

SESSION_VERSION = "v1"


def split_keys(text: str) -> tuple[str, ...]:
    """Comma-separated secrets (a setting), blanks dropped."""
    return tuple(k for k in (p.strip() for p in text.split(",")) if k)


def read_key_file(text: str) -> tuple[str, ...]:
    """One secret per line; blank lines and `#` comments ignored."""
    return tuple(k for k in (line.split("#", 1)[0].strip() for line in text.splitlines()) if k)


def fingerprint(secret: str) -> str:
    """A short stable id of a secret, safe to put in a cookie or a log line (never the secret)."""
    return hashlib.sha256(b"wharf-credential:" + secret.encode()).hexdigest()[:16]


def matches(presented: str, known: tuple[str, ...]) -> bool:
    """Whether `presented` is one of `known`, comparing with every one in constant time."""
    given = presented.encode()
    hits = [hmac.compare_digest(given, k.encode()) for k in known]
    return any(hits)


@dataclass
class KeySource:
    """Secrets from a setting plus a file that is re-read when its (inode, size, mtime) changes.

    A file that cannot be read yields no keys (fail closed) and one warning per change."""

    fixed: tuple[str, ...]
    path: Path | None = None
    _stamp: tuple[int, int, int] | None = None
    _from_file: tuple[str, ...] = ()
    _warned: str = ""

    @classmethod
    def of(cls, keys: str, path: str) -> KeySource:
        return cls(split_keys(keys), Path(path).expanduser() if path.strip() else None)

    def keys(self) -> tuple[str, ...]:
        if self.path is None:
            return self.fixed
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self._stamp:
                self._from_file = read_key_file(self.path.read_text())
                self._stamp = stamp
                self._warned = ""
        except OSError as exc:
            if self._warned != type(exc).__name__:
                log.warning("credential file %s unreadable (%s): its keys are refused until it is back", self.path, type(exc).__name__)
                self._warned = type(exc).__name__
            self._stamp, self._from_file = None, ()
        return self.fixed + self._from_file

    def configured(self) -> bool:
        return bool(self.fixed) or self.path is not None


@dataclass
class Sessions:
    """Signed, expiring login cookies bound to the operator token that made them."""

    secret: bytes
    lifetime_s: float

    def issue(self, token: str, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + self.lifetime_s)
        body = f"{SESSION_VERSION}.{expires}.{fingerprint(token)}"
        return f"{body}.{self._sign(body)}"

    def verify(self, cookie: str, tokens: tuple[str, ...], now: float | None = None) -> bool:
        """Valid signature, not expired, and made with a token that is still valid."""
        body, _, sig = cookie.rpartition(".")
        parts = body.split(".")
        if len(parts) != 3 or parts[0] != SESSION_VERSION or not hmac.compare_digest(sig.encode(), self._sign(body).encode()):
            return False
        try:
            expires = int(parts[1])
        except ValueError:
            return False
        if expires < (now if now is not None else time.time()):
            return False
        return matches(parts[2], tuple(fingerprint(t) for t in tokens))

    def _sign(self, body: str) -> str:
        mac = hmac.new(self.secret, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")


@dataclass
class Credentials:
    """Everything a worker accepts: API keys (services), operator tokens (people, tools) and their sessions."""

    api_keys: KeySource
    operator_tokens: KeySource
    sessions: Sessions

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        secret = settings.web_session_secret.get_secret_value().encode() or secrets.token_bytes(32)
        return cls(KeySource.of(settings.web_api_keys.get_secret_value(), settings.api_keys_file()),
                   KeySource.of(settings.web_operator_tokens.get_secret_value(), settings.operator_tokens_file()),
                   Sessions(secret, settings.web_session_hours * 3600.0))

    def is_api_key(self, presented: str) -> bool:
        return bool(presented) and matches(presented, self.api_keys.keys())

    def is_operator(self, presented: str) -> bool:
        return bool(presented) and matches(presented, self.operator_tokens.keys())

    def session_ok(self, cookie: str) -> bool:
        return bool(cookie) and self.sessions.verify(cookie, self.operator_tokens.keys())
