"""The event loop a `kannon` command runs on (`event_loop`, ADR 0054)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from kannon.config import Settings, environment_of, load_settings
from kannon.runtime import event_loop


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_auto_and_uvloop_run_on_uvloop_when_it_is_installed() -> None:
    assert event_loop.uvloop_installed()  # a dependency of the package
    assert event_loop.run(_loop_module(), "auto").startswith("uvloop")
    assert event_loop.run(_loop_module(), "uvloop").startswith("uvloop")


def test_asyncio_runs_on_asyncio_s_own_loop() -> None:
    assert event_loop.run(_loop_module(), "asyncio").startswith("asyncio")


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "uvloop" else find_spec(name, *args),
    )
    assert event_loop.run(_loop_module(), "auto").startswith("asyncio")
    with pytest.raises(event_loop.EventLoopUnavailable, match="not installed"):
        event_loop.run(_loop_module(), "uvloop")


def test_standalone_hands_the_choice_to_its_child_processes() -> None:
    settings = Settings.model_validate({"event_loop": "asyncio"})
    env = environment_of(settings)
    assert env["K_EVENT_LOOP"] == "asyncio"
    assert load_settings({}, env).event_loop == "asyncio"
