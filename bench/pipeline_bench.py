"""End-to-end pipeline benchmark: standalone Kannon delivering into a loopback SMTP sink.

What runs, all on 127.0.0.1 and all stopped by PID at the end:

* dnsmasq (tests.peers.dns) answering ``MX rcpt.bench.test -> mx.rcpt.bench.test -> 127.0.0.1``;
* Postfix ``smtp-sink -d`` (or the aiosmtpd fallback) writing one file per received message;
* ``kannon standalone`` as a child process -- its own nats-server and PostgreSQL, every Component,
  the real SMTPSender (MX lookups through dnsmasq, SMTP to the sink) and real RSA-2048 DKIM.

Measured, with a real gRPC client from this process:

1. latency at idle: ``--latency-samples`` sequential SendHTML calls to one recipient each, each
   timed from the call to the sink's file (the 250) and to its ``delivered`` row in ``stats``;
2. the loopback SMTP limit: ``smtp-source -s 20 -m 20000`` into a count-only smtp-sink
   (bench/smtp_limit.py), right before the bulk run so both see the same machine;
3. throughput: one SendHTML to ``--recipients`` (10,000) Recipients with a ~5 KB tracked HTML
   mail and personal fields; Deliveries/s = received / (last 250 - call start). The last 250 is
   the newest dump file's mtime. Also: every Recipient received exactly once, DKIM of a few
   received messages verified with dkimpy against the key CreateDomain returned, and the CPU
   seconds each process of the Kannon tree spent;
4. peak RSS (and PSS) of the Kannon process tree (Kannon + nats-server + PostgreSQL), sampled
   from /proc every 0.5 s for the whole run; per process the larger of the samples and the
   process's own VmHWM (its exact peak), and Kannon's own VmHWM.

    .venv/bin/python -m bench.pipeline_bench [--recipients 10000] [--latency-samples 50]
        [--kannon-arg=--sender-max-jobs=50 ...] [--profile /tmp/kannon.pyspy.txt]

Goal: >= 300 Deliveries/s end to end; product goal >= 1,000/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.peers.dns lives in the repository, not in the package
    sys.path.insert(0, str(REPO))

# The imports below come after the sys.path set-up above, which they need:
# ruff: noqa: E402
import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import Row, check, verdict
from bench.smtp_limit import INSTALL_HINT, Limit, Sink, measure_limit, start_sink
from kannon.envelope.bench import sample_html
from kannon.pb.admin.apiv1 import adminapiv1_pb2 as admin_pb
from kannon.pb.admin.apiv1 import adminapiv1_pb2_grpc
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2 as mailer_pb
from kannon.pb.mailer.apiv1 import mailerapiv1_pb2_grpc
from kannon.pb.mailer.types import send_pb2
from kannon.runtime.processes import ChildProcess, free_port, start_child, wait_until
from tests.peers.dns import DnsServer

TENANT = "shop.bench.test"
RCPT_DOMAIN = "rcpt.bench.test"
MX_HOST = "mx.rcpt.bench.test"
SENDER_HOSTNAME = "out.bench.test"
ADMIN_TOKEN = "bench-operator-token"
GOAL_RATE = 300.0
PRODUCT_GOAL_RATE = 1000.0
TERMINAL = ("delivered", "bounced", "failed", "rejected")
BOOT_TIMEOUT = 90.0
SAMPLE_TIMEOUT = 30.0
STALL_SECONDS = 60.0
POLL_LATENCY = 0.005
# The bench shares the machine's cores with Kannon: its own polling must stay cheap. Polled at
# 0.2 s and sampled at 0.1 s it took ~40 % of a core in a 100,000-recipient run (a /proc walk with
# smaps_rollup of every process, a count over the Batch's stats rows, a listing of the sink's
# folder, all growing with the Batch). Deliveries/s comes from the files' mtimes, not from the
# poll, and each process's peak RSS from its VmHWM, so neither needs a fast poll.
POLL_BULK = 1.0
MEMORY_INTERVAL = 0.5


# -- process-tree memory and CPU from /proc ---------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) for every process visible now."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        rest = raw[raw.rfind(")") + 2 :].split()
        table[int(entry.name)] = (int(rest[1]), comm)
    return table


def process_tree(*roots: int) -> dict[int, str]:
    """``roots`` and all their descendants: pid -> comm."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    todo = [root for root in roots if root in table]
    while todo:
        pid = todo.pop()
        found[pid] = table[pid][1]
        todo.extend(children.get(pid, ()))
    return found


