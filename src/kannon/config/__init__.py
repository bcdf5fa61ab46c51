"""Kannon's configuration: keys, value syntaxes, sources and precedence (public API).

Every key is settable from YAML, from its ``K_*`` variable and from a CLI flag, with precedence
CLI > env > YAML > defaults; see :mod:`kannon.config.model` for the keys and
:mod:`kannon.config.loader` for the sources. Typical use::

    parser = argparse.ArgumentParser()
    add_cli_flags(parser)
    settings = load_settings(vars(parser.parse_args()), os.environ)
    dsn = require(settings, "database_url", needed_by="dispatcher")
"""

from kannon.config.errors import ConfigError
from kannon.config.loader import (
    CONFIG_FILE_KEY,
    DEFAULT_CONFIG_PATH,
    DEPRECATED_ALIASES,
    DeprecatedAlias,
    add_cli_flags,
    environment_of,
    load_settings,
    require,
)
from kannon.config.model import (
    COMPONENTS,
    ApiSettings,
    DispatcherSettings,
    HealthSettings,
    KeyInfo,
    NatsSettings,
    RelaySettings,
    SenderSettings,
    Settings,
    SmtpSettings,
    StatsSettings,
    SuppressionSettings,
    TrackerSettings,
    ValidatorSettings,
    WebhooksSettings,
    env_name,
    flag_name,
    iter_keys,
)
from kannon.config.values import (
    format_duration,
    parse_bool,
    parse_dns_server,
    parse_duration,
    parse_listen_address,
    parse_size,
)

__all__ = [
    "COMPONENTS",
    "CONFIG_FILE_KEY",
    "DEFAULT_CONFIG_PATH",
    "DEPRECATED_ALIASES",
    "ApiSettings",
    "ConfigError",
    "DeprecatedAlias",
    "DispatcherSettings",
    "HealthSettings",
    "KeyInfo",
    "NatsSettings",
    "RelaySettings",
    "SenderSettings",
    "Settings",
    "SmtpSettings",
    "StatsSettings",
    "SuppressionSettings",
    "TrackerSettings",
    "ValidatorSettings",
    "WebhooksSettings",
    "add_cli_flags",
    "env_name",
    "environment_of",
    "flag_name",
    "format_duration",
    "iter_keys",
    "load_settings",
    "parse_bool",
    "parse_dns_server",
    "parse_duration",
    "parse_listen_address",
    "parse_size",
    "require",
]
