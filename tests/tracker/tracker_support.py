"""Helpers shared by the Tracker tests: constants and readers of the events on the real bus."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from kannon.tracker.component import Tracker

# Requests from this loopback address come "through a proxy"; from 127.0.0.1 they do not.
PROXY_ADDRESS = "127.0.0.2"
DOMAIN = "k.example.com"
TOKEN_TTL = timedelta(days=90)

# start_tracker(**Tracker keyword arguments, pool=...) -> a running Tracker
StartTracker = Callable[..., Awaitable[Tracker]]
