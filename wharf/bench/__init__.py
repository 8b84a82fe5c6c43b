"""Benchmarks: `wharf bench all`, the Faust ceiling, the bridge's throughput; each prints its figures beside a same-run reference."""
