"""Loading Settings from CLI flags, environment and a YAML file, honouring deprecated aliases.

Owns the sources and their precedence (CLI > env > YAML > defaults), the config file lookup
(``--config`` / ``K_CONFIG`` / ``~/.kannon.yaml``), the deprecated aliases, the CLI flags and the
wording of every ConfigError.

Why a loader of our own rather than pydantic-settings' ``BaseSettings`` sources:
- env names join path segments with "_" while keys themselves contain "_" (K_SENDER_DEMO_SENDER),
  so ``env_nested_delimiter="_"`` is ambiguous; we derive each variable from the key instead;
- the deprecated aliases apply per source (``bump.port`` yields to ``tracker.port`` only at the
  same or a higher precedence), which needs to see each source separately before merging;
- an error must name the key, its env var, its flag AND where the bad value came from, so each
  source's values are validated on their own (a bad value fails even when a higher-precedence
  source overrides it: a broken file should not lie in wait for the day the override goes away);
- unknown YAML keys and unknown K_* variables must be reported, not silently dropped (the
  original ignored most env vars without a word; ADR 0004).
Pydantic still does all type/range validation: each key's TypeAdapter comes from its field.

Unknown keys are a WARNING, not an error: operators upgrade in place with old files, and a
removed key must not stop a pod from booting. The warning names every unknown key and suggests
the closest known one, so typos are still visible.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kannon.config.errors import ConfigError
from kannon.config.model import (
    CrossKeyError,
    KeyInfo,
    KeySpec,
    Settings,
    env_name,
    flag_name,
    key_specs,
)
from kannon.config.values import format_duration, show_value

LOG = logging.getLogger("kannon.config")

DEFAULT_CONFIG_PATH = "~/.kannon.yaml"
CONFIG_ENV = "K_CONFIG"
CONFIG_FLAG = "--config"

CONFIG_FILE_KEY = KeyInfo(
    key="config",
    env=CONFIG_ENV,
    flag=CONFIG_FLAG,
    type_name="path",
    default=DEFAULT_CONFIG_PATH,
    description="Path to the YAML config file (a missing default file is fine)",
)
"""The config file's own row of the README table; not a Settings key (YAML cannot set it)."""

# Set by Knative / Cloud Run in every container; they share our K_ prefix but are not ours.
_FOREIGN_ENV = frozenset({"K_SERVICE", "K_REVISION", "K_CONFIGURATION", "K_SINK", "K_CE_OVERRIDES"})


@dataclass(frozen=True)
class DeprecatedAlias:
    """An old spelling that still works, with a warning, in the sources it existed in."""

    old: str
    """YAML key path of the old spelling: ``run-verifier``, ``bump.port``."""
    new: str
    """Key path it stands for: ``run-validator``."""
    env: str
    flag: str | None

    @property
    def dest(self) -> str | None:
        return self.flag[2:].replace("-", "_") if self.flag else None


DEPRECATED_ALIASES: tuple[DeprecatedAlias, ...] = (
    DeprecatedAlias("run-verifier", "run-validator", env="K_RUN_VERIFIER", flag="--run-verifier"),
    DeprecatedAlias("run-bounce", "run-tracker", env="K_RUN_BOUNCE", flag="--run-bounce"),
    DeprecatedAlias("bump.port", "tracker.port", env="K_BUMP_PORT", flag=None),
)

# One source's contribution: key path → (raw value, where it came from).
_Layer = dict[str, tuple[object, str]]