def process_label(pid: int, comm: str) -> str:
    """What a process of the Kannon tree is, for the per-process figures: `kannon standalone`,
    `kannon sender` (a Component process), `build worker`, `postgres`, `nats-server`, ..."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return comm
    if "standalone" in argv:
        return "kannon standalone"
    runs = [a.removeprefix("--run-") for a in argv if a.startswith("--run-")]
    if runs:
        return "kannon " + "+".join(runs)
    joined = " ".join(argv)
    if "resource_tracker" in joined:
        return "mp resource tracker"
    if "multiprocessing" in joined:
        return "build worker"
    return comm


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(*roots: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the processes of the trees, by label."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for pid, comm in process_tree(*roots).items():
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = process_label(pid, comm)
        totals[name] = totals.get(name, 0.0) + (int(rest[11]) + int(rest[12])) / ticks
    return totals


def nats_messages(*roots: int) -> dict[str, int]:
    """nats-server's message counters so far (`in_msgs`, `out_msgs` of its /varz: every
    publish, ack and pull request it received, every message it sent), {} when there is no
    nats-server in the trees or its monitoring port is unknown. The embedded server's port is
    in the configuration file its command line names (`kannon.bus.embedded`)."""
    for pid, comm in process_tree(*roots).items():
        if comm != "nats-server":
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            conf = Path(argv[argv.index("-c") + 1]).read_text()
            match = re.search(r'^http: "127\.0\.0\.1:(\d+)"', conf, re.M)
            if match is None:
                continue
            url = f"http://127.0.0.1:{match.group(1)}/varz"
            with urllib.request.urlopen(url, timeout=5) as response:
                varz = json.loads(response.read())
        except (OSError, ValueError, IndexError):
            continue
        return {"in_msgs": int(varz["in_msgs"]), "out_msgs": int(varz["out_msgs"])}
    return {}


def schedstat(pid: int) -> tuple[float, float]:
    """(seconds on CPU, seconds runnable but waiting for a CPU) of ``pid``'s main thread --
    Kannon's event loop. The second figure shows how much other load held it back."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
            on_cpu, waiting, _ = f.read().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def cpu_pressure_seconds() -> float:
    """Total time (s) some runnable task on this machine waited for a CPU (PSI), 0 if absent."""
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as f:
            for line in f:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


class TreeMemory(threading.Thread):
    """Samples the RSS and PSS sums of process trees until stopped (or ``max_seconds``), in all
    and by process label (the peak of each label's RSS sum: PostgreSQL's backends share memory,
    so its figure counts the shared part once per backend)."""

    def __init__(
        self, *roots: int, interval: float = MEMORY_INTERVAL, max_seconds: float = 1800
    ) -> None:
        super().__init__(name="tree-memory", daemon=True)
        self.roots = roots
        self.interval = interval
        self.max_samples = int(max_seconds / interval)
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_rss_by_label: dict[str, int] = {}
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        labels: dict[int, str] = {}
        while self.samples < self.max_samples and not self._stop_event.is_set():
            pids = process_tree(*self.roots)
            by_label: dict[str, int] = {}
            total = 0
            for pid, comm in pids.items():
                label = labels.get(pid) or labels.setdefault(pid, process_label(pid, comm))
                rss = _rss_bytes(pid)
                total += rss
                by_label[label] = by_label.get(label, 0) + rss
                # A peak between two samples is still seen: the kernel keeps each process's.
                hwm = _status_kb(pid, "VmHWM") * 1024
                self.peak_rss_by_label[label] = max(self.peak_rss_by_label.get(label, 0), hwm)
            self.peak_rss = max(self.peak_rss, total)
            self.peak_pss = max(self.peak_pss, sum(_pss_bytes(p) for p in pids))
            for label, rss in by_label.items():
                self.peak_rss_by_label[label] = max(self.peak_rss_by_label.get(label, 0), rss)
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)


@dataclass
class Kannon:
    """Kannon under test: standalone (one process and its children) or a fleet (a process per
    Component beside nats-server and PostgreSQL started here)."""

    process: ChildProcess
    """Standalone's process, or the fleet's api process: the event loop `schedstat` watches."""
    api_port: int
    health_port: int
    database_url: str
    metrics_ports: list[int] = field(default_factory=list)
    """Every Kannon process's /metrics (counters are summed over them)."""
    others: list[ChildProcess] = field(default_factory=list)
    """The fleet's other processes, servers last: stopped after `process`, in this order."""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def roots(self) -> list[int]:
        return [self.process.pid, *(p.pid for p in self.others)]

    def stop(self) -> None:
        for child in [self.process, *self.others]:
            child.stop(timeout=60)

    def metrics(self) -> dict[str, float]:
        summed: dict[str, float] = {}
        for port in self.metrics_ports or [self.health_port]:
            for name, value in scrape_metrics(port).items():
                summed[name] = summed.get(name, 0.0) + value
        return summed


