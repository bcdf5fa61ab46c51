"""The SMTPSender alone: its CPU and its Python function calls per Delivery (issue 12, ADR 0057).

The pipeline part measures the sender inside the whole pipeline, where the machine's other load
makes CPU figures swing by a third between runs. This runs only the `sender` Component, in this
process on uvloop, against a nats-server, dnsmasq (MX of the recipients' domain → 127.0.0.1)
and Postfix `smtp-sink` (aiosmtpd without Postfix), all started here on 127.0.0.1 and stopped by
PID. It publishes `--envelopes` Envelopes of about 8.6 KB (CRLF lines, one starting with a dot,
like a built message) on `kannon.sending`, one Recipient each, lets the sender deliver them all,
and reports for the bulk (the first `--warm-up` Envelopes open the sessions first):

* function calls per Delivery under cProfile (`--profile`, the default): deterministic up to how
  many replies NATS and the SMTP peer bundle into one read, so it compares two versions of the
  code on a busy machine where timings do not;
* this process's CPU per Delivery without the profiler (`--cpu`): the sender and its NATS
  client, timed, so compare only interleaved runs;
* with `--top N`, the N functions with the most own time under cProfile.

Logging is set up as in a `kannon` process (`setup_logging`, level info: a line per Envelope),
its lines written to /dev/null.

`PYTHONPATH=<other checkout>/src .venv/bin/python -m bench.sender_bench` measures another
version of Kannon with this script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.smtp_limit import start_sink
from kannon.bus.client import Bus
from kannon.bus.embedded import start_nats
from kannon.bus.subjects import SENDING_SUBJECT
from kannon.config import Settings
from kannon.envelope.build import Envelope
from kannon.envelope.ids import make_email_id
from kannon.model.event_ids import envelope_msg_id
from kannon.runtime.component import Life
from kannon.runtime.event_loop import run as run_loop
from kannon.runtime.logs import setup_logging
from kannon.smtp_sender.component import OUTCOMES, SmtpSender
from kannon.wire import envelope
from tests.peers.dns import DnsServer
from tests.support import wait_for

DOMAIN = "rcpt.bench.test"
MX = "mx.bench.test"
BATCH = "msg_senderbench@tenant.bench.test"


def body() -> bytes:
    """A message as the builder makes it: CRLF lines, one of them starting with a dot."""
    headers = (
        b"From: Bench Shop <orders@tenant.bench.test>\r\nTo: someone@rcpt.bench.test\r\n"
        b"Subject: your order\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Message-ID: <x@tenant.bench.test>\r\n\r\n"
    )
    text = b"<p>line %03d of the body, with some text to make it look real</p>"
    lines = [text % i for i in range(130)]
    lines[60] = b".a line that starts with a dot"
    return headers + b"\r\n".join(lines) + b"\r\n"


@dataclass
class Figures:
    deliveries: int
    seconds: float
    cpu_ms: float
    calls: float | None
    top: str


def delivered() -> float:
    """Delivered outcomes so far (this metric alone: collecting the registry costs more)."""
    return sum(
        s.value
        for metric in OUTCOMES.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.labels.get("type") == "delivered"
    )


@dataclass(frozen=True)
class Options:
    envelopes: int
    warm_up: int
    profile: bool
    top: int
    save: str | None = None


async def measure(nats_url: str, dns: DnsServer, port: int, opts: Options) -> Figures:
    envelopes, warm_up = opts.envelopes, opts.warm_up
    settings = Settings.model_validate(
        {
            "sender": {
                "hostname": "sender.bench.test",
                "smtp_port": port,
                "dns_servers": [dns.address],
            },
        }
    )
    bus = await Bus.connect(nats_url)
    await bus.ensure_streams()
    payload = body()
    jobs = [
        Envelope(
            email_id=make_email_id(BATCH, f"r{i}@{DOMAIN}"),
            sender="orders@tenant.bench.test",
            recipient=f"r{i}@{DOMAIN}",
            return_path=f"bump_{i:08d}abcdefgh@tenant.bench.test",
            body=payload,
            should_retry=True,
        )
        for i in range(warm_up + envelopes)
    ]

    async def send(part: list[Envelope]) -> None:
        await asyncio.gather(
            *(
                bus.publish(SENDING_SUBJECT, envelope.encode(j), envelope_msg_id(j.email_id, 1))
                for j in part
            )
        )

    async def until(count: int, timeout: float) -> None:
        await wait_for(
            lambda: delivered() - base >= count, what=f"{count} delivered", timeout=timeout
        )

    # All published before the sender starts: the profile holds the sender's work, not ours.
    for start in range(0, len(jobs), 500):
        await send(jobs[start : start + 500])
    base = delivered()
    sender = SmtpSender(settings, bus)
    life = Life(sender.name)
    task = asyncio.create_task(sender.run(life))
    await asyncio.wait_for(life.wait_ready(), 30)
    await until(warm_up, 120)
    # The bulk: what is left after the warm-up (the sender may be a few past it by now).
    measured = warm_up + envelopes - int(delivered() - base)
    # CPU time, not wall-clock time: on a busy machine a socket write that wakes a peer process
    # would otherwise be charged with the time the peer ran.
    profiler = cProfile.Profile(time.process_time) if opts.profile else None
    cpu = time.process_time()
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await until(warm_up + envelopes, 600)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    life.stopping.set()
    await asyncio.wait_for(task, 60)
    await bus.close()
    calls = None
    text = ""
    if profiler is not None:
        stats = pstats.Stats(profiler)
        calls = stats.total_calls / measured  # type: ignore[attr-defined]
        if opts.save:
            stats.dump_stats(opts.save)
        if opts.top:
            out = io.StringIO()
            stats.stream = out  # type: ignore[attr-defined]
            stats.sort_stats("tottime").print_stats(opts.top)
            text = out.getvalue()
    return Figures(measured, seconds, cpu / measured * 1000, calls, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envelopes", type=int, default=3000)
    parser.add_argument("--warm-up", type=int, default=200)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--profile", action="store_true", default=True, help="call counts (default)")
    mode.add_argument("--cpu", action="store_true", help="CPU per Delivery, no profiler")
    parser.add_argument("--top", type=int, default=0, help="print the N costliest functions")
    parser.add_argument("--save", metavar="FILE", help="write the cProfile statistics to FILE")
    args = parser.parse_args(argv)
    opts = Options(args.envelopes, args.warm_up, not args.cpu, args.top, args.save)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the log handler keeps it to the end
    with contextlib.redirect_stderr(devnull):
        setup_logging(debug=False)
    with tempfile.TemporaryDirectory(prefix="kannon-sender-bench-") as tmp:
        root = Path(tmp)
        nats = start_nats(root / "nats")
        dns = DnsServer(ttl=300)  # as in the pipeline part: real MX records have TTLs
        dns.add_mx(DOMAIN, MX, 10)
        dns.add_host(MX, "127.0.0.1")
        dns.start()
        sink = start_sink(root)
        try:
            figures = run_loop(
                measure(nats.url, dns, sink.port, opts),
                "auto",
            )
        finally:
            sink.stop()
            dns.stop()
            nats.stop()
    print(figures.top, end="")
    rate = figures.deliveries / figures.seconds
    line = (
        f"sender bench: {figures.deliveries} Deliveries in {figures.seconds:.1f} s ({rate:.0f}/s)"
    )
    if figures.calls is not None:
        line += f", {figures.calls:.0f} function calls per Delivery (cProfile)"
    else:
        line += f", CPU {figures.cpu_ms:.3f} ms per Delivery (this process)"
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
