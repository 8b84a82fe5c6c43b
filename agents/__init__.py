"""Faust agents: small `async for` loops over topics that hand the work to plain functions.

Importing this package registers every agent with `streams.app.app`.
"""

from agents import commerce, metrics, sensors, storage  # noqa: F401
