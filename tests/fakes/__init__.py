"""Fake upstreams: real aiohttp servers with switches for faults real peers cannot make."""
