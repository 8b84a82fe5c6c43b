"""Sensor path agents (issue: sensor path) — being written."""