def scrape_metrics(port: int) -> dict[str, float]:
    """Kannon's Prometheus counters (series name with labels -> value), {} when unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                continue
    return values


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_kannon(root: Path, dns: DnsServer, sink: Sink, extra: list[str]) -> Kannon:
    data_dir = root / "kannon"
    data_dir.mkdir(mode=0o755)
    config = root / "kannon.yaml"
    config.write_text("debug: false\n")  # explicit and empty: no ~/.kannon.yaml leaks in
    api_port, health_port = free_port(), free_port()
    argv = [
        str(Path(sys.executable).parent / "kannon"),
        *("standalone", "--config", str(config), "--data-dir", str(data_dir)),
        *("--api-host", "127.0.0.1", "--api-port", str(api_port)),
        *("--api-http-port", str(free_port())),
        *("--api-admin-token", ADMIN_TOKEN),
        *("--health-host", "127.0.0.1", "--health-port", str(health_port)),
        *("--tracker-host", "127.0.0.1", "--tracker-port", str(free_port())),
        *("--smtp-address", f"127.0.0.1:{free_port()}", "--smtp-domain", "bounce.bench.test"),
        *("--sender-hostname", SENDER_HOSTNAME, "--sender-dns-servers", dns.address),
        *("--sender-smtp-port", str(sink.port)),
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("K_")}
    log = root / "kannon.log"
    child = start_child("kannon standalone", argv, log, env=env)
    found: dict[str, str] = {}

    def database_announced() -> bool:
        match = re.search(r"kannon standalone: database (\S+)", log.read_text(errors="replace"))
        if match:
            found["url"] = match.group(1)
        return match is not None

    wait_until(child, database_announced, BOOT_TIMEOUT, "printing its endpoints")
    wait_until(child, lambda: _healthy(health_port), BOOT_TIMEOUT, "healthy")
    # The printed URL masks the password (ADR 0022); it is in the data directory's 0600 file.
    password = (data_dir / "postgres.password").read_text().strip()
    # Standalone's other processes (ADR 0040) print their own health and metrics port.
    ports = re.findall(
        r"kannon standalone: process .*http://127\.0\.0\.1:(\d+)/healthz",
        log.read_text(errors="replace"),
    )
    return Kannon(
        child,
        api_port,
        health_port,
        found["url"].replace("***", password, 1),
        metrics_ports=[health_port, *(int(port) for port in ports)],
    )


COMPONENTS = ("api", "validator", "dispatcher", "sender", "smtp", "tracker", "stats", "webhooks")


def start_fleet(root: Path, dns: DnsServer, sink: Sink, extra: list[str]) -> Kannon:
    """Fleet mode: nats-server and PostgreSQL started here, `kannon migrate`, then one
    `kannon --run-<component>` process per Component, configured as a deployment would (K_
    variables for the secrets, flags for the rest)."""
    from kannon.bus.embedded import start_nats
    from kannon.db.embedded import start_postgres

    nats_server = start_nats(root / "nats")
    pg = start_postgres(root / "postgres")
    servers = [nats_server.process, pg.process]
    try:
        database_url = _create_database(pg.url(), pg.url("kannon"))
        kannon = str(Path(sys.executable).parent / "kannon")
        env = {k: v for k, v in os.environ.items() if not k.startswith("K_")}
        env.update(
            {
                "HOME": str(root),
                "K_CONFIG": os.devnull,
                "K_DATABASE_URL": database_url,
                "K_NATS_URL": nats_server.url,
                "K_SECRET_KEY": "bench-secret-0123456789abcdef0123",
                "K_API_ADMIN_TOKEN": ADMIN_TOKEN,
            }
        )
        subprocess.run([kannon, "migrate"], env=env, check=True, capture_output=True)
        api_port, health_ports = free_port(), {c: free_port() for c in COMPONENTS}
        shared = [
            *("--health-host", "127.0.0.1"),
            *("--sender-hostname", SENDER_HOSTNAME, "--sender-dns-servers", dns.address),
            *("--sender-smtp-port", str(sink.port)),
            *extra,
        ]
        own = {
            "api": [
                "--api-host",
                "127.0.0.1",
                "--api-port",
                str(api_port),
                "--api-http-port",
                str(free_port()),
            ],
            "tracker": ["--tracker-host", "127.0.0.1", "--tracker-port", str(free_port())],
            "smtp": [
                "--smtp-address",
                f"127.0.0.1:{free_port()}",
                "--smtp-domain",
                "bounce.bench.test",
            ],
        }
        children = {
            c: start_child(
                f"kannon {c}",
                [
                    kannon,
                    f"--run-{c}",
                    "--health-port",
                    str(health_ports[c]),
                    *shared,
                    *own.get(c, []),
                ],
                root / f"kannon-{c}.log",
                env=env,
            )
            for c in COMPONENTS
        }
        for c, child in children.items():
            port = health_ports[c]
            wait_until(child, lambda port=port: _healthy(port), BOOT_TIMEOUT, "healthy")
    except BaseException:
        for server in servers:
            server.stop()
        raise
    api = children.pop("api")
    return Kannon(
        api,
        api_port,
        health_ports["api"],
        database_url,
        metrics_ports=list(health_ports.values()),
        others=[*children.values(), *servers],
    )


def _create_database(admin_url: str, url: str) -> str:
    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute('CREATE DATABASE "kannon"')
        finally:
            await conn.close()

    asyncio.run(create())
    return url


# -- the caller's side -------------------------------------------------------------------------


@dataclass
class Client:
    channel: grpc.aio.Channel
    mailer: Any
    health: Any
    credentials: tuple[tuple[str, str], ...]
    dkim_txt: str
    html: str = field(default_factory=sample_html)

    @classmethod
    async def connect(cls, api_port: int) -> Client:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{api_port}")
        admin: Any = adminapiv1_pb2_grpc.ApiStub(channel)  # type: ignore[no-untyped-call]  # generated
        md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        domain = await admin.CreateDomain(admin_pb.CreateDomainRequest(domain=TENANT), metadata=md)
        txt = [r.value for r in domain.dns_records if "._domainkey." in r.name]
        dkim_txt = txt[0] if txt else f"v=DKIM1; k=rsa; p={domain.dkim_pub_key}"
        key = await admin.CreateAPIKey(
            admin_pb.CreateAPIKeyRequest(domain=TENANT, name="bench"), metadata=md
        )
        basic = base64.b64encode(f"{TENANT}:{key.key}".encode()).decode()
        mailer: Any = mailerapiv1_pb2_grpc.MailerStub(channel)  # type: ignore[no-untyped-call]  # generated
        health: Any = health_pb2_grpc.HealthStub(channel)
        return cls(channel, mailer, health, (("authorization", f"Basic {basic}"),), dkim_txt)

    async def probe(self) -> float:
        """Seconds a gRPC health check takes: the API shares Kannon's one event loop with every
        other Component, so this is a proxy for how late that loop runs."""
        started = time.perf_counter()
        await self.health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        return time.perf_counter() - started

    def request(self, first: int, count: int, tag: str) -> Any:
        request = mailer_pb.SendHTMLReq(
            sender=send_pb2.Sender(email=f"orders@{TENANT}", alias="Bench Shop"),
            subject="Your order {{ order }} is confirmed",
            html=self.html,
        )
        for i in range(first, first + count):
            request.recipients.add(
                email=f"{tag}{i}@{RCPT_DOMAIN}",
                fields={"name": f"Customer {i}", "order": f"A{i:06d}"},
            )
        return request

    async def send(self, request: Any) -> Any:
        return await self.mailer.SendHTML(request, metadata=self.credentials, timeout=120)


async def _stats_counts(conn: asyncpg.Connection, batch_id: str) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT type, count(*) AS n FROM stats WHERE message_id = $1 GROUP BY type", batch_id
    )
    return {r["type"]: int(r["n"]) for r in rows}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class Latency:
    to_250: list[float] = field(default_factory=list)
    to_stored: list[float] = field(default_factory=list)
    to_response: list[float] = field(default_factory=list)
    timeouts: int = 0


async def measure_latency(
    client: Client, conn: asyncpg.Connection, sink: Sink, samples: int
) -> Latency:
    """Sequential single-recipient sends at idle, each followed until delivered."""
    result = Latency()
    for i in range(samples):
        before = {p.name for p in sink.message_files()}
        started = time.time()
        response = await client.send(client.request(i, 1, "idle"))
        result.to_response.append(time.time() - started)
        arrived: float | None = None
        stored: float | None = None
        deadline = time.monotonic() + SAMPLE_TIMEOUT
        while (arrived is None or stored is None) and time.monotonic() < deadline:
            if arrived is None:
                new = [p for p in sink.message_files() if p.name not in before]
                if new:
                    arrived = max(p.stat().st_mtime for p in new) - started
            if stored is None and await conn.fetchval(
                "SELECT 1 FROM stats WHERE message_id = $1 AND type = 'delivered'",
                response.message_id,
            ):
                stored = time.time() - started
            await asyncio.sleep(POLL_LATENCY)
        if arrived is None or stored is None:
            result.timeouts += 1
            continue
        result.to_250.append(arrived)
        result.to_stored.append(stored)
    return result


@dataclass
class Bulk:
    recipients: int
    response_s: float = 0.0
    received: int = 0
    unique_received: int = 0
    first_250_s: float = 0.0
    last_250_s: float = 0.0
    stored_s: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    left_in_pool: int = 0
    dkim_checked: int = 0
    dkim_valid: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    complete: bool = False
    loop_on_cpu_s: float = 0.0
    loop_waiting_s: float = 0.0
    cpu_pressure: float = 0.0
    """Share of the wall time some task on this machine waited for a CPU (PSI "some")."""
    probe_ms_p50: float = 0.0
    probe_ms_max: float = 0.0
    smtp_mean_ms: float = 0.0
    smtp_connections: int = 0
    duplicates_skipped: int = 0
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    """Peak RSS during this run, by process label."""
    nats_msgs: dict[str, int] = field(default_factory=dict)
    """Messages nats-server received (in_msgs) and sent (out_msgs) during this run."""

    @property
    def rate(self) -> float:
        return self.received / self.last_250_s if self.last_250_s > 0 else 0.0


def _metric_deltas(bulk: Bulk, before: dict[str, float], after: dict[str, float]) -> None:
    def delta(prefix: str) -> float:
        return sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix))

    count = delta("kannon_sender_delivery_seconds_count")
    if count:
        bulk.smtp_mean_ms = delta("kannon_sender_delivery_seconds_sum") / count * 1000
    bulk.smtp_connections = int(delta("kannon_sender_smtp_connections_total"))
    bulk.duplicates_skipped = int(delta("kannon_sender_duplicates_skipped_total"))


def _recipient_of(path: Path) -> str:
    """The RCPT of a dump: smtp-sink's ``X-Rcpt-Args`` line, else the To header."""
    with open(path, "rb") as f:
        head = f.read(4096).decode("ascii", errors="replace")
    match = re.search(r"^X-Rcpt-Args: <([^>]*)>", head, re.M) or re.search(
        r"^To: .*?<?([^<>\s]+@[^<>\s]+)>?\s*$", head, re.M
    )
    return match.group(1).lower() if match else ""


