"""The TLS settings of one registry's upstream connections, from its configuration."""

from __future__ import annotations

import ssl

from cachesvc.config import RegistryConfig
from cachesvc.errors import ConfigError


def tls_context(config: RegistryConfig) -> ssl.SSLContext | bool:
    """The ``ssl`` argument for a registry: verify (system CAs + ``ca_file``), mTLS, or off.

    Raises ``ConfigError`` naming the key when a file cannot be used (``check-config``
    calls this too, so a bad certificate is found before a rollout).
    """
    key = f"registries.{config.name}"
    if config.insecure:
        return False
    if config.ca_file is None and config.client_cert is None:
        return True  # aiohttp's default verifying context
    context = ssl.create_default_context()
    if config.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(config.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{key}.ca_file", f"cannot load {config.ca_file}: {exc}") from None
    if config.client_cert is not None:
        try:
            context.load_cert_chain(
                str(config.client_cert),
                str(config.client_key) if config.client_key is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{key}.client_cert", f"cannot load the client certificate/key: {exc}"
            ) from None
    return context
