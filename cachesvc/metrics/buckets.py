"""Histogram buckets shared by the metric groups (seconds)."""

from __future__ import annotations

# Requests: a manifest hit at a few ms up to a slow upstream answer.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Fills: a small blob in 50 ms up to a multi-GiB layer over a slow link.
FILL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
