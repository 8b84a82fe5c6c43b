"""Wharf's Faust agents, one concept a module.

Importing this package registers every agent with `streams.runtime.app.app`, and lends the web views
(`streams.web.registry`) the state they show.
"""

from agents import alerts, catalogue, item_alarms, metrics, recommender, reviews, scoring, snapshots, storage  # noqa: F401
