"""The README's API walkthrough, run verbatim (only the address is changed to a free port)
against `kannon standalone` with the demo sender: every command must succeed, and the Batch must
end as the README says (Ada Delivered, Bob Bounced). Then, in the same session, the suppression
list's example (the second block) and the webhooks example (the third), whose test event must
reach a receiver this test runs, signed as the `standardwebhooks` library verifies, and the
Admin calls of the privacy section (the fourth)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from kannon.runtime.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def readme_examples() -> list[str]:
    """Every block between the readme-example markers, in README order."""
    text = (ROOT / "README.md").read_text()
    blocks = [
        part.split("<!-- readme-example:end -->", 1)[0]
        for part in text.split("<!-- readme-example:begin -->")[1:]
    ]
    return [b.strip().removeprefix("```sh").removesuffix("```").strip() for b in blocks]


def readme_example() -> str:
    return readme_examples()[0]


def json_documents(output: str) -> list[Any]:
    decoder = json.JSONDecoder()
    docs, i = [], 0
    while i < len(output):
        if output[i].isspace():
            i += 1
            continue
        doc, i = decoder.raw_decode(output, i)
        docs.append(doc)
    return docs


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_readme_walkthrough_runs_verbatim() -> None:
    script = readme_example()
    assert "KANNON=127.0.0.1:50051" in script
    api_port, http_port, health_port = free_port(), free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="kannon-readme-", dir="/tmp"))
    data_dir.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("K_")}
    env.update(HOME=str(data_dir), PATH=f"{BIN}:{env.get('PATH', '')}")
    kannon = subprocess.Popen(
        [
            str(BIN / "kannon"),
            "standalone",
            "--data-dir",
            str(data_dir / "data"),
            "--api-port",
            str(api_port),
            "--api-http-port",
            str(http_port),
            "--api-admin-token",
            "change-me",
            "--tracker-port",
            str(free_port()),
            "--smtp-address",
            f"127.0.0.1:{free_port()}",
            "--health-host",
            "127.0.0.1",
            "--health-port",
            str(health_port),
            "--sender-demo-sender",
            "--sender-hostname",
            "kannon.test",
            # As examples/standalone/kannon.yaml: the webhooks example's receiver is local.
            "--webhooks-allow-http",
            "--webhooks-allow-private",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not _healthy(health_port):
            assert kannon.poll() is None and time.monotonic() < deadline, "standalone did not start"
            time.sleep(0.2)
        auth_file = data_dir / "auth"
        run = on_ports(script, api_port, http_port)
        run += f'\nprintf "%s" "$AUTH" > {auth_file}\n'
        result = run_script(run, env)
        assert result.returncode == 0, result.stdout + result.stderr
        domain, batch, receipt, stats = json_documents(result.stdout)
        assert receipt["messageId"].endswith("@mail.example.com") and receipt != batch
        assert domain["domain"] == "mail.example.com" and domain["dkimPubKey"]
        assert batch["messageId"].startswith("msg_") and batch["messageId"].endswith(
            "@mail.example.com"
        )
        assert "stats" in stats or stats == {} or "total" in stats

        # The last command again, until the demo sender has finished the Batch.
        get_stats = script[script.index("FROM=$(date") :]
        prelude = script[: script.index("# 1.")]
        poll = on_ports(prelude + f'AUTH="$(cat {auth_file})"\n' + get_stats, api_port, http_port)
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = run_script(poll, env, timeout=60, check=True).stdout
            rows = json_documents(out)[0].get("stats", [])
            seen = {(row["email"], row["type"]) for row in rows}
            if {("ada@example.org", "delivered"), ("bob.error@example.org", "bounced")} <= seen:
                break
            time.sleep(0.5)
        assert ("ada@example.org", "accepted") in seen, seen
        assert ("ada@example.org", "delivered") in seen, seen
        assert ("bob.error@example.org", "bounced") in seen, seen

        signed_in = prelude + f'AUTH="$(cat {auth_file})"\n'
        check_suppression_example(
            on_ports(signed_in + readme_examples()[1], api_port, http_port), env
        )
        check_webhooks_example(on_ports(signed_in + readme_examples()[2], api_port, http_port), env)
        check_admin_example(on_ports(prelude + readme_examples()[3], api_port, http_port), env)
    finally:
        kannon.send_signal(signal.SIGINT)
        try:
            out, _ = kannon.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            kannon.kill()
            out, _ = kannon.communicate()
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)
    assert kannon.returncode == 0, out


def run_script(
    script: str, env: dict[str, str], *, timeout: int = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """A README example as bash runs it (`-euo pipefail`), its output captured."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def on_ports(script: str, api_port: int, http_port: int) -> str:
    """The example pointed at this test's standalone instead of the README's default ports."""
    script = script.replace("KANNON=127.0.0.1:50051", f"KANNON=127.0.0.1:{api_port}")
    return script.replace("KANNON_HTTP=127.0.0.1:50052", f"KANNON_HTTP=127.0.0.1:{http_port}")


