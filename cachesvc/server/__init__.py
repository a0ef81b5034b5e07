"""HTTP: the mirror API's handlers, zero-copy byte sending, the admin API and health
endpoints. Handlers translate requests into one domain call and errors into OCI answers."""
