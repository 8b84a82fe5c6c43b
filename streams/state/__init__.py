"""Durable state: the delta log every agent checkpoints its working state into."""
