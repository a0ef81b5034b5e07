"""The mirror's domain: routing a request to a registry, manifests, blobs and the
single-flight fills that join the store to upstream. No ``aiohttp.web`` here."""
