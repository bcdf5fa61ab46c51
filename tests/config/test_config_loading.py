"""Sources, precedence, deprecated aliases, bad values, config files and component selection."""

from __future__ import annotations

import itertools
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kannon.config import COMPONENTS, ConfigError, Settings, require
from tests.config.config_test_support import Loader

LOGGER = "kannon.config"

# ---------------------------------------------------------------------------------------------
# Precedence: CLI > env > YAML > defaults.

SOURCES = ("yaml", "env", "cli")
PORT_BY_SOURCE = {"yaml": 1001, "env": 1002, "cli": 1003}


def _load_port(load: Loader, sources: tuple[str, ...]) -> int:
    yaml_text = f"api:\n  port: {PORT_BY_SOURCE['yaml']}\n" if "yaml" in sources else None
    env = {"K_API_PORT": str(PORT_BY_SOURCE["env"])} if "env" in sources else {}
    argv = ["--api-port", str(PORT_BY_SOURCE["cli"])] if "cli" in sources else []
    return load(yaml_text=yaml_text, env=env, argv=argv).api.port


def refusal(load: Loader, **sources: Any) -> str:
    """The ConfigError message loading from `sources` fails with."""
    with pytest.raises(ConfigError) as info:
        load(**sources)
    return str(info.value)


@pytest.mark.parametrize(
    "sources",
    [combo for size in range(4) for combo in itertools.combinations(SOURCES, size)],
    ids=lambda combo: "+".join(combo) or "defaults",
)
def test_highest_precedence_source_wins(load: Loader, sources: tuple[str, ...]) -> None:
    expected = PORT_BY_SOURCE[max(sources, key=SOURCES.index)] if sources else 50051
    assert _load_port(load, sources) == expected


def test_env_false_overrides_yaml_true(load: Loader) -> None:
    settings = load(yaml_text="run-api: true\n", env={"K_RUN_API": "no"})
    assert settings.run_api is False


def test_empty_env_var_counts_as_unset(load: Loader) -> None:
    settings = load(yaml_text="smtp:\n  domain: from-yaml\n", env={"K_SMTP_DOMAIN": ""})
    assert settings.smtp.domain == "from-yaml"


def test_sources_mix_per_key(load: Loader) -> None:
    settings = load(
        yaml_text="smtp:\n  domain: y.example\n  max_recipients: 7\n",
        env={"K_SMTP_MAX_RECIPIENTS": "8", "K_SENDER_HOSTNAME": "mx.example"},
        argv=["--smtp-max-recipients", "9"],
    )
    assert settings.smtp.domain == "y.example"
    assert settings.smtp.max_recipients == 9
    assert settings.sender.hostname == "mx.example"
    assert settings.smtp.read_timeout == timedelta(seconds=10)


# ---------------------------------------------------------------------------------------------
# Deprecated aliases.

RUN_ALIASES = [
    ("run-verifier", "K_RUN_VERIFIER", "--run-verifier", "run_validator"),
    ("run-bounce", "K_RUN_BOUNCE", "--run-bounce", "run_tracker"),
]


def _deprecations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and "deprecated" in r.getMessage()
    ]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("alias", RUN_ALIASES, ids=[alias[0] for alias in RUN_ALIASES])
def test_deprecated_run_alias_works_and_warns(
    load: Loader, caplog: pytest.LogCaptureFixture, source: str, alias: tuple[str, str, str, str]
) -> None:
    yaml_key, env, flag, attr = alias
    caplog.set_level(logging.WARNING, logger=LOGGER)
    if source == "yaml":
        settings = load(yaml_text=f"{yaml_key}: true\n")
    elif source == "env":
        settings = load(env={env: "true"})
    else:
        settings = load(argv=[flag])
    assert getattr(settings, attr) is True
    messages = _deprecations(caplog)
    spelled = {"yaml": yaml_key, "env": env, "cli": flag}[source]
    assert len(messages) == 1 and spelled in messages[0], messages


