"""The Dispatcher against real PostgreSQL and NATS: Envelopes built and published per due
Delivery, build and publish failures rescheduled (never stranded) until the budget ends them,
the three outcome consumers, Reclaim, and the Component's lifecycle."""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import REGISTRY

from kannon.bus.client import Bus, BusMessage, Verdict
from kannon.bus.subjects import (
    DISPATCHER_BOUNCED_DURABLE,
    DISPATCHER_DELIVERED_DURABLE,
    DISPATCHER_ERROR_DURABLE,
    SENDER_DURABLE,
    SENDING_STREAM,
    SENDING_SUBJECT,
    STATS_STREAM,
    stats_subject,
)
from kannon.config import ConfigError, Settings
from kannon.db import deliveries
from kannon.db.database import open_database
from kannon.db.domains import NewKey, add_pending_keys, confirm_keys
from kannon.dispatcher import dispatch as dispatcher_module
from kannon.dispatcher.component import Dispatcher
from kannon.envelope.bounce import parse_bounce_address
from kannon.envelope.dkim import generate_dkim_keypair
from kannon.envelope.ids import make_email_id
from kannon.envelope.tokens import verify_click, verify_open
from kannon.model.domain import RSA_SHA256
from kannon.model.event_ids import delivery_event_id as end_event_id
from kannon.model.outcome import Bounced, Delivered, Errored, Failed, Outcome
from kannon.runtime.component import Life
from kannon.wire.stats import encode, publish_outcome
from tests.dispatcher.support import (
    BATCH,
    DOMAIN,
    SECRET,
    T0,
    TEMPLATE,
    add,
    dispatcher,
    dkim_verifies,
    envelopes,
    rows,
    store_batch,
    store_domain,
)
from tests.support import Clock, parse_message, stats_events, wait_for

RETRY = timedelta(minutes=5)  # the default policy's first delay (backoff_min), jitter 1.0


@pytest.fixture
async def pool(database_url: str, dkim_keypair: tuple[str, str]) -> AsyncIterator[asyncpg.Pool]:
    created = await open_database(database_url, max_size=8)
    await store_domain(created, dkim_keypair)
    await store_batch(created)
    yield created
    await created.close()


async def tracking_keys(pool: asyncpg.Pool) -> dict[str, bytes]:
    found = await pool.fetch("SELECT id, private_key FROM stats_keys")
    return {row["id"]: base64.b64decode(row["private_key"]) for row in found}


def outcome_message(outcome: Outcome, seq: int = 1) -> BusMessage:
    return BusMessage(stats_subject(outcome.type), encode(outcome), outcome.event_id, 1, seq)


def errored(email: str, code: int, message: str) -> Outcome:
    return Outcome(BATCH, DOMAIN, email, T0, Errored(code, message), f"error.{code}.{email}")


# -- dispatching ---------------------------------------------------------------------------------


