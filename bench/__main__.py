"""``python -m bench [PART ...]`` (``make bench``): run the benchmark parts, then one summary table.

Parts, in this order: ``envelope``, ``api``, ``pipeline``, ``tracker``, ``webhooks``, ``dashboard``
(all when none is named).
Each part runs in a child process of its own (``python -m bench --child PART``), so one part's
gRPC threads, event loop and memory cannot disturb the next, and a part that hangs is stopped
by its PID after a time limit. A part whose module is missing (bench/api_bench.py,
bench/tracker_bench.py) is skipped with a line saying so.

    .venv/bin/python -m bench                     # everything, ~4-8 minutes
    .venv/bin/python -m bench pipeline            # one part
    .venv/bin/python -m bench pipeline --pipeline-args "--recipients 2000 --latency-samples 10"

Exit status 1 when a part crashed or a correctness check failed; a missed performance goal is
reported in the table, not as a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from bench import Row, check, verdict

PARTS = ("envelope", "api", "pipeline", "tracker", "webhooks", "dashboard")
# Seconds each part may take before it is stopped (SIGTERM, then SIGKILL 30 s later); kept on
# two lines (fmt: skip) rather than one line per part.
TIME_LIMITS = {"envelope": 180, "api": 420, "pipeline": 2400, "tracker": 300, "webhooks": 300,
               "dashboard": 600}  # fmt: skip
# The pipeline's runs: standalone at three Batch sizes (the rate must not fall as the Batch
# grows), then the fleet (a process per Component) at 10,000.
PIPELINE_RUNS = (
    "--recipients 1000,10000,100000",
    "--fleet --recipients 10000 --latency-samples 10",
)
ENVELOPE_BUILDS = 2000
DKIM_GOAL_MS = 1.0
API_GOAL_S = 0.5


# -- the parts (each runs inside its child process) --------------------------------------------


def part_envelope(_: argparse.Namespace) -> list[Row]:
    from kannon.envelope.bench import bench_build

    print(f"[envelope] {ENVELOPE_BUILDS} Envelope builds and DKIM signatures on one core")
    r = bench_build(ENVELOPE_BUILDS)
    print(json.dumps(r, indent=2, sort_keys=True))
    sign = r["dkim_sign_ms_p50"]
    return [
        Row(
            "envelope",
            "DKIM sign per message, mean / median",
            f"{r['dkim_sign_ms']:.3f} / {sign:.3f} ms",
            f"< {DKIM_GOAL_MS:g} ms",
            verdict(sign < DKIM_GOAL_MS),
        ),
        Row(
            "envelope",
            f"Envelope builds/s, one core ({r['message_bytes'] / 1024:.1f} KiB message), "
            "wall clock (1/median)",
            f"{r['builds_per_s']:,.0f}/s ({1000 / r['build_ms_p50']:,.0f}/s)",
        ),
        Row(
            "envelope",
            "build p50 / p99 (compose p50 without DKIM)",
            f"{r['build_ms_p50']:.2f} / {r['build_ms_p99']:.2f} ms ({r['compose_ms_p50']:.2f} ms)",
        ),
    ]


def _module(name: str) -> Any | None:
    """``bench.<name>`` if the file is there (it may still be in progress elsewhere)."""
    if importlib.util.find_spec(f"bench.{name}") is None:
        return None
    return importlib.import_module(f"bench.{name}")


def _call_main(main: Callable[..., Any]) -> Any:
    """Call a part's ``main()`` as it is written: with ``argv=[]`` when it parses arguments
    (our own command line is not for it), awaited when it is a coroutine function."""
    params = inspect.signature(main).parameters
    result = main([]) if "argv" in params else main()
    if inspect.isawaitable(result):
        # isawaitable narrows to Awaitable; asyncio.run wants a Coroutine, which a main is.
        result = asyncio.run(result)  # type: ignore[arg-type]
    return result


def part_api(_: argparse.Namespace) -> list[Row]:
    module = _module("api_bench")
    if module is None or not hasattr(module, "main"):
        print("[api] bench/api_bench.py is not there yet: skipped")
        return [Row("api", "SendHTML intake (bench/api_bench.py)", "not present", "", "skipped")]
    print("[api] bench/api_bench.py main()")
    result = _call_main(module.main)
    rows: list[Row] = []
    if isinstance(result, dict):
        for key, figures in result.items():
            if not isinstance(figures, dict) or "recipients" not in figures:
                continue
            seconds = float(figures.get("median_s") or figures.get("best_s") or 0.0)
            rate = figures.get("deliveries_per_s_median", figures.get("deliveries_per_s_best"))
            goal_key = str(key) in ("10000", "10000_suppressed")
            ok: bool | None = seconds < API_GOAL_S if goal_key else None
            goal = f"< {API_GOAL_S:g} s" if ok is not None else ""
            suppressed = int(figures.get("suppressed") or 0)
            label = f" ({suppressed:,} suppressed)" if suppressed else ""
            rows.append(
                Row(
                    "api",
                    f"SendHTML {int(figures['recipients']):,} recipients{label}: time to "
                    "response (median), Deliveries/s",
                    f"{seconds:.3f} s, {rate:,}/s" if rate is not None else f"{seconds:.3f} s",
                    goal,
                    verdict(ok) if ok is not None else "",
                )
            )
    if not rows:
        rows.append(Row("api", "bench/api_bench.py main()", repr(result)[:60], "", ""))
    return rows


def part_pipeline(args: argparse.Namespace) -> list[Row]:
    from bench import pipeline_bench

    rows: list[Row] = []
    for run_args in [args.pipeline_args] if args.pipeline_args else PIPELINE_RUNS:
        opts, as_json = pipeline_bench.parse_options(shlex.split(run_args))
        figures, run_rows = pipeline_bench.run(opts)
        if as_json:
            print(json.dumps(figures, indent=2, sort_keys=True))
        print("[pipeline] figures: " + json.dumps(figures, sort_keys=True))
        rows += run_rows
    return rows


class _Tee(io.TextIOBase):
    """Writes through to the real stdout and keeps a copy (a part that only prints)."""

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()


_TRACKER_LINE = re.compile(
    r"^(?P<route>/[oc]/ \([^)]*\))\s+(?P<rate>[\d.]+) req/s\s+p50\s+(?P<p50>[\d.]+) ms\s+"
    r"p99\s+(?P<p99>[\d.]+) ms(?:\s+(?P<cpu>[\d.]+) hits/CPU-s)?",
    re.M,
)
TRACKER_GOAL = 2000.0


def part_tracker(_: argparse.Namespace) -> list[Row]:
    module = _module("tracker_bench")
    if module is None or not hasattr(module, "main"):
        print("[tracker] bench/tracker_bench.py is not there yet: skipped")
        return [Row("tracker", "hits/s (bench/tracker_bench.py)", "not present", "", "skipped")]
    print("[tracker] bench/tracker_bench.py main()")
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        code = _call_main(module.main)
    rows = [
        Row(
            "tracker",
            f"{m['route']} one core: req/s, p99" + (", hits per CPU-second" if m["cpu"] else ""),
            f"{float(m['rate']):,.0f}/s, p99 {float(m['p99']):.1f} ms"
            + (f", {float(m['cpu']):,.0f} hits/CPU-s" if m["cpu"] else ""),
            f">= {TRACKER_GOAL:,.0f}/s",
            verdict(float(m["rate"]) >= TRACKER_GOAL),
        )
        for m in _TRACKER_LINE.finditer(tee.copy.getvalue())
    ]
    if isinstance(code, int) and code != 0:
        rows.append(Row("tracker", "tracker_bench exit status", str(code), "0", check(False)))
    if not rows:
        rows.append(Row("tracker", "tracker_bench main()", f"returned {code!r}", "", ""))
    return rows


_WEBHOOKS_LINE = re.compile(r"webhooks one core: (?P<rate>[\d,]+) events/s")


def part_webhooks(_: argparse.Namespace) -> list[Row]:
    module = _module("webhooks_bench")
    if module is None:
        return [Row("webhooks", "events/s (bench/webhooks_bench.py)", "not present", "", "skipped")]
    print("[webhooks] bench/webhooks_bench.py main()")
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        code = _call_main(module.main)
    found = _WEBHOOKS_LINE.search(tee.copy.getvalue())
    if found is None or code not in (0, None):
        return [Row("webhooks", "webhooks_bench", f"exit {code!r}", "", check(False))]
    rate = float(found["rate"].replace(",", ""))
    return [
        Row(
            "webhooks",
            "outcome events signed and POSTed to a local receiver, one core",
            f"{rate:,.0f}/s",
            f">= {module.GOAL:,.0f}/s",
            verdict(rate >= module.GOAL),
        )
    ]


_DASHBOARD_LINE = re.compile(
    r"dashboard overview (?P<span>\w+): median (?P<median>\d+) ms, max (?P<max>\d+) ms"
)


def part_dashboard(_: argparse.Namespace) -> list[Row]:
    module = _module("dashboard_bench")
    if module is None:
        return [Row("dashboard", "overview (bench/dashboard_bench.py)", "not present", "", "")]
    print("[dashboard] bench/dashboard_bench.py main()")
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        code = _call_main(module.main)
    rows = [
        Row(
            "dashboard",
            f"overview {m['span']}, 1,000,000 stats rows: median, max",
            f"{m['median']} ms, max {m['max']} ms",
            f"< {module.GOAL_S * 1000:.0f} ms",
            verdict(int(m["max"]) < module.GOAL_S * 1000),
        )
        for m in _DASHBOARD_LINE.finditer(tee.copy.getvalue())
    ]
    if not rows or code not in (0, None):
        rows.append(Row("dashboard", "dashboard_bench", f"exit {code!r}", "0", check(False)))
    return rows


RUNNERS: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "envelope": part_envelope,
    "api": part_api,
    "pipeline": part_pipeline,
    "tracker": part_tracker,
    "webhooks": part_webhooks,
    "dashboard": part_dashboard,
}


def run_child(args: argparse.Namespace) -> int:
    part = args.child
    try:
        rows = RUNNERS[part](args)
        code = 0
    except Exception as exc:  # reported in the summary table; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        rows = [Row(part, "part crashed", f"{type(exc).__name__}: {exc}"[:80], "", "FAILED")]
        code = 1
    if args.rows_out:
        Path(args.rows_out).write_text(json.dumps([r.to_json() for r in rows]))
    return code


# -- the orchestrator --------------------------------------------------------------------------


def _run_part(part: str, args: argparse.Namespace, scratch: Path) -> list[Row]:
    out = scratch / f"{part}.json"
    argv = [sys.executable, "-m", "bench", "--child", part, "--rows-out", str(out)]
    argv += ["--pipeline-args", args.pipeline_args]
    started = time.monotonic()
    print(f"\n=== {part} " + "=" * (70 - len(part)), flush=True)
    # The child's stdout/stderr are ours: its progress shows as it happens.
    child = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1])
    limit = TIME_LIMITS[part]
    try:
        child.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return [Row(part, "part timed out", f"> {limit} s", "", "FAILED")]
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
        raise
    elapsed = time.monotonic() - started
    print(f"=== {part} done in {elapsed:.0f} s (exit {child.returncode})", flush=True)
    if out.exists():
        return [Row.from_json(r) for r in json.loads(out.read_text())]
    return [Row(part, "part ended without results", f"exit {child.returncode}", "", "FAILED")]


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def print_summary(rows: list[Row], out: TextIO = sys.stdout) -> None:
    widths = [
        max(len(h), *(len(getattr(r, f)) for r in rows))
        for h, f in (
            ("part", "part"),
            ("metric", "metric"),
            ("value", "value"),
            ("goal", "goal"),
            ("", "verdict"),
        )
    ]
    header = ("part", "metric", "value", "goal", "")
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line.rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        cells = (r.part, r.metric, r.value, r.goal, r.verdict)
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip(), file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "parts",
        nargs="*",
        metavar="PART",
        help=f"any of {', '.join(PARTS)} (default: all, in that order)",
    )
    parser.add_argument(
        "--pipeline-args",
        default="",
        help="arguments for one pipeline run instead of the default runs "
        "(see python -m bench.pipeline_bench -h)",
    )
    parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--rows-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    parts = [p for p in PARTS if p in args.parts] if args.parts else list(PARTS)
    load_before = os.getloadavg()
    started = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kannon-bench-") as scratch:
        for part in parts:
            rows += _run_part(part, args, Path(scratch))
    load_after = os.getloadavg()
    print(
        f"\n=== summary: {time.strftime('%Y-%m-%d %H:%M')}, commit {_git_commit()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after, "
        f"{time.monotonic() - started:.0f} s"
    )
    print_summary(rows)
    return 1 if any(r.verdict == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
