"""Fleet mode for tests: the seven Components as seven OS processes, as containers run them.

Each process gets the command line its image's ENTRYPOINT + CMD give it (`kannon --run-<c>
--config /etc/kannon/kannon.yaml`, see services/Dockerfile), with the pieces a deployment adds:

* a shared `kannon.yaml` (the ConfigMap / compose's kannon.yaml): nats_url, sender hostname,
  tracker base URL, short poll intervals;
* the secrets as `K_` variables (the Secret): K_DATABASE_URL, K_API_ADMIN_TOKEN, K_SECRET_KEY
  (the dispatcher signs bounce addresses with the key the smtp server verifies them with);
* flags: its own listen ports (all processes share one host here) and the test's settings, the
  same for every process: the sender's DNS server (dnsmasq, serving the MX of the recipients'
  domain) and remote SMTP port (the sink's), tiny dispatcher backoff, and whatever a test adds.

`Fleet.start` waits until every process answers `/healthz` with 200; `Fleet.stop` sends SIGTERM
to all of them at once and records each exit code and how long it took. Each process writes its
output to its own log file; `Fleet.report()` prints them all (the fixture does so at teardown, so
pytest shows them when a test fails).

Every wait here is bounded and polls for a condition; the sink and the test share the event loop,
so nothing blocks it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kannon.config import COMPONENTS
from kannon.runtime.processes import ChildProcess, free_port, start_child
from tests.peers.dns import DnsServer

BIN = Path(sys.executable).parent
KANNON = str(BIN / "kannon")
BUF = str(BIN / "buf")

TENANT = "tenant.test"
SENDER_EMAIL = f"news@{TENANT}"
SENDER_ALIAS = "Tenant News"
RCPT_DOMAIN = "example.test"
MX_HOST = "mx.example.test"
SENDER_HOSTNAME = "sender.kannon.test"
ADMIN_TOKEN = "fleet-operator-token"
SECRET = "fleet-bounce-secret-0123456789abcdef"
TRACKER_BASE = "https://track.{domain}"
# The supervisor's grace period (kannon.app.run_components): after SIGTERM, in-flight work may
# take this long before stragglers are cancelled. A process must be gone by then.
GRACE = 30.0
TERMINAL = ("rejected", "delivered", "bounced", "failed")

# The README's calls (the services' documented names; the server also has the original's).
CREATE_DOMAIN = "kannon.admin.apiv1.AdminApiV1Service/CreateDomain"
CREATE_API_KEY = "kannon.admin.apiv1.AdminApiV1Service/CreateAPIKey"
SEND_HTML = "kannon.mailer.apiv1.MailerApiV1Service/SendHTML"
GET_STATS = "kannon.stats.apiv1.StatsApiV1Service/GetStats"
ADMIN_AUTH = f"Bearer {ADMIN_TOKEN}"

# Retries come due a microsecond after a failure, through the real flags.
SMALL_BACKOFF = {
    "--dispatcher-backoff-base": "1us",
    "--dispatcher-backoff-min": "1us",
    "--dispatcher-backoff-max": "1us",
}


class FleetError(AssertionError):
    """A fleet process misbehaved (exited early, never became healthy, ignored SIGTERM)."""


async def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP/1.1 GET; (status, body). Small and dependency-free, for /healthz and the tracker."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        # A server still starting (or going) may close without a word: not an answer yet.
        raise ValueError(f"not an HTTP answer: {raw[:80]!r}")
    return int(status_line[1]), body


def add_recipient_dns(dns: DnsServer) -> None:
    """`example.test` → MX `mx.example.test` → 127.0.0.1 (the sink's address)."""
    dns.add_mx(RCPT_DOMAIN, MX_HOST, 10)
    dns.add_host(MX_HOST, "127.0.0.1")


@dataclass
class FleetProcess:
    """One Component in its own OS process."""

    component: str
    argv: list[str]
    env: dict[str, str]
    health_port: int
    log_path: Path
    child: ChildProcess | None = None
    exit_code: int | None = None
    stop_seconds: float | None = None
    """Seconds from SIGTERM to exit (None until stopped by `terminate`)."""

    def start(self) -> None:
        self.child = start_child(f"kannon-{self.component}", self.argv, self.log_path, env=self.env)

    @property
    def popen(self) -> Any:
        if self.child is None:
            raise FleetError(f"{self.component} was never started")
        return self.child.popen

    @property
    def pid(self) -> int:
        pid: int = self.popen.pid
        return pid

    def alive(self) -> bool:
        return self.child is not None and self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def health(self) -> tuple[int, dict[str, Any]]:
        status, body = await http_get("127.0.0.1", self.health_port, "/healthz")
        return status, json.loads(body) if body else {}

    async def metrics(self) -> str:
        status, body = await http_get("127.0.0.1", self.health_port, "/metrics")
        assert status == 200, f"{self.component} /metrics answered {status}"
        return body.decode()

    async def wait_healthy(self, timeout: float = 60.0) -> dict[str, Any]:
        """Poll /healthz until 200; fail at once (with the output) if the process exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: object = "no answer"
        while loop.time() < deadline:
            if not self.alive():
                raise FleetError(
                    f"{self.component} exited with {self.popen.returncode} before it was "
                    f"healthy:\n{self.output()}"
                )
            try:
                status, body = await self.health()
            except (OSError, TimeoutError, ValueError) as exc:
                last = repr(exc)
            else:
                if status == 200:
                    return body
                last = (status, body)
            await asyncio.sleep(0.1)
        raise FleetError(
            f"{self.component} not healthy after {timeout}s (last: {last}):\n{self.output()}"
        )

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the process is gone, or None if it is still running at `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            code: int | None = self.popen.poll()
            if code is not None or loop.time() >= deadline:
                return code
            await asyncio.sleep(0.05)

    async def terminate(self, grace: float = GRACE) -> int:
        """SIGTERM; record the exit code and the time it took. A process still running after
        `grace` (+ a margin for the supervisor's own cancel step) is SIGKILLed and reported."""
        started = time.monotonic()
        self.signal(signal.SIGTERM)
        code = await self.wait_exit(grace + 10)
        self.stop_seconds = time.monotonic() - started
        if code is None:
            self.signal(signal.SIGKILL)
            code = await self.wait_exit(10)
            self.exit_code = code
            raise FleetError(f"{self.component} ignored SIGTERM for {grace + 10}s; killed")
        self.exit_code = code
        return code

    async def kill(self) -> int:
        """SIGKILL, as an OOM kill or a node failure would: no drain, no goodbye."""
        self.signal(signal.SIGKILL)
        code = await self.wait_exit(10)
        if code is None:
            raise FleetError(f"{self.component} survived SIGKILL for 10s")
        self.exit_code = code
        return code


@dataclass
class Fleet:
    workdir: Path
    database_url: str
    nats_url: str
    dns: DnsServer
    sink_port: int
    options: dict[str, str] = field(default_factory=dict)
    """Flags given to every process (after the shared ones), e.g. {"--sender-max-jobs": "8"}."""
    api_port: int = 0
    api_http_port: int = 0
    tracker_port: int = 0
    smtp_port: int = 0
    processes: dict[str, FleetProcess] = field(default_factory=dict)
    retired: list[FleetProcess] = field(default_factory=list)
    """Processes replaced by `replace` (killed ones), kept for the report."""
    flags: dict[str, dict[str, str]] = field(default_factory=dict)
    """Flags of one named process only (e.g. a sender node of an IP pool), by process name."""

    # -- configuration ---------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.workdir / "kannon.yaml"

    def write_config(self) -> None:
        """The shared kannon.yaml, as a ConfigMap would mount it (no secrets, no run-* keys)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "\n".join(
                [
                    "# Shared by every fleet process (tests/fleet/fleet.py).",
                    f"nats_url: {self.nats_url}",
                    "debug: false",
                    "sender:",
                    f"  hostname: {SENDER_HOSTNAME}",
                    "tracker:",
                    f"  base_url: {TRACKER_BASE}",
                    "validator:",
                    "  idle_interval: 20ms",
                    "dispatcher:",
                    "  idle_interval: 20ms",
                    "webhooks:",  # the test's receiver listens on loopback, plain HTTP
                    "  allow_http: true",
                    "  allow_private: true",
                    "  idle_interval: 50ms",
                    "",
                ]
            ),
            encoding="utf-8",
        )

    def env(self) -> dict[str, str]:
        """The process environment: ours minus any K_ variable, plus the secrets."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("K_")}
        env["HOME"] = str(self.workdir)  # no ~/.kannon.yaml from the machine
        env["K_DATABASE_URL"] = self.database_url
        env["K_API_ADMIN_TOKEN"] = ADMIN_TOKEN
        env["K_SECRET_KEY"] = SECRET
        return env

    def argv(self, component: str, health_port: int) -> list[str]:
        argv = [KANNON, f"--run-{component}", "--config", str(self.config_path)]
        argv += ["--health-host", "127.0.0.1", "--health-port", str(health_port)]
        if component == "api":
            argv += ["--api-host", "127.0.0.1", "--api-port", str(self.api_port)]
            argv += ["--api-http-port", str(self.api_http_port)]
        elif component == "tracker":
            argv += ["--tracker-host", "127.0.0.1", "--tracker-port", str(self.tracker_port)]
        elif component == "smtp":
            argv += ["--smtp-address", f"127.0.0.1:{self.smtp_port}"]
        shared = {
            "--sender-dns-servers": self.dns.address,
            "--sender-smtp-port": str(self.sink_port),
            **SMALL_BACKOFF,
            **self.options,
        }
        for flag, value in shared.items():
            argv += [flag, value]
        return argv

    # -- lifecycle -------------------------------------------------------------------------

    def spawn(
        self, component: str, *, name: str | None = None, flags: Mapping[str, str] | None = None
    ) -> FleetProcess:
        """Start `component` in a new process (same command line as its predecessor, if any).
        A second process of a Component gets a `name` of its own (its key in `processes`) and
        may get `flags` of its own, e.g. a sender node of another IP pool."""
        name = name or component
        if flags is not None:
            self.flags[name] = dict(flags)
        previous = self.processes.get(name)
        if previous is not None:
            if previous.alive():
                raise FleetError(f"{name} is still running")
            self.retired.append(previous)
        health_port = previous.health_port if previous is not None else free_port()
        generation = 1 + sum(1 for p in self.retired if p.log_path.name.startswith(f"{name}."))
        argv = self.argv(component, health_port)
        for flag, value in self.flags.get(name, {}).items():
            argv += [flag, value]
        process = FleetProcess(
            component=component,
            argv=argv,
            env=self.env(),
            health_port=health_port,
            log_path=self.workdir / "logs" / f"{name}.{generation}.log",
        )
        process.start()
        self.processes[name] = process
        return process

    @classmethod
    async def start(
        cls,
        workdir: Path,
        *,
        database_url: str,
        nats_url: str,
        dns: DnsServer,
        sink_port: int,
        options: Mapping[str, str] | None = None,
        components: Sequence[str] = COMPONENTS,
    ) -> Fleet:
        fleet = cls(
            workdir=workdir,
            database_url=database_url,
            nats_url=nats_url,
            dns=dns,
            sink_port=sink_port,
            options=dict(options or {}),
            api_port=free_port(),
            api_http_port=free_port(),
            tracker_port=free_port(),
            smtp_port=free_port(),
        )
        fleet.write_config()
        # What the compose file's one-shot `migrate` service runs before anything else.
        await fleet.migrate()
        for component in components:
            fleet.spawn(component)
        try:
            await fleet.wait_healthy()
        except BaseException:
            await fleet.stop()
            fleet.print_report()
            raise
        return fleet

    async def migrate(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            KANNON,
            "migrate",
            "--config",
            str(self.config_path),
            env=self.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(60):
            out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise FleetError(f"kannon migrate exited {proc.returncode}:\n{out.decode()}")

    async def wait_healthy(self, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        bodies = await asyncio.gather(*(p.wait_healthy(timeout) for p in self.processes.values()))
        return dict(zip(self.processes, bodies, strict=True))

    async def replace(self, component: str, timeout: float = 60.0) -> FleetProcess:
        """Start a successor of a dead `component` process and wait until it is healthy."""
        process = self.spawn(component)
        await process.wait_healthy(timeout)
        return process

    async def stop(self, grace: float = GRACE) -> dict[str, int]:
        """SIGTERM every running process at once; {component: exit code}."""
        running = [p for p in self.processes.values() if p.alive()]
        results = await asyncio.gather(
            *(p.terminate(grace) for p in running), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return {name: p.exit_code for name, p in self.processes.items() if p.exit_code is not None}

    def kill_all(self) -> None:
        """Last resort at teardown: SIGKILL whatever we started that still runs."""
        for process in self.processes.values():
            if process.alive():
                process.signal(signal.SIGKILL)
                with contextlib.suppress(Exception):
                    process.popen.wait(10)

    def error_lines(self) -> list[str]:
        """Kannon's own log lines at level error (or with a traceback) from every process,
        killed ones too. Third-party loggers (aiosmtpd's `mail.log` reports a client that hangs
        up right after QUIT as a session exception) are left to the report."""
        return [
            f"{process.component}: {line}"
            for process in [*self.retired, *self.processes.values()]
            for line in process.output().splitlines()
            if line.startswith("Traceback")  # an uncaught crash, printed raw
            or ("logger=kannon" in line and ("level=error" in line or "Traceback" in line))
        ]

    def report(self) -> str:
        parts = []
        for process in [*self.retired, *self.processes.values()]:
            parts.append(
                f"===== {process.component} pid={process.pid if process.child else '-'} "
                f"exit={process.exit_code} stop_s={process.stop_seconds} =====\n"
                f"$ {' '.join(process.argv)}\n{process.output()}"
            )
        return "\n".join(parts)

    def print_report(self) -> None:
        print(self.report())

    # -- the README's calls, through `buf curl` (server reflection, no .proto files) ----------

    async def call(
        self,
        method: str,
        body: Mapping[str, Any],
        *,
        authorization: str,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """`buf curl --protocol grpc --http2-prior-knowledge -H 'authorization: ...' -d @-
        http://127.0.0.1:<api>/<service>/<method>`; the JSON answer. Fails with buf's output."""
        url = f"http://127.0.0.1:{self.api_port}/{method}"
        argv = [
            BUF,
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-H",
            f"authorization: {authorization}",
            "-d",
            "@-",
            url,
        ]
        env = {**os.environ, "HOME": str(self.workdir), "XDG_CACHE_HOME": str(self.workdir)}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(json.dumps(body).encode())
        if proc.returncode != 0:
            raise FleetError(
                f"buf curl {method} exited {proc.returncode}:\n{err.decode()}\n{out.decode()}"
            )
        answer: dict[str, Any] = json.loads(out) if out.strip() else {}
        return answer

    async def create_domain(self, domain: str = TENANT) -> dict[str, Any]:
        """CreateDomain; the Domain with its DKIM key and the DNS records to publish."""
        return await self.call(CREATE_DOMAIN, {"domain": domain}, authorization=ADMIN_AUTH)

    async def create_api_key(self, domain: str = TENANT, name: str = "fleet") -> str:
        """CreateAPIKey; the `authorization` value (Basic domain:key) of the Mailer/Stats APIs."""
        answer = await self.call(
            CREATE_API_KEY, {"domain": domain, "name": name}, authorization=ADMIN_AUTH
        )
        return "Basic " + base64.b64encode(f"{domain}:{answer['key']}".encode()).decode()

    async def send_html(
        self,
        auth: str,
        recipients: Mapping[str, Mapping[str, str]],
        *,
        subject: str = "Hello {{ name }}",
        html: str = "<h1>Hi {{ name }}</h1>",
    ) -> str:
        """SendHTML from news@tenant.test; the Batch id."""
        answer = await self.call(
            SEND_HTML,
            {
                "sender": {"email": SENDER_EMAIL, "alias": SENDER_ALIAS},
                "subject": subject,
                "html": html,
                "recipients": [
                    {"email": email, "fields": dict(fields)} for email, fields in recipients.items()
                ],
            },
            authorization=auth,
        )
        batch: str = answer["messageId"]
        return batch

    async def get_stats(self, auth: str, batch: str, domain: str = TENANT) -> dict[str, list[str]]:
        """GetStats as the README calls it (the last day up to an hour ahead); the Batch's event
        types per recipient, in time order (one page: for small Batches)."""
        now = datetime.now(UTC)
        answer = await self.call(
            GET_STATS,
            {
                "domain": domain,
                "fromDate": f"{now - timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}",
                "toDate": f"{now + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}",
                "take": 100,
            },
            authorization=auth,
        )
        by_rcpt: dict[str, list[str]] = {}
        for row in sorted(answer.get("stats", []), key=lambda r: r["timestamp"]):
            if row["messageId"] == batch:
                by_rcpt.setdefault(row["email"], []).append(row["type"])
        return by_rcpt