@pytest.mark.parametrize(
    ("yaml_text", "env"),
    [("bump:\n  port: 9999\n", {}), (None, {"K_BUMP_PORT": "9999"})],
    ids=["yaml-bump-section", "env-K_BUMP_PORT"],
)
def test_bump_port_sets_tracker_port_and_warns(
    load: Loader, caplog: pytest.LogCaptureFixture, yaml_text: str | None, env: dict[str, str]
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert load(yaml_text=yaml_text, env=env).tracker.port == 9999
    messages = _deprecations(caplog)
    assert len(messages) == 1 and "bump" in messages[0].lower(), messages


@pytest.mark.parametrize(
    ("yaml_text", "env", "argv", "expected"),
    [
        # bump.port loses to tracker.port set at the same precedence...
        ("tracker:\n  port: 1\nbump:\n  port: 2\n", {}, [], 1),
        (None, {"K_TRACKER_PORT": "1", "K_BUMP_PORT": "2"}, [], 1),
        # ...and at a higher one,
        ("bump:\n  port: 2\n", {"K_TRACKER_PORT": "1"}, [], 1),
        (None, {"K_BUMP_PORT": "2"}, ["--tracker-port", "1"], 1),
        # but beats tracker.port from a lower one.
        ("tracker:\n  port: 1\n", {"K_BUMP_PORT": "2"}, [], 2),
    ],
    ids=["same-yaml", "same-env", "env-over-yaml-bump", "cli-over-env-bump", "env-bump-over-yaml"],
)
def test_bump_port_yields_to_tracker_port_at_same_or_higher_precedence(
    load: Loader, yaml_text: str | None, env: dict[str, str], argv: list[str], expected: int
) -> None:
    assert load(yaml_text=yaml_text, env=env, argv=argv).tracker.port == expected


def test_alias_ignored_when_new_key_set_in_same_source_says_so(
    load: Loader, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    settings = load(yaml_text="run-verifier: true\nrun-validator: false\n")
    assert settings.run_validator is False
    assert any("ignored" in message for message in _deprecations(caplog))


def test_bad_alias_value_names_the_key_and_the_alias(load: Loader) -> None:
    message = refusal(load, env={"K_BUMP_PORT": "abc"})
    assert "tracker.port" in message and "K_BUMP_PORT" in message and '"abc"' in message


def test_no_deprecation_warning_without_aliases(
    load: Loader, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    load(yaml_text="run-validator: true\ntracker:\n  port: 1\n", env={"K_RUN_TRACKER": "1"})
    assert _deprecations(caplog) == []


# ---------------------------------------------------------------------------------------------
# Bad values: rejected, on one line, naming key, env var, flag and value.

BAD_VALUES = [
    ("smtp.read_timeout", "ten", "is not a duration"),
    ("stats.retention", "0s", "is not a positive duration"),
    ("smtp.max_payload", "lots", "is not a size"),
    ("api.max_recipients", "many", "is not an integer"),
    ("sender.max_jobs", "0", "out of range"),
    ("debug", "maybe", "is not a boolean"),
    ("api.port", "70000", "out of range"),
    ("sender.smtp_port", "0", "out of range"),
    ("nats.stream_replicas", "7", "out of range"),
    ("sender.source_address", "mail.example.com", "is not an IP address"),
    ("sender.pool", "eu.west", "is not a pool name"),
    ("ip_pools", "eu, no pool", "is not a pool name"),
    ("sender.relay.tls", "ssl", "is not one of starttls, tls, none"),
    ("smtp.address", "localhost", "is not a listen address"),
    ("tracker.trusted_proxies", "10.0.0.0/8,bogus", "is not an IP address or CIDR"),
    ("sender.dns_servers", "dns.google", "is not a DNS server"),
    ("tracker.base_url", "stats.example.com", "is not an http(s) URL"),
]


def _env(key: str) -> str:
    return "K_" + key.upper().replace(".", "_").replace("-", "_")


def _flag(key: str) -> str:
    return "--" + key.replace(".", "-").replace("_", "-")


def _yaml(key: str, value: str) -> str:
    *sections, leaf = key.split(".")
    lines = [f"{'  ' * depth}{name}:" for depth, name in enumerate(sections)]
    lines.append(f"{'  ' * len(sections)}{leaf}: '{value}'")
    return "\n".join(lines) + "\n"


# Bool flags are store_true and take no value, so a bad bool cannot come from the command line.
BAD_VALUE_CASES = [
    pytest.param(source, bad, id=f"{bad[0]}-{source}")
    for bad in BAD_VALUES
    for source in SOURCES
    if not (source == "cli" and bad[0] == "debug")
]


@pytest.mark.parametrize(("source", "bad"), BAD_VALUE_CASES)
def test_bad_value_is_rejected_naming_key_env_flag_and_value(
    load: Loader, source: str, bad: tuple[str, str, str]
) -> None:
    key, value, problem = bad
    with pytest.raises(ConfigError) as info:
        if source == "yaml":
            load(yaml_text=_yaml(key, value))
        elif source == "env":
            load(env={_env(key): value})
        else:
            load(argv=[_flag(key), value])
    message = str(info.value)
    assert message.startswith(f"invalid value for {key} ({_env(key)} / {_flag(key)}): ")
    assert problem in message
    assert "\n" not in message
    assert info.value.key == key
    where = {
        "yaml": f"config file {load.default_file}",
        "env": f"env {_env(key)}",
        "cli": f"flag {_flag(key)}",
    }
    assert f"[from {where[source]}" in message


def test_error_message_matches_the_documented_shape(load: Loader) -> None:
    assert refusal(load, env={"K_SMTP_READ_TIMEOUT": "ten"}).startswith(
        'invalid value for smtp.read_timeout (K_SMTP_READ_TIMEOUT / --smtp-read-timeout): "ten" '
        "is not a duration (use e.g. 10s, 1m30s"
    )


def test_yaml_boolean_is_not_a_port(load: Loader) -> None:
    with pytest.raises(ConfigError, match=r"api\.port .*: true is not an integer"):
        load(yaml_text="api:\n  port: yes\n")


def test_bad_value_fails_even_when_overridden(load: Loader) -> None:
    # A broken file must not lie in wait for the day the env override is removed.
    with pytest.raises(ConfigError, match=r"api\.port"):
        load(yaml_text="api:\n  port: abc\n", env={"K_API_PORT": "1"})


def test_backoff_min_above_backoff_max_is_rejected(load: Loader) -> None:
    message = refusal(load, env={"K_DISPATCHER_BACKOFF_MIN": "7h"})
    assert message.startswith("invalid value for dispatcher.backoff_min (K_DISPATCHER_BACKOFF_MIN")
    assert "dispatcher.backoff_max (6h)" in message


def test_a_dispatch_claim_timeout_beyond_the_duplicate_window_is_rejected(load: Loader) -> None:
    assert load(env={"K_DISPATCHER_CLAIM_TIMEOUT": "5m"}).dispatcher.claim_timeout.seconds == 300
    message = refusal(load, env={"K_DISPATCHER_CLAIM_TIMEOUT": "10m"})
    assert message.startswith("invalid value for dispatcher.claim_timeout")
    assert "duplicate window" in message


# ---------------------------------------------------------------------------------------------
# Config file lookup.


def test_missing_default_config_file_is_fine(load: Loader) -> None:
    assert not load.default_file.exists()
    assert load() == Settings()


def test_default_config_file_is_read_from_home(load: Loader) -> None:
    assert load(yaml_text="smtp:\n  domain: home.example\n").smtp.domain == "home.example"


@pytest.mark.parametrize("how", ["config_path", "--config", "K_CONFIG"])
def test_missing_explicit_config_file_is_an_error(load: Loader, tmp_path: Path, how: str) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        if how == "config_path":
            load(config_path=missing)
        elif how == "--config":
            load(argv=["--config", missing])
        else:
            load(env={"K_CONFIG": missing})
    assert missing in str(info.value) and "does not exist" in str(info.value)


@pytest.mark.parametrize("how", ["config_path", "--config", "K_CONFIG"])
def test_explicit_config_file_is_read(load: Loader, tmp_path: Path, how: str) -> None:
    path = tmp_path / "kannon.yaml"
    path.write_text("smtp:\n  domain: explicit.example\n", encoding="utf-8")
    load.default_file.write_text("smtp:\n  domain: default.example\n", encoding="utf-8")
    if how == "config_path":
        settings = load(config_path=str(path))
    elif how == "--config":
        settings = load(argv=["--config", str(path)])
    else:
        settings = load(env={"K_CONFIG": str(path)})
    assert settings.smtp.domain == "explicit.example"


def test_config_flag_beats_k_config(load: Loader, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("debug: true\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"b\.yaml \(from --config\) does not exist"):
        load(
            env={"K_CONFIG": str(tmp_path / "a.yaml")}, argv=["--config", str(tmp_path / "b.yaml")]
        )


def test_config_path_expands_tilde_with_given_home(load: Loader) -> None:
    (load.home / "custom.yaml").write_text("debug: yes\n", encoding="utf-8")
    assert load(config_path="~/custom.yaml").debug is True


@pytest.mark.parametrize(
    "text",
    ["api:\n  port: [1, 2\n", "api: {port: 1\n", "a: b: c\n", "\tdebug: true\n"],
    ids=["unclosed-list", "unclosed-map", "nested-colon", "tab-indent"],
)
def test_malformed_yaml_names_the_file(load: Loader, text: str) -> None:
    message = refusal(load, yaml_text=text)
    assert str(load.default_file) in message and "malformed YAML" in message and "line" in message
    assert "\n" not in message


def test_yaml_document_must_be_a_mapping(load: Loader) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load(yaml_text="- run-api\n")


def test_section_must_be_a_mapping(load: Loader) -> None:
    with pytest.raises(ConfigError, match=r"invalid value for api in config file .*mapping"):
        load(yaml_text="api: 5\n")


def test_empty_file_and_empty_sections_mean_defaults(load: Loader) -> None:
    assert load(yaml_text="# nothing yet\n") == Settings()
    assert load(yaml_text="smtp:\nsender:\n  relay:\n") == Settings()


def test_unknown_yaml_keys_warn_with_their_names_and_do_not_fail(
    load: Loader, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    settings = load(yaml_text="api:\n  prot: 1\n  port: 2\nsmtpp:\n  domain: x\nrun_api: true\n")
    assert settings.api.port == 2 and settings.run_api is False
    warnings = [r.getMessage() for r in caplog.records if "unknown keys" in r.getMessage()]
    assert len(warnings) == 1
    assert "api.prot (did you mean api.port?)" in warnings[0]
    assert "smtpp" in warnings[0]
    assert "run_api (did you mean run-api?)" in warnings[0]


def test_unknown_k_env_vars_warn_but_platform_ones_do_not(
    load: Loader, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    load(env={"K_APIPORT": "1", "K_SERVICE": "kannon", "K_REVISION": "kannon-1", "KUBE": "x"})
    warnings = [r.getMessage() for r in caplog.records if "unknown environment" in r.getMessage()]
    assert len(warnings) == 1
    assert "K_APIPORT (did you mean K_API_PORT?)" in warnings[0]
    assert "K_SERVICE" not in warnings[0] and "KUBE" not in warnings[0]


def test_example_standalone_config_loads_without_warnings(
    load: Loader, caplog: pytest.LogCaptureFixture
) -> None:
    example = Path(__file__).parents[2] / "examples" / "standalone" / "kannon.yaml"
    caplog.set_level(logging.WARNING, logger=LOGGER)
    settings = load(config_path=str(example))
    assert settings.sender.demo_sender is True
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == []


# ---------------------------------------------------------------------------------------------
# Lists.


def test_lists_from_env_are_comma_separated(load: Loader) -> None:
    settings = load(
        env={
            "K_TRACKER_TRUSTED_PROXIES": " 10.0.0.0/8 , 192.168.1.1,,fd00::/8",
            "K_SENDER_DNS_SERVERS": "127.0.0.1:5353,[::1]:53",
        }
    )
    assert settings.tracker.trusted_proxies == ("10.0.0.0/8", "192.168.1.1", "fd00::/8")
    assert settings.sender.dns_servers == ("127.0.0.1:5353", "[::1]:53")


def test_lists_from_yaml_may_be_lists_or_comma_strings(load: Loader) -> None:
    settings = load(
        yaml_text="tracker:\n  trusted_proxies: [10.0.0.1, 10.0.0.2]\n"
        "sender:\n  dns_servers: '1.1.1.1, 8.8.8.8'\n"
    )
    assert settings.tracker.trusted_proxies == ("10.0.0.1", "10.0.0.2")
    assert settings.sender.dns_servers == ("1.1.1.1", "8.8.8.8")


def test_list_from_cli_is_comma_separated(load: Loader) -> None:
    assert load(argv=["--sender-dns-servers", "1.1.1.1,9.9.9.9"]).sender.dns_servers == (
        "1.1.1.1",
        "9.9.9.9",
    )


# ---------------------------------------------------------------------------------------------
# Component selection and required keys.


def test_no_component_selected_by_default(load: Loader) -> None:
    assert load().selected_components() == []


def test_selected_components_come_in_fixed_order(load: Loader) -> None:
    settings = load(
        yaml_text="run-stats: true\n",
        env={"K_RUN_SMTP": "true"},
        argv=["--run-validator", "--run-api"],
    )
    assert settings.selected_components() == ["api", "validator", "smtp", "stats"]


def test_all_components_selected(load: Loader) -> None:
    argv = [f"--run-{name}" for name in reversed(COMPONENTS)]
    assert load(argv=argv).selected_components() == [
        "api",
        "validator",
        "dispatcher",
        "sender",
        "smtp",
        "tracker",
        "stats",
        "webhooks",
    ]


def test_require_returns_the_value_when_set(load: Loader) -> None:
    settings = load(env={"K_DATABASE_URL": "postgres://db/kannon", "K_SENDER_HOSTNAME": "mx.x"})
    assert require(settings, "database_url") == "postgres://db/kannon"
    assert require(settings, "sender.hostname") == "mx.x"


@pytest.mark.parametrize(
    ("key", "env", "flag"),
    [
        ("database_url", "K_DATABASE_URL", "--database-url"),
        ("sender.hostname", "K_SENDER_HOSTNAME", "--sender-hostname"),
        ("secret_key", "K_SECRET_KEY", "--secret-key"),
    ],
)
def test_require_names_key_env_and_flag_when_unset(
    load: Loader, key: str, env: str, flag: str
) -> None:
    settings = load(yaml_text="secret_key: ''\n")  # blank counts as unset
    with pytest.raises(ConfigError) as info:
        require(settings, key, needed_by="dispatcher")
    message = str(info.value)
    assert message.startswith(
        f"missing required setting {key} ({env} / {flag}) (needed by dispatcher)"
    )
    assert info.value.key == key


def test_require_rejects_unknown_keys() -> None:
    with pytest.raises(LookupError):
        require(Settings(), "no.such_key")


def test_environment_of_settings_reads_back_to_the_same_settings(load: Loader) -> None:
    """How standalone hands its resolved settings to the processes it starts."""
    from kannon.config import environment_of

    settings = load(
        yaml_text=(
            "database_url: postgresql://k:s3cret@db:5432/kannon\n"
            "secret_key: a-long-random-secret-value\n"
            "dispatcher:\n  idle_interval: 150ms\n  claim_timeout: 1m30s\n"
            "sender:\n  dns_servers: 127.0.0.1:5353, 10.0.0.1\n  demo_sender: true\n"
            "smtp:\n  max_payload: 2mb\n"
            "standalone:\n  processes: api,validator,dispatcher,smtp,tracker,stats,webhooks;"
            "sender\n"
            "run-api: true\n"
        )
    )
    environ = environment_of(settings)
    assert "K_RUN_API" not in environ and "K_CONFIG" not in environ
    assert environ["K_DISPATCHER_IDLE_INTERVAL"] == "150ms"
    load.default_file.unlink()  # from the environment alone
    again = load(env=environ)
    assert again == settings.model_copy(update={"run_api": False})
    assert environment_of(Settings()) == environment_of(load(env=environment_of(Settings())))
