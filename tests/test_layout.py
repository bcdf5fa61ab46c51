"""The layout of the test suite itself: every folder of Python code is a package."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_test_folder_is_a_package() -> None:
    # A folder without `__init__.py` imports its modules under their bare names: two `conftest.py`
    # or `support.py` would clash, and mypy could not name them. Data folders (no .py) are exempt.
    folders = {path.parent for path in TESTS.rglob("*.py") if "__pycache__" not in path.parts}
    missing = sorted(
        str(folder.relative_to(TESTS.parent))
        for folder in folders
        if not (folder / "__init__.py").is_file()
    )
    assert missing == []


def test_the_layout_check_sees_every_folder() -> None:
    # Guards the test above against passing on an empty walk.
    assert {"bus", "e2e", "peers", "smtp_sender"} <= {p.name for p in TESTS.iterdir() if p.is_dir()}
    assert len(list(TESTS.rglob("__init__.py"))) >= 20