def message_bytes(path: Path) -> bytes:
    """A dump as the message the sender transmitted: smtp-sink's own X- lines removed, CRLF."""
    lines = path.read_bytes().replace(b"\r\n", b"\n").split(b"\n")
    sink_headers = (b"X-Client-Addr:", b"X-Client-Proto:", b"X-Helo-Args:", b"X-Mail-Args:")
    while lines and (lines[0].startswith(sink_headers) or lines[0].startswith(b"X-Rcpt-Args:")):
        lines.pop(0)
    return b"\r\n".join(lines)


def dkim_valid(path: Path, txt: str) -> bool:
    import dkim

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return txt.encode() if name.decode().rstrip(".").endswith("._domainkey." + TENANT) else b""

    return bool(dkim.verify(message_bytes(path), dnsfunc=dnsfunc))


async def measure_bulk(
    client: Client,
    *,
    conn: asyncpg.Connection,
    sink: Sink,
    kannon: Kannon,
    recipients: int,
    timeout: float,
    progress: Callable[[str], None],
) -> Bulk:
    bulk = Bulk(recipients)
    before = {p.name for p in sink.message_files()}
    request = client.request(0, recipients, f"bulk{recipients}")
    cpu_before = cpu_seconds(*kannon.roots)
    nats_before = nats_messages(*kannon.roots)
    sched_before, pressure_before = schedstat(kannon.pid), cpu_pressure_seconds()
    metrics_before = await asyncio.to_thread(kannon.metrics)
    memory = TreeMemory(*kannon.roots)
    memory.start()
    probes: list[float] = []
    started = time.time()
    response = await client.send(request)
    bulk.response_s = time.time() - started
    progress(f"SendHTML {recipients:,} recipients answered in {bulk.response_s:.3f} s")
    deadline = time.monotonic() + timeout
    last_change, last_seen = time.monotonic(), (-1, -1)
    next_report = time.monotonic() + 5
    while time.monotonic() < deadline:
        probes.append(await client.probe())
        received = len(sink.message_files()) - len(before)
        bulk.outcomes = await _stats_counts(conn, response.message_id)
        ended = sum(bulk.outcomes.get(t, 0) for t in TERMINAL)
        if ended >= recipients:
            bulk.left_in_pool = await conn.fetchval(
                "SELECT count(*) FROM sending_pool_emails WHERE message_id = $1",
                response.message_id,
            )
            if bulk.left_in_pool == 0 and received >= bulk.outcomes.get("delivered", 0):
                bulk.stored_s = time.time() - started
                bulk.complete = True
                break
        if (received, ended) != last_seen:
            last_seen, last_change = (received, ended), time.monotonic()
        elif time.monotonic() - last_change > STALL_SECONDS:
            progress(f"no progress for {STALL_SECONDS:.0f} s: giving up")
            break
        if time.monotonic() >= next_report:
            next_report += 5
            progress(
                f"t={time.time() - started:5.1f}s sink received {received:,}, "
                f"stored outcomes {ended:,} ({bulk.outcomes})"
            )
        await asyncio.sleep(POLL_BULK)
    bulk.wall_s = time.time() - started
    memory.stop()
    bulk.peak_rss_mib = {k: round(v / 2**20, 1) for k, v in memory.peak_rss_by_label.items()}
    cpu_after = cpu_seconds(*kannon.roots)
    nats_after = nats_messages(*kannon.roots)
    if nats_before and nats_after:
        bulk.nats_msgs = {k: v - nats_before[k] for k, v in nats_after.items()}
    sched_after = schedstat(kannon.pid)
    bulk.loop_on_cpu_s = sched_after[0] - sched_before[0]
    bulk.loop_waiting_s = sched_after[1] - sched_before[1]
    bulk.cpu_pressure = (cpu_pressure_seconds() - pressure_before) / bulk.wall_s
    bulk.cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_after.items()}
    if probes:
        bulk.probe_ms_p50 = statistics.median(probes) * 1000
        bulk.probe_ms_max = max(probes) * 1000
    _metric_deltas(bulk, metrics_before, await asyncio.to_thread(kannon.metrics))
    new = [p for p in sink.message_files() if p.name not in before]
    bulk.received = len(new)
    if new:
        mtimes = sorted(p.stat().st_mtime for p in new)
        bulk.first_250_s, bulk.last_250_s = mtimes[0] - started, mtimes[-1] - started
        rcpts = await asyncio.to_thread(lambda: {_recipient_of(p) for p in new})
        bulk.unique_received = len(rcpts - {""})
        for path in new[:: max(1, len(new) // 3)][:3]:
            bulk.dkim_checked += 1
            bulk.dkim_valid += dkim_valid(path, client.dkim_txt)
    return bulk


# -- the whole run -----------------------------------------------------------------------------


@dataclass
class Options:
    recipients: list[int] = field(default_factory=lambda: [10_000])
    fleet: bool = False
    latency_samples: int = 50
    timeout: float = 300.0
    limit_messages: int = 20_000
    kannon_args: list[str] = field(default_factory=list)
    profile: str | None = None
    keep: bool = False
    aiosmtpd: bool = False


def _say(text: str) -> None:
    print(f"[pipeline] {text}", flush=True)


def _start_profiler(pid: int, out: str) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(py_spy, os.X_OK):
        _say("py-spy not installed (.venv/bin/pip install py-spy): no profile")
        return None
    argv = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--rate",
        "100",
        "--format",
        "raw",
    ]
    argv += ["--output", out, "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _drive(
    opts: Options, kannon: Kannon, sink: Sink, root: Path
) -> tuple[Latency, Limit | None, list[Bulk]]:
    client = await Client.connect(kannon.api_port)
    conn = await asyncpg.connect(kannon.database_url)
    try:
        _say("warm-up: one send through the whole pipeline")
        warm = await measure_latency(client, conn, sink, 1)
        if warm.timeouts:
            raise RuntimeError(f"warm-up send not delivered in {SAMPLE_TIMEOUT:.0f} s")
        _say(f"latency at idle: {opts.latency_samples} sequential single-recipient sends")
        latency = await measure_latency(client, conn, sink, opts.latency_samples)
        _say(f"loopback SMTP limit: smtp-source -s 20 -m {opts.limit_messages}")
        limit = await asyncio.to_thread(measure_limit, root, messages=opts.limit_messages)
        if limit is None:
            _say(f"smtp-source/smtp-sink not found, no SMTP limit: {INSTALL_HINT}")
        profiler = _start_profiler(kannon.pid, opts.profile) if opts.profile else None
        bulks = []
        try:
            for size in opts.recipients:
                _say(f"throughput: one SendHTML to {size:,} recipients")
                bulks.append(
                    await measure_bulk(
                        client,
                        conn=conn,
                        sink=sink,
                        kannon=kannon,
                        recipients=size,
                        timeout=opts.timeout,
                        progress=_say,
                    )
                )
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                await asyncio.to_thread(profiler.wait, 30)
                _say(f"py-spy profile (raw collapsed stacks) written to {opts.profile}")
        return latency, limit, bulks
    finally:
        await conn.close()
        await client.channel.close()


def run(opts: Options) -> tuple[dict[str, Any], list[Row]]:
    """Run the benchmark; return the figures and the summary rows."""
    root = Path(tempfile.mkdtemp(prefix="kannon-pipeline-bench-", dir="/tmp"))
    os.chmod(root, 0o755)  # PostgreSQL runs as `postgres` when we are root and must enter it
    dns = DnsServer(ttl=300)  # real MX records have TTLs; 0 would defeat every cache
    sink: Sink | None = None
    kannon: Kannon | None = None
    memory: TreeMemory | None = None
    try:
        # Every child starts before gRPC runs in this process (see tests/e2e/pipeline.py).
        dns.add_mx(RCPT_DOMAIN, MX_HOST, 10).add_host(MX_HOST, "127.0.0.1").start()
        sink = start_sink(root, root / "received", aiosmtpd=opts.aiosmtpd)
        _say(f"SMTP peer: {sink.kind} on 127.0.0.1:{sink.port}, DNS: dnsmasq on {dns.address}")
        boot = time.monotonic()
        start = start_fleet if opts.fleet else start_kannon
        kannon = start(root, dns, sink, opts.kannon_args)
        mode = "fleet" if opts.fleet else "standalone"
        _say(f"kannon {mode} (pid {kannon.pid}) healthy in {time.monotonic() - boot:.1f} s")
        memory = TreeMemory(*kannon.roots)
        memory.start()
        latency, limit, bulks = asyncio.run(_drive(opts, kannon, sink, root))
        memory.stop()
        hwm_kb = _status_kb(kannon.pid, "VmHWM")
        figures = _figures(
            opts,
            sink=sink,
            latency=latency,
            limit=limit,
            bulks=bulks,
            memory=memory,
            hwm_kb=hwm_kb,
        )
        return figures, _rows(figures)
    finally:
        if memory is not None:
            memory.stop()
        if kannon is not None:
            kannon.stop()
            if kannon.process.popen.returncode not in (0, None):
                _say(f"kannon exited with {kannon.process.popen.returncode}; log tail:")
                print(kannon.process.log_tail(), flush=True)
        if sink is not None:
            sink.stop()
        dns.close()
        if opts.keep:
            _say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _figures(
    opts: Options,
    *,
    sink: Sink,
    latency: Latency,
    limit: Limit | None,
    bulks: list[Bulk],
    memory: TreeMemory,
    hwm_kb: int,
) -> dict[str, Any]:
    mib = 1024 * 1024
    figures: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "mode": "fleet" if opts.fleet else "standalone",
        "smtp_peer": sink.kind,
        "kannon_args": opts.kannon_args,
        "latency_samples": len(latency.to_250),
        "latency_timeouts": latency.timeouts,
        "bulks": [
            {
                **{k: v for k, v in bulk.__dict__.items() if not isinstance(v, list)},
                "deliveries_per_s": round(bulk.rate, 1),
                "fraction_of_limit": round(bulk.rate / limit.rate, 4) if limit else None,
            }
            for bulk in bulks
        ],
        "peak_rss_tree_mib": round(memory.peak_rss / mib, 1),
        "peak_pss_tree_mib": round(memory.peak_pss / mib, 1),
        "peak_rss_by_process_mib": {
            k: round(v / mib, 1) for k, v in memory.peak_rss_by_label.items()
        },
        "kannon_python_hwm_mib": round(hwm_kb / 1024, 1),
    }
    if latency.to_250:
        figures["latency_250_ms"] = {
            "p50": round(statistics.median(latency.to_250) * 1000, 1),
            "p99": round(_pct(latency.to_250, 0.99) * 1000, 1),
        }
        figures["latency_stored_ms"] = {
            "p50": round(statistics.median(latency.to_stored) * 1000, 1),
            "p99": round(_pct(latency.to_stored, 0.99) * 1000, 1),
        }
        figures["send_response_ms_p50"] = round(statistics.median(latency.to_response) * 1000, 1)
    if limit is not None:
        figures["smtp_limit"] = {"command": limit.command, "msgs_per_s": round(limit.rate)}
    return figures


