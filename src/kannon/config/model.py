"""The Settings model: every configuration key, its type, default, range and description.

This module is the single source of truth for the key set. Key paths, env var names, CLI flags
and the README table are all derived from the pydantic fields declared here (see
:func:`iter_keys`), so adding a field is all it takes to add a key everywhere.

Field defaults are written in the syntax an operator would type ("10s", "1024kb") and validated
like any other input (``validate_default``), so the displayed default and the effective default
cannot drift apart.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, model_validator
from pydantic.fields import FieldInfo

from kannon.config.values import (
    format_duration,
    parse_bool,
    parse_dns_server,
    parse_duration,
    parse_int,
    parse_list,
    parse_listen_address,
    parse_size,
    show_value,
)
from kannon.model.ip_pool import DEFAULT_POOL, check_pool_name
from kannon.model.shaping import Rule, parse_rules

COMPONENTS: tuple[str, ...] = (
    "api",
    "validator",
    "dispatcher",
    "sender",
    "smtp",
    "tracker",
    "stats",
    "webhooks",
)
"""Component names in the fixed order they are started by ``selected_components``."""


@dataclass(frozen=True)
class Kind:
    """Display type of a key (the README's "Type" column); ``bool`` keys become store_true flags."""

    name: str


class CrossKeyError(ValueError):
    """A cross-field problem blamed on one key (carried through pydantic's ValidationError)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------------------------------------
# Validators. Each accepts the raw value (str from env/CLI, any YAML scalar) AND its own output,
# because the loader validates every value once per source and then once more inside Settings.


def _int_in(lo: int, hi: int | None = None) -> Callable[[object], int]:
    def check(value: object) -> int:
        number = parse_int(value)
        if number < lo or (hi is not None and number > hi):
            bounds = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
            raise ValueError(f"{show_value(value)} is out of range (must be {bounds})")
        return number

    return check


def _positive_duration(value: object) -> timedelta:
    duration = parse_duration(value)
    if duration <= timedelta(0):
        raise ValueError(f"{show_value(value)} is not a positive duration (use e.g. 10s, 1m30s)")
    return duration


def _optional_duration(value: object) -> timedelta | None:
    # Empty means unset, as for text: the value is then derived from others.
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _positive_duration(value)


def _positive_size(value: object) -> int:
    size = parse_size(value)
    if size < 1:
        raise ValueError(f"{show_value(value)} is not a positive size (use e.g. 1024kb, 64mb)")
    return size


def _text(value: object) -> str:
    # YAML turns `domain: 1234` into an int; that is still text to us. A YAML boolean is not:
    # `hostname: yes` is almost certainly a mistake.
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{show_value(value)} is not a string")


def _optional_text(value: object) -> str | None:
    # Empty means unset: `K_API_ADMIN_TOKEN=` or `secret_key: ""` must not become a blank secret.
    if value is None:
        return None
    text = _text(value)
    return text if text.strip() else None


def _choice(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ValueError(f"{show_value(value)} is not one of {', '.join(choices)}")

    return check


def _optional_mailbox(value: object) -> str | None:
    text = _optional_text(value)
    if text is None:
        return None
    text = text.strip()
    local, at, domain = text.rpartition("@")
    if (
        not at
        or not local
        or "." not in domain
        or any(ch.isspace() or ch in "<>@" for ch in local + domain)
    ):
        raise ValueError(f"{show_value(value)} is not an email address (local@domain)")
    return text.lower()


def _path(value: object) -> Path:
    if isinstance(value, Path):
        return value
    text = _text(value).strip()
    if not text:
        raise ValueError(f"{show_value(value)} is not a path")
    return Path(os.path.expanduser(text))


def _listen_address(value: object) -> str:
    text = _text(value).strip()
    parse_listen_address(text)
    return text


def _http_url(value: object) -> str:
    text = _text(value).strip().rstrip("/")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or " " in rest:
        raise ValueError(f"{show_value(value)} is not an http(s) URL")
    return text


def _dns_servers(value: object) -> tuple[str, ...]:
    servers = parse_list(value)
    for server in servers:
        parse_dns_server(server)
    return servers


def _networks(value: object) -> tuple[str, ...]:
    networks = parse_list(value)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"{show_value(network)} is not an IP address or CIDR") from None
    return networks


def _pool_name(value: object) -> str:
    return check_pool_name(_text(value).strip().lower())


def _pool_names(value: object) -> tuple[str, ...]:
    names = tuple(name.lower() for name in parse_list(value))
    for name in names:
        check_pool_name(name)
    return names


def _optional_ip(value: object) -> str | None:
    text = _optional_text(value)
    if text is None:
        return None
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"{show_value(value)} is not an IP address") from None


# ---------------------------------------------------------------------------------------------
# Value types. Ports a server listens on accept 0 (the OS picks a free port — tests rely on it);
# ports Kannon connects to do not.

ListenPort = Annotated[int, BeforeValidator(_int_in(0, 65535)), Kind("port")]
RemotePort = Annotated[int, BeforeValidator(_int_in(1, 65535)), Kind("port")]
Count = Annotated[int, BeforeValidator(_int_in(1)), Kind("int")]
OptionalCount = Annotated[int, BeforeValidator(_int_in(0)), Kind("int")]  # 0 = off
Replicas = Annotated[int, BeforeValidator(_int_in(1, 5)), Kind("int")]  # JetStream's maximum
Workers = Annotated[int, BeforeValidator(_int_in(0, 64)), Kind("int")]  # 0 = none, work inline
Duration = Annotated[timedelta, BeforeValidator(_positive_duration), Kind("duration")]
OptionalDuration = Annotated[
    timedelta | None, BeforeValidator(_optional_duration), Kind("duration")
]
Size = Annotated[int, BeforeValidator(_positive_size), Kind("size")]
Bool = Annotated[bool, BeforeValidator(parse_bool), Kind("bool")]
Text = Annotated[str, BeforeValidator(_text), Kind("string")]
OptionalText = Annotated[str | None, BeforeValidator(_optional_text), Kind("string")]
OptionalMailbox = Annotated[str | None, BeforeValidator(_optional_mailbox), Kind("email")]
DataPath = Annotated[Path, BeforeValidator(_path), Kind("path")]
ListenAddress = Annotated[str, BeforeValidator(_listen_address), Kind("address")]
HttpUrl = Annotated[str, BeforeValidator(_http_url), Kind("url")]
DnsServers = Annotated[tuple[str, ...], BeforeValidator(_dns_servers), Kind("list")]
Networks = Annotated[tuple[str, ...], BeforeValidator(_networks), Kind("list")]


def _shaping_rules(value: object) -> tuple[Rule, ...]:
    return parse_rules(value)


ShapingRules = Annotated[tuple[Rule, ...], BeforeValidator(_shaping_rules), Kind("rules")]
PoolName = Annotated[str, BeforeValidator(_pool_name), Kind("string")]
PoolNames = Annotated[tuple[str, ...], BeforeValidator(_pool_names), Kind("list")]
OptionalIp = Annotated[str | None, BeforeValidator(_optional_ip), Kind("ip")]
EventLoopChoice = Annotated[
    Literal["auto", "uvloop", "asyncio"],
    BeforeValidator(_choice("auto", "uvloop", "asyncio")),
    Kind("auto|uvloop|asyncio"),
]
RelayTLS = Annotated[
    Literal["starttls", "tls", "none"],
    BeforeValidator(_choice("starttls", "tls", "none")),
    Kind("starttls|tls|none"),
]

_SHOWN = "kannon_shown_default"


def _key(
    default: object,
    description: str,
    *,
    shown: str | None = None,
    yaml_name: str | None = None,
    secret: bool = False,
) -> Any:
    """Declare a key. Returns Any so a default in operator syntax ("10s") type-checks."""
    return Field(
        default,
        description=description,
        # validation_alias, not alias: with `alias` type checkers would demand `run-api=` as the
        # constructor keyword; this way `Settings(run_api=True)` stays valid Python.
        validation_alias=yaml_name,
        # Secrets and DSNs (which embed passwords) stay out of repr() and therefore out of logs.
        repr=not secret,
        json_schema_extra={_SHOWN: shown} if shown is not None else None,
    )


class _Section(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_default=True,
        validate_by_name=True,
        validate_by_alias=True,
    )


class HealthSettings(_Section):
    """Per-process liveness/metrics HTTP server."""

    port: ListenPort = _key(9090, "HTTP port serving /healthz and /metrics (0 = any free port)")
    host: Text = _key("0.0.0.0", "Listen address of the health/metrics server")


class ApiSettings(_Section):
    """gRPC API (Mailer, Admin, Stats)."""

    port: ListenPort = _key(50051, "gRPC API port")
    host: Text = _key("0.0.0.0", "gRPC API listen address (also of api.http_port)")
    http_port: ListenPort = _key(
        50052, "Connect and gRPC-Web API port (HTTP/1.1; JSON or binary; same services)"
    )
    admin_token: OptionalText = _key(
        None, "Token guarding the Admin API (domains, templates, API keys)", secret=True
    )
    max_message_size: Size = _key(
        "64mb", "Max gRPC request size, attachments and all recipients included"
    )
    max_recipients: Count = _key(100000, "Max recipients in one send request")
    max_concurrent_rpcs: Count = _key(
        64, "Calls the API serves at once; more are refused at once with RESOURCE_EXHAUSTED"
    )
    idempotency_window: Duration = _key(
        "24h", "How long a send's idempotency-key answers repeats with the first response"
    )


class RelaySettings(_Section):
    """Optional smarthost all outgoing mail is handed to instead of the recipients' MX."""

    host: OptionalText = _key(None, "Relay (smarthost) for all outgoing mail; unset = direct MX")
    port: RemotePort = _key(587, "Relay port")
    username: OptionalText = _key(None, "Relay username (unset = no authentication)")
    password: OptionalText = _key(None, "Relay password", secret=True)
    tls: RelayTLS = _key("starttls", "TLS mode for the relay connection")


class MtaStsSettings(_Section):
    """MTA-STS (RFC 8461) for direct MX delivery (ADR 0042)."""

    enabled: Bool = _key(
        False, "Honour recipient domains' MTA-STS policies (enforce defers, testing logs)"
    )
    ca_file: OptionalText = _key(
        None, "PEM CA bundle trusted for MTA-STS policy hosts and MX certificates (unset = system)"
    )
    policy_port: RemotePort = _key(443, "Port of the https://mta-sts.<domain> policy hosts")


class ShapingSettings(_Section):
    """Per-destination limits shared by every sender, and adaptive backoff (ADR 0037, 0038)."""

    destinations: ShapingRules = _key(
        (),
        "Per-destination limits, `;`-separated `MATCH: connections=N per_connection=N "
        "per_second=N per_hour=N` (MATCH: a recipient domain, an MX host suffix such as "
        ".google.com, or default); empty = no limits",
    )
    backoff: Bool = _key(
        False,
        "Adaptive backoff: a 4xx answer or a connection failure halves the destination's "
        "limits and pauses it; sustained success restores them",
    )
    pause: Duration = _key("1m", "First pause of a destination in trouble (doubles per step)")
    max_pause: Duration = _key("30m", "Longest pause of a destination in trouble")
    restore_after: Count = _key(
        50, "Deliveries in a row that take a backed-off destination one step back up"
    )
    max_defer: Duration = _key(
        "6h",
        "How long an Envelope may wait for its destination; after that a deferral counts as a "
        "failed attempt (the retry budget then decides)",
    )


class SenderSettings(_Section):
    """Outbound SMTP sender."""

    hostname: OptionalText = _key(
        None, "Hostname for outgoing mail (HELO/EHLO name)", shown="(required by sender)"
    )
    max_jobs: Count = _key(10, "Max parallel sending jobs")
    demo_sender: Bool = _key(False, "Demo mode: process deliveries without sending any mail")
    dns_servers: DnsServers = _key(
        (), "DNS servers for MX lookups, ip[:port] comma-separated (empty = system resolver)"
    )
    smtp_port: RemotePort = _key(25, "Port of the recipients' MX servers")
    connect_timeout: Duration = _key("15s", "Timeout connecting to a remote SMTP server")
    command_timeout: Duration = _key("60s", "Timeout of each command to a remote SMTP server")
    # ADR 0049: below what a live handling can take, duplicates during elections come back;
    # above it, a dead sender's Envelopes wait longer before they are sent again.
    claim_lifetime: OptionalDuration = _key(
        None,
        "Age after which a send-guard claim with no outcome is taken for a dead sender's and "
        "its Envelope sent again; a copy finding a younger claim waits",
        shown="(nats.sending_ack_wait + ~68s)",
    )
    pool: PoolName = _key(
        DEFAULT_POOL, "IP pool this sender node sends for (its Domains' and Batches' Envelopes)"
    )
    source_address: OptionalIp = _key(
        None, "Local IP address outgoing SMTP connections are bound to (unset = the OS picks)"
    )
    relay: RelaySettings = Field(default_factory=RelaySettings)
    mta_sts: MtaStsSettings = Field(default_factory=MtaStsSettings)
    shaping: ShapingSettings = Field(default_factory=ShapingSettings)


class SmtpSettings(_Section):
    """Inbound SMTP server receiving DSNs/bounces."""

    address: ListenAddress = _key(
        ":25", "SMTP server listen address, host:port (empty host = all interfaces)"
    )
    domain: Text = _key("localhost", "SMTP server domain")
    read_timeout: Duration = _key("10s", "SMTP read timeout")
    write_timeout: Duration = _key("10s", "SMTP write timeout")
    max_payload: Size = _key("1024kb", "Max SMTP message size")
    max_recipients: Count = _key(50, "Max recipients per SMTP message")
    max_sessions: Count = _key(
        100, "Max concurrent SMTP sessions; more are answered 421 and closed"
    )
    max_session_time: Duration = _key(
        "10m", "Longest an SMTP session may last in all (a slow client is closed with 421)"
    )
    feedback_address: OptionalMailbox = _key(
        None,
        "Address that also accepts ARF complaint reports (mailbox providers' feedback loops); "
        "unset = complaints only at the bounce addresses",
    )


class TrackerSettings(_Section):
    """Open/click tracking HTTP server."""

    port: ListenPort = _key(8080, "Open/click tracking HTTP server port")
    host: Text = _key("0.0.0.0", "Tracking server listen address")
    base_url: HttpUrl = _key(
        "https://stats.{domain}", "Public base URL of tracking links ({domain} = sender domain)"
    )
    trusted_proxies: Networks = _key(
        (), "Proxies (IPs/CIDRs, comma-separated) whose X-Forwarded-For is trusted"
    )
    token_ttl: Duration = _key("2160h", "How long open/click tracking links stay valid")


class StatsSettings(_Section):
    """Stats event persistence."""

    retention: Duration = _key("8760h", "How long stats events are kept")
    cleanup_interval: Duration = _key("10m", "How often stats older than the retention are deleted")
    metrics_domain_label: Bool = _key(
        False,
        "Label kannon_deliveries_total by Domain (one series per Domain and outcome: "
        "keep off with many Domains)",
    )


class WebhooksSettings(_Section):
    """Outcome webhooks: signed POSTs of every outcome event to each Domain's endpoints."""

    allow_http: Bool = _key(False, "Allow http:// endpoint URLs (https only otherwise)")
    allow_private: Bool = _key(
        False,
        "Allow endpoints on loopback, private, link-local and metadata addresses (tests only)",
    )
    timeout: Duration = _key("10s", "Time limit of one POST to an endpoint, answer included")
    retry_window: Duration = _key("24h", "How long a failing event is retried before giving up")
    backoff_min: Duration = _key("5s", "Delay before the first retry; doubles per attempt")
    backoff_max: Duration = _key("1h", "Longest delay between two attempts")
    endpoint_concurrency: Count = _key(
        8, "POSTs in flight at once to one endpoint (per webhooks process)"
    )
    retention: Duration = _key("168h", "How long deliveries and attempts are kept for listing")
    idle_interval: Duration = _key("200ms", "Poll interval for due retries while idle")

    @model_validator(mode="after")
    def _backoff_bounds_ordered(self) -> WebhooksSettings:
        if self.backoff_min > self.backoff_max:
            raise CrossKeyError(
                "webhooks.backoff_min",
                f"{format_duration(self.backoff_min)} is greater than webhooks.backoff_max "
                f"({format_duration(self.backoff_max)})",
            )
        return self


class SuppressionSettings(_Section):
    """The suppression list (ADR 0027)."""

    soft_bounce_limit: OptionalCount = _key(
        0,
        "Soft bounces of one address within suppression.soft_bounce_window that suppress it "
        "(0 = off: soft bounces never suppress)",
    )
    soft_bounce_window: Duration = _key(
        "168h", "Window in which soft bounces count towards suppression.soft_bounce_limit"
    )


class ValidatorSettings(_Section):
    """Recipient validation worker."""

    batch_size: Count = _key(500, "Deliveries the validator claims per batch")
    # 200 ms: a lone mail waits ~0.1 s on average for each of the two pollers (validator,
    # dispatcher), for ~10 short index scans a second at idle.
    idle_interval: Duration = _key("200ms", "Validator poll interval while the pool is empty")
    claim_timeout: Duration = _key("5m", "Age after which an unfinished validator claim is retaken")


MAX_DISPATCH_CLAIM_TIMEOUT = timedelta(minutes=5)


class DispatcherSettings(_Section):
    """Dispatcher: builds Envelopes and schedules retries."""

    batch_size: Count = _key(500, "Deliveries the dispatcher claims per batch")
    idle_interval: Duration = _key("200ms", "Dispatcher poll interval while nothing is due")
    build_workers: Workers = _key(
        1, "Processes building and signing Envelopes beside the event loop (0 = in the loop)"
    )
    # A reclaimed claim is dispatched again under the same Nats-Msg-Id, which the stream drops
    # as a duplicate only inside its 10-minute window: the timeout stays well within it (ADR 0025).
    claim_timeout: Duration = _key(
        "1m",
        "Age after which a dispatch claim not yet published is retaken (at most 5m)",
    )
    retry_window: Duration = _key("24h", "How long a delivery is retried before it fails")
    backoff_base: Duration = _key("2m", "Base delay of the exponential retry backoff")
    backoff_min: Duration = _key("5m", "Shortest delay before a retry")
    backoff_max: Duration = _key("6h", "Longest delay before a retry")

    @model_validator(mode="after")
    def _claim_timeout_inside_duplicate_window(self) -> DispatcherSettings:
        if self.claim_timeout > MAX_DISPATCH_CLAIM_TIMEOUT:
            raise CrossKeyError(
                "dispatcher.claim_timeout",
                f"{format_duration(self.claim_timeout)} is above the limit of "
                f"{format_duration(MAX_DISPATCH_CLAIM_TIMEOUT)} (a reclaimed claim relies on the "
                "stream's 10-minute duplicate window)",
            )
        return self

    @model_validator(mode="after")
    def _backoff_bounds_ordered(self) -> DispatcherSettings:
        if self.backoff_min > self.backoff_max:
            raise CrossKeyError(
                "dispatcher.backoff_min",
                f"{format_duration(self.backoff_min)} is greater than dispatcher.backoff_max "
                f"({format_duration(self.backoff_max)})",
            )
        return self


def _bus_payload(value: object) -> int:
    size = _positive_size(value)
    if size > 64 * 1024 * 1024:
        raise ValueError(f"{show_value(value)} is over 64mb, the most nats-server accepts")
    return size


BusPayload = Annotated[int, BeforeValidator(_bus_payload), Kind("size")]


class NatsSettings(_Section):
    """JetStream streams and consumers."""

    max_payload: BusPayload = _key(
        "1mb",
        "Largest message the NATS server carries (its max_payload): Batches whose Envelopes "
        "would be larger are refused at intake; standalone's nats-server uses it",
    )

    stream_replicas: Replicas = _key(1, "Replicas of the JetStream streams (1..5)")
    ack_wait: Duration = _key("30s", "Ack deadline of the stats event consumers")
    max_deliver: Count = _key(
        100,
        "Failed handlings after which a message goes to the dead-letter stream "
        "(outages are retried without limit)",
    )
    sending_ack_wait: Duration = _key(
        "5m", "Ack deadline of the sending consumer (must outlast an SMTP transaction)"
    )


def _process_groups(value: object) -> str:
    """`auto`, or groups of Component names: `api,stats;sender` (each Component exactly once)."""
    text = _text(value).strip()
    if text == "auto":
        return text
    groups = parse_process_groups(text)
    seen = [name for group in groups for name in group]
    unknown = sorted(set(seen) - set(COMPONENTS))
    if unknown:
        raise ValueError(
            f"unknown component(s) {', '.join(unknown)}; known: {', '.join(COMPONENTS)}"
        )
    twice = sorted({name for name in seen if seen.count(name) > 1})
    if twice:
        raise ValueError(f"component(s) {', '.join(twice)} in more than one group")
    missing = [name for name in COMPONENTS if name not in seen]
    if missing:
        raise ValueError(f"component(s) {', '.join(missing)} in no group")
    return ";".join(",".join(group) for group in groups)


def parse_process_groups(text: str) -> list[list[str]]:
    """`a,b;c` → [["a", "b"], ["c"]] (spaces ignored); empty groups are refused."""
    groups = [
        [name.strip() for name in part.split(",") if name.strip()] for part in text.split(";")
    ]
    if not groups or any(not group for group in groups):
        raise ValueError(
            "empty process group: write groups of component names, e.g. api,stats;sender"
        )
    return groups


ProcessGroups = Annotated[str, BeforeValidator(_process_groups), Kind("groups")]


class StandaloneSettings(_Section):
    """How `kannon standalone` lays its Components out over processes."""

    processes: ProcessGroups = _key(
        "auto",
        "Standalone's processes: auto (by core count) or ';'-separated groups of Components, "
        "e.g. api,validator,dispatcher,smtp,tracker,stats,webhooks;sender (the first runs in the "
        "standalone process itself)",
    )


class DkimSettings(_Section):
    """DKIM keys of the Domains."""

    rotation_grace: Duration = _key(
        "48h",
        "How long a replaced DKIM key keeps signing beside its confirmed successor "
        "(resolvers that cached the new selector's absence catch up meanwhile)",
    )


class Settings(_Section):
    """All of Kannon's configuration, immutable once loaded (see ``load_settings``)."""

    database_url: OptionalText = _key(
        None, "PostgreSQL connection string", shown="(required)", secret=True
    )
    nats_url: OptionalText = _key(
        None,
        "NATS server URL, or several comma-separated (a cluster's nodes; standalone embeds its "
        "own)",
        shown="(required)",
        secret=True,
    )
    debug: Bool = _key(False, "Enable debug logging")
    event_loop: EventLoopChoice = _key(
        "auto",
        "Event loop of every process: uvloop (less CPU per Delivery), asyncio, or auto (uvloop "
        "when installed)",
    )
    ip_pools: PoolNames = _key(
        (),
        "IP pools besides `default` that Domains and Batches may name (API and dispatcher); "
        "a pool with no sender node queues its mail",
    )
    data_dir: DataPath = _key(
        "~/.local/share/kannon", "Standalone mode's data directory (embedded NATS store, secrets)"
    )
    secret_key: OptionalText = _key(
        None,
        "HMAC secret for bounce addresses (standalone generates one)",
        shown="(required by dispatcher, smtp)",
        secret=True,
    )
    health: HealthSettings = Field(default_factory=HealthSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    sender: SenderSettings = Field(default_factory=SenderSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    tracker: TrackerSettings = Field(default_factory=TrackerSettings)
    stats: StatsSettings = Field(default_factory=StatsSettings)
    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    suppression: SuppressionSettings = Field(default_factory=SuppressionSettings)
    validator: ValidatorSettings = Field(default_factory=ValidatorSettings)
    dispatcher: DispatcherSettings = Field(default_factory=DispatcherSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    standalone: StandaloneSettings = Field(default_factory=StandaloneSettings)
    dkim: DkimSettings = Field(default_factory=DkimSettings)
    run_api: Bool = _key(False, "Run the gRPC API server", yaml_name="run-api")
    run_smtp: Bool = _key(False, "Run the inbound SMTP (bounce) server", yaml_name="run-smtp")
    run_sender: Bool = _key(False, "Run the outbound SMTP sender", yaml_name="run-sender")
    run_dispatcher: Bool = _key(False, "Run the dispatcher worker", yaml_name="run-dispatcher")
    run_validator: Bool = _key(False, "Run the validator worker", yaml_name="run-validator")
    run_tracker: Bool = _key(False, "Run the open/click tracker", yaml_name="run-tracker")
    run_stats: Bool = _key(False, "Run the stats worker", yaml_name="run-stats")
    run_webhooks: Bool = _key(False, "Run the outcome webhooks worker", yaml_name="run-webhooks")

    def known_pools(self) -> tuple[str, ...]:
        """Every IP pool a Domain or Batch may name: `default` and `ip_pools`."""
        return (DEFAULT_POOL, *(p for p in self.ip_pools if p != DEFAULT_POOL))

    def selected_components(self) -> list[str]:
        """Names of the components whose run-* key is true, in :data:`COMPONENTS` order."""
        return [name for name in COMPONENTS if getattr(self, f"run_{name}")]

    def value_of(self, key: str) -> Any:
        """The value of a dotted key path, e.g. ``settings.value_of("smtp.read_timeout")``."""
        spec = key_specs().get(key)
        if spec is None:
            raise LookupError(f"unknown configuration key {key!r}")
        node: Any = self
        for attr in spec.attrs:
            node = getattr(node, attr)
        return node


# ---------------------------------------------------------------------------------------------
# Key metadata derived from the model.


class KeyInfo(NamedTuple):
    """One configuration key as documented to operators (one row of the README table)."""

    key: str
    """Dotted key path as written in YAML: ``smtp.read_timeout``, ``run-api``."""
    env: str
    """Environment variable: ``K_SMTP_READ_TIMEOUT``."""
    flag: str
    """CLI flag: ``--smtp-read-timeout``."""
    type_name: str
    """Display type: string, int, bool, port, duration, size, list, path, url, address, ..."""
    default: str
    """Default as displayed: ``10s``, ``false``, ``(required)``, ``(unset)``, ``(empty)``."""
    description: str


@dataclass(frozen=True)
class KeySpec:
    """Loader-side view of a key: its KeyInfo plus how to reach and validate it."""

    info: KeyInfo
    attrs: tuple[str, ...]
    """Python attribute path from Settings: ("smtp", "read_timeout")."""
    dest: str
    """argparse dest of the key's flag: ``smtp_read_timeout``."""
    adapter: TypeAdapter[Any]
    """Validates one value of this key in isolation (type, syntax and range)."""

    @property
    def is_bool(self) -> bool:
        return self.info.type_name == "bool"


def env_name(key: str) -> str:
    """K_ + upper-cased key path with "." and "-" turned into "_": run-api → K_RUN_API."""
    return "K_" + key.upper().replace(".", "_").replace("-", "_")


def flag_name(key: str) -> str:
    """-- + key path with "." and "_" turned into "-": smtp.max_payload → --smtp-max-payload."""
    return "--" + key.replace(".", "-").replace("_", "-")


def _shown_default(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get(_SHOWN), str):
        return str(extra[_SHOWN])
    default = field.default
    if isinstance(default, bool):
        return "true" if default else "false"
    if default is None:
        return "(unset)"
    if isinstance(default, tuple) and not default:
        return "(empty)"
    return str(default)


def _walk(
    model: type[BaseModel], prefix: str, attrs: tuple[str, ...]
) -> Iterator[tuple[str, tuple[str, ...], FieldInfo]]:
    for name, field in model.model_fields.items():
        segment = field.validation_alias if isinstance(field.validation_alias, str) else name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _walk(annotation, f"{prefix}{segment}.", (*attrs, name))
        else:
            yield f"{prefix}{segment}", (*attrs, name), field


@functools.cache
def key_specs() -> dict[str, KeySpec]:
    """Every leaf key of Settings in declaration order, keyed by dotted key path."""
    specs: dict[str, KeySpec] = {}
    for key, attrs, field in _walk(Settings, "", ()):
        kinds = [item for item in field.metadata if isinstance(item, Kind)]
        if len(kinds) != 1 or not field.description:
            raise TypeError(f"config key {key} needs exactly one Kind and a description")
        flag = flag_name(key)
        info = KeyInfo(
            key=key,
            env=env_name(key),
            flag=flag,
            type_name=kinds[0].name,
            default=_shown_default(field),
            description=field.description,
        )
        # The field's type with its validators/constraints re-attached, to check one value alone.
        annotated: Any = Annotated[(field.annotation, *field.metadata)]
        adapter: TypeAdapter[Any] = TypeAdapter(annotated)
        specs[key] = KeySpec(
            info=info, attrs=attrs, dest=flag[2:].replace("-", "_"), adapter=adapter
        )
    return specs


def iter_keys() -> Iterator[KeyInfo]:
    """Every configuration key (README table order): path, env var, flag, type, default, text."""
    for spec in key_specs().values():
        yield spec.info