def check_suppression_example(script: str, env: dict[str, str]) -> None:
    """The suppression list's example: each call's answer is the one the README describes."""
    result = run_script(script, env)
    assert result.returncode == 0, result.stdout + result.stderr
    added, imported, listed, got, sent, removed = json_documents(result.stdout)
    carol = {"domain": "mail.example.com", "address": "carol@example.org", "reason": "manual"}
    assert carol.items() <= added["suppression"].items()
    assert added["suppression"]["note"] == "asked us by phone"
    assert imported["added"] == 2
    assert [r["address"] for r in imported["rejected"]] == ["not-an-address"]
    assert [e["address"] for e in listed["suppressions"]] == ["dave@example.org"]
    assert listed["total"] == 1
    assert got == added
    assert sent["rejectedRecipients"] == [{"email": "carol@example.org", "reason": "suppressed"}]
    assert "acceptedCount" not in sent  # 0: protojson leaves it out
    assert removed == added


def test_grpcurl_note_matches_the_buf_curl_commands() -> None:
    """The README's grpcurl equivalent names services that the buf curl commands use."""
    services = set(re.findall(r"/(kannon\.[a-z0-9.]+\.\w+)/\w+", readme_example()))
    assert services == {
        "kannon.admin.apiv1.AdminApiV1Service",
        "kannon.mailer.apiv1.MailerApiV1Service",
        "kannon.stats.apiv1.StatsApiV1Service",
    }


@contextmanager
def webhook_receiver() -> Iterator[tuple[int, list[tuple[dict[str, str], bytes]]]]:
    """An HTTP receiver on loopback answering 204 and recording each POST."""
    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()


def check_webhooks_example(script: str, env: dict[str, str]) -> None:
    """The webhooks example: the endpoint is created over Connect JSON, listed over gRPC, its
    test event arrives signed with the secret CreateEndpoint returned, and the replay of the
    last hour schedules exactly that one event again."""
    assert "127.0.0.1:8090" in script
    with webhook_receiver() as (port, received):
        result = run_script(script.replace("127.0.0.1:8090", f"127.0.0.1:{port}"), env)
        assert result.returncode == 0, result.stdout + result.stderr
        created, listed, sent, _attempts, replayed = json_documents(result.stdout)
        endpoint = created["endpoint"]
        assert endpoint["url"] == f"http://127.0.0.1:{port}/kannon-events"
        assert endpoint["eventTypes"] == ["delivered", "bounced"]
        assert created["secret"].startswith("whsec_")
        assert [e["id"] for e in listed["endpoints"]] == [endpoint["id"]]
        assert replayed == {"scheduled": "1"}
        deadline = time.monotonic() + 30
        while not received:
            assert time.monotonic() < deadline, "the test event never arrived"
            time.sleep(0.1)
    headers, body = received[0]
    event = Webhook(created["secret"]).verify(body, headers)
    assert event["type"] == "test" and event["data"]["domain"] == "mail.example.com"
    assert {h["webhook-id"] for h, _ in received} == {sent["webhookId"]}


def check_admin_example(script: str, env: dict[str, str]) -> None:
    """The Admin example: the ceiling is set, GetDomain over Connect shows it, a rotation adds
    pending keys beside the signing ones and ListDkimKeys lists them all."""
    result = run_script(script, env)
    assert result.returncode == 0, result.stdout + result.stderr
    tracked, got, rotated, keys = json_documents(result.stdout)
    ceiling = {"opens": "TRACKING_MODE_ANONYMOUS", "links": "TRACKING_MODE_OFF"}
    assert tracked["domain"]["tracking"] == ceiling
    assert got["domain"]["tracking"] == ceiling and got["domain"]["dnsRecords"]
    assert {k["status"] for k in rotated["keys"]} == {"pending"} and rotated["dnsRecords"]
    statuses = sorted(k["status"] for k in keys["keys"])
    assert statuses.count("pending") == 2 and statuses.count("active") == 2, keys
