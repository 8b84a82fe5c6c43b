"""Deterministic simulators that produce Wharf input events (shop clickstream, ...)."""

from wharf.simulator.shop import ShopConfig, ShopSimulator, simulate_clicks

__all__ = ["ShopConfig", "ShopSimulator", "simulate_clicks"]