async def test_each_due_delivery_becomes_one_signed_envelope_on_the_sending_stream(
    pool: asyncpg.Pool, bus: Bus, dkim_keypair: tuple[str, str]
) -> None:
    await add(pool, ["ann@example.org"], fields={"name": "Ann"})
    await add(pool, ["bob@example.org"], fields={"name": "Bob <&>"})
    await add(pool, ["later@example.org"], scheduled=T0 + timedelta(minutes=1))
    clock = Clock(T0)

    assert await dispatcher(pool, bus, clock).cycle() == 2

    published = {p.job.recipient: p for p in await envelopes(bus)}
    assert set(published) == {"ann@example.org", "bob@example.org"}
    keys = await tracking_keys(pool)
    for recipient, name in (("ann@example.org", "Ann"), ("bob@example.org", "Bob &lt;&amp;&gt;")):
        item = published[recipient]
        job = item.job
        email_id = make_email_id(BATCH, recipient)
        assert item.msg_id == f"{email_id}.0"
        assert (job.email_id, job.sender, job.should_retry) == (
            email_id,
            "news@k.example.com",
            True,
        )
        bounce = parse_bounce_address(job.return_path, SECRET.encode())
        assert bounce is not None and bounce.batch_id == BATCH
        assert bounce.matches(recipient, SECRET.encode())
        assert dkim_verifies(job.body, dkim_keypair[1])
        message = parse_message(job.body)
        assert message["From"] == "Kannon News <news@k.example.com>"
        assert message["To"] == recipient
        assert message["Subject"] == f"Hello {name.replace('&lt;&amp;&gt;', '<&>')}"
        assert message["Message-ID"] == email_id
        assert message["X-Pool-Message-ID"] == BATCH
        html = message.get_content()
        assert f"<p>Hi {name}</p>" in html
        assert 'href="mailto:help@k.example.com"' in html  # never tracked
        click = html.split('href="https://track.k.example.com/c/', 1)[1].split('"', 1)[0]
        opened = html.split('src="https://track.k.example.com/o/', 1)[1].split('"', 1)[0]
        claim = verify_click(click, keys, T0)
        assert claim is not None and claim.url == "https://example.org/offer"
        assert (claim.batch_id, claim.recipient) == (BATCH, recipient)
        # Tokens live as long as tracker.token_ttl says (default 2160 h).
        assert claim.expires_at == T0 + timedelta(hours=2160)
        assert verify_open(opened, keys, T0 + timedelta(hours=2159)) is not None
        assert verify_open(opened, keys, T0 + timedelta(hours=2160)) is None

    state = await rows(pool)
    # Published: queued with its stream sequence, no longer a claim Reclaim could retake.
    assert state["ann@example.org"]["status"] == "queued"
    assert state["ann@example.org"]["claimed_at"] is None
    assert state["ann@example.org"]["queued_at"] == T0.replace(tzinfo=None)
    seqs = {row["envelope_seq"] for row in state.values() if row["status"] == "queued"}
    assert seqs == set(range(1, len(seqs) + 1))
    assert state["later@example.org"]["status"] == "scheduled"
    assert await dispatcher(pool, bus, clock).cycle() == 0  # nothing else is due
    clock.advance(timedelta(minutes=1))
    assert await dispatcher(pool, bus, clock).cycle() == 1


@pytest.mark.parametrize("build_workers", [0, 2])
async def test_a_backlog_larger_than_a_publish_chunk_is_published_whole(
    pool: asyncpg.Pool,
    bus: Bus,
    dkim_keypair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    build_workers: int,
) -> None:
    monkeypatch.setattr(dispatcher_module, "PUBLISH_CHUNK", 7)
    recipients = [f"r{i}@example.org" for i in range(30)]
    await add(pool, recipients, fields={"name": "R"})
    worker = dispatcher(pool, bus, Clock(T0), batch_size=25, build_workers=build_workers)
    async with worker.build_processes():
        assert len(multiprocessing.active_children()) == build_workers
        assert await worker.cycle() == 25
        assert await worker.cycle() == 5
        assert await worker.cycle() == 0
    published = await envelopes(bus)
    assert sorted(p.job.recipient for p in published) == sorted(recipients)
    assert {row["status"] for row in (await rows(pool)).values()} == {"queued"}
    for item in published:
        assert dkim_verifies(item.job.body, dkim_keypair[1])
        assert parse_message(item.job.body)["Subject"] == "Hello R"
        assert item.msg_id == f"{make_email_id(BATCH, item.job.recipient)}.0"


@pytest.mark.parametrize("build_workers", [0, 1])
async def test_headers_to_cc_and_attachments_come_from_the_batch(
    pool: asyncpg.Pool, bus: Bus, dkim_keypair: tuple[str, str], build_workers: int
) -> None:
    other = "msg_withparts@k.example.com"
    await store_batch(
        pool,
        batch_id=other,
        template_id="template_withparts@k.example.com",
        attachments={"report.pdf": base64.b64encode(b"%PDF-1.4 tiny").decode()},
        headers={"to": ["list@example.org"], "cc": ["boss@example.org"]},
    )
    await add(pool, ["member@example.org"], batch_id=other, fields={"name": "M"})
    worker = dispatcher(pool, bus, Clock(T0), build_workers=build_workers)
    async with worker.build_processes():
        assert await worker.cycle() == 1
    [item] = await envelopes(bus)
    assert item.job.recipient == "member@example.org"  # RCPT stays the Delivery's Recipient
    message = parse_message(item.job.body)
    assert (message["To"], message["Cc"]) == ("list@example.org", "boss@example.org")
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "report.pdf"
    assert attachment.get_content() == b"%PDF-1.4 tiny"
    assert dkim_verifies(item.job.body, dkim_keypair[1])


