"""The key set: names derived mechanically, documented, and every key settable from every source.

The per-key tests are driven by iter_keys(), so a key added to the model is covered without
touching this file — unless its type is new, in which case SAMPLES must learn it (and the test
says so).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from kannon.config import (
    CONFIG_FILE_KEY,
    DEPRECATED_ALIASES,
    KeyInfo,
    Settings,
    SmtpSettings,
    add_cli_flags,
    iter_keys,
    parse_duration,
    parse_size,
)
from kannon.model.shaping import Limits, Rule
from tests.config.config_test_support import Loader, parse_argv

KEYS = list(iter_keys())


@dataclass(frozen=True)
class Sample:
    text: str  # as written in an env var or after a flag
    yaml_value: object  # as a YAML document would naturally hold it
    expected: object  # the typed value Settings must hold


# One non-default value per type name. "5h30m" suits every duration key at once: it sits
# between the dispatcher's backoff_min and backoff_max defaults.
SAMPLES: dict[str, Sample] = {
    "string": Sample("sample-value", "sample-value", "sample-value"),
    "bool": Sample("true", True, True),
    "int": Sample("3", 3, 3),
    "port": Sample("2525", 2525, 2525),
    "duration": Sample("5h30m", "5h30m", timedelta(hours=5, minutes=30)),
    "size": Sample("2mb", "2mb", 2 * 1024 * 1024),
    "list": Sample("127.0.0.1, 10.0.0.1", ["127.0.0.1", "10.0.0.1"], ("127.0.0.1", "10.0.0.1")),
    "path": Sample("/srv/kannon-data", "/srv/kannon-data", Path("/srv/kannon-data")),
    "url": Sample("https://t.example.com", "https://t.example.com", "https://t.example.com"),
    "address": Sample("127.0.0.1:2525", "127.0.0.1:2525", "127.0.0.1:2525"),
    "starttls|tls|none": Sample("tls", "tls", "tls"),
    "auto|uvloop|asyncio": Sample("asyncio", "asyncio", "asyncio"),
    "groups": Sample(
        "api,validator;dispatcher,stats,webhooks;sender,smtp,tracker",
        "api,validator;dispatcher,stats,webhooks;sender,smtp,tracker",
        "api,validator;dispatcher,stats,webhooks;sender,smtp,tracker",
    ),
    "email": Sample("FBL@Mail.example.com", "FBL@Mail.example.com", "fbl@mail.example.com"),
    "rules": Sample(
        ".Google.com: connections=2 per_second=5; default: connections=20",
        [".google.com: connections=2 per_second=5", "default: connections=20"],
        (
            Rule(".google.com", Limits(connections=2, per_second=5)),
            Rule("default", Limits(connections=20)),
        ),
    ),
    "ip": Sample("127.0.0.2", "127.0.0.2", "127.0.0.2"),
}


# Keys with a narrower range than their type.
KEY_SAMPLES: dict[str, Sample] = {
    "dispatcher.claim_timeout": Sample("3m", "3m", timedelta(minutes=3)),  # at most 5m
    "webhooks.backoff_min": Sample("30m", "30m", timedelta(minutes=30)),  # below backoff_max
    "ip_pools": Sample("eu, US-east", ["eu", "US-east"], ("eu", "us-east")),  # pool names
}


def _sample(info: KeyInfo) -> Sample:
    assert info.type_name in SAMPLES, f"add a sample value for type {info.type_name!r} ({info.key})"
    sample = KEY_SAMPLES.get(info.key, SAMPLES[info.type_name])
    assert Settings().value_of(info.key) != sample.expected, f"sample for {info.key} is its default"
    return sample


def _yaml_for(key: str, value: object) -> str:
    doc: object = value
    head, *rest = key.split(".")
    for part in reversed(rest):
        doc = {part: doc}
    return yaml.safe_dump({head: doc})


@pytest.mark.parametrize("info", KEYS, ids=[info.key for info in KEYS])
def test_every_key_is_settable_from_yaml(info: KeyInfo, load: Loader) -> None:
    sample = _sample(info)
    settings = load(yaml_text=_yaml_for(info.key, sample.yaml_value))
    assert settings.value_of(info.key) == sample.expected


@pytest.mark.parametrize("info", KEYS, ids=[info.key for info in KEYS])
def test_every_key_is_settable_from_env(info: KeyInfo, load: Loader) -> None:
    sample = _sample(info)
    settings = load(env={info.env: sample.text})
    assert settings.value_of(info.key) == sample.expected


@pytest.mark.parametrize("info", KEYS, ids=[info.key for info in KEYS])
def test_every_key_is_settable_from_cli(info: KeyInfo, load: Loader) -> None:
    sample = _sample(info)
    argv = [info.flag] if info.type_name == "bool" else [info.flag, sample.text]
    settings = load(argv=argv)
    assert settings.value_of(info.key) == sample.expected


@pytest.mark.parametrize("info", KEYS, ids=[info.key for info in KEYS])
def test_names_are_derived_mechanically_from_the_key(info: KeyInfo) -> None:
    assert info.env == "K_" + info.key.upper().replace(".", "_").replace("-", "_")
    assert info.flag == "--" + info.key.replace(".", "-").replace("_", "-")
    assert info.description.strip() and "\n" not in info.description
    assert info.default.strip()


def test_names_match_the_contract_examples() -> None:
    by_key = {info.key: info for info in KEYS}
    assert by_key["api.port"][:3] == ("api.port", "K_API_PORT", "--api-port")
    assert by_key["sender.demo_sender"].env == "K_SENDER_DEMO_SENDER"
    assert by_key["sender.demo_sender"].flag == "--sender-demo-sender"
    assert by_key["smtp.max_payload"].flag == "--smtp-max-payload"
    assert by_key["run-api"][:3] == ("run-api", "K_RUN_API", "--run-api")


def test_env_vars_and_flags_are_unique_across_keys_aliases_and_config() -> None:
    envs = [info.env for info in KEYS] + [a.env for a in DEPRECATED_ALIASES] + [CONFIG_FILE_KEY.env]
    flags = [info.flag for info in KEYS] + [a.flag for a in DEPRECATED_ALIASES if a.flag]
    flags.append(CONFIG_FILE_KEY.flag)
    assert len(envs) == len(set(envs))
    assert len(flags) == len(set(flags))


# The seed README's table is the user contract: these keys and defaults must not drift.
SEED_README_DEFAULTS = {
    "database_url": "(required)",
    "nats_url": "(required)",
    "debug": "false",
    "api.port": "50051",
    "sender.max_jobs": "10",
    "sender.demo_sender": "false",
    "smtp.address": ":25",
    "smtp.domain": "localhost",
    "smtp.read_timeout": "10s",
    "smtp.write_timeout": "10s",
    "smtp.max_payload": "1024kb",
    "smtp.max_recipients": "50",
    "tracker.port": "8080",
    **{f"run-{name}": "false" for name in ("api", "smtp", "sender", "dispatcher", "validator")},
    **{f"run-{name}": "false" for name in ("tracker", "stats")},
}


def test_seed_readme_keys_exist_with_their_documented_defaults() -> None:
    shown = {info.key: info.default for info in KEYS}
    for key, default in SEED_README_DEFAULTS.items():
        assert shown.get(key) == default, key
    assert "sender.hostname" in shown
    assert CONFIG_FILE_KEY.default == "~/.kannon.yaml"


@pytest.mark.parametrize("info", KEYS, ids=[info.key for info in KEYS])
def test_displayed_default_is_the_effective_default(info: KeyInfo) -> None:
    actual = Settings().value_of(info.key)
    if actual is None:
        assert info.default.startswith("(")
    elif info.type_name == "duration":
        assert parse_duration(info.default) == actual
    elif info.type_name == "size":
        assert parse_size(info.default) == actual
    elif info.type_name == "bool":
        assert info.default == str(actual).lower()
    elif info.type_name == "path":
        assert Path(info.default).expanduser() == actual
    elif actual == ():
        assert info.default == "(empty)"
    else:
        assert info.default == str(actual)


def test_flags_default_to_suppress_so_absent_flags_are_absent() -> None:
    assert parse_argv([]) == {}


def test_bool_flags_take_no_value_and_others_require_one() -> None:
    assert parse_argv(["--run-api", "--sender-demo-sender"]) == {
        "run_api": True,
        "sender_demo_sender": True,
    }
    with pytest.raises(argparse.ArgumentError):
        parse_argv(["--api-port"])


def test_cli_flags_work_on_a_parent_parser_with_subcommands(load: Loader) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_cli_flags(common)
    parser = argparse.ArgumentParser(parents=[common])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("migrate", parents=[common])
    cli = vars(parser.parse_args(["migrate", "--api-port", "1234"]))
    from kannon.config import load_settings

    settings = load_settings(cli, {"HOME": str(load.home)})  # "command" is ignored
    assert settings.api.port == 1234


def test_secrets_stay_out_of_repr() -> None:
    settings = Settings.model_validate(
        {
            "database_url": "postgres://kannon:pg-pass-123@db/kannon",
            "secret_key": "hmac-secret-456",
            "api": {"admin_token": "admin-tok-789"},
            "sender": {"relay": {"password": "relay-pass-000"}},
        }
    )
    text = repr(settings)
    for secret in ("pg-pass-123", "hmac-secret-456", "admin-tok-789", "relay-pass-000"):
        assert secret not in text
    assert settings.secret_key == "hmac-secret-456"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.debug = True
    with pytest.raises(ValueError, match="frozen"):
        settings.api.port = 1


def test_python_names_construct_settings_directly() -> None:
    settings = Settings.model_validate({"run_api": True, "smtp": {"read_timeout": "1m"}})
    assert settings.run_api is True
    assert settings.smtp.read_timeout == timedelta(minutes=1)
    settings = Settings(run_api=True, smtp=SmtpSettings(read_timeout=timedelta(minutes=1)))
    assert settings.run_api is True
    assert settings.smtp.read_timeout == timedelta(minutes=1)
