"""Metrics of policy at the node: allow lists, signature verification, client networks."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from cachesvc.metrics.buckets import LATENCY_BUCKETS
from cachesvc.metrics.children import bound_children


class PolicyMetrics:
    """Part of ``Metrics``: what policy allowed, refused and verified."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Policy decisions, refused clients, verification time."""
        self.policy_decisions = Counter(
            "cachesvc_policy_decisions_total",
            "Policy decisions by registry and result: allowed / denied_allow (the allow list), "
            "verified (a fresh verification), cached (a remembered verified verdict), warned "
            "(refused but served: verify mode warn), denied_<reason> (no_signature, "
            "unknown_key, bad_signature, wrong_digest).",
            ["registry", "result"],
            registry=registry,
        )
        self.policy_client_refusals = Counter(
            "cachesvc_policy_client_refusals_total",
            "Mirror API requests refused because the client is outside clients.allow.",
            registry=registry,
        )
        self.verify_seconds = Histogram(
            "cachesvc_policy_verify_seconds",
            "Time to verify one digest that had no cached verdict (fetching the signature "
            "artifacts upstream and checking them).",
            ["registry"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.policy_decisions_by = bound_children(self.policy_decisions)