async def test_the_last_attempt_the_budget_allows_is_marked_should_retry_false(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    late = T0 + timedelta(hours=23, minutes=58)
    # 23h58m into its 24 h window: even the shortest retry (5 min × 0.8) would not fit.
    await add(pool, ["last@example.org"], original=T0, scheduled=late, attempts=9)
    # Due at the same moment, but its window only starts now.
    await add(pool, ["fresh@example.org"], original=late, scheduled=late)
    await dispatcher(pool, bus, Clock(late)).cycle()
    by_recipient = {p.job.recipient: p for p in await envelopes(bus)}
    assert by_recipient["last@example.org"].job.should_retry is False
    assert by_recipient["last@example.org"].msg_id.endswith(".9")
    assert by_recipient["fresh@example.org"].job.should_retry is True
    assert by_recipient["fresh@example.org"].msg_id.endswith(".0")


async def test_the_dkim_key_is_parsed_once_per_domain_and_replaced_when_it_changes(
    pool: asyncpg.Pool, bus: Bus, dkim_keypair: tuple[str, str]
) -> None:
    worker = dispatcher(pool, bus, Clock(T0))
    await add(pool, ["one@example.org"])
    await worker.cycle()
    await add(pool, ["two@example.org"])
    first = worker.dispatch.signers[DOMAIN][1]
    await worker.cycle()
    assert worker.dispatch.signers[DOMAIN][1] is first
    # A rotation: the new key (selector k2) confirmed with no grace, so the old one retires.
    private, public = generate_dkim_keypair()
    await add_pending_keys(pool, DOMAIN, [NewKey("k2", RSA_SHA256, private, public)], T0)
    assert await confirm_keys(pool, DOMAIN, "k2", T0, timedelta(0))
    await add(pool, ["three@example.org"])
    await worker.cycle()
    assert worker.dispatch.signers[DOMAIN][1] is not first
    third = next(p for p in await envelopes(bus) if p.job.recipient == "three@example.org")
    assert b"s=k2;" in third.job.body
    assert not dkim_verifies(third.job.body, dkim_keypair[1])  # the old key no longer signs


# -- build and publish failures ------------------------------------------------------------------


async def test_a_deleted_template_reschedules_with_backoff_then_ends_failed(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    await add(pool, ["gone@example.org"])
    await pool.execute("DELETE FROM templates WHERE template_id = $1", TEMPLATE)
    clock = Clock(T0)
    worker = dispatcher(pool, bus, clock)

    assert await worker.cycle() == 1
    row = (await rows(pool))["gone@example.org"]
    assert (row["status"], row["send_attempts_cnt"]) == ("scheduled", 1)
    assert row["scheduled_time"] == (T0 + RETRY).replace(tzinfo=None)
    assert row["claimed_at"] is None
    assert await envelopes(bus) == []
    assert await worker.cycle() == 0  # not due before its backoff

    # Every later attempt fails the same way until the 24 h window has no room left.
    attempts = 1
    while (await rows(pool)).get("gone@example.org") is not None:
        clock.now = (await rows(pool))["gone@example.org"]["scheduled_time"].replace(
            tzinfo=T0.tzinfo
        )
        assert await worker.cycle() == 1
        attempts += 1
        assert attempts < 20, "the budget never ran out"
    assert attempts >= 5  # 5m, 5m, 8m, 16m, ... up to 24 h: several retries happened first

    [(subject, outcome)] = await stats_events(bus)
    assert subject == "kannon.stats.failed"
    assert isinstance(outcome.detail, Failed)
    assert outcome.detail.reason == (
        f"retry budget exhausted while dispatching: template {TEMPLATE} no longer exists"
    )
    assert (outcome.batch_id, outcome.recipient, outcome.domain) == (
        BATCH,
        "gone@example.org",
        DOMAIN,
    )
    assert outcome.event_id == end_event_id("failed", BATCH, "gone@example.org")
    assert await envelopes(bus) == []


async def test_a_build_failure_after_a_remote_answer_ends_bounced_with_that_answer(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    await add(
        pool,
        ["answered@example.org"],
        original=T0,
        scheduled=T0 + timedelta(hours=23, minutes=58),
        attempts=9,
        last_reply=(452, "4.2.2 mailbox full"),
    )
    await pool.execute("DELETE FROM domains")
    await dispatcher(pool, bus, Clock(T0 + timedelta(hours=23, minutes=58))).cycle()
    [(subject, outcome)] = await stats_events(bus)
    assert subject == "kannon.stats.bounced"
    assert outcome.detail == Bounced(permanent=False, code=452, message="4.2.2 mailbox full")
    assert await rows(pool) == {}


async def test_a_deleted_domain_is_a_build_failure_naming_the_domain(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    await add(pool, ["x@example.org"], original=T0, scheduled=T0 + timedelta(hours=23, minutes=58))
    await pool.execute("DELETE FROM domains")
    await dispatcher(pool, bus, Clock(T0 + timedelta(hours=23, minutes=58))).cycle()
    [(_, outcome)] = await stats_events(bus)
    assert outcome.detail == Failed(
        f"retry budget exhausted while dispatching: domain {DOMAIN} no longer exists"
    )


class RefusingBus(Bus):
    """The real bus, except that Envelopes are refused while `refuse` is set (or, with
    `refusals`, that many times)."""

    refuse = True
    refusals: int | None = None

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> int:
        if subject == SENDING_SUBJECT:
            if self.refusals is not None:
                if self.refusals > 0:
                    self.refusals -= 1
                    raise ConnectionError("no responders")
            elif self.refuse:
                raise ConnectionError("no responders")
        return await super().publish(subject, payload, msg_id)


async def test_a_bus_blip_costs_a_publish_retry_not_an_attempt(
    pool: asyncpg.Pool, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatcher_module, "PUBLISH_RETRY_DELAY", 0.001)
    await add(pool, ["a@example.org"])
    refusing = RefusingBus(bus.nc)
    refusing.refusals = dispatcher_module.PUBLISH_TRIES - 1  # the last try gets through
    retries = REGISTRY.get_sample_value("kannon_dispatcher_publish_retries_total") or 0.0
    assert await dispatcher(pool, refusing, Clock(T0)).cycle() == 1
    [published] = await envelopes(bus)
    assert published.msg_id.endswith(".0")
    row = (await rows(pool))["a@example.org"]
    assert (row["status"], row["send_attempts_cnt"]) == ("queued", 0)
    after = REGISTRY.get_sample_value("kannon_dispatcher_publish_retries_total") or 0.0
    assert after - retries == dispatcher_module.PUBLISH_TRIES - 1


async def test_a_refused_publish_goes_back_to_the_pool_under_the_same_attempt(
    pool: asyncpg.Pool, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatcher_module, "PUBLISH_RETRY_DELAY", 0.001)
    await add(pool, ["a@example.org", "b@example.org"])
    refusing = RefusingBus(bus.nc)
    clock = Clock(T0)
    worker = dispatcher(pool, refusing, clock)
    assert await worker.cycle() == 2
    state = await rows(pool)
    # Nothing was sent: no attempt is charged, and it is due again in a few seconds, not after
    # a retry backoff.
    later = (T0 + dispatcher_module.PUBLISH_RETRY_LATER).replace(tzinfo=None)
    assert {(r["status"], r["send_attempts_cnt"], r["scheduled_time"]) for r in state.values()} == {
        ("scheduled", 0, later)
    }
    assert await envelopes(bus) == []
    assert await worker.cycle() == 0

    refusing.refuse = False
    clock.advance(dispatcher_module.PUBLISH_RETRY_LATER)
    assert await worker.cycle() == 2
    published = await envelopes(bus)
    assert sorted(p.job.recipient for p in published) == ["a@example.org", "b@example.org"]
    assert {p.msg_id.rsplit(".", 1)[1] for p in published} == {"0"}


async def test_a_publish_refused_after_the_retry_window_ends_the_delivery_failed(
    pool: asyncpg.Pool, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatcher_module, "PUBLISH_RETRY_DELAY", 0.001)
    await add(pool, ["a@example.org"])
    worker = dispatcher(pool, RefusingBus(bus.nc), Clock(T0 + timedelta(hours=25)))
    assert await worker.cycle() == 1
    assert await rows(pool) == {}
    [(subject, outcome)] = await stats_events(bus)
    assert subject == "kannon.stats.failed"
    assert isinstance(outcome.detail, Failed)
    assert "publishing" in outcome.detail.reason


async def test_an_envelope_larger_than_the_bus_accepts_ends_failed_at_once(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    """Intake refuses such Batches (ADR 0021), but a bus whose max_payload was lowered after
    intake must not leave the Delivery retrying for 24 h: it ends Failed, saying why."""
    big = "msg_big@k.example.com"
    await store_batch(
        pool,
        batch_id=big,
        template_id="template_big@k.example.com",
        attachments={"big.bin": base64.b64encode(bytes(2 * 1024 * 1024)).decode()},
    )
    await add(pool, ["big@example.org"], batch_id=big, fields={"name": "B"})
    assert bus.nc.max_payload < 2 * 1024 * 1024  # the test server's default, 1 MiB
    assert await dispatcher(pool, bus, Clock(T0)).cycle() == 1
    assert await rows(pool) == {}
    assert await envelopes(bus) == []
    [(subject, outcome)] = await stats_events(bus)
    assert subject == "kannon.stats.failed"
    assert isinstance(outcome.detail, Failed)
    assert "max_payload" in outcome.detail.reason


async def test_claims_are_released_untouched_when_the_sending_data_cannot_be_read(
    pool: asyncpg.Pool, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add(pool, ["a@example.org"])

    async def broken(*args: object) -> object:
        raise ConnectionResetError("connection lost")

    monkeypatch.setattr(dispatcher_module, "load_sending_data", broken)
    with pytest.raises(ConnectionResetError):
        await dispatcher(pool, bus, Clock(T0)).cycle()
    row = (await rows(pool))["a@example.org"]
    assert (row["status"], row["send_attempts_cnt"], row["claimed_at"]) == ("scheduled", 0, None)


# -- outcome consumers ---------------------------------------------------------------------------


async def test_delivered_and_bounced_delete_the_row_and_a_repeat_changes_nothing(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    await add(pool, ["d@example.org", "b@example.org", "keep@example.org"], status="sending")
    worker = dispatcher(pool, bus, Clock(T0))
    delivered = Outcome(BATCH, DOMAIN, "d@example.org", T0, Delivered(), "delivered.1")
    bounced = Outcome(BATCH, DOMAIN, "b@example.org", T0, Bounced(True, 550, "5.1.1"), "b.2")
    for outcome in (delivered, bounced, delivered):
        result = await worker.handle_finished(outcome_message(outcome))
        assert result.verdict is Verdict.ACK
    assert set(await rows(pool)) == {"keep@example.org"}
    garbage = BusMessage("kannon.stats.delivered", b"\xff\x00garbage", None, 1, 9)
    assert (await worker.handle_finished(garbage)).verdict is Verdict.TERM


async def test_the_endings_of_a_fetch_share_one_delete_and_are_acked_after_it(
    pool: asyncpg.Pool, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipients = [f"d{i}@example.org" for i in range(5)]
    await add(pool, [*recipients, "keep@example.org"], status="sending")
    worker = dispatcher(pool, bus, Clock(T0))
    calls: list[int] = []
    real = deliveries.delete_by_recipients

    async def counted(p: asyncpg.Pool, pairs: list[tuple[str, str]]) -> list[bool]:
        calls.append(len(pairs))
        result = await real(p, pairs)
        assert set(await rows(pool)) == {"keep@example.org"}  # committed when the write returns
        return result

    monkeypatch.setattr(deliveries, "delete_by_recipients", counted)
    messages = [
        outcome_message(Outcome(BATCH, DOMAIN, email, T0, Delivered(), f"delivered.{email}"))
        for email in [*recipients, recipients[0]]  # the last one is a redelivery
    ]
    results = await worker.outcomes.handle_finished_batch(messages)
    assert [r.verdict for r in results] == [Verdict.ACK] * 6
    assert calls == [6]
    assert set(await rows(pool)) == {"keep@example.org"}


async def test_an_error_with_a_reply_reschedules_and_records_the_reply(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    await add(pool, ["t@example.org"], status="sending", claimed_at=T0)
    clock = Clock(T0 + timedelta(minutes=1))
    worker = dispatcher(pool, bus, clock, jitter=1.2)
    message = outcome_message(errored("t@example.org", 451, "4.7.1 try again later"))
    assert (await worker.handle_error(message)).verdict is Verdict.ACK
    row = (await rows(pool))["t@example.org"]
    assert row["status"] == "scheduled"
    assert row["send_attempts_cnt"] == 1
    assert row["scheduled_time"] == (clock.now + RETRY * 1.2).replace(tzinfo=None)
    assert (row["last_reply_code"], row["last_reply_msg"]) == (451, "4.7.1 try again later")
    # The same event again (a redelivery) finds the row no longer being sent: no second bump.
    assert (await worker.handle_error(message)).verdict is Verdict.ACK
    assert (await rows(pool))["t@example.org"]["send_attempts_cnt"] == 1


async def test_an_error_without_a_reply_keeps_the_last_real_reply(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    await add(pool, ["t@example.org"], status="sending", attempts=2, last_reply=(421, "busy"))
    worker = dispatcher(pool, bus, Clock(T0))
    await worker.handle_error(outcome_message(errored("t@example.org", 0, "connection refused")))
    row = (await rows(pool))["t@example.org"]
    assert (row["status"], row["send_attempts_cnt"]) == ("scheduled", 3)
    assert (row["last_reply_code"], row["last_reply_msg"]) == (421, "busy")


async def test_a_spent_budget_ends_bounced_when_a_server_answered_else_failed(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    late = T0 + timedelta(hours=23, minutes=58)
    await add(pool, ["answered@example.org"], status="sending", original=T0, scheduled=late)
    await add(
        pool,
        ["earlier@example.org"],
        status="sending",
        original=T0,
        scheduled=late,
        last_reply=(450, "4.2.0 greylisted"),
    )
    await add(pool, ["silent@example.org"], status="sending", original=T0, scheduled=late)
    worker = dispatcher(pool, bus, Clock(late))
    for outcome in (
        errored("answered@example.org", 452, "4.2.2 mailbox full"),
        errored("earlier@example.org", 0, "connection timed out"),
        errored("silent@example.org", 0, "connection dropped without a reply"),
    ):
        assert (await worker.handle_error(outcome_message(outcome))).verdict is Verdict.ACK
    assert await rows(pool) == {}
    ended = {outcome.recipient: (subject, outcome) for subject, outcome in await stats_events(bus)}
    assert ended["answered@example.org"][0] == "kannon.stats.bounced"
    assert ended["answered@example.org"][1].detail == Bounced(False, 452, "4.2.2 mailbox full")
    assert ended["earlier@example.org"][1].detail == Bounced(False, 450, "4.2.0 greylisted")
    assert ended["silent@example.org"][0] == "kannon.stats.failed"
    assert ended["silent@example.org"][1].detail == Failed(
        "retry budget exhausted while sending: connection dropped without a reply"
    )


async def test_errors_for_deliveries_that_are_gone_are_acked_and_bad_ones_terminated(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    worker = dispatcher(pool, bus, Clock(T0))
    gone = outcome_message(errored("nobody@example.org", 451, "later"))
    assert (await worker.handle_error(gone)).verdict is Verdict.ACK
    wrong = outcome_message(Outcome(BATCH, DOMAIN, "x@example.org", T0, Delivered(), "d.1"))
    assert (await worker.handle_error(wrong)).verdict is Verdict.TERM
    garbage = BusMessage("kannon.stats.error", b"\xff\x00garbage", None, 1, 9)
    assert (await worker.handle_error(garbage)).verdict is Verdict.TERM
    assert await stats_events(bus) == []


# -- reclaim -------------------------------------------------------------------------------------


async def test_reclaim_returns_only_stale_dispatch_claims_under_the_same_attempt(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    await add(pool, ["stale@example.org"], status="sending", claimed_at=T0 - timedelta(minutes=2))
    await add(pool, ["fresh@example.org"], status="sending", claimed_at=T0 - timedelta(seconds=30))
    await add(
        pool, ["validating@example.org"], status="validating", claimed_at=T0 - timedelta(hours=1)
    )
    await add(pool, ["queued@example.org"], status="queued", attempts=2)
    await pool.execute(
        "UPDATE sending_pool_emails SET queued_at = $1, envelope_seq = 7 WHERE status = 'queued'",
        (T0 - timedelta(hours=3)).replace(tzinfo=None),
    )
    worker = dispatcher(pool, bus, Clock(T0))  # claim_timeout defaults to 1m
    assert worker.reclaim_interval == timedelta(seconds=30)
    assert await worker.reclaim() == 1
    state = await rows(pool)
    stale = state["stale@example.org"]
    # Same attempt: its Envelope, if it was published after all, is published again under the
    # same Nats-Msg-Id, and the stream drops the copy.
    assert (stale["status"], stale["send_attempts_cnt"]) == ("scheduled", 0)
    assert state["fresh@example.org"]["status"] == "sending"
    assert state["validating@example.org"]["status"] == "validating"
    # Published Envelopes are never reclaimed, however long they wait in the stream.
    assert state["queued@example.org"]["status"] == "queued"

    # At start every claim is a dead Dispatcher's: taken back at once, not after the timeout.
    assert await worker.reclaim(everything=True) == 1
    assert (await rows(pool))["fresh@example.org"]["status"] == "scheduled"


async def _queue(pool: asyncpg.Pool, email: str, seq: int, queued_at: datetime) -> None:
    await add(pool, [email], status="queued")
    await pool.execute(
        "UPDATE sending_pool_emails SET queued_at = $1, envelope_seq = $2 WHERE email = $3",
        queued_at.replace(tzinfo=None),
        seq,
        email,
    )


async def _sender_acks(bus: Bus, count: int) -> None:
    """The SMTPSender's durable consumer takes and acknowledges the first `count` Envelopes."""
    await bus.js.add_consumer(
        SENDING_STREAM,
        ConsumerConfig(
            durable_name=SENDER_DURABLE,
            filter_subject=SENDING_SUBJECT,
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    sub = await bus.js.pull_subscribe_bind(durable=SENDER_DURABLE, stream=SENDING_STREAM)
    for msg in await sub.fetch(count, timeout=5):
        await msg.ack_sync()
    await sub.unsubscribe()


async def test_a_queued_envelope_is_retried_only_once_it_can_no_longer_be_sent(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    """An Envelope the SMTPSender acknowledged without its outcome reaching the Dispatcher (the
    event was dead-lettered) is a lost attempt: retried. One still waiting in the stream — however
    long — is not touched, nor is any while an outcome is still pending for the Dispatcher."""
    seqs = [await bus.publish(SENDING_SUBJECT, b"x", f"env-{i}") for i in range(3)]
    await _sender_acks(bus, 1)
    long_ago = T0 - timedelta(hours=2)
    await _queue(pool, "acked@example.org", seqs[0], long_ago)
    await _queue(pool, "waiting@example.org", seqs[1], long_ago)
    await _queue(pool, "just-acked@example.org", seqs[0], T0 - timedelta(seconds=10))
    worker = dispatcher(pool, bus, Clock(T0))

    # An outcome still waits for a Dispatcher consumer: it may be this row's; nothing moves.
    await bus.js.add_consumer(
        STATS_STREAM,
        ConsumerConfig(
            durable_name=DISPATCHER_DELIVERED_DURABLE,
            filter_subject=stats_subject("delivered"),
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    await publish_outcome(
        bus, Outcome(BATCH, DOMAIN, "other@example.org", T0, Delivered(), "delivered.x.0")
    )
    assert await worker.requeue_lost() == 0
    await bus.js.delete_consumer(STATS_STREAM, DISPATCHER_DELIVERED_DURABLE)

    assert await worker.requeue_lost() == 1
    state = await rows(pool)
    acked = state["acked@example.org"]
    assert (acked["status"], acked["send_attempts_cnt"], acked["envelope_seq"]) == (
        "scheduled",
        1,
        None,
    )
    assert state["waiting@example.org"]["status"] == "queued"  # can still be sent
    assert state["just-acked@example.org"]["status"] == "queued"  # younger than claim_timeout

    # The stream no longer holds the waiting one (aged out, or purged): it can never be sent.
    await bus.js.purge_stream(SENDING_STREAM)
    assert await worker.requeue_lost() == 1
    assert (await rows(pool))["waiting@example.org"]["send_attempts_cnt"] == 1


# -- configuration and lifecycle -----------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "short"])
def test_a_missing_or_short_secret_key_fails_at_boot(secret: str | None) -> None:
    with pytest.raises(ConfigError) as failure:
        Dispatcher(Settings(secret_key=secret), None, None)  # type: ignore[arg-type]  # refused first
    assert failure.value.key == "secret_key"


async def test_run_consumes_outcomes_dispatches_and_drains_on_stop(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    # Published by a predecessor; a claim it left is taken back at start and dispatched again.
    await add(pool, ["done@example.org", "retry@example.org"], status="queued")
    await add(pool, ["left@example.org"], status="sending", claimed_at=T0)
    worker = dispatcher(pool, bus, Clock(T0))
    life = Life(worker.name)
    task = asyncio.create_task(worker.run(life))
    await asyncio.wait_for(life.wait_ready(), 15)
    consumers = {info.name for info in await bus.js.consumers_info(STATS_STREAM)}
    assert {
        DISPATCHER_DELIVERED_DURABLE,
        DISPATCHER_BOUNCED_DURABLE,
        DISPATCHER_ERROR_DURABLE,
    } <= consumers

    await publish_outcome(
        bus, Outcome(BATCH, DOMAIN, "done@example.org", T0, Delivered(), "delivered.1")
    )
    await publish_outcome(bus, errored("retry@example.org", 451, "later"))
    await add(pool, ["new@example.org"])

    async def settled() -> bool:
        state = await rows(pool)
        return (
            "done@example.org" not in state
            and state["retry@example.org"]["status"] == "scheduled"
            and state["new@example.org"]["status"] == "queued"
            and state["left@example.org"]["status"] == "queued"
        )

    await wait_for(settled, what="outcomes applied and the new Delivery dispatched")
    # The default dispatcher.build_workers: one build process while running, none after.
    assert len(multiprocessing.active_children()) == 1
    life.stopping.set()
    await asyncio.wait_for(task, 15)
    assert multiprocessing.active_children() == []
    published = sorted(p.job.recipient for p in await envelopes(bus))
    assert published == ["left@example.org", "new@example.org"]


async def test_a_late_error_about_an_earlier_attempt_leaves_the_attempt_in_flight_alone(
    pool: asyncpg.Pool, bus: Bus
) -> None:
    """Attempt 1 is in flight; a redelivered Errored about attempt 0 must not reschedule it (that
    would send attempt 1's Envelope again). The event's id names the attempt it answers."""
    from kannon.envelope.ids import make_email_id
    from kannon.model.event_ids import envelope_msg_id, send_outcome_id

    email = "late@example.org"
    await add(pool, [email], status="queued", attempts=1)
    worker = dispatcher(pool, bus, Clock(T0))
    email_id = make_email_id(BATCH, email)

    def error_about(attempt: int) -> BusMessage:
        event_id = send_outcome_id("error", envelope_msg_id(email_id, attempt), 99)
        outcome = Outcome(BATCH, DOMAIN, email, T0, Errored(451, "later"), event_id)
        return outcome_message(outcome)

    assert (await worker.handle_error(error_about(0))).verdict is Verdict.ACK
    row = (await rows(pool))[email]
    assert (row["status"], row["send_attempts_cnt"]) == ("queued", 1)
    assert (await worker.handle_error(error_about(1))).verdict is Verdict.ACK
    row = (await rows(pool))[email]
    assert (row["status"], row["send_attempts_cnt"]) == ("scheduled", 2)
    # A second copy of the error about attempt 1 now answers an attempt no longer in flight.
    assert (await worker.handle_error(error_about(1))).verdict is Verdict.ACK
    row = (await rows(pool))[email]
    assert (row["status"], row["send_attempts_cnt"]) == ("scheduled", 2)
