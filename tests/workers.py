"""Run real `wharf worker` processes for end-to-end tests."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


WORKER_ARGV = [sys.executable, "-m", "wharf.cli", "worker", "--loglevel", "warning"]


def fresh_topics(tag: str) -> dict[str, str]:
    """Every topic setting as a `WHARF_TOPIC_*` variable naming a topic of this test's own (`test.<topic>.<tag>`)."""
    from schemas.settings import Settings

    return {f"WHARF_{name.upper()}": f"test.{name[6:]}.{tag}" for name in Settings.model_fields
            if name.startswith("topic_") and name != "topic_partitions"}


def credentials(env: dict[str, str]) -> dict[str, str]:
    """`env` with an operator token and an API key of its own unless it names some: a worker refuses every
    request without them (streams/web/guard.py)."""
    return {"WHARF_WEB_OPERATOR_TOKENS": f"op-{secrets.token_urlsafe(18)}", "WHARF_WEB_API_KEYS": f"key-{secrets.token_urlsafe(18)}", **env}


class WorkerProcess:
    def __init__(self, env: dict[str, str], web_port: int, log: Path, argv: list[str] | None = None):
        self.env = {**credentials({**os.environ, **env}), "WHARF_WEB_PORT": str(web_port), "PYTHONUNBUFFERED": "1"}
        self.operator_token = self.env["WHARF_WEB_OPERATOR_TOKENS"].split(",")[0].strip()
        self.api_key = self.env["WHARF_WEB_API_KEYS"].split(",")[0].strip()
        self.web_port = web_port
        self.log = log
        self.argv = argv or WORKER_ARGV
        self.proc: subprocess.Popen | None = None

    def launch(self) -> WorkerProcess:
        """Start the process without waiting for its web server (it may stop before that)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def start(self, ready_timeout: float = 90) -> WorkerProcess:
        self.launch()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; log {self.log}:\n{self.log.read_text()[-3000:]}")
            try:
                self.stats()
                return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"worker web server not up after {ready_timeout}s; log {self.log}")

    def get(self, path: str, timeout: float = 5) -> dict:
        """GET a JSON view as an operator."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}", headers={"Authorization": f"Bearer {self.operator_token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        return self.get("/stats")

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()
