"""A process's resident memory, read from /proc: the one reader every benchmark uses."""

from __future__ import annotations

from pathlib import Path


def _status_mb(pid: int | str, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory now (VmRSS) in MB; None once the process is gone."""
    return _status_mb(pid, "VmRSS:")


def peak_rss_mb(pid: int | str = "self") -> float:
    """The most resident memory the process has had (VmHWM) in MB; NaN once it is gone (a printed figure)."""
    mb = _status_mb(pid, "VmHWM:")
    return float("nan") if mb is None else mb
