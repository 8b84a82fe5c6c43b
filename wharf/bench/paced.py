"""Devices publishing at a steady rate, for `wharf bench sensors`: one `mosquitto_pub -l` process per device, fed
its readings through stdin by one thread of the bench, each reading written when it is due.

Issue 21: in production devices publish from their own hardware, but the bench's load generator shares this
machine's CPUs with the pipeline it measures. Eight paho clients (a publishing thread and a network thread each,
every PUBACK handled in Python) cost about half a core; Mosquitto's C client costs a fraction of that. What is
measured stays the same: QoS 1, MQTT 3.1.1, each device its own login (its ACL) and TLS where the settings ask for
it, and a reading's `ts` is the time it is written to its publisher, so publish->row and publish->alarm still
include any wait in the publisher.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from schemas.settings import Settings
from wharf.bench.publishers import Publisher

# `mosquitto_pub -l` can have at most 65,535 messages outstanding (16-bit packet ids; past them it drops its
# connection with messages unsent, exit code 0): `wharf bench bridge`, which feeds it a whole file at once, allows
# 60,000 a publisher. Fed as due, only what the broker has not acknowledged yet is outstanding, so the total is
# not bounded: one publisher paced at 20,000/s sent 89,960 readings and a subscriber received every one. A
# publisher would have to fall more than 100 s behind at 625/s to lose any, and `stored` would show it short.

Line = Callable[[int, int, float], bytes]  # (publisher index, seq, ts) -> one JSON reading, no newline


class PacedPublishers:
    """`mosquitto_pub -l` per publisher (QoS 1, `-M 1000` in flight as the paho clients had); `feed` writes each
    one's readings when due; `finish` closes their input and waits until each has its last PUBACK and exited."""

    def __init__(self, settings: Settings, pubs: list[Publisher], rate: float, line: Line, log: Path) -> None:
        self.pubs, self.per, self.line = pubs, rate / len(pubs), line
        self.published = 0
        self.error: BaseException | None = None  # what stopped `feed` early (a publisher gone: a broken pipe)
        self._log = open(log, "ab")  # noqa: SIM115 - closed in finish
        self.procs = [subprocess.Popen(p.mosquitto_pub(settings, "-M", "1000"), stdin=subprocess.PIPE, stdout=self._log, stderr=self._log)
                      for p in pubs]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check(self) -> None:
        """RuntimeError if a publisher has exited (a refused login, no broker): before the timed run starts."""
        gone = [(p.user, proc.returncode) for p, proc in zip(self.pubs, self.procs, strict=True) if proc.poll() is not None]
        if gone:
            raise RuntimeError(f"mosquitto_pub exited before publishing: {gone}; see {self._log.name}")

    def wait_connected(self, most: float = 30.0) -> None:
        """Until each publisher's TCP connection is established (its CONNACK follows; a refused login ends the
        process): readings fed before that would wait in the pipe, their `ts` running ahead."""
        deadline = time.monotonic() + most
        while not all(_established(proc.pid) for proc in self.procs):
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the publishers were not all connected within {most:.0f} s; see {self._log.name}")
            time.sleep(0.05)

    def send(self, i: int, line: bytes) -> None:
        """One line for publisher `i` now (the warm-up's readings, before `feed`)."""
        _write_all(self.procs[i].stdin.fileno(), line + b"\n")

    def feed(self, stop: threading.Event, line: Line | None = None) -> None:
        """Write every publisher's due readings every 2 ms until `stop` (a thread's target); `seq` counts from 0 per
        publisher and `published` from 0 per call (a warm-up's feed, then the timed run's). `line`: this feed's
        readings instead of the constructor's. One `ts` per round: the round's lines are written within
        microseconds of it."""
        line = line or self.line
        self.published = 0
        try:
            fds = [proc.stdin.fileno() for proc in self.procs]
            seqs = [0] * len(fds)
            t0 = time.time()
            while not stop.is_set():
                now = time.time()
                due = int((now - t0) * self.per)
                for i, fd in enumerate(fds):
                    if seqs[i] < due:
                        _write_all(fd, b"".join(line(i, seq, now) + b"\n" for seq in range(seqs[i], due)))
                        self.published += due - seqs[i]
                        seqs[i] = due
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 - raised again by finish
            self.error = exc

    def finish(self, timeout: float = 60.0) -> None:
        """End of input: each publisher sends what it has read, waits for its last PUBACK and exits. RuntimeError
        naming the ones that failed or hung (their readings may not all have reached the broker)."""
        for proc in self.procs:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass  # that publisher is gone: its exit code says why
        deadline = time.monotonic() + timeout
        failed = []
        for p, proc in zip(self.pubs, self.procs, strict=True):
            try:
                rc = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
                failed.append((p.user, f"no last PUBACK within {timeout:.0f} s"))
                continue
            if rc:
                failed.append((p.user, f"exit code {rc}"))
        self._log.close()
        if self.error is not None:
            failed.append(("feeding", repr(self.error)))
        if failed:
            raise RuntimeError(f"mosquitto_pub failed: {failed}; see {self._log.name}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _established(pid: int) -> bool:
    """Whether the process has an established TCP connection (`/proc/PID/fd` sockets in `/proc/PID/net/tcp*`)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
                  if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
        rows = [row.split() for name in ("tcp", "tcp6") for row in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]]
    except OSError:
        return False
    return any(row[3] == "01" and row[9] in inodes for row in rows)  # st 01: ESTABLISHED
