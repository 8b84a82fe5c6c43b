"""Commerce path agents (issue: commerce path) — being written."""
