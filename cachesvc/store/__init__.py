"""The node's disk: verified content, the index beside it, writing a blob (ingest), leases,
pins and eviction. Knows nothing of HTTP or upstreams."""
