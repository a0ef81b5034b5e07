"""Talking to registries: the client, token auth, credentials, endpoints (CDN first, origin
last), rate limits and the egress proxy. Knows nothing of the store."""