def add_cli_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per key (bools as store_true) plus the deprecated flags.

    Every flag defaults to ``argparse.SUPPRESS`` so an absent flag is absent from the namespace
    and cannot mask the env/YAML value.
    """
    group = parser.add_argument_group(
        "configuration", "Every key can also be set by its K_* variable or the YAML file."
    )
    group.add_argument(
        CONFIG_FLAG,
        dest="config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=_help(CONFIG_FILE_KEY),
    )
    for spec in key_specs().values():
        info = spec.info
        if spec.is_bool:
            group.add_argument(
                info.flag,
                dest=spec.dest,
                action="store_true",
                default=argparse.SUPPRESS,
                help=_help(info),
            )
        else:
            # "starttls|tls|none" → "{starttls,tls,none}", argparse's spelling of a choice.
            name = info.type_name
            metavar = name.upper() if name.isalpha() else "{" + name.replace("|", ",") + "}"
            group.add_argument(
                info.flag,
                dest=spec.dest,
                default=argparse.SUPPRESS,
                metavar=metavar,
                help=_help(info),
            )
    for alias in DEPRECATED_ALIASES:
        if alias.flag is not None:
            group.add_argument(
                alias.flag,
                dest=alias.dest,
                action="store_true",
                default=argparse.SUPPRESS,
                help=f"deprecated alias of {flag_name(alias.new)}",
            )


def _help(info: KeyInfo) -> str:
    # argparse %-formats help strings.
    return f"{info.description} [{info.env}; default {info.default}]".replace("%", "%%")


def load_settings(
    cli: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    config_path: str | None = None,
) -> Settings:
    """Build Settings from CLI values, environment and YAML file (CLI > env > YAML > defaults).

    ``cli`` is ``vars(namespace)`` from a parser set up with :func:`add_cli_flags`; keys that are
    not configuration flags are ignored. ``config_path``, when given, wins over ``--config`` and
    ``K_CONFIG`` and, like them, must exist. Raises ConfigError on any bad value or file.
    """
    specs = key_specs()
    layers = [
        _yaml_layer(*_read_config_file(cli, environ, config_path), specs),
        _env_layer(environ, specs),
        _cli_layer(cli, specs),
    ]
    merged: _Layer = {}
    typed: dict[str, object] = {}
    for layer in layers:  # ascending precedence
        for key, (raw, origin) in layer.items():
            typed[key] = _validate(specs[key], raw, origin)
            merged[key] = (raw, origin)

    nested: dict[str, Any] = {}
    for key, value in typed.items():
        node = nested
        *parents, leaf = specs[key].attrs
        for attr in parents:
            node = node.setdefault(attr, {})
        node[leaf] = value
    try:
        return Settings.model_validate(nested)
    except ValidationError as exc:
        raise _model_error(exc, merged) from None


def environment_of(settings: Settings) -> dict[str, str]:
    """`settings` as `K_` variables that `load_settings` reads back to the same values — how
    standalone hands its resolved configuration (embedded servers' URLs, generated secret) to
    the Component processes it starts. The `run-*` keys and `config` are left out: the caller
    chooses the Components, and nothing is read from a file."""
    environ: dict[str, str] = {}
    for key, spec in key_specs().items():
        if key.startswith("run-"):
            continue
        value = settings.value_of(key)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, timedelta):
            text = format_duration(value)
        elif isinstance(value, tuple):
            text = ",".join(str(item) for item in value)
        else:
            text = str(value)
        environ[spec.info.env] = text
    return environ


def require(settings: Settings, key: str, *, needed_by: str | None = None) -> Any:
    """Return the value of ``key``, or raise ConfigError naming it if it is unset or blank.

    For keys that are optional in general but required by some component:
    ``dsn = require(settings, "database_url", needed_by="dispatcher")``.
    """
    spec = key_specs().get(key)
    if spec is None:
        raise LookupError(f"unknown configuration key {key!r}")
    value = settings.value_of(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        who = f" (needed by {needed_by})" if needed_by else ""
        raise ConfigError(
            f"missing required setting {key} ({spec.info.env} / {spec.info.flag}){who}: "
            "set it in the config file, the environment or on the command line",
            key=key,
        )
    return value


# ---------------------------------------------------------------------------------------------
# Sources


def _read_config_file(
    cli: Mapping[str, Any], environ: Mapping[str, str], config_path: str | None
) -> tuple[Mapping[str, Any], str]:
    """Return the parsed YAML document (empty when the default file is absent) and its path."""
    asked_by: str | None
    if config_path is not None:
        raw, asked_by = config_path, "config_path argument"
    elif cli.get("config"):
        raw, asked_by = str(cli["config"]), CONFIG_FLAG
    elif environ.get(CONFIG_ENV, "").strip():
        raw, asked_by = environ[CONFIG_ENV].strip(), CONFIG_ENV
    else:
        raw, asked_by = DEFAULT_CONFIG_PATH, None
    # Expand "~" with the HOME of the environment we were given, not necessarily the process's,
    # so an embedding caller (or a test) decides where the default file is looked for.
    home = environ.get("HOME") or os.path.expanduser("~")
    path = Path(home + raw[1:]) if raw == "~" or raw.startswith("~/") else Path(raw)

    if not path.exists():
        if asked_by is None:
            LOG.debug("no config file at %s; using env, flags and defaults", path)
            return {}, str(path)
        raise ConfigError(f"config file {path} (from {asked_by}) does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML in config file {path}: {_yaml_problem(exc)}") from None
    if document is None:  # an empty file, or only comments
        return {}, str(path)
    if not isinstance(document, Mapping):
        raise ConfigError(
            f"config file {path} must be a mapping of keys, not {type(document).__name__}"
        )
    LOG.debug("loaded config file %s", path)
    return document, str(path)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or exc.context or "syntax error"
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def _yaml_layer(document: Mapping[str, Any], path: str, specs: Mapping[str, KeySpec]) -> _Layer:
    aliases = {alias.old: alias for alias in DEPRECATED_ALIASES}
    leaves = set(specs) | set(aliases)
    sections = {leaf.rsplit(".", 1)[0] for leaf in leaves if "." in leaf}
    sections |= {section.rsplit(".", 1)[0] for section in list(sections) if "." in section}

    layer: _Layer = {}
    found_aliases: _Layer = {}
    unknown: list[str] = []
    origin = f"config file {path}"

    def visit(mapping: Mapping[Any, Any], prefix: str) -> None:
        for name, value in mapping.items():
            key = f"{prefix}{name}"
            if key in sections:
                if value is None:  # `smtp:` with nothing under it
                    continue
                if not isinstance(value, Mapping):
                    raise ConfigError(
                        f"invalid value for {key} in config file {path}: expected a mapping of "
                        f"keys, got {show_value(value)}",
                        key=key,
                    )
                visit(value, f"{key}.")
            elif key in specs:
                layer[key] = (value, origin)
            elif key in aliases:
                found_aliases[key] = (value, origin)
            else:
                unknown.append(key)

    visit(document, "")
    if unknown:
        LOG.warning(
            "config file %s: ignoring unknown keys: %s",
            path,
            ", ".join(_with_suggestion(name, sorted(leaves)) for name in unknown),
        )
    for old, (value, _origin) in found_aliases.items():
        alias = aliases[old]
        _apply_alias(layer, alias.new, value, origin, old=old, new=alias.new, where=origin)
    return layer


def _env_layer(environ: Mapping[str, str], specs: Mapping[str, KeySpec]) -> _Layer:
    layer: _Layer = {}
    for key, spec in specs.items():
        value = environ.get(spec.info.env)
        # Empty means unset, as with viper: compose files often carry `K_FOO=` placeholders.
        if value is not None and value.strip():
            layer[key] = (value, f"env {spec.info.env}")
    for alias in DEPRECATED_ALIASES:
        value = environ.get(alias.env)
        if value is not None and value.strip():
            _apply_alias(
                layer,
                alias.new,
                value,
                f"env {alias.env}",
                old=alias.env,
                new=env_name(alias.new),
                where="environment",
            )

    known = {spec.info.env for spec in specs.values()}
    known |= {alias.env for alias in DEPRECATED_ALIASES} | {CONFIG_ENV} | _FOREIGN_ENV
    unknown = sorted(name for name in environ if name.startswith("K_") and name not in known)
    if unknown:
        LOG.warning(
            "ignoring unknown environment variables: %s",
            ", ".join(_with_suggestion(name, sorted(known - _FOREIGN_ENV)) for name in unknown),
        )
    return layer


def _cli_layer(cli: Mapping[str, Any], specs: Mapping[str, KeySpec]) -> _Layer:
    layer: _Layer = {}
    for key, spec in specs.items():
        if cli.get(spec.dest) is not None:
            layer[key] = (cli[spec.dest], f"flag {spec.info.flag}")
    for alias in DEPRECATED_ALIASES:
        if alias.flag is not None and alias.dest is not None and cli.get(alias.dest) is not None:
            _apply_alias(
                layer,
                alias.new,
                cli[alias.dest],
                f"flag {alias.flag}",
                old=alias.flag,
                new=flag_name(alias.new),
                where="command line",
            )
    return layer


def _apply_alias(
    layer: _Layer, target: str, value: object, origin: str, *, old: str, new: str, where: str
) -> None:
    """Let a deprecated spelling set ``target`` unless the new spelling is set in the same source.

    Applied per source before merging, so a higher-precedence source's ``tracker.port`` still
    beats ``bump.port`` and a lower-precedence one does not.
    """
    if target in layer:
        LOG.warning("%s is deprecated and ignored because %s is also set (%s)", old, new, where)
        return
    LOG.warning("%s is deprecated; use %s instead (%s)", old, new, where)
    layer[target] = (value, f"{origin}, deprecated alias of {target}")


def _with_suggestion(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return f"{name} (did you mean {close[0]}?)" if close else name


# ---------------------------------------------------------------------------------------------
# Errors


def _validate(spec: KeySpec, raw: object, origin: str) -> object:
    try:
        return spec.adapter.validate_python(raw)
    except ValidationError as exc:
        raise _key_error(spec.info, _problem(exc, raw), origin) from None


def _problem(exc: ValidationError, raw: object) -> str:
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, ValueError):
        return str(cause)
    return f"{show_value(raw)}: {error['msg']}"


def _key_error(info: KeyInfo, problem: str, origin: str | None) -> ConfigError:
    source = f" [from {origin}]" if origin else ""
    return ConfigError(
        f"invalid value for {info.key} ({info.env} / {info.flag}): {problem}{source}",
        key=info.key,
    )


def _model_error(exc: ValidationError, merged: _Layer) -> ConfigError:
    """Turn a whole-model failure (a rule spanning keys) into a ConfigError naming one key."""
    specs = key_specs()
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, CrossKeyError) and cause.key in specs:
        origin = merged.get(cause.key, (None, "defaults"))[1]
        return _key_error(specs[cause.key].info, str(cause), origin)
    where = ".".join(str(part) for part in error["loc"]) or "settings"
    problem = str(cause) if isinstance(cause, ValueError) else error["msg"]
    return ConfigError(f"invalid configuration at {where}: {problem}", key=where)
