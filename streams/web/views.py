"""Every HTTP endpoint of the Faust worker's web server, each behind `streams.web.guard` (who may call what).

Importing this module installs the guard, then registers the views; the server starts after it.
"""

from __future__ import annotations

from streams.runtime.app import app, settings
from streams.web import guard as _guard

guard = _guard.install(app, settings)  # before any route answers: the server starts after these imports

from streams.web import stats  # noqa: E402,F401 - GET /stats
from streams.web import dashboard  # noqa: E402,F401 - the dashboard and its queries
from streams.web import collector  # noqa: E402,F401 - POST /collect, POST /catalogue (commerce path)
from streams.web import serving  # noqa: E402,F401 - GET /recommendations/{user_id} (commerce path)
from streams.web import metrics  # noqa: E402,F401 - GET /metrics (Prometheus), after the guard: see streams/web/metrics.py
