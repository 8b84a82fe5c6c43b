"""A local server process we start, find again, and stop: pid file, log file, readiness wait.

Servers run in their own session (they outlive the `wharf infra up` that started
them) and are found again through their pid file, which also records the kernel
start time of the process: a stale pid file, whose pid now belongs to another
process, never makes us signal a stranger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class ServiceError(RuntimeError):
    """A service failed to start or to become ready; the message names it and its log."""


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout: float = 30.0

    @property
    def pid_file(self) -> Path:
        return self.workdir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            return stamped_pid(self.pid_file.read_text())
        except FileNotFoundError:
            return None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> int:
        existing = self.pid()
        if existing is not None:
            return existing
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()
        self.pid_file.write_text(stamp(proc.pid) + "\n")
        return proc.pid

    def wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll `check` until it returns True; fail with the log's tail if the process dies or time runs out."""
        started = time.monotonic()
        last_error: Exception | None = None
        while time.monotonic() - started < timeout:
            if not self.running():
                raise ServiceError(
                    f"{self.name} exited while starting ({what}). Log: {self.log_file}\n{self.log_tail()}"
                )
            try:
                if check():
                    return time.monotonic() - started
            except Exception as exc:  # readiness probes fail in many ways until the server is up
                last_error = exc
            time.sleep(0.25)
        raise ServiceError(
            f"{self.name} was not ready after {timeout:.0f}s ({what}; last probe error: {last_error!r}). "
            f"Log: {self.log_file}\n{self.log_tail()}"
        )

    def stop(self, sig: int = signal.SIGTERM) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.killpg(pid, sig) if _is_group_leader(pid) else os.kill(pid, sig)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log yet)"
        return "\n".join("    " + line for line in text[-lines:])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = stat_fields(pid)
    if fields is None:
        return False
    if fields[0] == "Z":  # a zombie is dead for our purposes
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def stat_fields(pid: int, thread: int | None = None) -> list[str] | None:
    """A process's (or one of its threads') `/proc/.../stat` fields after the command name, from the state on
    (field 3 of stat(5) is index 0); None once it is gone. The name is cut at its last ")": it may hold spaces."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        return Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (nobody may reap an orphan in a container)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def stamp(pid: int) -> str:
    """`pid start-time`: names one process for its whole life (a reused pid has another start time)."""
    return f"{pid} {start_time(pid)}"


def stamped_pid(text: str) -> int | None:
    """The pid of a `stamp` if that very process still runs (same kernel start time), else None."""
    try:
        pid, started = (int(field) for field in text.split())
    except ValueError:
        return None
    return pid if _alive(pid) and start_time(pid) == started else None


def start_time(pid: int) -> int | None:
    """Kernel start time of a process (clock ticks since boot): stable for its life, unique with its pid."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def ensure_ports_free(service: str, ports: dict[int, str], host: str = "127.0.0.1") -> None:
    """Refuse to start when another process holds our port: readiness probes would talk to a stranger."""
    for port, setting in ports.items():
        if port_open(host, port):
            raise ServiceError(
                f"{service}: port {port} on {host} is already in use by another process; stop it or change {setting}"
            )


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
