"""Faust agents: small `async for` loops over topics that hand the work to plain functions.

Importing this package registers every agent with `streams.runtime.app.app`.
"""

from agents import commerce, sensors, storage  # noqa: F401