def _bulk_rows(f: dict[str, Any], bulk: dict[str, Any]) -> list[Row]:
    n = bulk["recipients"]
    ok = bulk["complete"] and bulk["unique_received"] == n and bulk["received"] == n
    rate = bulk["deliveries_per_s"]
    mode = f["mode"]
    rows = [
        Row(
            "pipeline",
            f"{mode}, {n:,} recipients: Deliveries/s, API call -> last 250",
            f"{rate:,.0f}/s ({bulk['last_250_s']:.1f} s)",
            f">= {GOAL_RATE:.0f}/s (product {PRODUCT_GOAL_RATE:,.0f}/s)",
            verdict(ok and rate >= GOAL_RATE),
        ),
        Row(
            "pipeline",
            f"  {n:,}: received / unique / outcomes stored",
            f"{bulk['received']:,} / {bulk['unique_received']:,} / "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(bulk["outcomes"].items())),
            f"{n:,} each, once",
            check(ok),
        ),
        Row(
            "pipeline",
            f"  {n:,}: DKIM of received samples (dkimpy)",
            f"{bulk['dkim_valid']}/{bulk['dkim_checked']} valid",
            "all valid",
            check(bulk["dkim_checked"] > 0 and bulk["dkim_valid"] == bulk["dkim_checked"]),
        ),
    ]
    if bulk.get("fraction_of_limit") is not None:
        rows.append(
            Row(
                "pipeline",
                f"  {n:,}: our rate / loopback SMTP limit",
                f"{bulk['fraction_of_limit']:.1%}",
            )
        )
    rows += [
        Row(
            "pipeline",
            f"  {n:,}: SMTP time/Envelope, SMTP sessions, health-check p50/max",
            f"{bulk['smtp_mean_ms']:.1f} ms, {bulk['smtp_connections']}, "
            f"{bulk['probe_ms_p50']:.0f}/{bulk['probe_ms_max']:.0f} ms",
        ),
        Row(
            "pipeline",
            f"  {n:,}: main loop on CPU / waiting for CPU; machine CPU pressure",
            f"{bulk['loop_on_cpu_s']:.0f} s / {bulk['loop_waiting_s']:.0f} s of "
            f"{bulk['wall_s']:.0f} s; {bulk['cpu_pressure']:.0%}",
        ),
    ]
    cpu, received = bulk["cpu"], bulk["received"]
    if cpu and received:
        total = sum(cpu.values()) / received * 1000
        per = sorted(cpu.items(), key=lambda kv: -kv[1])
        rows.append(
            Row(
                "pipeline",
                f"  {n:,}: CPU per Delivery, whole tree (by process)",
                f"{total:.2f} ms ("
                + ", ".join(
                    f"{k} {v / received * 1000:.2f}" for k, v in per if v / received > 0.00001
                )
                + ")",
                "<= 3 ms",
                verdict(total <= 3.0),
            )
        )
    nats_msgs = bulk.get("nats_msgs")
    if nats_msgs and received:
        rows.append(
            Row(
                "pipeline",
                f"  {n:,}: NATS messages per Delivery, into / out of nats-server",
                f"{nats_msgs['in_msgs'] / received:.2f} / {nats_msgs['out_msgs'] / received:.2f}",
            )
        )
    if bulk.get("peak_rss_mib"):
        peaks = sorted(bulk["peak_rss_mib"].items(), key=lambda kv: -kv[1])
        kannon_peaks = [v for k, v in peaks if k.startswith("kannon ") or k == "build worker"]
        rows.append(
            Row(
                "pipeline",
                f"  {n:,}: peak RSS by process (MiB)",
                ", ".join(f"{k} {v:.0f}" for k, v in peaks),
                "Kannon processes < 150 MiB",
                verdict(bool(kannon_peaks) and max(kannon_peaks) < 150),
            )
        )
    return rows


