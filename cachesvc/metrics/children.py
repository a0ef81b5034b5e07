"""Labelled children of a metric, looked up once per label-value tuple."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from prometheus_client.metrics import MetricWrapperBase

# Bound children remembered per metric (label sets are bounded; this bounds the memo).
CHILDREN_LIMIT = 1024

_M = TypeVar("_M", bound=MetricWrapperBase)


def bound_children(metric: _M) -> Callable[..., _M]:
    """``metric.labels`` remembered per label-value tuple (least recently used go first).

    ``labels()`` validates, converts and locks on every call: three of those were a
    few percent of a manifest hit at thousands of requests per second. Forgetting a
    child only costs the next lookup (prometheus keeps it).
    """
    return functools.lru_cache(maxsize=CHILDREN_LIMIT)(metric.labels)
