"""cachesvc: a node-local pull-through cache for container images."""

__all__ = ["__version__"]

__version__ = "0.1.0"