def _rows(f: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for bulk in f["bulks"]:
        rows += _bulk_rows(f, bulk)
    rates = {b["recipients"]: b["deliveries_per_s"] for b in f["bulks"]}
    if len(rates) > 1:
        small, large = min(rates), max(rates)
        if rates[small] > 0:
            change = rates[large] / rates[small] - 1
            rows.append(
                Row(
                    "pipeline",
                    f"rate at {large:,} vs {small:,} recipients",
                    f"{change:+.0%}",
                    "within -10 %",
                    verdict(change >= -0.10),
                )
            )
    if "latency_250_ms" in f:
        l250, lst = f["latency_250_ms"], f["latency_stored_ms"]
        rows += [
            Row(
                "pipeline",
                f"idle SendHTML -> 250 at sink p50/p99 ({f['latency_samples']} sends)",
                f"{l250['p50']:.0f} / {l250['p99']:.0f} ms",
                "p99 < 250 ms",
                verdict(l250["p99"] < 250),
            ),
            Row(
                "pipeline",
                "idle SendHTML -> Delivered row stored p50/p99",
                f"{lst['p50']:.0f} / {lst['p99']:.0f} ms",
            ),
        ]
    if f.get("latency_timeouts"):
        rows.append(
            Row(
                "pipeline",
                "idle sends not delivered in 30 s",
                str(f["latency_timeouts"]),
                "0",
                "FAILED",
            )
        )
    rows.append(
        Row(
            "pipeline",
            "peak RSS of Kannon tree (PSS) / main Kannon process VmHWM",
            f"{f['peak_rss_tree_mib']:.0f} MiB ({f['peak_pss_tree_mib']:.0f}) / "
            f"{f['kannon_python_hwm_mib']:.0f} MiB",
        )
    )
    if "smtp_limit" in f:
        rows.append(
            Row(
                "pipeline",
                f"SMTP limit: {f['smtp_limit']['command'].rsplit(' ', 1)[0]}",
                f"{f['smtp_limit']['msgs_per_s']:,} msg/s",
            )
        )
    else:
        rows.append(Row("pipeline", "SMTP limit", "no smtp-source", verdict="skipped"))
    return rows


def parse_options(argv: list[str] | None = None) -> tuple[Options, bool]:
    """Options from the command line; the flag says whether to print the figures as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--recipients",
        default="10000",
        help="Batch size(s) of the bulk runs, comma-separated, e.g. 1000,10000,100000",
    )
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="run the Components as one process each (fleet mode) instead of standalone",
    )
    parser.add_argument("--latency-samples", type=int, default=Options.latency_samples)
    parser.add_argument(
        "--timeout",
        type=float,
        default=Options.timeout,
        help="seconds to wait for the bulk run to finish",
    )
    parser.add_argument("--limit-messages", type=int, default=Options.limit_messages)
    parser.add_argument(
        "--kannon-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `kannon standalone` argument, e.g. --kannon-arg=--sender-max-jobs=50",
    )
    parser.add_argument("--profile", metavar="FILE", help="py-spy raw profile of the bulk run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--aiosmtpd", action="store_true", help="deliver to the aiosmtpd sink, not smtp-sink"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    opts = Options(
        recipients=[int(n) for n in str(args.recipients).split(",") if n.strip()],
        fleet=args.fleet,
        latency_samples=args.latency_samples,
        timeout=args.timeout,
        limit_messages=args.limit_messages,
        kannon_args=args.kannon_arg,
        profile=args.profile,
        keep=args.keep,
        aiosmtpd=args.aiosmtpd,
    )
    return opts, bool(args.json)


def main(argv: list[str] | None = None) -> int:
    opts, as_json = parse_options(argv)
    figures, rows = run(opts)
    if as_json:
        print(json.dumps(figures, indent=2, sort_keys=True))
    for row in rows:
        print(f"{row.metric:62} {row.value:>30}  {row.goal} {row.verdict}")
    return 1 if any(r.verdict == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
