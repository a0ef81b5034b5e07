"""Typed, frozen configuration: YAML loading, validation and the embedded default.

``cachesvc.config.model`` holds the values, ``cachesvc.config.values`` parses single
values (durations, sizes, addresses, proxy URLs), ``cachesvc.config.parse`` validates a
whole mapping. Only the CLI reads files and the environment; the daemon is handed a
``Config``.
"""

from cachesvc.config.model import (
    AdminConfig,
    Config,
    ContainerdCheck,
    DiskShare,
    ListenAddress,
    LogConfig,
    PrewarmConfig,
    RegistryConfig,
    StorageConfig,
    Timeouts,
)
from cachesvc.config.parse import (
    DEFAULT_CONFIG_YAML,
    default_config,
    load_config,
    parse_config,
    parse_yaml,
)
from cachesvc.config.values import (
    DIRECT,
    parse_duration,
    parse_listen,
    parse_size,
    proxy_environment,
    proxy_url,
)

__all__ = [
    "DEFAULT_CONFIG_YAML",
    "DIRECT",
    "AdminConfig",
    "Config",
    "ContainerdCheck",
    "DiskShare",
    "ListenAddress",
    "LogConfig",
    "PrewarmConfig",
    "RegistryConfig",
    "StorageConfig",
    "Timeouts",
    "default_config",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_listen",
    "parse_size",
    "parse_yaml",
    "proxy_environment",
    "proxy_url",
]
