"""Python function calls per consumed message in `Bus.consume()`: a deterministic figure of the
bus's per-message work (ADR 0058), unlike CPU time on a shared machine.

An embedded nats-server (`kannon.bus.embedded`) in a temporary directory, stopped at the end;
N messages published, then consumed with a handler that acks each, under cProfile (asyncio's own
loop). Compare two checkouts by running this file with `PYTHONPATH=<checkout>/src`:

    .venv/bin/python -m bench.consume_calls [--messages 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
from pathlib import Path

from kannon.bus.client import Bus, BusMessage, ConsumerSpec, Result
from kannon.bus.embedded import start_nats
from kannon.bus.subjects import SENDING_STREAM, SENDING_SUBJECT


async def calls_per_message(url: str, messages: int) -> float:
    bus = await Bus.connect(url)
    try:
        await bus.ensure_streams()
        for i in range(messages):
            await bus.publish(SENDING_SUBJECT, b"x" * 200, msg_id=f"m-{i}")
        spec = ConsumerSpec("calls", SENDING_STREAM, SENDING_SUBJECT, batch=50, concurrency=50)
        stopping = asyncio.Event()
        seen = 0

        async def handle(_: BusMessage) -> Result:
            nonlocal seen
            seen += 1
            if seen >= messages:
                stopping.set()
            return Result.ack()

        profile = cProfile.Profile()
        profile.enable()
        await bus.consume(spec, handle, stopping)
        profile.disable()
        return float(pstats.Stats(profile).total_calls) / messages  # type: ignore[attr-defined]
    finally:
        await bus.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        nats = start_nats(Path(tmp) / "jetstream")
        try:
            calls = asyncio.run(calls_per_message(nats.url, args.messages))
        finally:
            nats.stop()
    print(f"Bus.consume(): {calls:.1f} function calls per message ({args.messages:,} messages)")


if __name__ == "__main__":
    main()
