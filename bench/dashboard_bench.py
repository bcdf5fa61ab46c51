"""The dashboard's overview for a Domain with 1,000,000 stats rows (ADR 0043).

Seeds an embedded PostgreSQL with a million `stats` rows of one Domain spread over 30 days and
the `aggregated_stats` counters the Stats worker would have written for them (both in SQL, with
generate_series), starts the api Component (its HTTP side serves /dashboard/), signs in with the
Domain's API key and times GET of the overview for each range (24 h, 7 d, 30 d), server time
included, over loopback. Prints ``dashboard overview <range>: median X ms, max Y ms``.

    .venv/bin/python -m bench.dashboard_bench [--rows 1000000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from kannon.api.component import ApiComponent
from kannon.config import Settings
from kannon.db.apikeys import insert_api_key
from kannon.db.database import open_database
from kannon.db.embedded import start_postgres
from kannon.db.migrate import migrate
from kannon.ids import new_api_key, new_api_key_id
from kannon.model.apikey import ApiKey, hash_key, key_prefix
from kannon.runtime.component import Life

GOAL_S = 0.5
DOMAIN = "bench.example"
CHUNK = 100_000

SEED = """
INSERT INTO stats (type, email, message_id, domain, timestamp, data)
SELECT (ARRAY['accepted','delivered','bounced','opened','clicked','failed'])[1 + i % 6],
       'r' || i || '@rcpt' || (i % 50) || '.test', 'msg_' || (i / 1000) || '@bench.example',
       'bench.example', now() at time zone 'utc' - (i % 720) * interval '1 hour',
       CASE WHEN i % 6 = 2 THEN '{"bounced": {"code": 550, "reason": "userunknown"}}'::jsonb
            WHEN i % 6 = 4 THEN '{"clicked": {"url": "https://x.test/"}}'::jsonb
            ELSE '{}'::jsonb END
FROM generate_series($1::int, $2::int) AS i
"""
AGGREGATE = """
INSERT INTO aggregated_stats (domain, timestamp, type, count)
SELECT domain, date_trunc('hour', timestamp), type, count(*) FROM stats GROUP BY 1, 2, 3
"""


async def run(url: str, rows: int, repeats: int) -> dict[str, list[float]]:
    pool = await open_database(url, max_size=4)
    try:
        started = time.perf_counter()
        await pool.execute(
            "INSERT INTO domains (domain, dkim_private_key, dkim_public_key) VALUES ($1, '', '')",
            DOMAIN,
        )
        # In chunks, each under the pool's command timeout on a loaded machine.
        for first in range(1, rows + 1, CHUNK):
            await pool.execute(SEED, first, min(first + CHUNK - 1, rows), timeout=600)
        await pool.execute(AGGREGATE, timeout=600)
        await pool.execute("ANALYZE", timeout=600)
        print(f"seeded {rows:,} stats rows in {time.perf_counter() - started:.1f} s")
        plaintext = new_api_key()
        now = datetime.now(UTC)
        key = ApiKey(
            new_api_key_id(), DOMAIN, "bench", key_prefix(plaintext), now, None, True, None
        )
        await insert_api_key(pool, key, hash_key(plaintext))
        settings = Settings.model_validate(
            {"api": {"port": 0, "http_port": 0, "host": "127.0.0.1", "admin_token": "bench"}}
        )
        api = ApiComponent(settings, pool)
        life = Life("api")
        task = asyncio.create_task(api.run(life))
        await asyncio.wait_for(life.wait_ready(), 30)
        base = f"http://127.0.0.1:{api.http_port}/dashboard"
        timings: dict[str, list[float]] = {}
        async with httpx.AsyncClient(timeout=30, follow_redirects=True) as client:
            login = await client.post(
                f"{base}/login", data={"domain": DOMAIN, "api_key": plaintext}
            )
            assert login.status_code == 200 and "/overview" in str(login.url), login.status_code
            for span in ("24h", "7d", "30d"):
                timings[span] = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    page = await client.get(f"{base}/d/{DOMAIN}/overview?range={span}")
                    timings[span].append(time.perf_counter() - t0)
                    assert page.status_code == 200 and 'data-type="delivered"' in page.text
        life.stopping.set()
        await task
        return timings
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="kannon-bench-dashboard-", dir="/tmp"))
    root.chmod(0o755)
    pg = start_postgres(root / "pg", fast=True)
    try:
        asyncio.run(migrate(pg.url()))
        timings = asyncio.run(run(pg.url(), args.rows, args.repeats))
        for span, values in timings.items():
            print(
                f"dashboard overview {span}: median {statistics.median(values) * 1000:.0f} ms, "
                f"max {max(values) * 1000:.0f} ms ({args.rows:,} stats rows, goal "
                f"{GOAL_S * 1000:.0f} ms)"
            )
        return 0
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
