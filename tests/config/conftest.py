"""Fixtures for the configuration tests (helpers live in config_test_support)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.config.config_test_support import Loader


@pytest.fixture
def load(tmp_path: Path) -> Loader:
    """Load Settings with HOME in a fresh per-test directory (so ~/.kannon.yaml is ours)."""
    home = tmp_path / "home"
    home.mkdir()
    return Loader(home)
