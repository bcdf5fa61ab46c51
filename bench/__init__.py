"""`make bench`: reproducible throughput and latency benchmarks of Kannon on this machine.

Parts, run in this order by ``python -m bench`` (or one by one: ``python -m bench pipeline``):

* ``envelope`` -- DKIM sign time and Envelope builds/s on one core (kannon.envelope.bench);
* ``api``      -- SendHTML intake of 10k / 100k recipients (bench/api_bench.py);
* ``pipeline`` -- standalone Kannon end to end into a loopback SMTP sink, next to the loopback
  SMTP limit measured with Postfix's smtp-source (bench/pipeline_bench.py, bench/smtp_limit.py);
* ``tracker``  -- open/click hits per second on one core (bench/tracker_bench.py);
* ``webhooks`` -- outcome events signed and POSTed per second on one core (bench/webhooks_bench.py).

Every part reports its figures as :class:`Row` values; ``python -m bench`` prints them as one
summary table at the end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    """One figure of the summary table."""

    part: str
    metric: str
    value: str
    goal: str = ""
    verdict: str = ""
    """``met`` / ``MISSED`` (a performance goal), ``ok`` / ``FAILED`` (a correctness check),
    ``skipped``, or empty (informational)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        return cls(**{k: str(v) for k, v in data.items() if k in cls.__dataclass_fields__})


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def check(ok: bool) -> str:
    return "ok" if ok else "FAILED"
